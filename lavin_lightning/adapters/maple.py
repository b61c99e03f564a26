"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompt learning, on a frozen InstructBLIP.

MaPLe learns deep prompts in both branches of CLIP and couples them: the vision prompts
of layer i are a linear function F_i of the language prompts of layer i. On InstructBLIP
(a PETAL baseline) the two branches are:

* language: the Q-Former's text stream (the instruction). The prompts P_0 (n_ctx tokens of
  the Q-Former's width) are inserted right after the query tokens at the Q-Former's input
  (the output of `qformer.embeddings`); at the input of Q-Former layer i, 1 <= i < J, the
  tokens at those n_ctx positions are replaced by P_i. Past layer J-1 they stay in the
  sequence as ordinary processed tokens. The instruction mask is widened by n_ctx ones
  (`prompt_tokens`, which the MaPLe model in `models.maple` asks).
* vision: the ViT. At the input of ViT layer 0 the n_ctx vision prompts F_0(P_0) are
  appended after the patch tokens; at layer i, 1 <= i < J, the last n_ctx tokens are
  replaced by F_i(P_i); past layer J-1 they stay (as MaPLe), so the ViT output is n_ctx
  tokens longer and the Q-Former's cross-attention reads them as extra image tokens (its
  image mask is built from the feature length).

Prompts are N(0, init_std); the couplings F_i = Linear(d_qformer -> d_vision) have
PyTorch's default init. A prompt method cannot be the identity at init: extra tokens
change every attention that reads them. With the adapters disabled (`adapters_disabled`)
the wrappers insert and replace nothing and the mask is not widened, so the model is
exactly the frozen backbone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from lavin_lightning.adapters.core import AdapterModule, Injection, attach, replace_module
from lavin_lightning.errors import ConfigError


@dataclass
class MaPLeConfig:
    """MaPLe settings (defaults: the paper's n_ctx 2, depth 9).

    Args:
        prompt_length: n_ctx, prompt tokens per layer in each branch.
        depth: J, prompts in the first J layers of both the ViT and the Q-Former; None = every
            layer of the shallower branch.
        init_std: standard deviation of the prompts' normal init.
    """

    prompt_length: int = 2
    depth: int | None = 9
    init_std: float = 0.02

    def __post_init__(self):
        if self.prompt_length < 1:
            raise ConfigError(f"MaPLe prompt_length (n_ctx) must be >= 1, got {self.prompt_length}")
        if self.depth is not None and self.depth < 1:
            raise ConfigError(f"MaPLe depth (J) must be >= 1, got {self.depth}")
        if self.init_std < 0:
            raise ConfigError(f"MaPLe init_std must be >= 0, got {self.init_std}")


class MaPLePrompts(AdapterModule):
    """The shared parameters: language prompts P_i (J, n_ctx, d_qformer) and the couplings
    F_i = Linear(d_qformer -> d_vision), i < J. Its `active` flag drives every wrapper."""

    def __init__(self, text_width: int, vision_width: int, depth: int, config: MaPLeConfig):
        super().__init__()
        self.prompt_length, self.depth = config.prompt_length, depth
        self.prompts = nn.Parameter(torch.empty(depth, config.prompt_length, text_width))
        nn.init.normal_(self.prompts, std=config.init_std)
        self.couplings = nn.ModuleList(nn.Linear(text_width, vision_width) for _ in range(depth))

    def language(self, layer: int) -> torch.Tensor:
        """P_layer, (n_ctx, d_qformer)."""
        return self.prompts[layer]

    def vision(self, layer: int) -> torch.Tensor:
        """F_layer(P_layer), (n_ctx, d_vision)."""
        return self.couplings[layer](self.prompts[layer])

    @property
    def prompt_tokens(self) -> int:
        """Tokens inserted now into the Q-Former's text stream (0 while disabled)."""
        return self.prompt_length if self.active else 0


def _tokens(prompts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n, D) prompts as a (B, n, D) block in `like`'s dtype."""
    return prompts.to(like.dtype)[None].expand(like.shape[0], -1, -1)


class InsertTextPrompts(nn.Module):
    """`qformer.embeddings` whose output [queries ; instruction] gets P_0 after the queries.

    The original embeddings stay as `.embeddings`, frozen and untouched.
    """

    def __init__(self, embeddings: nn.Module, prompts: MaPLePrompts):
        super().__init__()
        self.embeddings = embeddings
        self.prompts = prompts  # registered in every wrapper and, first, on the model (`model.maple`)

    @property
    def word_embeddings(self) -> nn.Module:  # the Q-Former's get_input_embeddings() still works
        return self.embeddings.word_embeddings

    def forward(self, *args, **kwargs):
        # Whatever the upstream signature is, it passes through untouched; only the query
        # count is read, from the call's own binding of `query_embeds`.
        out = self.embeddings(*args, **kwargs)
        prompts = self.prompts
        if not prompts.active:
            return out
        query_embeds = inspect.signature(self.embeddings.forward).bind(*args, **kwargs).arguments.get("query_embeds")
        q = 0 if query_embeds is None else query_embeds.shape[1]
        return torch.cat([out[:, :q], _tokens(prompts.language(0), out), out[:, q:]], dim=1)


class ReplaceTextPrompts(nn.Module):
    """Q-Former layer `layer` whose input has its n_ctx prompt positions (right after the
    queries) replaced by P_layer. The original layer stays as `.layer`."""

    def __init__(self, layer: nn.Module, prompts: MaPLePrompts, index: int, num_queries: int):
        super().__init__()
        self.layer = layer
        self.prompts = prompts
        self.index, self.num_queries = index, num_queries

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        prompts = self.prompts
        if prompts.active:
            q = kwargs.get("query_length", self.num_queries)
            n = prompts.prompt_length
            tokens = _tokens(prompts.language(self.index), hidden_states)
            hidden_states = torch.cat([hidden_states[:, :q], tokens, hidden_states[:, q + n:]], dim=1)
        return self.layer(hidden_states, *args, **kwargs)


class VisionPrompts(nn.Module):
    """ViT layer `layer` whose input gets F_layer(P_layer): appended after the patch tokens
    at layer 0, in place of the last n_ctx tokens above. The original layer stays as `.layer`."""

    def __init__(self, layer: nn.Module, prompts: MaPLePrompts, index: int):
        super().__init__()
        self.layer = layer
        self.prompts = prompts
        self.index = index

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        prompts = self.prompts
        if prompts.active:
            kept = hidden_states if self.index == 0 else hidden_states[:, : -prompts.prompt_length]
            hidden_states = torch.cat([kept, _tokens(prompts.vision(self.index), hidden_states)], dim=1)
        return self.layer(hidden_states, *args, **kwargs)


WRAPPERS = (InsertTextPrompts, ReplaceTextPrompts, VisionPrompts)


def inject(model: nn.Module, config: MaPLeConfig) -> Injection:
    """MaPLe's prompts in the ViT and the Q-Former of `model.backbone` (an InstructBLIP); the
    shared prompts and couplings become `model.maple`. Validates every target before changing
    anything."""
    backbone = model.backbone
    vision_layers = backbone.vision_model.encoder.layers
    qformer = backbone.qformer
    qformer_layers = qformer.encoder.layer
    depth = config.depth or min(len(vision_layers), len(qformer_layers))
    if depth > min(len(vision_layers), len(qformer_layers)):
        raise ConfigError(f"MaPLe depth {depth} exceeds the layers of a branch: the ViT has "
                          f"{len(vision_layers)} layers and the Q-Former {len(qformer_layers)}")
    targets = [qformer.embeddings, *vision_layers[: depth], *qformer_layers[1: depth]]
    if any(isinstance(t, WRAPPERS) for t in targets):
        raise ConfigError("the InstructBLIP model already carries MaPLe prompts; inject once per model")
    text_width, vision_width = qformer.config.hidden_size, backbone.config.vision_config.hidden_size
    prompts = MaPLePrompts(text_width, vision_width, depth, config)
    ref = backbone.query_tokens
    if ref.device.type != "meta":
        prompts.to(ref.device)
    attach(model, "maple", prompts)
    num_queries = backbone.config.num_query_tokens
    replace_module(qformer, "embeddings", InsertTextPrompts(qformer.embeddings, prompts))
    for i in range(depth):
        vision_layers[i] = VisionPrompts(vision_layers[i], prompts, i)
        if i > 0:
            qformer_layers[i] = ReplaceTextPrompts(qformer_layers[i], prompts, i, num_queries)
    targets = (["backbone.qformer.embeddings"]
               + [f"backbone.vision_model.encoder.layers.{i}" for i in range(depth)]
               + [f"backbone.qformer.encoder.layer.{i}" for i in range(1, depth)])
    return Injection(targets, [prompts])
