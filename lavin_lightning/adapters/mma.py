"""Mixture-of-Modality Adaptation (LaVIN, NeurIPS 2023): the trainable modules.

MM-Adapter (paper eq. 2-3, release `RepAdapter_Router`), for block input Z and routing
input r:

    a  = dropout(A(Z))                       A: c -> h, shared by both experts
    w  = softmax((W_m r + b_m) / tau)        W_m: c -> 2
    Z' = Z + s * (w_0 * B1(a) + w_1 * B2(a)) B1, B2: h -> c, grouped (groups=2), zero-init

so each adapter is the identity at initialisation and has 20c + 10 parameters (h=8).
In the LLM, r is the normalised hidden state of the modality token (row 0), one routing
decision per sample; in the ViT every token routes on its own features.

`inject` puts an MM-Adapter after the norm before attention (and, with llm_placement
"block", before the FFN) of every LLM block, one before attention in every ViT block, and
gives the model its visual neck and modality token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lavin_lightning.adapters.core import (
    AdapterModule,
    FoldedLayer,
    Injection,
    NormThenAdapter,
    attach,
    match_modules,
    prefixed,
    replace_module,
    unwrapped_norms,
    wrap_norms,
)
from lavin_lightning.errors import ConfigError

# The norms an MM-Adapter follows in a transformers LLaMA: before attention, before the FFN.
LLM_NORMS = {"attn": r"model\.layers\.(\d+)\.input_layernorm", "ffn": r"model\.layers\.(\d+)\.post_attention_layernorm"}
# The linear layers that read each norm's output (where an adapter after that norm folds into).
NORM_CONSUMERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}


@dataclass
class MMAConfig:
    """Mixture-of-Modality Adaptation hyper-parameters (defaults: LaVIN-7B, release).

    Args:
        adapter_dim: bottleneck width h of every MM-Adapter (paper: 8).
        scale: s, the factor on the adapter's residual branch (1).
        temperature: tau of the routing softmax (10 for LaVIN-7B, 5 for LaVIN-13B).
        dropout: dropout after the shared down-projection (0.1).
        groups: groups of the up-projections (the release's grouped 1x1 convs: 2).
        llm_adapter: "router" (MM-Adapter) or "repadapter" (no routing; Table 2 ablation).
        llm_placement: "attn": one adapter before self-attention in every block (all
            paper results); "block": also one before the FFN.
        vision_adapter: "router", "repadapter", "repadapter_release" (the release's plain
            RepAdapter: up(dropout(down(x))), no residual and no scale) or "none" (frozen
            ViT without adapters).
        vision_routing: "token": every visual token routes on its own features (ours);
            "release": as the release computes it, per token position from row 0 of the
            batch, with the ViT run on every sample (text-only ones on their all-zero
            image), so a batch whose first sample is text-only routes on a blank image
            (see docs/faithfulness.md). A choice of evaluation: an adapter trained with
            one loads with the other.
        neck_dim: hidden width of the visual neck (128).
        neck_input_norm: normalise each [CLS] feature (a layer norm without parameters) before
            the neck. Off in the paper and the release, which feed the ViT's raw residual
            stream; the demo's small ViT turns it on (see docs/faithfulness.md).
        modality_token: prepend the hidden modality token (position 0) that the LLM
            routers read; without it the routers read the first real token.
    """

    adapter_dim: int = 8
    scale: float = 1.0
    temperature: float = 10.0
    dropout: float = 0.1
    groups: int = 2
    llm_adapter: Literal["router", "repadapter"] = "router"
    llm_placement: Literal["attn", "block"] = "attn"
    vision_adapter: Literal["router", "repadapter", "none"] = "router"
    vision_routing: Literal["token", "release"] = "token"
    neck_dim: int = 128
    neck_input_norm: bool = False
    modality_token: bool = True

    # Settings an exported adapter may be evaluated with otherwise (checkpoint.check_meta).
    EVALUATION_SETTINGS: ClassVar[tuple[str, ...]] = ("vision_routing",)

    def __post_init__(self):
        checks = {
            "llm_adapter": (self.llm_adapter, ("router", "repadapter")),
            "llm_placement": (self.llm_placement, ("attn", "block")),
            "vision_adapter": (self.vision_adapter, ("router", "repadapter", "repadapter_release", "none")),
            "vision_routing": (self.vision_routing, ("token", "release")),
        }
        for field, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"MMAConfig.{field} must be one of {allowed}, got {value!r}")
        if self.adapter_dim % self.groups:
            raise ConfigError(f"adapter_dim {self.adapter_dim} is not divisible by groups {self.groups}")


class GroupedLinear(nn.Module):
    """A grouped 1x1 convolution as a block-diagonal linear map: (out*in/groups + out) params."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ConfigError(f"GroupedLinear {in_features}->{out_features} is not divisible by {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.unflatten(-1, (self.groups, -1))
        out = torch.einsum("...gi,goi->...go", grouped, self.weight).flatten(-2)
        return out + self.bias

    def dense(self) -> torch.Tensor:
        """The (out, in) block-diagonal matrix this layer multiplies by."""
        return torch.block_diag(*self.weight)


def _down_projection(width: int, adapter_dim: int) -> nn.Linear:
    down = nn.Linear(width, adapter_dim)
    if down.weight.device.type != "meta":
        nn.init.xavier_uniform_(down.weight)
        nn.init.zeros_(down.bias)
    return down


class RepAdapter(AdapterModule):
    """Plain RepAdapter: Z + s * B(dropout(A(Z))), B zero-initialised (13c + 8 params for h=8).

    residual=False is the release's visual `RepAdapter`, which returns B(dropout(A(Z))) alone
    (no residual, no scale): its block's attention then reads only the adapter's output, zero
    at initialisation."""

    def __init__(self, width: int, adapter_dim: int = 8, scale: float = 1.0, dropout: float = 0.1, groups: int = 2,
                 residual: bool = True):
        super().__init__()
        self.down = _down_projection(width, adapter_dim)
        self.up = GroupedLinear(adapter_dim, width, groups)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.dropout(self.down(x)))
        return x.add(delta, alpha=self.scale) if self.residual else delta


class _SampleRoutedAdapter(torch.autograd.Function):
    """The sample-routed MM-Adapter, forward and backward written out:

        w = softmax((R x[:, 0] + r) / tau)            (or given: the routing cache)
        a = dropout(A x + b)
        out = x + s * (w_0 (U_0 a + u_0) + w_1 (U_1 a + u_1))

    The same function as composing the modules, in a few dozen operators per training step
    where autograd records a few hundred, and with three full-width passes fewer (the routing
    slice's zero-filled gradient and its sum, the scaled output gradient): on a CPU every
    operator's dispatch and every pass over the (B, T, C) activations cost more than this
    rank-8 adapter's arithmetic. The experts' block-diagonal up-projections and biases are
    mixed per sample first, so the C-wide output is written once (one batched matmul over the
    code with a column of ones for the bias). The dropout mask is drawn as `F.dropout` draws it
    (one `bernoulli_` of keep-probability 1 - p over the code), so a seeded run sees the same
    masks. Everything is computed in the adapter's own dtype, with autocast off (its backward
    runs outside autocast, so both directions agree; `NormThenAdapter` hands it its input in
    that dtype and casts the output back). Returns the output and the routing weights (B, 2),
    the latter without gradient."""

    @staticmethod
    def forward(ctx, x, *args):
        with torch.autocast(x.device.type, enabled=False):
            return _SampleRoutedAdapter._forward(ctx, x, *args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _SampleRoutedAdapter._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, x, router_w, router_b, given_w, down_w, down_b, up_w0, up_b0, up_w1, up_b1, temperature: float,
                 scale: float, p: float):
        # up_w<e>: expert e's (groups, out/groups, in/groups), GroupedLinear's layout; up_b<e>: (C,).
        groups, group_out, group_in = up_w0.shape
        batch, width, code = x.shape[0], x.shape[-1], down_w.shape[0]
        routed = given_w is None
        w = torch.softmax(torch.addmm(router_b, x[:, 0], router_w.t()) / temperature, dim=-1) if routed else given_w
        hidden = torch.addmm(down_b, x.reshape(-1, width), down_w.t()).view(*x.shape[:-1], code)
        mask = None
        if p > 0:
            mask = torch.empty_like(hidden).bernoulli_(1 - p).div_(1 - p)
            hidden = hidden * mask
        hidden = torch.cat([hidden, hidden.new_ones(*hidden.shape[:-1], 1)], dim=-1)  # the bias row's input
        # Each expert's dense (code + 1, width) matrix: its groups' blocks transposed on the
        # diagonal, its bias as the last row.
        dense = up_w0.new_zeros(2, code + 1, width)
        for e, (up_w, up_b) in enumerate(((up_w0, up_b0), (up_w1, up_b1))):
            dense[e, :code] = torch.block_diag(*up_w).t()  # GroupedLinear.dense(), transposed
            dense[e, code] = up_b
        mixed = (w @ dense.view(2, -1)).view(batch, code + 1, width)
        out = torch.baddbmm(x, hidden, mixed, alpha=scale)
        ctx.save_for_backward(x, w, router_w, down_w, hidden, mask, dense, mixed)
        ctx.settings = (routed, temperature, scale, groups, group_out, group_in)
        ctx.mark_non_differentiable(w)
        return out, w

    @staticmethod
    def _backward(ctx, grad_out):
        x, w, router_w, down_w, hidden, mask, dense, mixed = ctx.saved_tensors
        grad_out = grad_out.to(x.dtype)
        routed, temperature, scale, groups, group_out, group_in = ctx.settings
        batch, width, code = x.shape[0], x.shape[-1], down_w.shape[0]
        grad_mixed = torch.bmm(hidden.transpose(1, 2), grad_out).mul_(scale)  # (B, code + 1, width)
        grad_dense = (w.t() @ grad_mixed.view(batch, -1)).view_as(dense)
        grad_up = []  # per expert: its weight's blocks (back in GroupedLinear's layout), its bias
        for e in (0, 1):
            blocks = [grad_dense[e, g * group_in:(g + 1) * group_in, g * group_out:(g + 1) * group_out].t()
                      for g in range(groups)]
            grad_up += [torch.stack(blocks), grad_dense[e, code]]
        grad_hidden = torch.bmm(grad_out, mixed[:, :code].transpose(1, 2)).mul_(scale)
        if mask is not None:
            grad_hidden = grad_hidden * mask
        flat = grad_hidden.reshape(-1, code)
        grad_down_w = flat.t() @ x.reshape(-1, width)
        grad_down_b = flat.sum(dim=0)
        grad_x = torch.addmm(grad_out.reshape(-1, width), flat, down_w).view_as(x)
        grad_router_w = grad_router_b = None
        if routed:  # softmax backward, then the router's linear on row 0
            grad_w = grad_mixed.view(batch, -1) @ dense.view(dense.shape[0], -1).t()
            grad_logits = w * (grad_w - (grad_w * w).sum(dim=-1, keepdim=True)) / temperature
            grad_router_w = grad_logits.t() @ x[:, 0]
            grad_router_b = grad_logits.sum(dim=0)
            grad_x[:, 0] += grad_logits @ router_w
        return (grad_x, grad_router_w, grad_router_b, None, grad_down_w, grad_down_b, *grad_up, None, None, None)


class RepAdapterRouter(AdapterModule):
    """MM-Adapter: two up-projection experts over a shared down-projection, softly routed.

    routing="sample": one decision per sample from row 0 (the LLM's modality token);
    "token": every token routes on itself; "release": per token position, from the first
    sample of the batch (what the LaVIN release's ViT adapters compute: they read index 0
    of the batch axis of a sequence-first tensor).

    With sample routing and `routing_cache` on, the first call stores the weights and
    later calls reuse them: during cached decoding the adapter only sees new tokens,
    not the modality token.
    """

    def __init__(
        self,
        width: int,
        adapter_dim: int = 8,
        scale: float = 1.0,
        temperature: float = 10.0,
        dropout: float = 0.1,
        groups: int = 2,
        routing: Literal["sample", "token", "release"] = "sample",
    ):
        super().__init__()
        self.down = _down_projection(width, adapter_dim)
        self.up_experts = nn.ModuleList([GroupedLinear(adapter_dim, width, groups) for _ in range(2)])
        self.router = nn.Linear(width, 2)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.temperature = temperature
        self.routing = routing
        self._cache_on = False
        self._cached_weights: torch.Tensor | None = None
        # A list while someone reads the routing (W&B dashboards): every computed softmax is appended.
        self.recorded: list[torch.Tensor] | None = None

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax routing weights, broadcastable against x[..., :1]: (B,1,2) or (B,T,2)."""
        if self.routing == "sample":
            if self._cache_on and self._cached_weights is not None:
                return self._cached_weights
            source = x[:, :1]
        elif self.routing == "release":
            source = x[:1]
        else:
            source = x
        weights = torch.softmax(self.router(source) / self.temperature, dim=-1)
        self._remember(weights)
        return weights

    def _remember(self, weights: torch.Tensor) -> None:
        if self.recorded is not None:
            self.recorded.append(weights.detach())
        if self._cache_on and self.routing == "sample":
            self._cached_weights = weights

    def mixing_matrix(self) -> torch.Tensor:
        """(width, 2h + 2): both experts' dense up-projections side by side, then their biases."""
        first, second = self.up_experts
        return torch.cat([first.dense(), second.dense(), first.bias[:, None], second.bias[:, None]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.routing == "sample":
            # One decision per sample (_SampleRoutedAdapter: the same function in a tenth of the
            # operators); the routing cache, when on, holds the prefill's weights.
            cached = self._cached_weights if self._cache_on else None
            first, second = self.up_experts
            out, weights = _SampleRoutedAdapter.apply(
                x, self.router.weight, self.router.bias, None if cached is None else cached[:, 0], self.down.weight,
                self.down.bias, first.weight, first.bias, second.weight, second.bias, self.temperature, self.scale,
                self.dropout.p if self.training else 0.0)
            if cached is None:
                self._remember(weights[:, None])
            return out
        weights = self.routing_weights(x)
        # Per token: w_0 (U_0 a + u_0) + w_1 (U_1 a + u_1) = [w_0 a, w_1 a, w_0, w_1] [U_0, U_1, u_0, u_1]^T,
        # one matmul on the h-wide code instead of two C-wide expert outputs weighed and added.
        hidden = self.dropout(self.down(x))
        w = weights.expand(*hidden.shape[:-1], 2)
        features = torch.cat([hidden * w[..., :1], hidden * w[..., 1:], w], dim=-1)
        return x.add(F.linear(features, self.mixing_matrix()), alpha=self.scale)


@contextmanager
def routing_cache(model: nn.Module) -> Iterator[None]:
    """Per-sample routers store their weights on the first (prefill) call and reuse them."""
    routers = [m for m in model.modules() if isinstance(m, RepAdapterRouter) and m.routing == "sample"]
    for router in routers:
        router._cache_on, router._cached_weights = True, None
    try:
        yield
    finally:
        for router in routers:
            router._cache_on, router._cached_weights = False, None


# --------------------------------------------------------------------------- re-parameterisation


class ModalityFoldedLinear(FoldedLayer):
    """A frozen nn.Linear that reads a norm's output, with the MM-Adapter after that norm folded
    into its weights once per modality (spec, section 2):

        W (Z + s (U_m (A Z + a) + u_m)) + b  =  W_m Z + b_m,   W_m = W + s (W U_m) A,
                                                              b_m = b + s W (U_m a + u_m)

    with A, a the adapter's down-projection and U_m, u_m its up-projection mixed by modality m's
    routing weights. `modality` (B,) long says each row's modality; it is set for a batch by
    `modality_rows`. Rows of one modality cost one `F.linear`, as the frozen layer alone."""

    def __init__(self, base: nn.Linear, weights: torch.Tensor, biases: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("weights", weights, persistent=False)  # (2, out, in)
        self.register_buffer("biases", biases, persistent=False)  # (2, out)
        self.modality: torch.Tensor | None = None
        # (weight, bias) of the batch's one modality, when it has one (set with `modality`):
        # picked once per batch, so that a decoding step costs one F.linear, as the frozen layer.
        self.uniform: tuple[torch.Tensor, torch.Tensor] | None = None

    def use_modalities(self, modality: torch.Tensor | None, uniform: int | None) -> None:
        self.modality = modality
        self.uniform = None if uniform is None else (self.weights[uniform], self.biases[uniform])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        if self.uniform is not None:  # the common case: nothing but the frozen layer's own cost
            return F.linear(x, *self.uniform)
        if self.modality is None:
            raise RuntimeError("a folded MM-Adapter layer needs its batch's modalities (LaVINModel sets them)")
        out = x.new_empty(*x.shape[:-1], self.weights.shape[1])
        for m in (0, 1):
            rows = (self.modality == m).nonzero().squeeze(-1)
            out[rows] = F.linear(x[rows], self.weights[m], self.biases[m])
        return out


@torch.no_grad()
def _fold(base: nn.Linear, adapter: AdapterModule, routing: torch.Tensor | None) -> ModalityFoldedLinear:
    """`base` with `adapter` (a RepAdapter, or a sample-routed RepAdapterRouter whose routing
    weights per modality are `routing` (2, 2)) folded in. Computed in float64 (once, small next
    to a forward pass), so that the folded weights carry only the rounding of their own dtype."""
    weight = base.weight.double()
    down_w, down_b = adapter.down.weight.double(), adapter.down.bias.double()
    if isinstance(adapter, RepAdapterRouter):
        routing = routing.double()
        experts = [(e.dense().double(), e.bias.double()) for e in adapter.up_experts]
        ups = [(routing[m, 0] * experts[0][0] + routing[m, 1] * experts[1][0],
                routing[m, 0] * experts[0][1] + routing[m, 1] * experts[1][1]) for m in (0, 1)]
    else:
        ups = [(adapter.up.dense().double(), adapter.up.bias.double())] * 2
    bias = base.bias.double() if base.bias is not None else weight.new_zeros(weight.shape[0])
    weights, biases = [], []
    for up_w, up_b in ups:
        weights.append(weight + adapter.scale * (weight @ up_w) @ down_w)
        biases.append(bias + adapter.scale * weight @ (up_w @ down_b + up_b))
    dtype = base.weight.dtype
    return ModalityFoldedLinear(base, torch.stack(weights).to(dtype), torch.stack(biases).to(dtype))


class Folding:
    """The LLM's MM-Adapters folded into the linear layers after their norms (`fold`); `unfold`
    puts every module back as it was."""

    def __init__(self, llm: nn.Module, routing: dict[str, torch.Tensor]):
        self.llm = llm
        self.routing = routing  # per folded router (its norm's name): the weights (modality, expert)
        self.replaced: list[tuple[str, nn.Module]] = []  # (name, original module)

    def swap(self, name: str, new: nn.Module) -> None:
        self.replaced.append((name, self.llm.get_submodule(name)))
        replace_module(self.llm, name, new)

    def layers(self) -> list[ModalityFoldedLinear]:
        return [m for m in self.llm.modules() if isinstance(m, ModalityFoldedLinear)]

    def unfold(self) -> None:
        for name, original in reversed(self.replaced):
            replace_module(self.llm, name, original)
        self.replaced.clear()


def fold(llm: nn.Module, routing: dict[str, torch.Tensor]) -> Folding:
    """Fold every MM-Adapter after a norm of `llm` into the linear layers that read that norm
    (NORM_CONSUMERS), per modality; the norms run bare meanwhile. `routing`: for each adapted
    norm's name, the routing weights (2 modalities, 2 experts) of its sample-routed adapter
    (the modality token's: they depend on the modality only). Eval mode only: dropout must be off."""
    wrapped = check_foldable(llm)
    for name, wrapper in wrapped:
        if isinstance(wrapper.adapter, RepAdapterRouter) and name not in routing:
            raise ConfigError(f"{name}: the routing of its adapter is not given")
    folding = Folding(llm, {name: routing[name] for name, wrapper in wrapped
                            if isinstance(wrapper.adapter, RepAdapterRouter)})
    for name, wrapper in wrapped:
        parent, _, norm_name = name.rpartition(".")
        for consumer in NORM_CONSUMERS[norm_name]:
            target = f"{parent}.{consumer}"
            folding.swap(target, _fold(llm.get_submodule(target), wrapper.adapter, routing.get(name)))
        folding.swap(name, wrapper.norm)
    return folding


def check_foldable(llm: nn.Module) -> list[tuple[str, NormThenAdapter]]:
    """The MM-Adapter seams of `llm` (name, wrapper), if all of them fold exactly: eval mode,
    routed once per sample, read by plain, unsharded nn.Linear layers. ConfigError otherwise."""
    from torch.distributed.fsdp import FSDPModule

    sharded = next((name for name, m in llm.named_modules() if isinstance(m, FSDPModule)), None)
    if sharded is not None:
        raise ConfigError(f"{sharded or 'the LLM'} is sharded (FSDP): the MM-Adapters do not fold into sharded weights")
    wrapped = [(name, m) for name, m in llm.named_modules() if isinstance(m, NormThenAdapter)]
    for name, wrapper in wrapped:
        adapter = wrapper.adapter
        if adapter.training:
            raise ConfigError("MM-Adapters fold for inference only (dropout must be off): call .eval() first")
        if isinstance(adapter, RepAdapterRouter) and adapter.routing != "sample":
            raise ConfigError(f"{name}: an adapter routed per token does not fold (routing {adapter.routing!r})")
        parent, _, norm_name = name.rpartition(".")
        for consumer in NORM_CONSUMERS[norm_name]:
            base = llm.get_submodule(f"{parent}.{consumer}")
            if type(base) is not nn.Linear or type(base.weight.data) is not torch.Tensor:
                raise ConfigError(f"{parent}.{consumer} is a {type(base).__name__} holding a "
                                  f"{type(base.weight.data).__name__} (quantized or sharded): the MM-Adapter does not "
                                  "fold into it exactly")
    return wrapped


@contextmanager
def modality_rows(folding: Folding | None, has_image: torch.Tensor) -> Iterator[None]:
    """Every folded layer reads rows of image-text samples (1) and text-only ones (0) with that
    modality's weights while the block is open."""
    layers = folding.layers() if folding is not None else []
    modality = has_image.long()
    uniform = int(modality[0]) if bool((modality == modality[0]).all()) else None
    for layer in layers:
        layer.use_modalities(modality, uniform)
    try:
        yield
    finally:
        for layer in layers:
            layer.use_modalities(None, None)


class VisualNeck(AdapterModule):
    """X' = W_u silu(W_d X + b_d) + b_u: visual features to LLM width (release: SiLU); with
    `input_norm`, X is first layer-normed without parameters (MMAConfig.neck_input_norm)."""

    def __init__(self, in_width: int, out_width: int, hidden: int = 128, input_norm: bool = False):
        super().__init__()
        self.input_norm = input_norm
        self.down = nn.Linear(in_width, hidden)
        self.up = nn.Linear(hidden, out_width)
        if self.down.weight.device.type != "meta":
            for layer in (self.down, self.up):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm:
            x = F.layer_norm(x, x.shape[-1:])
        return self.up(F.silu(self.down(x)))


class ModalityEmbedding(AdapterModule):
    """E_m in R^{2 x C}: row 1 for image-text samples, row 0 for text-only."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Embedding(2, width)

    def forward(self, has_image: torch.Tensor) -> torch.Tensor:
        return self.embedding(has_image.long())


def make_llm_adapter(config: MMAConfig, width: int) -> AdapterModule:
    if config.llm_adapter == "router":
        return RepAdapterRouter(width, config.adapter_dim, config.scale, config.temperature,
                                config.dropout, config.groups, routing="sample")
    return RepAdapter(width, config.adapter_dim, config.scale, config.dropout, config.groups)


def make_vision_adapter(config: MMAConfig, width: int) -> AdapterModule:
    if config.vision_adapter == "router":
        return RepAdapterRouter(width, config.adapter_dim, config.scale, config.temperature,
                                config.dropout, config.groups, routing=config.vision_routing)
    return RepAdapter(width, config.adapter_dim, config.scale, config.dropout, config.groups,
                      residual=config.vision_adapter != "repadapter_release")


def inject(model: nn.Module, config: MMAConfig) -> Injection:
    """MM-Adapters in `model.llm` (and `model.vision`, a VisionEncoder or None), plus the visual
    neck (`model.neck`, with a ViT) and the modality token (`model.modality`, if configured)."""
    llm, vision = model.llm, model.vision
    placements = ["attn"] + (["ffn"] if config.llm_placement == "block" else [])
    llm_norms = [name for where in placements for name in match_modules(llm, LLM_NORMS[where])]
    vision_norms = vision.block_norm_names("attn") if vision is not None and config.vision_adapter != "none" else []
    unwrapped_norms(llm, llm_norms)  # validate both backbones before changing either
    if vision_norms:
        unwrapped_norms(vision, vision_norms)
    modules = wrap_norms(llm, llm_norms, lambda width: make_llm_adapter(config, width))
    if vision_norms:
        modules += wrap_norms(vision, vision_norms, lambda width: make_vision_adapter(config, width))
    width = llm.config.hidden_size
    if vision is not None:
        modules.append(attach(model, "neck", VisualNeck(vision.width, width, config.neck_dim, config.neck_input_norm)))
    if config.modality_token:
        modules.append(attach(model, "modality", ModalityEmbedding(width)))
    return Injection(prefixed("llm", llm_norms) + prefixed("vision", vision_norms), modules)
