"""PETAL on a frozen InstructBLIP: mode-approximation deltas, instruction experts and the
information-bottleneck term (see `adapters.petal`)."""

from __future__ import annotations

import torch

from lavin_lightning.adapters.petal import InformationBottleneck, PETALConfig, inject_petal
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig, InstructBLIPModule, QueryFeatures


class PETAL(InstructBLIPModule):
    """PETAL (Zhang et al., 2023): PEFT of InstructBLIP's Q-Former.

    Training loss: CE + λ Î_CLUB(X;Z) + the CLUB estimator's own negative log-likelihood
    (λ = `ib_weight`, fixed; 0 leaves the term and its estimator out).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: PETAL settings.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "petal"

    def __init__(self, backbone: InstructBLIPSpec, adapter: PETALConfig | None = None,
                 optim: OptimConfig | None = None, generation: BeamSearchConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(backbone, optim, generation, adapter_path)
        self.adapter = adapter or PETALConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> None:
        config = model.backbone.config
        model.petal = inject_petal(model.backbone, self.adapter)
        if self.adapter.ib_weight > 0:
            model.information_bottleneck = InformationBottleneck(
                config.vision_config.hidden_size, config.qformer_config.hidden_size, self.adapter)

    def extra_loss(self, batch: dict, features: QueryFeatures) -> dict[str, torch.Tensor]:
        if self.adapter.ib_weight == 0:
            return {}
        ib = self.model.information_bottleneck(features.image_tokens, features.query_tokens)
        return {"ib": self.adapter.ib_weight * ib["bound"], "ib_estimator": ib["estimator_loss"],
                "info_club_bound": ib["bound"].detach()}
