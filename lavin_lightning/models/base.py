"""`PEFTModule`: what every method's LightningModule shares.

* `configure_model` builds the frozen backbone and injects the adapters once (idempotent,
  so FSDP/meta-device initialisation work), then fixes the trainable set structurally.
* The optimizer is AdamW with no weight decay on 1-D parameters; the learning rate is
  absolute, or `base_lr x global batch / 256` when a base lr is given; the schedule is a
  per-step linear warmup followed by a half-cycle cosine (the MAE/LaVIN recipe).
* Lightning checkpoints hold only the trainable tensors (+ optimizer state); loading one
  checks that its keys are exactly the trainable set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from lavin_lightning.adapters.core import mark_only_adapters_trainable
from lavin_lightning.errors import CheckpointError, ConfigError


@dataclass
class OptimConfig:
    """Optimisation (defaults: LaVIN's ScienceQA release scripts).

    Args:
        base_lr: learning rate per 256 samples; absolute lr = base_lr x global batch / 256.
        lr: absolute learning rate; overrides base_lr when set.
        weight_decay: AdamW weight decay, not applied to 1-D parameters (biases, norms).
        betas: AdamW betas.
        warmup_epochs: linear warmup length in (fractional) epochs, counted per step.
        min_lr: the cosine schedule's floor.
    """

    base_lr: float | None = 9e-3
    lr: float | None = None
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 2.0
    min_lr: float = 0.0


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate after `step` optimizer steps (the release: 0 at step 0)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class PEFTModule(L.LightningModule):
    """Base LightningModule of a frozen backbone with injected adapters."""

    method: str = "peft"

    def __init__(self, optim: OptimConfig | None = None):
        super().__init__()
        self.optim = optim or OptimConfig()
        self.model: nn.Module | None = None
        self._trainable: dict[str, nn.Parameter] = {}
        # Checkpoints hold only adapter tensors; `on_load_checkpoint` checks them instead.
        self.strict_loading = False

    # -- building ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """Load the frozen backbone(s) and inject the adapters. Called once."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = self.build_model()
        self._trainable = {f"model.{k}": p for k, p in mark_only_adapters_trainable(self.model).items()}

    @property
    def trainable_names(self) -> set[str]:
        return set(self._trainable)

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self._trainable.values())
        return {"total": total, "trainable": trainable}

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        for logger in self.loggers:
            logger.log_hyperparams({"trainable_params": counts["trainable"], "total_params": counts["total"]})

    # -- optimisation -----------------------------------------------------------------
    def global_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "global_batch_size", None)
        if size is None:
            raise ConfigError("base_lr scaling needs the data module's global_batch_size; set optim.lr instead")
        return int(size)

    def learning_rate(self) -> float:
        if self.optim.lr is not None:
            return self.optim.lr
        if self.optim.base_lr is None:
            raise ConfigError("set optim.lr (absolute) or optim.base_lr (per 256 samples)")
        return self.optim.base_lr * self.global_batch_size() / 256

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self._trainable.items():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        lr = self.learning_rate()
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.optim.betas))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = self.optim.warmup_epochs * total / epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, lr, self.optim.min_lr) / lr
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints ------------------------------------------------------------------
    def adapter_meta(self) -> dict:
        """What an adapter checkpoint records besides tensors (method, backbone, config)."""
        return {"method": self.method, "trainable_params": self.parameter_counts()["trainable"]}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Called after the state dict is filled, whatever the strategy: filter here.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self._trainable}
        checkpoint["adapter_meta"] = self.adapter_meta()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()
        keys = set(checkpoint.get("state_dict", {}))
        unexpected = sorted(keys - self.trainable_names)
        missing = sorted(self.trainable_names - keys)
        if unexpected or missing:
            raise CheckpointError(
                f"checkpoint does not match this model's adapters: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
