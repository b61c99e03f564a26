"""The injection core shared by every method.

* `AdapterModule` marks a module whose parameters are all trainable. The trainable set
  is found structurally (by type), never by matching parameter names, and the same set
  drives `requires_grad`, the optimizer's parameter groups and the checkpoint.
* `match_modules` resolves targets by a regular expression over module names plus an
  optional layer filter and raises, before anything is changed, when a target matches
  nothing or fewer layers than asked.
* `NormThenAdapter` is the seam for adapters that act on a norm's output (LaVIN):
  the backbone's own forward calls it in place of the norm, so nothing is rebound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lavin_lightning.errors import ConfigError


class AdapterModule(nn.Module):
    """Base class of every injected or added module whose parameters are trained."""


class NormThenAdapter(nn.Module):
    """`adapter(norm(x))`; the original norm stays as `.norm`, frozen and untouched.

    The adapter runs in its own dtype (fp32 trainable parameters next to a half-precision
    backbone, as in the LaVIN release) and hands back the backbone's dtype.
    """

    def __init__(self, norm: nn.Module, adapter: AdapterModule):
        super().__init__()
        self.norm = norm
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.norm(hidden_states)
        dtype = next(self.adapter.parameters()).dtype
        return self.adapter(normed.to(dtype)).to(normed.dtype)


def norm_width(norm: nn.Module) -> int:
    """Feature width of a LayerNorm / RMSNorm, read from the module itself."""
    shape = getattr(norm, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1] if isinstance(shape, (tuple, list)) else shape)
    weight = getattr(norm, "weight", None)
    if weight is None or weight.dim() != 1:
        raise ConfigError(f"cannot read the width of {type(norm).__name__}: no normalized_shape or 1-D weight")
    return int(weight.shape[0])


def match_modules(model: nn.Module, pattern: str, layers: Sequence[int] | None = None) -> list[str]:
    """Names of the modules whose full name matches `pattern` (regex, `fullmatch`).

    The pattern's first group, when it has one, is the layer index that `layers`
    filters on. Raises when nothing matches or a requested layer is absent.
    """
    regex = re.compile(pattern)
    names = [name for name, _ in model.named_modules() if name and regex.fullmatch(name)]
    if not names:
        sample = [n for n, _ in model.named_modules() if n][:6]
        raise ConfigError(
            f"adapter target {pattern!r} matches no module of {type(model).__name__}; "
            f"module names look like {sample}"
        )
    if layers is None:
        return names
    if regex.groups < 1:
        raise ConfigError(f"target {pattern!r} has no (layer) group, so `layers` cannot filter it")
    by_layer = {int(regex.fullmatch(n).group(1)): n for n in names}
    missing = sorted(set(layers) - set(by_layer))
    if missing:
        raise ConfigError(
            f"adapter target {pattern!r} asks for layers {missing} but the model has layers "
            f"{min(by_layer)}..{max(by_layer)}"
        )
    return [by_layer[i] for i in layers]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap_norms(
    model: nn.Module, names: Sequence[str], make_adapter: Callable[[int], AdapterModule]
) -> list[str]:
    """Wrap every named norm as `NormThenAdapter(norm, make_adapter(width))`.

    Validates all targets before changing anything, so a failure leaves `model` as it was.
    """
    norms = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, NormThenAdapter):
            raise ConfigError(f"{name} already carries an adapter; inject once per model")
        norms.append((name, module, norm_width(module)))
    for name, module, width in norms:
        adapter = make_adapter(width)
        ref = next(module.parameters(), None)
        if ref is not None and ref.device.type != "meta":
            adapter.to(ref.device)
        replace_module(model, name, NormThenAdapter(module, adapter))
    return list(names)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """All parameters owned by `AdapterModule`s, by full name (outermost module wins)."""
    params: dict[str, nn.Parameter] = {}
    covered: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, AdapterModule):
            continue
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        covered.append(name)
        for pname, param in module.named_parameters(prefix=name):
            params[pname] = param
    return params


def mark_only_adapters_trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze exactly the adapter parameters; return them."""
    model.requires_grad_(False)
    params = adapter_parameters(model)
    for param in params.values():
        param.requires_grad_(True)
    return params
