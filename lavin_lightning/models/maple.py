"""MaPLe on a frozen InstructBLIP: coupled deep prompts in the ViT and the Q-Former's text
stream (see `adapters.maple`)."""

from __future__ import annotations

from lavin_lightning.adapters.maple import MaPLeConfig, inject_maple
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig, InstructBLIPModule


class MaPLe(InstructBLIPModule):
    """MaPLe (Khattak et al., CVPR 2023) as a PETAL baseline: language prompts P_i in the
    Q-Former's text stream and vision prompts F_i(P_i) in the ViT, in the first J layers.

    Trainable parameters: J n_ctx d_q (prompts) + J (d_q d_v + d_v) (couplings); with the
    defaults (n_ctx 2, J 9) on InstructBLIP FlanT5-XXL (d_q 768, d_v 1408):
    9·2·768 + 9·(768·1408 + 1408) = 9,758,592. Not the identity at init (prompts add tokens).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: MaPLe settings.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "maple"

    def __init__(self, backbone: InstructBLIPSpec, adapter: MaPLeConfig | None = None,
                 optim: OptimConfig | None = None, generation: BeamSearchConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(backbone, optim, generation, adapter_path)
        self.adapter = adapter or MaPLeConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> None:
        model.maple = inject_maple(model, self.adapter)
