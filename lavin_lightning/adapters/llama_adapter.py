"""LLaMA-Adapter v1 (Zhang et al., 2023): zero-init attention, as the authors' code does it.

In each of the top L layers, K learnable prompts P_l pass through the layer's *frozen*
W_k / W_v (no RoPE) and form a second attention branch with its own softmax; a per-head
gate g, zero at init, scales it through tanh:

    out = softmax(Q K_tok^T / sqrt(d) + mask) V_tok  +  tanh(g) * softmax(Q (W_k P)^T / sqrt(d)) W_v P

(the release's inference code multiplies by g itself: `gate: raw`)

The first term is the backbone's own attention (same function, same arithmetic), so with
g = 0 the model is the backbone exactly. The prompts and the gate of a layer are owned by
its attention module (`self_attn.adaption_prompt`); `llama_adapter_attention` is registered
in transformers' AttentionInterface and reads them from the module it is called with.

Multimodal v1 (ScienceQA): the [CLS] features of several ViT layers, concatenated and
projected to the LLM width, are added to every prompt of every adapted layer. The projected
features of a batch reach the attention function as the keyword argument `VISUAL_KWARG` of
the LLM's forward, which transformers hands on to every attention call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv

from lavin_lightning.adapters.core import (
    AdapterModule,
    Injection,
    attach,
    base_attention,
    match_modules,
    prefixed,
    top_layers,
    use_attention_function,
)
from lavin_lightning.errors import ConfigError

ATTENTION_FUNCTION = "lavin_lightning_llama_adapter"
ATTENTION_MODULES = r"model\.layers\.(\d+)\.self_attn"
VISUAL_KWARG = "llama_adapter_visual"  # (B, C) per batch: projected image features added to the prompts


@dataclass
class LlamaAdapterConfig:
    """LLaMA-Adapter v1 settings (defaults: the release, `alpaca_finetuning_v1`).

    Args:
        layers: number of topmost layers that get prompts (L; 30 of LLaMA-7B's 32); None = all.
        prompt_length: prompts per layer (K).
        prompt_init_std: std of the prompts' normal init (the release's nn.Embedding: 1).
        gate: what scales the prompt branch: "tanh" of the gate parameter (the release's
            training code, the paper) or the "raw" parameter (the release's inference code,
            `llama/model.py`). A choice of evaluation: an adapter loads with either.
    """

    layers: int | None = 30
    prompt_length: int = 10
    prompt_init_std: float = 1.0
    gate: Literal["tanh", "raw"] = "tanh"

    # Settings an exported adapter may be evaluated with otherwise (checkpoint.check_meta).
    EVALUATION_SETTINGS: ClassVar[tuple[str, ...]] = ("gate",)

    def __post_init__(self):
        if (self.layers is not None and self.layers < 1) or self.prompt_length < 1:
            raise ConfigError(f"LlamaAdapterConfig needs layers >= 1 and prompt_length >= 1, got {self}")
        if self.gate not in ("tanh", "raw"):
            raise ConfigError(f"LlamaAdapterConfig.gate must be 'tanh' or 'raw', got {self.gate!r}")


class AdaptionPrompt(AdapterModule):
    """One layer's prompts (K, C) and zero-initialised per-head gate (H,), applied through
    tanh or raw (`gate_activation`)."""

    def __init__(self, prompt_length: int, width: int, num_heads: int, init_std: float,
                 gate_activation: str = "tanh"):
        super().__init__()
        self.prompt = nn.Parameter(torch.empty(prompt_length, width))
        self.gate = nn.Parameter(torch.zeros(num_heads))
        self.gate_activation = gate_activation
        if self.prompt.device.type != "meta":
            nn.init.normal_(self.prompt, std=init_std)

    def gate_values(self) -> torch.Tensor:
        """(H,) factors of the prompt branch."""
        return torch.tanh(self.gate) if self.gate_activation == "tanh" else self.gate

    def prompts(self, visual: torch.Tensor | None = None) -> torch.Tensor:
        """(1 or B, K, C): the prompts, plus the batch's projected image features (B, C) if any."""
        if visual is None:
            return self.prompt[None]
        return self.prompt[None] + visual[:, None].to(self.prompt.dtype)


class VisualPromptBias(AdapterModule):
    """Multimodal v1: concatenated multi-scale [CLS] features -> Linear -> added to prompts."""

    def __init__(self, feature_width: int, num_features: int, width: int):
        super().__init__()
        self.proj = nn.Linear(feature_width * num_features, width)

    def forward(self, features: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """(B, C); zero for samples without an image."""
        bias = self.proj(features.flatten(1).to(self.proj.weight.dtype))
        full = bias.new_zeros(has_image.shape[0], bias.shape[-1])
        return full.index_copy(0, has_image.nonzero().squeeze(-1), bias)


def llama_adapter_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The backbone's attention plus the gated prompt branch (separate softmax)."""
    visual = kwargs.pop(VISUAL_KWARG, None)
    adapter: AdaptionPrompt | None = getattr(module, "adaption_prompt", None)
    attend = base_attention(module)
    out, weights = attend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if adapter is None or not adapter.active:
        return out, weights
    head_dim = query.shape[-1]

    def prompt_keys_values():
        prompts = adapter.prompts(visual).to(query.dtype)  # frozen W_k / W_v, no RoPE
        n, length = prompts.shape[:2]
        k = module.k_proj(prompts).view(n, length, -1, head_dim).transpose(1, 2)
        v = module.v_proj(prompts).view(n, length, -1, head_dim).transpose(1, 2)
        groups = module.num_key_value_groups
        # The score scale and the gate go on the K prompt keys / values, not on the (B, H, T, K)
        # scores and probabilities: (g P) V = P (g V), a few hundred values instead of B*H*T*K.
        gate = adapter.gate_values().to(query.dtype)[:, None, None]
        return repeat_kv(k * scaling, groups), gate * repeat_kv(v, groups)

    # Constant during a generation (same prompts, gates and images): computed once per decode.
    prompt_k, prompt_v = adapter.memo("prompt_kv", prompt_keys_values)
    # Scores as (B, H, K, Q), normalised over dim -2: over a short last dim (K = 10) PyTorch's
    # CPU softmax takes a slow path, 13x the time of the same softmax over an inner dim.
    scores = torch.matmul(prompt_k, query.transpose(2, 3))
    probs = torch.softmax(scores.float(), dim=-2).to(query.dtype)
    prompt_out = torch.matmul(probs.transpose(2, 3), prompt_v).transpose(1, 2)  # (B, Q, H, d), as `out`
    return out + prompt_out, None


def inject(model: nn.Module, config: LlamaAdapterConfig) -> Injection:
    """An `AdaptionPrompt` on the attention of the top `config.layers` layers of `model.llm`;
    with a `model.vision`, the projection of its [CLS] features (`model.visual_bias`)."""
    llm, vision = model.llm, model.vision
    names = match_modules(llm, ATTENTION_MODULES, top_layers(llm, config.layers))
    use_attention_function(llm, ATTENTION_FUNCTION, llama_adapter_attention)
    modules: list[nn.Module] = []
    for name in names:
        attention = llm.get_submodule(name)
        ref = attention.q_proj.weight
        prompt = AdaptionPrompt(config.prompt_length, llm.config.hidden_size, llm.config.num_attention_heads,
                                config.prompt_init_std, config.gate)
        attention.adaption_prompt = prompt.to(ref.device) if ref.device.type != "meta" else prompt
        modules.append(attention.adaption_prompt)
    if vision is not None:
        bias = VisualPromptBias(vision.width, vision.num_feature_tokens, llm.config.hidden_size)
        modules.append(attach(model, "visual_bias", bias))
    return Injection(prefixed("llm", names), modules)
