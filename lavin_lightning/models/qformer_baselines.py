"""PETAL's baselines on the same frozen InstructBLIP: Q-Former full and head tuning, LoRA
(through peft) and the bottleneck adapter of PETAL's tables. MaPLe is in `models.maple`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lavin_lightning.adapters.bottleneck import BottleneckConfig, inject_bottleneck
from lavin_lightning.adapters.lora import LoRAConfig, inject_qformer_lora
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig, InstructBLIPModule


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


class QFormerTuning(InstructBLIPModule):
    """Full fine-tuning of the Q-Former, or head tuning (the projection into the LM).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: which part trains.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "qformer_tuning"

    def __init__(self, backbone: InstructBLIPSpec, adapter: QFormerTuningConfig | None = None,
                 optim: OptimConfig | None = None, generation: BeamSearchConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(backbone, optim, generation, adapter_path)
        self.adapter = adapter or QFormerTuningConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> None:
        pass  # nothing is added: parts of the backbone itself are trained

    def trainable_backbone_parts(self, model: AdaptedInstructBLIP) -> list[nn.Module | nn.Parameter]:
        head = [model.backbone.language_projection]
        if self.adapter.mode == "head":
            return head
        return [model.backbone.qformer, model.backbone.query_tokens, *head]


class QFormerLoRA(InstructBLIPModule):
    """LoRA (through peft) on the Q-Former's attention projections (self and cross).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: rank (64 in PETAL's tables), alpha, dropout and target projections.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "qformer_lora"

    def __init__(self, backbone: InstructBLIPSpec, adapter: LoRAConfig | None = None,
                 optim: OptimConfig | None = None, generation: BeamSearchConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(backbone, optim, generation, adapter_path)
        self.adapter = adapter or LoRAConfig(rank=64, alpha=64.0, dropout=0.0,
                                             target_modules=["query", "key", "value"])
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> None:
        inject_qformer_lora(model.backbone.qformer, self.adapter)


class QFormerBottleneck(InstructBLIPModule):
    """The bottleneck adapter PETAL's tables list as "LLaMA-Adapter (R=128)".

    Args:
        backbone: the frozen InstructBLIP.
        adapter: bottleneck width, output scale, and whether cross-attention inputs are adapted.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "qformer_bottleneck"

    def __init__(self, backbone: InstructBLIPSpec, adapter: BottleneckConfig | None = None,
                 optim: OptimConfig | None = None, generation: BeamSearchConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(backbone, optim, generation, adapter_path)
        self.adapter = adapter or BottleneckConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> None:
        inject_bottleneck(model.backbone.qformer, self.adapter)
