"""PETAL's baselines on the same frozen InstructBLIP: Q-Former full and head tuning, LoRA
(through peft) and the bottleneck adapter of PETAL's tables. MaPLe is in `models.maple`."""

from __future__ import annotations

from lavin_lightning.adapters import bottleneck, lora, qformer_tuning
from lavin_lightning.adapters.bottleneck import BottleneckConfig
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.lora import LoRAConfig
from lavin_lightning.adapters.qformer_tuning import QFormerTuningConfig
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, InstructBLIPModule


class QFormerTuning(InstructBLIPModule):
    """Full fine-tuning of the Q-Former, or head tuning (the projection into the LM).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: which part trains.
        **kwargs: `InstructBLIPModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "qformer_tuning"

    def __init__(self, backbone: InstructBLIPSpec, adapter: QFormerTuningConfig | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.adapter = adapter or QFormerTuningConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> Injection:
        return qformer_tuning.inject(model, self.adapter)


class QFormerLoRA(InstructBLIPModule):
    """LoRA (through peft) on the Q-Former's attention projections (self and cross).

    Args:
        backbone: the frozen InstructBLIP.
        adapter: rank (64 in PETAL's tables), alpha, dropout and target projections.
        **kwargs: `InstructBLIPModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "qformer_lora"

    def __init__(self, backbone: InstructBLIPSpec, adapter: LoRAConfig | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.adapter = adapter or LoRAConfig(rank=64, alpha=64.0, dropout=0.0,
                                             target_modules=["query", "key", "value"])
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> Injection:
        return lora.inject(model, self.adapter)


class QFormerBottleneck(InstructBLIPModule):
    """The bottleneck adapter PETAL's tables list as "LLaMA-Adapter (R=128)".

    Args:
        backbone: the frozen InstructBLIP.
        adapter: bottleneck width, output scale, and whether cross-attention inputs are adapted.
        **kwargs: `InstructBLIPModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "qformer_bottleneck"

    def __init__(self, backbone: InstructBLIPSpec, adapter: BottleneckConfig | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.adapter = adapter or BottleneckConfig()
        self.save_hyperparameters()

    def inject(self, model: AdaptedInstructBLIP) -> Injection:
        return bottleneck.inject(model, self.adapter)
