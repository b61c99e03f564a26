"""Full and head tuning of InstructBLIP's Q-Former side (PETAL's baselines): no module is added;
parts of the frozen backbone are trained as a whole."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lavin_lightning.adapters.core import Injection
from lavin_lightning.errors import ConfigError


@dataclass
class QFormerTuningConfig:
    """Args:
        mode: "full" trains the Q-Former, its query tokens and the projection to the LM (what
            InstructBLIP's instruction tuning trains); "head" trains the projection only.
    """

    mode: str = "full"

    def __post_init__(self):
        if self.mode not in ("full", "head"):
            raise ConfigError(f"QFormerTuningConfig.mode must be 'full' or 'head', got {self.mode!r}")


def inject(model: nn.Module, config: QFormerTuningConfig) -> Injection:
    """Mark the trained parts of `model.backbone` (an InstructBLIP)."""
    backbone = model.backbone
    if config.mode == "head":
        return Injection(["backbone.language_projection"], [], [backbone.language_projection])
    return Injection(["backbone.qformer", "backbone.query_tokens", "backbone.language_projection"], [],
                     [backbone.qformer, backbone.query_tokens, backbone.language_projection])
