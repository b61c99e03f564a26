"""MaPLe on a frozen InstructBLIP: coupled deep prompts in the ViT and the Q-Former's text
stream (see `adapters.maple`)."""

from __future__ import annotations

import torch

from lavin_lightning.adapters import maple
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.maple import MaPLeConfig
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, InstructBLIPModule


class MaPLeInstructBLIP(AdaptedInstructBLIP):
    """InstructBLIP whose instruction mask covers the language prompts inserted after the queries."""

    def instruction_mask(self, mask: torch.Tensor) -> torch.Tensor:
        inserted = self.maple.prompt_tokens
        return torch.cat([mask.new_ones(mask.shape[0], inserted), mask], dim=1) if inserted else mask


class MaPLe(InstructBLIPModule):
    """MaPLe (Khattak et al., CVPR 2023) as a PETAL baseline: language prompts P_i in the
    Q-Former's text stream and vision prompts F_i(P_i) in the ViT, in the first J layers.

    Trainable parameters: J n_ctx d_q (prompts) + J (d_q d_v + d_v) (couplings); with the
    defaults (n_ctx 2, J 9) on InstructBLIP FlanT5-XXL (d_q 768, d_v 1408):
    9·2·768 + 9·(768·1408 + 1408) = 9,758,592. Not the identity at init (prompts add tokens).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: MaPLe settings.
        **kwargs: `InstructBLIPModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "maple"
    model_class = MaPLeInstructBLIP

    def __init__(self, backbone: InstructBLIPSpec, adapter: MaPLeConfig | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.adapter = adapter or MaPLeConfig()
        self.save_hyperparameters()

    def inject(self, model: MaPLeInstructBLIP) -> Injection:
        return maple.inject(model, self.adapter)
