"""LLaMA-Excitor (Zou et al., CVPR 2024): learnable prompts that reshape attention scores.

Per adapted layer l, with T the layer's normed attention input (what W_q/W_k/W_v read):

    S_exc     = W_q^exc(T) P^T / sqrt(C)                  W_q^exc: C -> r -> C (low rank)
    Key_extra = softmax_K(S_exc) P                        (M x C), one row per token
    S_extra   = Q Key_extra^T / sqrt(d_head)              per head, same shape as S
    attention = softmax(S + g * S_extra + mask) V         ONE softmax; V untouched

Multimodal (Eqs. 8-9): keys [P; W_k^exc(I)] and values [P; W_v^exc(I)] over the image
tokens I (low-rank D -> r -> C maps per layer), masked for samples without an image.

Seams (no forward is rebound):
* Key_extra depends on token j alone, so it is computed where T is at hand, next to K:
  `ExcitorProjection` wraps the frozen k_proj and returns one key per query head,
  K + g Key_extra (Q K^T + g Q Key_extra^T = Q (K + g Key_extra)^T per head). The backbone
  then applies RoPE to it with the token's position (option B of the spec; RoPE is linear)
  and the KV cache stores it. With `rope_on_key_extra=False` the wrapper sits on v_proj
  instead, whose outputs are never rotated (option A, LLaMA-Adapter's convention), and
  appends Key_extra as extra heads that `excitor_attention` mixes into the keys after RoPE.
* `excitor_attention` (registered in transformers' AttentionInterface) calls the backbone's
  own attention function with those keys: one softmax, values untouched, and with g = 0
  the keys and outputs are exactly the backbone's.
The parameters of layer l live in `self_attn.{k,v}_proj.excitor` of that layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv

from lavin_lightning.adapters.core import (
    AdapterModule,
    Injection,
    base_attention,
    match_modules,
    prefixed,
    replace_module,
    top_layers,
    use_attention_function,
)
from lavin_lightning.errors import ConfigError

ATTENTION_FUNCTION = "lavin_lightning_excitor"
ATTENTION_MODULES = r"model\.layers\.(\d+)\.self_attn"


@dataclass
class ExcitorConfig:
    """LLaMA-Excitor settings. The paper leaves these open; the defaults follow the spec's
    recommendations (docs/faithfulness.md gives the reasons).

    Args:
        layers: number of topmost layers with an Excitor block (paper: 30 of 32); None = all.
        prompt_length: prompts per layer K (paper's literal "L = 30"; LLaMA-Adapter uses 10).
        rank: rank r of the low-rank Excitor query W_q^exc (and of the visual maps).
        gate_init_std: std of the gate's normal init; the paper's "N(0, 1e-2)" read as
            variance 1e-2 -> std 0.1 (0.01 is the other reading).
        gate_per_head: one gate per attention head (True) or one per layer.
        extra_scale: scaling of S_extra: "head_dim" (1/sqrt(d_head), the scale of S) or
            "hidden" (1/sqrt(C), the paper's notation).
        rope_on_key_extra: rotate Key_extra with its token's position (option B) or not
            (option A, as LLaMA-Adapter treats prompts).
        excitor_heads: heads of the Excitor softmax over prompts; 1 = single head over C
            with 1/sqrt(C) as in Eq. 6.
        prompt_init_std: std of the prompts' normal init (nn.Embedding's default, 1).
    """

    layers: int | None = 30
    prompt_length: int = 30
    rank: int = 16
    gate_init_std: float = 0.1
    gate_per_head: bool = True
    extra_scale: str = "head_dim"
    rope_on_key_extra: bool = True
    excitor_heads: int = 1
    prompt_init_std: float = 1.0

    def __post_init__(self):
        if self.extra_scale not in ("head_dim", "hidden"):
            raise ConfigError(f"ExcitorConfig.extra_scale must be 'head_dim' or 'hidden', got {self.extra_scale!r}")
        if min(self.layers or 1, self.prompt_length, self.rank, self.excitor_heads) < 1:
            raise ConfigError(f"ExcitorConfig sizes must be >= 1, got {self}")


class LowRank(nn.Module):
    """x -> up(down(x)), no bias; `up` starts at zero (LoRA-style)."""

    def __init__(self, in_features: int, rank: int, out_features: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        if self.up.weight.device.type != "meta":
            nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class ExcitorBlock(AdapterModule):
    """One layer's prompts, low-rank Excitor query, gate and (multimodal) visual maps."""

    def __init__(self, config: ExcitorConfig, width: int, num_heads: int, visual_width: int | None = None):
        super().__init__()
        if width % config.excitor_heads:
            raise ConfigError(f"excitor_heads {config.excitor_heads} does not divide the width {width}")
        self.prompt = nn.Parameter(torch.empty(config.prompt_length, width))
        self.query = LowRank(width, config.rank, width)
        self.gate = nn.Parameter(torch.empty(num_heads if config.gate_per_head else 1))
        if visual_width is not None:
            self.visual_key = LowRank(visual_width, config.rank, width)
            self.visual_value = LowRank(visual_width, config.rank, width)
        if self.prompt.device.type != "meta":
            nn.init.normal_(self.prompt, std=config.prompt_init_std)
            nn.init.normal_(self.gate, std=config.gate_init_std)
        self.heads = config.excitor_heads
        # Per batch (multimodal): image tokens (B, V, D) and which samples have an image, held
        # by `image_tokens` for one forward or one generation (see there why).
        self.visual: tuple[torch.Tensor, torch.Tensor] | None = None

    def _keys_values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Excitor keys and values (1 or B, K[+V], C) and an additive mask for the visual rows."""
        prompt = self.prompt[None]
        if self.visual is None or not hasattr(self, "visual_key"):
            return prompt, prompt, None
        tokens, has_image = self.visual
        tokens = tokens.to(self.prompt.dtype)
        batch = tokens.shape[0]
        keys = torch.cat([prompt.expand(batch, -1, -1), self.visual_key(tokens)], dim=1)
        values = torch.cat([prompt.expand(batch, -1, -1), self.visual_value(tokens)], dim=1)
        blocked = torch.zeros(batch, keys.shape[1], dtype=keys.dtype, device=keys.device)
        blocked[~has_image, prompt.shape[1]:] = torch.finfo(keys.dtype).min  # text-only: prompts only
        return keys, values, blocked

    def _score_map(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The map (n, h, r, K[+V]) from the low-rank code down(T) to the Excitor scores, the
        values (n, h, K[+V], c) and the visual mask: S_exc = up(down(T)) P^T / sqrt(c) =
        down(T) (up^T P^T / sqrt(c)); the r x K product replaces a C-wide query per token."""
        keys, values, blocked = self._keys_values()
        head = keys.shape[-1] // self.heads
        up = self.query.up.weight.view(self.heads, head, -1)  # (h, c, r)
        keys = keys.view(keys.shape[0], -1, self.heads, head)  # (n, K, h, c)
        score_map = torch.einsum("hcr,nkhc->nhrk", up, keys) / math.sqrt(head)
        values = values.view(values.shape[0], -1, self.heads, head).transpose(1, 2)  # (n, h, K, c)
        return score_map, values, blocked

    def key_extra(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C): Key_extra of every token of `tokens` (the normed layer input)."""
        tokens = tokens.to(self.prompt.dtype)
        batch, length, width = tokens.shape
        # Constant during a generation: computed once per decode (the visual keys/values too).
        score_map, values, blocked = self.memo("score_map", self._score_map)
        scores = torch.matmul(self.query.down(tokens)[:, None], score_map)  # (B, h, T, K)
        if blocked is not None:
            scores = scores + blocked[:, None, None, :]
        extra = torch.matmul(torch.softmax(scores, dim=-1), values)  # (B, h, T, c)
        return extra.transpose(1, 2).reshape(batch, length, width)

    def decoding_key_shift(self, tokens: torch.Tensor, column_gate: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """(B, T, C): g * Key_extra (each query head's C/H columns times its gate) during a
        generation of a block with one Excitor head; None elsewhere (`key_extra`).

        A decoding step is a handful of one-token products, which cost their dispatch more than
        their arithmetic: with the gate and down() folded into per-generation constants it is
        two products and a softmax (the same values up to float rounding)."""
        if self._memo is None or self.heads != 1:
            return None
        token_map, gated_values, blocked = self.memo("decoding_map", lambda: self._decoding_map(column_gate()))
        scores = tokens.to(self.prompt.dtype) @ token_map  # (B, T, K[+V])
        if blocked is not None:
            scores = scores + blocked[:, None, :]
        return torch.softmax(scores, dim=-1) @ gated_values

    def _decoding_map(self, column_gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The map ([n,] C, K[+V]) from a token to its Excitor scores, down() folded in, the values
        ([n,] K[+V], C) times the gate of each column, and the visual mask (n = 1 is dropped)."""
        score_map, values, blocked = self._score_map()
        score_map, values = score_map[:, 0], values[:, 0]  # (n, r, K'), (n, K', C)
        if score_map.shape[0] == 1:  # one map for every sample: plain 2-D products
            score_map, values = score_map[0], values[0]
        return self.query.down.weight.t() @ score_map, values * column_gate, blocked


class ExcitorProjection(nn.Module):
    """A frozen k_proj (or v_proj) that carries Key_extra.

    On k_proj (`shifts_keys`), it returns one key per query head, K + g Key_extra: the
    gate is per head and RoPE linear, so after rotation Q (K + g Key_extra)^T = S + g S_extra
    as before, while RoPE, the cache and attention handle H heads instead of K's heads plus H
    extra ones (and attention needs no concatenation, repeat or add). On v_proj it appends
    Key_extra as extra heads for `excitor_attention` (un-rotated, it mixes in after RoPE)."""

    def __init__(self, base_layer: nn.Linear, excitor: ExcitorBlock, query_heads: int, ratio: float = 1.0,
                 shifts_keys: bool = True):
        super().__init__()
        self.base_layer = base_layer
        self.excitor = excitor
        self.query_heads = query_heads
        self.ratio = ratio  # scale of the extra scores over the attention's own (extra_scale)
        self.shifts_keys = shifts_keys  # on k_proj; else on v_proj, appending Key_extra (option A)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(hidden_states, *args, **kwargs)
        if not self.excitor.active:
            return out
        if not self.shifts_keys:
            return torch.cat([out, self.excitor.key_extra(hidden_states).to(out.dtype)], dim=-1)
        heads = self.query_heads
        head_dim = hidden_states.shape[-1] // heads
        kv_heads = out.shape[-1] // head_dim
        groups = heads // kv_heads
        # Key head j serves query heads j*groups .. (j+1)*groups-1 (repeat_kv's order).
        key_heads = out.unflatten(-1, (kv_heads, 1, head_dim))
        shift = self.excitor.decoding_key_shift(
            hidden_states, lambda: self.head_gates(self.excitor.gate.dtype).repeat_interleave(head_dim))
        if shift is not None:
            return (key_heads + shift.to(out.dtype).unflatten(-1, (kv_heads, groups, head_dim))).flatten(-3)
        extra = self.excitor.key_extra(hidden_states).to(out.dtype)
        gate = self.head_gates(out.dtype).view(kv_heads, groups, 1)
        return torch.addcmul(key_heads, gate, extra.unflatten(-1, (kv_heads, groups, head_dim))).flatten(-3)

    def head_gates(self, dtype: torch.dtype) -> torch.Tensor:
        """(H,): each query head's gate times the scale of the extra scores, in `dtype`."""
        return (self.excitor.gate.to(dtype) * self.ratio).expand(self.query_heads)


class _KeysPerQueryHead:
    """An attention module as the backbone's attention function should see it once keys and
    values are already expanded to one per query head (no further GQA repeat)."""

    num_key_value_groups = 1

    def __init__(self, module: nn.Module):
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def excitor_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """softmax(S + g * S_extra + mask) V through the backbone's own attention function.

    Per head, S + g * S_extra = Q (K + g * Key_extra)^T * scale: the extra scores fold into a
    shifted key, so the backbone's kernel runs unchanged (no score-sized bias, no slower
    masked-gradient path) and with g = 0 the keys, hence the outputs, are exactly the
    backbone's. Rotated (k_proj), the keys arrive shifted, one per query head; un-rotated
    (v_proj), Key_extra arrives as extra value heads and is mixed in here.
    """
    attend = base_attention(module)
    n_kv = module.config.num_key_value_heads
    if key.shape[1] > n_kv:  # keys already shifted, one per query head
        value = repeat_kv(value, module.num_key_value_groups)
        return attend(_KeysPerQueryHead(module), query, key, value, attention_mask, scaling=scaling,
                      dropout=dropout, **kwargs)
    if value.shape[1] == n_kv:  # a layer without Excitor, adapters disabled, or no GQA (keys shifted)
        return attend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    value, key_extra = value[:, :n_kv], value[:, n_kv:]
    shift = module.v_proj.head_gates(query.dtype)[None, :, None, None]
    groups = module.num_key_value_groups
    key = repeat_kv(key, groups) + shift * key_extra  # (B, H, K, d): one key per query head
    value = repeat_kv(value, groups)
    return attend(_KeysPerQueryHead(module), query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                  **kwargs)


@contextmanager
def image_tokens(model: nn.Module, tokens: torch.Tensor, has_image: torch.Tensor) -> Iterator[None]:
    """Every Excitor block of `model` reads these image tokens while the block is open.

    Key_extra is computed inside the k_proj (or v_proj) wrapper, which the backbone calls
    with the hidden states alone: unlike attention functions, which receive the model's
    keyword arguments, it has no path for per-batch inputs, so the tokens are held here
    for exactly the forward (or generation) they belong to.
    """
    blocks = [m for m in model.modules() if isinstance(m, ExcitorBlock)]
    for block in blocks:
        block.visual = (tokens, has_image)
    try:
        yield
    finally:
        for block in blocks:
            block.visual = None


def inject(model: nn.Module, config: ExcitorConfig) -> Injection:
    """An Excitor block in the attention of the top `config.layers` layers of `model.llm`; with
    a `model.vision`, its tokens become extra Excitor keys/values (multimodal, Eqs. 8-9)."""
    llm, vision = model.llm, model.vision
    names = match_modules(llm, ATTENTION_MODULES, top_layers(llm, config.layers))
    lm_config = llm.config
    head_dim = getattr(lm_config, "head_dim", None) or lm_config.hidden_size // lm_config.num_attention_heads
    if lm_config.hidden_size != lm_config.num_attention_heads * head_dim:
        raise ConfigError("Excitor splits Key_extra (width C) into the query heads: needs C = heads x head_dim")
    use_attention_function(llm, ATTENTION_FUNCTION, excitor_attention)
    carrier = "k_proj" if config.rope_on_key_extra else "v_proj"
    visual_width = vision.token_width if vision is not None else None
    blocks = []
    for name in names:
        attention = llm.get_submodule(name)
        base = getattr(attention, carrier)
        block = ExcitorBlock(config, lm_config.hidden_size, lm_config.num_attention_heads, visual_width)
        if base.weight.device.type != "meta":
            block.to(base.weight.device)
        scaling = getattr(attention, "scaling", head_dim ** -0.5)
        ratio = 1.0 if config.extra_scale == "head_dim" else lm_config.hidden_size ** -0.5 / scaling
        wrapper = ExcitorProjection(base, block, lm_config.num_attention_heads, ratio, config.rope_on_key_extra)
        replace_module(attention, carrier, wrapper)
        blocks.append(block)
    return Injection(prefixed("llm", [f"{name}.{carrier}" for name in names]), blocks)
