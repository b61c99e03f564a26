"""PETAL (Zhang et al., 2023) on the frozen InstructBLIP Q-Former.

* Mode approximation (DMA): every Q-Former self-attention q/k/v and cross-attention q gets
  ΔW = V (C ×₃ p)ᵀ U from the shared *text* factor set, every cross-attention k/v (input:
  the ViT features) from the shared *image* set; p is each projection's own mode vector,
  C a full R×R×R core, V zero-initialised, dropout on the rank-R code (the release's form).
  Optional Γ (`gamma`): a learnable scale on the frozen output, per matrix or global, 1 at init.
* Instruction experts on the Q-Former's input embeddings: the paper's gated mixture
  (`experts="gated"`: K experts whose outputs a softmax gate mixes per token) or the
  release's fixed mixture (`experts="release"`: 0.6 x + 0.4 mean of 6 biased rank-64 maps).
* Optional SSF residual (`ssf`, the release's undocumented per-layer scale-shift of the
  self-attention output, added after the FFN with weight 0.1).
* The information bottleneck (`InformationBottleneck`): a CLUB upper bound of I(X;Z) between
  the ViT features and the Q-Former's outputs, added with a fixed weight (the cross-entropy
  is the usual variational bound of the I(Z;Y) term); its estimator learns by its own
  likelihood.

Everything but the release's experts and SSF leaves the backbone unchanged at init.
Every choice is recorded in docs/faithfulness.md (PETAL section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lavin_lightning.adapters.core import (
    AdapterModule,
    Injection,
    attach,
    match_modules,
    prefixed,
    replace_module,
    unwrapped_norms,
    wrap_linears,
    wrap_norms,
)
from lavin_lightning.errors import ConfigError

GAMMA = ("none", "per_matrix", "global")
EXPERTS = ("gated", "release", "none")
EXPERT_KINDS = ("low_rank", "affine")
POOLING = ("score", "mean")


@dataclass
class PETALConfig:
    """PETAL settings (defaults: the paper's form at the release's sizes).

    Args:
        rank: R, the rank of the factors and the side of the core (64).
        dropout: dropout on the rank-R code (0.1, the release).
        gamma: Γ on the frozen output W0 x: "none" (the release), "per_matrix" or "global" (1 at init).
        experts: "gated" (paper §3.3), "release" (fixed 0.6/0.4 mixture of 6 experts) or "none".
        num_experts: K; None = 3 for "gated" (paper Fig. 3), 6 for "release".
        expert_kind: gated experts as rank-`expert_rank` residual maps x + B A x ("low_rank", the
            paper's App. E count) or element-wise γ ⊙ x + β ("affine", Eq. 3).
        expert_rank: M, the experts' middle size (64).
        experts_on: "instruction" (the instruction tokens; paper) or "all" (queries too; release);
            None = "instruction" for "gated", "all" for "release".
        ssf: add the release's per-layer scale-shift residual 0.1 (SA ⊙ s + b) after the FFN.
        ib_weight: λ, the fixed weight of the information-bottleneck term λ Î(X;Z) (0 disables it
            and its estimator).
        ib_pooling: token pooling before the estimator: "score" (paper: attention weights
            softmax(H_i · H̄)) or "mean" (release).
        club_hidden: hidden width of the CLUB estimator's networks (32, the release's).
    """

    rank: int = 64
    dropout: float = 0.1
    gamma: str = "none"
    experts: str = "gated"
    num_experts: int | None = None
    expert_kind: str = "low_rank"
    expert_rank: int = 64
    experts_on: str | None = None
    ssf: bool = False
    ib_weight: float = 0.01
    ib_pooling: str = "score"
    club_hidden: int = 32

    def __post_init__(self):
        for name, value, allowed in (("gamma", self.gamma, GAMMA), ("experts", self.experts, EXPERTS),
                                     ("expert_kind", self.expert_kind, EXPERT_KINDS),
                                     ("ib_pooling", self.ib_pooling, POOLING),
                                     ("experts_on", self.experts_on, (None, "instruction", "all"))):
            if value not in allowed:
                raise ConfigError(f"PETALConfig.{name} must be one of {list(allowed)}, got {value!r}")
        if self.rank < 1 or self.expert_rank < 1 or (self.num_experts is not None and self.num_experts < 1):
            raise ConfigError(f"PETALConfig needs rank, expert_rank and num_experts >= 1, got {self}")
        if self.ib_weight < 0:
            raise ConfigError(f"PETALConfig.ib_weight must be >= 0, got {self.ib_weight}")

    @property
    def expert_count(self) -> int:
        return self.num_experts or (6 if self.experts == "release" else 3)

    @property
    def experts_target(self) -> str:
        return self.experts_on or ("all" if self.experts == "release" else "instruction")


# --------------------------------------------------------------------------- DMA


class ModeFactors(AdapterModule):
    """One shared factor set: U (d_in → R), V (R → d_out, zero), core C (R, R, R)."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)  # PyTorch's default init, as the release
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.up.weight)
        self.core = nn.Parameter(torch.empty(rank, rank, rank))
        nn.init.xavier_uniform_(self.core)


class PETALShared(AdapterModule):
    """What all deltas share: the text and image factor sets and the optional global Γ."""

    def __init__(self, text_width: int, image_width: int, out_width: int, config: PETALConfig):
        super().__init__()
        self.text = ModeFactors(text_width, out_width, config.rank)
        self.image = ModeFactors(image_width, out_width, config.rank)
        self.gamma = nn.Parameter(torch.ones(())) if config.gamma == "global" else None


class ModeDelta(AdapterModule):
    """One projection's delta: Γ W0 x + V (C ×₃ p)ᵀ dropout(U x), p its own mode vector."""

    def __init__(self, shared: PETALShared, factor_set: str, config: PETALConfig):
        super().__init__()
        self.mode = nn.Parameter(torch.empty(config.rank, 1))
        nn.init.xavier_uniform_(self.mode)  # the release's (R, 1) mode vectors
        self.gamma = nn.Parameter(torch.ones(())) if config.gamma == "per_matrix" else None
        self.dropout = nn.Dropout(config.dropout)
        self.shared = shared  # registered in every delta and, first, on the model (`model.petal`)
        self.factor_set = factor_set

    def forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        factors: ModeFactors = getattr(shared, self.factor_set)
        mixing = torch.einsum("abc,c->ab", factors.core, self.mode[:, 0])  # C ×₃ p, (R, R)
        delta = factors.up(self.dropout(factors.down(x)) @ mixing)
        gamma = self.gamma if self.gamma is not None else shared.gamma
        return (base_out if gamma is None else gamma * base_out) + delta


def qformer_projections(qformer: nn.Module) -> dict[str, str]:
    """Q-Former linear layers PETAL adapts, name -> factor set ("text" or "image")."""
    targets = {}
    for proj in ("query", "key", "value"):
        for name in match_modules(qformer, rf"encoder\.layer\.(\d+)\.attention\.attention\.{proj}"):
            targets[name] = "text"
        for name in match_modules(qformer, rf"encoder\.layer\.(\d+)\.crossattention\.attention\.{proj}"):
            targets[name] = "text" if proj == "query" else "image"
    return dict(sorted(targets.items(), key=lambda kv: _layer_order(kv[0])))


def _layer_order(name: str) -> tuple:
    parts = name.split(".")
    return (int(parts[2]), parts[3], parts[-1])


# --------------------------------------------------------------------------- experts


class InstructionExperts(AdapterModule):
    """Mixture of experts on the Q-Former's input embeddings [queries ; instruction].

    gated: x + Σ_k g_k Δ_k(x), g = softmax_k(G([x ; x + Δ_k(x)])) per token; Δ_k = B_k A_k x
    (B zero) or (γ_k - 1) ⊙ x + β_k (γ one, β zero), so the output is x at init.
    release: 0.6 x + 0.4 mean_k (B_k A_k x + biases), weights N(0, 0.02), biases zero.
    """

    def __init__(self, width: int, num_queries: int, config: PETALConfig):
        super().__init__()
        self.form, self.kind, self.num_queries = config.experts, config.expert_kind, num_queries
        self.instruction_only = config.experts_target == "instruction"
        k, m = config.expert_count, config.expert_rank
        if self.form == "release":
            self.down = nn.ModuleList(nn.Linear(width, m) for _ in range(k))
            self.up = nn.ModuleList(nn.Linear(m, width) for _ in range(k))
            for layer in [*self.down, *self.up]:  # BERT's _init_weights, as the release
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
            return
        if self.kind == "low_rank":
            self.down = nn.ModuleList(nn.Linear(width, m, bias=False) for _ in range(k))
            self.up = nn.ModuleList(nn.Linear(m, width, bias=False) for _ in range(k))
            for layer in self.up:
                nn.init.zeros_(layer.weight)
        else:
            self.scale = nn.Parameter(torch.ones(k, width))
            self.shift = nn.Parameter(torch.zeros(k, width))
        self.gate = nn.Linear(2 * width, 1)  # G: one score per expert and token from [x ; y_k]

    def _deltas(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "low_rank":
            return torch.stack([up(down(x)) for down, up in zip(self.down, self.up)])
        return (self.scale - 1)[:, None, None] * x + self.shift[:, None, None]

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "release":
            experts = torch.stack([up(down(x)) for down, up in zip(self.down, self.up)]).mean(0)
            return 0.6 * x + 0.4 * experts
        deltas = self._deltas(x)  # (K, B, T, C)
        scores = self.gate(torch.cat([x.expand_as(deltas), x + deltas], dim=-1))
        weights = torch.softmax(scores, dim=0)
        return x + (weights * deltas).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.instruction_only:
            return self.mix(x)
        return torch.cat([x[:, : self.num_queries], self.mix(x[:, self.num_queries:])], dim=1)


# --------------------------------------------------------------------------- SSF


class ScaleShift(AdapterModule):
    """The release's per-layer residual 0.1 (SA ⊙ s + b), s and b ~ N(0, 2e-4)."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(width) * 2e-4)
        self.shift = nn.Parameter(torch.randn(width) * 2e-4)
        self.attention_output: torch.Tensor | None = None


class RecordOutput(nn.Module):
    """Runs the wrapped self-attention block and hands its output to the layer's ScaleShift
    (the residual is added after the FFN, which the layer's own forward runs in between)."""

    def __init__(self, module: nn.Module, ssf: ScaleShift):
        super().__init__()
        self.module = module
        self.ssf = ssf  # also registered (and named) on the layer's AddScaleShift

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.ssf.attention_output = out
        return out


class AddScaleShift(nn.Module):
    """A Q-Former layer plus its ScaleShift residual (added after the FFN, as the release)."""

    def __init__(self, layer: nn.Module, ssf: ScaleShift):
        super().__init__()
        self.ssf = ssf  # registered before the layer (whose RecordOutput holds it too): named here
        self.layer = layer

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        attention, self.ssf.attention_output = self.ssf.attention_output, None
        if not self.ssf.active:
            return out
        return out + 0.1 * (attention * self.ssf.scale + self.ssf.shift).to(out.dtype)


# --------------------------------------------------------------------------- injection


def inject(model: nn.Module, config: PETALConfig) -> Injection:
    """PETAL in the Q-Former of `model.backbone` (an InstructBLIP): the deltas, the shared factor
    sets (`model.petal`), the instruction experts, the optional SSF residual and, with a
    positive `ib_weight`, the information bottleneck's estimator (`model.information_bottleneck`).
    Validates every target before changing anything."""
    backbone = model.backbone
    qformer = backbone.qformer
    targets = qformer_projections(qformer)
    if not any(v == "image" for v in targets.values()):
        raise ConfigError("the Q-Former has no cross-attention layers; PETAL's image factors need them")
    norms = ["embeddings.layernorm"] if config.experts != "none" else []
    unwrapped_norms(qformer, norms)
    layers = match_modules(qformer, r"encoder\.layer\.(\d+)") if config.ssf else []
    text_width = qformer.config.hidden_size
    image_width = qformer.config.encoder_hidden_size
    out_width = qformer.get_submodule(next(iter(targets))).out_features
    shared = attach(model, "petal", PETALShared(text_width, image_width, out_width, config))
    modules: list[nn.Module] = [shared]
    modules += wrap_linears(qformer, list(targets), lambda name, linear: ModeDelta(shared, targets[name], config))
    modules += wrap_norms(qformer, norms, lambda width: InstructionExperts(width, backbone.config.num_query_tokens,
                                                                          config))
    for name in layers:
        layer = qformer.get_submodule(name)
        ssf = ScaleShift(text_width)
        layer.attention = RecordOutput(layer.attention, ssf)
        replace_module(qformer, name, AddScaleShift(layer, ssf))
        modules.append(ssf)
    if config.ib_weight > 0:
        estimator = InformationBottleneck(backbone.config.vision_config.hidden_size, text_width, config)
        modules.append(attach(model, "information_bottleneck", estimator))
    targeted = list(targets) + norms + [f"{name}.attention" for name in layers]
    return Injection(prefixed("backbone.qformer", targeted), modules)


# --------------------------------------------------------------------------- information bottleneck


def _mlp(x: torch.Tensor, layers: nn.ModuleList, frozen: bool) -> torch.Tensor:
    """Linear -> ReLU -> Linear; `frozen` uses detached weights (the bound moves its inputs only)."""
    first, second = layers
    w1, b1, w2, b2 = first.weight, first.bias, second.weight, second.bias
    if frozen:
        w1, b1, w2, b2 = (t.detach() for t in (w1, b1, w2, b2))
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


def _two_layers(d_in: int, hidden: int, d_out: int) -> nn.ModuleList:
    layers = nn.ModuleList([nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)])
    for layer in layers:  # the release's estimator init
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layers


class InformationBottleneck(AdapterModule):
    """CLUB (Cheng et al., 2020) upper bound of I(X;Z) between the ViT features X and the
    Q-Former's query outputs Z, both pooled over tokens.

    The bound, ½ E[log q(x|z) - log q(x'|z)] with x' from another sample, uses the
    variational Gaussian q(x|z)'s weights detached, so it moves only the adapters; q itself
    is trained by its own negative log-likelihood on detached features. Both are averaged
    over feature dimensions, so their scale does not grow with the ViT's width.
    """

    def __init__(self, image_width: int, query_width: int, config: PETALConfig):
        super().__init__()
        self.pooling = config.ib_pooling
        self.mean = _two_layers(query_width, config.club_hidden, image_width)
        self.logvar = _two_layers(query_width, config.club_hidden, image_width)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): Σ_i α_i H_i, α = softmax_i(H_i · H̄ / √D) ("score"), or the mean."""
        mean = tokens.mean(1)
        if self.pooling == "mean":
            return mean
        scores = (tokens @ mean[:, :, None])[..., 0] / math.sqrt(tokens.shape[-1])
        return (torch.softmax(scores, dim=1)[..., None] * tokens).sum(1)

    def _q(self, z: torch.Tensor, frozen: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return _mlp(z, self.mean, frozen), torch.tanh(_mlp(z, self.logvar, frozen))

    def forward(self, image_tokens: torch.Tensor, query_tokens: torch.Tensor) -> dict:
        x, z = self.pool(image_tokens.float()).detach(), self.pool(query_tokens.float())
        mean, logvar = self._q(z, frozen=True)
        precision = torch.exp(-logvar)
        other = x[torch.randperm(x.shape[0], device=x.device)]
        bound = 0.5 * ((((mean - other) ** 2) - (mean - x) ** 2) * precision).mean(-1).mean()
        fit_mean, fit_logvar = self._q(z.detach(), frozen=False)
        nll = (((fit_mean - x) ** 2) * torch.exp(-fit_logvar) + fit_logvar).mean(-1).mean()
        return {"bound": bound, "estimator_loss": nll}
