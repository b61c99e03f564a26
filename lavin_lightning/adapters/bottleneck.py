"""The bottleneck adapter that PETAL's tables call "LLaMA-Adapter (R=128)".

In the PETAL release this baseline is a UniAdapter-style bottleneck on the Q-Former, not
zero-init attention: per layer one adapter LN -> down (768 -> R) -> ReLU -> up (R -> 768,
zero) -> x scale (0.1) + residual, applied to the self-attention block's output (all tokens)
and, in cross-attention layers, applied again (the same adapter) to the query tokens entering
cross-attention. The release's module also declares a second LayerNorm and two more
up-projections that its forward never uses; they are left out here (see docs/faithfulness.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lavin_lightning.adapters.core import AdapterModule, Injection, match_modules, prefixed, replace_module
from lavin_lightning.errors import ConfigError


@dataclass
class BottleneckConfig:
    """Args:
        bottleneck: R, the adapter's middle width (128 in PETAL's tables).
        scale: the fixed factor on the adapter's output (0.1, the release).
        cross_attention_input: also adapt the queries entering cross-attention (the release).
    """

    bottleneck: int = 128
    scale: float = 0.1
    cross_attention_input: bool = True

    def __post_init__(self):
        if self.bottleneck < 1:
            raise ConfigError(f"BottleneckConfig.bottleneck must be >= 1, got {self.bottleneck}")


class BottleneckAdapter(AdapterModule):
    """x + scale * up(relu(down(LN(x)))), up zero-initialised (identity at init)."""

    def __init__(self, width: int, config: BottleneckConfig):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, config.bottleneck)
        self.up = nn.Linear(config.bottleneck, width)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.up.weight.dtype
        return x + (self.scale * self.up(torch.relu(self.down(self.norm(x.to(dtype)))))).to(x.dtype)


class OutputThenAdapter(nn.Module):
    """`adapter(module(...))`: the wrapped block's output goes through the adapter."""

    def __init__(self, module: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        return self.adapter(out) if self.adapter.active else out


class AdapterThenModule(nn.Module):
    """`module(adapter(x), ...)`: the adapter is the layer's own (also registered after its
    self-attention), applied again to the queries entering cross-attention."""

    def __init__(self, module: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, hidden_states, *args, **kwargs):
        adapter = self.adapter
        return self.module(adapter(hidden_states) if adapter.active else hidden_states, *args, **kwargs)


def inject(model: nn.Module, config: BottleneckConfig) -> Injection:
    """One adapter per layer of the Q-Former of `model.backbone` (an InstructBLIP)."""
    qformer = model.backbone.qformer
    attention = match_modules(qformer, r"encoder\.layer\.(\d+)\.attention")
    for name in attention:
        if isinstance(qformer.get_submodule(name), OutputThenAdapter):
            raise ConfigError(f"{name} already carries an adapter; inject once per model")
    width = qformer.config.hidden_size
    adapters, targets = [], []
    for name in attention:
        layer_name = name.rsplit(".", 1)[0]
        layer = qformer.get_submodule(layer_name)
        adapter = BottleneckAdapter(width, config)
        replace_module(qformer, name, OutputThenAdapter(layer.attention, adapter))
        targets.append(name)
        if config.cross_attention_input and layer.has_cross_attention:
            layer.crossattention = AdapterThenModule(layer.crossattention, adapter)
            targets.append(f"{layer_name}.crossattention")
        adapters.append(adapter)
    return Injection(prefixed("backbone.qformer", targets), adapters)
