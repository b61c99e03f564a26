"""The injection core shared by every method.

* Every adapters file exposes `inject(model, config) -> Injection`: it validates every
  target first, then mutates the backbone(s) inside `model` (registering any module of its
  own that lives outside them on `model` itself) and returns what it targeted and what it
  owns. The targeted names are recorded in the adapter export.
* `AdapterModule` marks a module whose parameters are all trainable. The trainable set
  is found structurally (by type), never by matching parameter names, and the same set
  drives `requires_grad`, the optimizer's parameter groups and the checkpoint. A module
  shared by several seams is registered in each (normally, so that `.to()`, `.modules()`
  and distributed wrappers all see it); PyTorch names it by its first path, which `attach`
  makes the model-level one.
* `match_modules` resolves targets by a regular expression over module names plus an
  optional layer filter and raises, before anything is changed, when a target matches
  nothing or fewer layers than asked.
* `NormThenAdapter` is the seam for adapters that act on a norm's output (LaVIN):
  the backbone's own forward calls it in place of the norm, so nothing is rebound.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from lavin_lightning.errors import ConfigError


@dataclass
class Injection:
    """What `inject(model, config)` did.

    Attributes:
        targets: the backbone modules it wrapped or attached to, by name within `model`.
        modules: the modules it created and owns (their parameters are the trainable set).
        trained: backbone modules or parameters trained as a whole (full / head tuning).
    """

    targets: list[str]
    modules: list[nn.Module]
    trained: list[nn.Module | nn.Parameter] = field(default_factory=list)


def attach(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Register `module` as `model.<name>`, ahead of the backbones: a module that seams inside
    the backbones share is then named (and saved) here, by PyTorch's first-path rule."""
    setattr(model, name, module)
    children = model._modules
    children.update([(key, children.pop(key)) for key in list(children) if key != name])  # `name` first
    return module


def prefixed(prefix: str, names: Sequence[str]) -> list[str]:
    """`names` within a submodule, as names within its parent (`prefix.name`)."""
    return [f"{prefix}.{name}" for name in names]


class AdapterModule(nn.Module):
    """Base class of every injected or added module whose parameters are trained.

    `active` False makes the seam that calls the module behave as the frozen backbone
    (`adapters_disabled`). `memo` keeps values that stay constant during one generation
    (e.g. prompt keys) when a `decoding_cache` is open, and recomputes them otherwise.
    """

    active: bool = True
    _memo: dict | None = None

    def memo(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self._memo is None:
            return compute()
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class FoldedLayer(nn.Module):
    """A frozen layer into whose weights adapters were folded for inference (LaVIN's
    re-parameterisation); `active` False (`adapters_disabled`) runs the layer as it was."""

    active: bool = True


def _adapter_modules(model: nn.Module) -> list[AdapterModule]:
    return [m for m in model.modules() if isinstance(m, AdapterModule)]


@contextmanager
def decoding_cache(model: nn.Module) -> Iterator[None]:
    """Adapters keep per-generation constants (`AdapterModule.memo`) until the block exits."""
    modules = _adapter_modules(model)
    for module in modules:
        module._memo = {}
    try:
        yield
    finally:
        for module in modules:
            module._memo = None


def peft_layers(model: nn.Module) -> list[nn.Module]:
    # peft's own tuner layers (LoRA, ...); checked by module path so that models without
    # peft layers never import peft.
    layers = [m for m in model.modules() if type(m).__module__.startswith("peft.")]
    if not layers:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in layers if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run `model` as its frozen backbone: every adapter seam passes through."""
    if any(getattr(m, "lora_merged", False) for m in model.modules()):
        raise ConfigError("LoRA's updates are merged into the frozen weights (inference): disable the adapters "
                          "before entering inference, not inside it")
    modules = [m for m in model.modules() if isinstance(m, (AdapterModule, FoldedLayer))]
    lora_layers = peft_layers(model)
    for module in modules:
        module.active = False
    for layer in lora_layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for module in modules:
            module.active = True
        for layer in lora_layers:
            layer.enable_adapters(True)


class NormThenAdapter(nn.Module):
    """`adapter(norm(x))`; the original norm stays as `.norm`, frozen and untouched.

    The adapter runs in its own dtype (fp32 trainable parameters next to a half-precision
    backbone, as in the LaVIN release) and hands back the backbone's dtype.
    """

    def __init__(self, norm: nn.Module, adapter: AdapterModule):
        super().__init__()
        self.norm = norm
        self.adapter = adapter

    @property
    def weight(self) -> torch.Tensor:  # backbones that read their norm's `.weight` (dtype) still work
        return self.norm.weight

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        normed = self.norm(hidden_states, *args, **kwargs)
        if not self.adapter.active:
            return normed
        dtype = next(self.adapter.parameters()).dtype
        return self.adapter(normed.to(dtype)).to(normed.dtype)


class LinearWithDelta(nn.Module):
    """`delta(x, base_layer(x))`: the seam of adapters that add to (or rescale) a frozen
    nn.Linear's output (PETAL's mode-approximation deltas). The original layer stays as
    `.base_layer`, frozen and untouched; the delta runs in its own dtype."""

    def __init__(self, base_layer: nn.Linear, delta: AdapterModule):
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` of the wrapped layer still works
        return self.base_layer.weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if not self.delta.active:
            return out
        dtype = next(self.delta.parameters()).dtype
        return self.delta(x.to(dtype), out.to(dtype)).to(out.dtype)


def wrap_linears(model: nn.Module, names: Sequence[str],
                 make_delta: Callable[[str, nn.Linear], AdapterModule]) -> list[AdapterModule]:
    """Wrap every named nn.Linear as `LinearWithDelta(linear, make_delta(name, linear))`; return the deltas.

    Validates all targets before changing anything, so a failure leaves `model` as it was."""
    linears = []
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            kind = "already carries an adapter" if isinstance(module, LinearWithDelta) else "is not an nn.Linear"
            raise ConfigError(f"{name} {kind} ({type(module).__name__}); inject once per model, on linear layers")
        linears.append((name, module))
    deltas = []
    for name, module in linears:
        delta = make_delta(name, module)
        if module.weight.device.type != "meta":
            delta.to(module.weight.device)
        replace_module(model, name, LinearWithDelta(module, delta))
        deltas.append(delta)
    return deltas


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


def top_layers(llm: nn.Module, count: int | None) -> list[int]:
    """Indices of the topmost `count` decoder layers of a transformers LM (None: all of them)."""
    total = llm.config.num_hidden_layers
    if count is None:
        return list(range(total))
    if not 1 <= count <= total:
        raise ConfigError(f"asked for adapters in the top {count} layers but the model has {total}")
    return list(range(total - count, total))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def unwrapped_norms(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The named norms; ConfigError if one of them already carries an adapter."""
    norms = [model.get_submodule(name) for name in names]
    for name, module in zip(names, norms):
        if isinstance(module, NormThenAdapter):
            raise ConfigError(f"{name} already carries an adapter; inject once per model")
    return norms


def wrap_norms(
    model: nn.Module, names: Sequence[str], make_adapter: Callable[[int], AdapterModule]
) -> list[AdapterModule]:
    """Wrap every named norm as `NormThenAdapter(norm, make_adapter(width))`; return the adapters.

    Validates all targets before changing anything, so a failure leaves `model` as it was.
    """
    norms = [(name, module, norm_width(module)) for name, module in zip(names, unwrapped_norms(model, names))]
    adapters = []
    for name, module, width in norms:
        adapter = make_adapter(width)
        ref = next(module.parameters(), None)
        if ref is not None and ref.device.type != "meta":
            adapter.to(ref.device)
        replace_module(model, name, NormThenAdapter(module, adapter))
        adapters.append(adapter)
    return adapters


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """All parameters owned by `AdapterModule`s and by the adapter layers that peft tuner
    layers declare (`adapter_layer_names`), by name (a shared one once, by its first path)."""
    owned: set[int] = set()
    for layer in peft_layers(model):
        for attr in layer.adapter_layer_names:
            owned.update(id(p) for p in getattr(layer, attr).parameters())
    for module in _adapter_modules(model):
        owned.update(id(p) for p in module.parameters())
    return {name: param for name, param in model.named_parameters() if id(param) in owned}


def use_attention_function(llm: nn.Module, name: str, function: Callable) -> str:
    """Route every attention call of a transformers model through `function`.

    Registered under `name` in transformers' AttentionInterface (at injection, not at
    import). The implementation the model used before stays in the model's config as
    `base_attn_implementation`; `function` calls it (`base_attention`) for the unmodified
    part of attention, so an adapter with a zero gate reproduces the backbone exactly."""
    from transformers import AttentionInterface

    base = llm.config._attn_implementation or "eager"
    if base == name:
        raise ConfigError(f"attention function {name!r} is already in use: inject once per model")
    if "flash" in base:
        raise ConfigError(f"{name} adds scores or outputs to attention, which {base!r} cannot take; "
                          "load the model with attn_implementation 'sdpa' or 'eager'")
    AttentionInterface.register(name, function)
    llm.config.base_attn_implementation = base
    llm.config._attn_implementation = name
    return base


def base_attention(module: nn.Module) -> Callable:
    """The backbone's own attention function for an attention module (see above)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    name = getattr(module.config, "base_attn_implementation", "eager")
    return eager_attention_forward if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]


def mark_only_adapters_trainable(
    model: nn.Module, trained: Sequence[nn.Module | nn.Parameter] = ()
) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze exactly the adapter parameters and the `trained`
    backbone parts (full / head tuning); return them by name."""
    model.requires_grad_(False)
    params = adapter_parameters(model)
    whole = {id(p) for part in trained for p in ([part] if isinstance(part, nn.Parameter) else part.parameters())}
    params.update((name, p) for name, p in model.named_parameters() if id(p) in whole)
    for param in params.values():
        param.requires_grad_(True)
    return params
