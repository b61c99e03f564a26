"""PETAL on a frozen InstructBLIP: mode-approximation deltas, instruction experts and the
information-bottleneck term (see `adapters.petal`)."""

from __future__ import annotations

import torch

from lavin_lightning.adapters.petal import InformationBottleneck, PETALConfig, inject_petal
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import IGNORE_INDEX
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig, InstructBLIPModule, QueryFeatures


class PETAL(InstructBLIPModule):
    """PETAL (Zhang et al., 2023): PEFT of InstructBLIP's Q-Former.

    Training loss: CE - λ (I(Z;Y) - η I(X;Z)) + the IB estimators' own losses (λ = `ib_weight`,
    fixed; 0 leaves the term and its estimators out).

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
                config.vision_config.hidden_size, config.qformer_config.hidden_size,
                config.text_config.vocab_size, self.adapter)

    def extra_loss(self, batch: dict, features: QueryFeatures) -> dict[str, torch.Tensor]:
        if self.adapter.ib_weight == 0:
            return {}
        targets = self._bag_of_targets(batch)
        ib = self.model.information_bottleneck(features.image_tokens, features.query_tokens, targets)
        return {"ib": -self.adapter.ib_weight * ib["objective"], "ib_estimators": ib["estimator_loss"],
                "info_i_zy": ib["i_zy"], "info_i_xz": ib["i_xz"]}

    def _bag_of_targets(self, batch: dict) -> torch.Tensor:
        """Y: each sample's answer tokens as a normalised bag of words over the LM vocabulary."""
        labels = batch["labels"]
        vocab = self.model.backbone.config.text_config.vocab_size
        supervised = labels != IGNORE_INDEX
        counts = torch.zeros(labels.shape[0], vocab, device=labels.device)
        counts.scatter_add_(1, labels.clamp(min=0), supervised.float())
        return counts / counts.sum(1, keepdim=True).clamp(min=1)
