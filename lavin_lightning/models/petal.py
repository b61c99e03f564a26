"""PETAL on a frozen InstructBLIP: mode-approximation deltas, instruction experts and the
information-bottleneck term (see `adapters.petal`)."""

from __future__ import annotations

import torch

from lavin_lightning.adapters import petal
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.petal import PETALConfig
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, InstructBLIPModule, QueryFeatures


class PETAL(InstructBLIPModule):
    """PETAL (Zhang et al., 2023): PEFT of InstructBLIP's Q-Former.

    Training loss: CE + λ Î_CLUB(X;Z) + the CLUB estimator's own negative log-likelihood
    (λ = `ib_weight`, fixed; 0 leaves the term and its estimator out).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: PETAL settings.
        **kwargs: `InstructBLIPModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "petal"

    def __init__(self, backbone: InstructBLIPSpec, adapter: PETALConfig | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.adapter = adapter or PETALConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> Injection:
        return petal.inject(model, self.adapter)

    def extra_loss(self, batch: dict, features: QueryFeatures) -> dict[str, torch.Tensor]:
        if self.adapter.ib_weight == 0:
            return {}
        ib = self.model.information_bottleneck(features.image_tokens, features.query_tokens)
        return {"ib": self.adapter.ib_weight * ib["bound"], "ib_estimator": ib["estimator_loss"],
                "info_club_bound": ib["bound"].detach()}
