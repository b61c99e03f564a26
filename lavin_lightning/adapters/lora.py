"""LoRA (Hu et al., 2022) through the `peft` library, injected into the unmodified backbone.

`peft.inject_adapter_in_model` replaces the targeted nn.Linear layers by peft's LoRA
layers in place (the model stays a plain transformers model); the trainable set is what
those layers declare as their adapter layers (see `adapters.core.adapter_parameters`).
On a causal LM (`model.llm`) LoRA adapts the named projections of the decoder layers; on
an InstructBLIP (`model.backbone`) those of every Q-Former attention, self and cross (a
PETAL baseline).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lavin_lightning.adapters.core import Injection, match_modules, peft_layers, prefixed, replace_module, top_layers
from lavin_lightning.errors import ConfigError


@dataclass
class LoRAConfig:
    """LoRA settings (defaults: the common Alpaca-LoRA recipe on LLaMA).

    Args:
        rank: rank r of each update B A.
        alpha: scaling numerator; the update is scaled by alpha / rank.
        dropout: dropout on the LoRA branch input.
        dropout_sampler: how its masks are drawn on a CPU: "gaps" draws only the dropped
            positions (`SparseDropout`: the same i.i.d. Bernoulli masks from a twentieth of the
            random numbers at p = 0.05), "torch" keeps peft's nn.Dropout (its random stream).
            Other devices always use torch's dropout.
        target_modules: names of the linear layers to adapt in every decoder layer
            (LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
        layers: adapt only the topmost N decoder layers; None = all.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    dropout_sampler: Literal["gaps", "torch"] = "gaps"
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: int | None = None

    def __post_init__(self):
        if self.rank < 1 or not self.target_modules:
            raise ConfigError(f"LoRAConfig needs rank >= 1 and at least one target module, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRAConfig.dropout is a probability in [0, 1), got {self.dropout}")
        if self.dropout_sampler not in ("gaps", "torch"):
            raise ConfigError(f"LoRAConfig.dropout_sampler must be 'gaps' or 'torch', got {self.dropout_sampler!r}")


def dropped_positions(count: int, p: float) -> torch.Tensor:
    """The positions (int64, increasing) that i.i.d. Bernoulli(p) trials over `count` slots drop.

    Between two dropped slots of i.i.d. trials lie Geometric(p) many kept ones, so the gaps are
    drawn instead of the trials: floor(log(1 - u) / log(1 - p)) with u uniform in [0, 1)
    (torch.rand's 53 bits in float64), about p * count random numbers in all."""
    inverse_log_keep = 1.0 / math.log1p(-p)
    chunks, end = [], 0
    while end < count:  # one round but in rare draws (6 standard deviations of margin)
        left = count - end
        draws = int(left * p + 6 * math.sqrt(left * p) + 16)
        gaps = torch.rand(draws, dtype=torch.float64).neg_().log1p_().mul_(inverse_log_keep).floor_()
        positions = gaps.add_(1).cumsum_(0).add_(end - 1)
        chunks.append(positions)
        end = int(positions[-1]) + 1
    if not chunks:  # nothing to drop from
        return torch.empty(0, dtype=torch.int64)
    positions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return positions[: int(torch.searchsorted(positions, float(count)))].long()


class _ZeroPositions(torch.autograd.Function):
    """x / (1 - p) with the given flat positions zeroed; the gradient is masked alike (one pass
    over the tensor in each direction, no mask tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(positions)
        ctx.scale = scale
        return x.reshape(-1).mul(scale).index_fill_(0, positions, 0).view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (positions,) = ctx.saved_tensors
        return grad.reshape(-1).mul(ctx.scale).index_fill_(0, positions, 0).view(grad.shape), None, None


class SparseDropout(nn.Module):
    """Dropout that draws only the dropped positions (`dropped_positions`): the distribution of
    nn.Dropout's masks, not its random stream. On a CPU, nn.Dropout's Bernoulli draw of a C-wide
    mask for every adapted layer costs more than LoRA's own matmuls; a twentieth of the draws
    (p = 0.05) leaves the one pass over the input that any dropout makes. Other devices (no
    per-call host sync wanted) run torch's dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _ZeroPositions.apply(x, dropped_positions(x.numel(), self.p), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def inject(model: nn.Module, config: LoRAConfig) -> Injection:
    """LoRA layers on `config.target_modules`: the decoder layers of `model.llm`, or every
    Q-Former attention of `model.backbone` (InstructBLIP)."""
    if hasattr(model, "llm"):
        root, prefix = model.llm, "llm"
        layers = top_layers(root, config.layers) if config.layers is not None else None
        pattern = r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.{}"
    else:
        if config.layers is not None:
            raise ConfigError("LoRAConfig.layers picks decoder layers of a causal LM; the Q-Former takes all")
        root, prefix, layers = model.backbone.qformer, "backbone.qformer", None
        pattern = r"encoder\.layer\.(\d+)\.(?:attention|crossattention)\.attention\.{}"
    # Validate before changing anything: every target must exist in the chosen layers.
    names = [name for target in config.target_modules for name in match_modules(root, pattern.format(target), layers)]
    from peft import LoraConfig, inject_adapter_in_model

    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=list(config.target_modules), layers_to_transform=layers, bias="none")
    with warnings.catch_warnings():
        # Over torchao weights (llm.quantization) peft warns that merge() would fail: merge_lora refuses first.
        warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
        inject_adapter_in_model(peft_config, root)
    modules = []
    for layer in peft_layers(root):
        if config.dropout and config.dropout_sampler == "gaps":
            for name in list(layer.lora_dropout):
                layer.lora_dropout[name] = SparseDropout(config.dropout)
        for attr in layer.adapter_layer_names:
            modules.append(getattr(layer, attr).float())  # trainable tensors in fp32 beside a half-precision backbone
    return Injection(prefixed(prefix, names), modules)


def check_mergeable(model: nn.Module) -> None:
    """ConfigError naming the first LoRA layer whose frozen weight is quantized (merging would
    round W + BA to the quantization grid, so it is not exact) or sharded (FSDP: each process
    holds a slice of W)."""
    from lavin_lightning.backbones.llama import is_quantized

    layers = {id(layer) for layer in peft_layers(model)}
    for name, layer in model.named_modules():
        if id(layer) not in layers:
            continue
        weight = layer.get_base_layer().weight
        if is_quantized(weight):
            raise ConfigError(f"{name}: its frozen weight is quantized ({type(weight).__name__}, llm.quantization); "
                              "merging LoRA into it would round the update to the quantization grid, so LoRA is not "
                              "merged: it runs unmerged (base layer + B A)")
        if type(weight.data) is not torch.Tensor:
            raise ConfigError(f"{name}: its frozen weight is a {type(weight.data).__name__} (sharded, FSDP): LoRA is "
                              "not merged into it; it runs unmerged (base layer + B A)")


@contextmanager
def merged(model: nn.Module) -> Iterator[int]:
    """Inference with every LoRA update folded into its frozen weight (W + s B A, rounded once
    to W's dtype) and each peft layer replaced by that base nn.Linear while the block is open,
    so the model runs the backbone's own modules and decoding costs what the backbone's costs
    (peft's wrapper stays out of the call path). Layers whose adapters are disabled
    (`adapters_disabled`) are replaced unmerged. On exit every layer is put back with its
    original weight tensor (bit-exact: no W + BA - BA rounding left behind). Refuses quantized
    frozen weights (`check_mergeable`) before changing anything. Yields the number merged."""
    check_mergeable(model)
    layers = {id(layer) for layer in peft_layers(model)}
    swapped: list[tuple[str, nn.Module, torch.Tensor | None]] = []  # (name, peft layer, its original weight)
    try:
        for name, layer in [(n, m) for n, m in model.named_modules() if id(m) in layers]:
            base = layer.get_base_layer()
            original = None
            if not layer.disable_adapters and not layer.merged:  # (merged by peft itself: W holds it already)
                original = base.weight.data
                delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
                base.weight.data = (original.float() + delta).to(original.dtype)
            base.lora_merged = True  # seen by adapters_disabled, which cannot take a merged update back out
            replace_module(model, name, base)
            swapped.append((name, layer, original))
        yield sum(original is not None for _, _, original in swapped)
    finally:
        for name, layer, original in reversed(swapped):
            base = layer.get_base_layer()
            del base.lora_merged
            if original is not None:
                base.weight.data = original
            replace_module(model, name, layer)
