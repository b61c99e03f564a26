"""LoRA (Hu et al., 2022) through the `peft` library, injected into the unmodified backbone.

`peft.inject_adapter_in_model` replaces the targeted nn.Linear layers by peft's LoRA
layers in place (the model stays a plain transformers model); the trainable set is what
those layers declare as their adapter layers (see `adapters.core.adapter_parameters`).
On a causal LM (`model.llm`) LoRA adapts the named projections of the decoder layers; on
an InstructBLIP (`model.backbone`) those of every Q-Former attention, self and cross (a
PETAL baseline).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
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
        target_modules: names of the linear layers to adapt in every decoder layer
            (LLaMA: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
        layers: adapt only the topmost N decoder layers; None = all.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: int | None = None

    def __post_init__(self):
        if self.rank < 1 or not self.target_modules:
            raise ConfigError(f"LoRAConfig needs rank >= 1 and at least one target module, got {self}")


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
