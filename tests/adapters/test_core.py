"""The injection core: seams pass upstream arguments through; shared modules are named once, on the model."""

from __future__ import annotations

import torch
from torch import nn

from lavin_lightning.adapters.core import (
    AdapterModule,
    LinearWithDelta,
    NormThenAdapter,
    adapter_parameters,
    adapters_disabled,
    attach,
)


class Scaled(AdapterModule):
    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((width,), 2.0))

    def forward(self, x, base_out=None):
        return x * self.scale if base_out is None else base_out * self.scale


class NormWithOption(nn.Module):
    """A norm whose upstream forward grew an argument the seam does not know about."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x, shift: float = 0.0):
        return x * self.weight + shift


def test_seams_hand_unknown_arguments_to_the_wrapped_module():
    seam = NormThenAdapter(NormWithOption(3), Scaled(3))
    x = torch.ones(2, 3)
    assert torch.equal(seam(x, shift=1.0), torch.full((2, 3), 4.0))  # (x + 1) * 2
    with adapters_disabled(seam):
        assert torch.equal(seam(x, shift=1.0), torch.full((2, 3), 2.0))
    linear = LinearWithDelta(nn.Linear(3, 3, bias=False), Scaled(3))
    assert torch.equal(linear(x), linear.base_layer(x) * 2)


def test_a_shared_module_is_named_once_where_it_is_attached():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    shared = Scaled(3)
    model.backbone[0].delta = shared  # registered inside the backbone first ...
    model.backbone[1].delta = shared
    attach(model, "shared", shared)  # ... and attached to the model, ahead of it
    assert list(model._modules) == ["shared", "backbone"]
    assert list(adapter_parameters(model)) == ["shared.scale"]
    assert list(dict(model.named_parameters())).count("shared.scale") == 1
