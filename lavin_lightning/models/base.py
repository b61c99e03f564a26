"""`PEFTModule`: what every method's LightningModule shares.

* `configure_model` builds the frozen backbone(s) (`build_model`), injects the method's
  adapters once (`inject`, which calls the method's adapters file), fixes the trainable set
  structurally and loads `adapter_path` if given. It is idempotent, so FSDP and meta-device
  initialisation work.
* The optimizer is AdamW with no weight decay on 1-D parameters; the learning rate is
  absolute, or `base_lr x global batch / 256` when a base lr is given; the schedule is a
  per-step linear warmup followed by a half-cycle cosine (the MAE/LaVIN recipe).
* Lightning checkpoints hold only the trainable tensors (+ optimizer state), the adapter
  export's record (method, settings, targets, backbone fingerprints) and every process's random
  number generators. Loading one checks the record as loading an export does, that the keys are
  exactly the trainable set and that the module's settings are the checkpoint's; resuming `fit`
  then continues the random streams where the checkpoint left them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import asdict, dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lavin_lightning.adapters.core import Injection, mark_only_adapters_trainable
from lavin_lightning.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """Optimisation (defaults: LaVIN's ScienceQA release scripts).

    Args:
        base_lr: learning rate per 256 samples; absolute lr = base_lr x global batch / 256.
        lr: absolute learning rate; overrides base_lr when set.
        weight_decay: AdamW weight decay, not applied to 1-D parameters (biases, norms) unless
            their name matches `decay_also`.
        betas: AdamW betas.
        warmup_epochs: linear warmup length in (fractional) epochs, counted per step.
        min_lr: the cosine schedule's floor.
        decay_also: regular expressions (searched in the trainable parameters' names) of 1-D
            parameters that are decayed anyway: e.g. `adaption_prompt\.gate$`, LLaMA-Adapter's
            gates, which are 4-D in its release and so decayed there.
    """

    base_lr: float | None = 9e-3
    lr: float | None = None
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 2.0
    min_lr: float = 0.0
    decay_also: tuple[str, ...] = ()


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate after `step` optimizer steps (the release: 0 at step 0)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _regex(pattern: str, field: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{field}: {pattern!r} is not a regular expression ({err})") from None


class PEFTModule(L.LightningModule):
    """Base LightningModule of a frozen backbone with injected adapters.

    A method sets `method`, keeps its settings in `self.adapter` (a dataclass) and implements
    `inject(model)` (one call into its adapters file); the family's base class implements
    `build_model` (the frozen backbone(s) in a container module), `tokenizer` and `backbones`.

    Args:
        optim: optimizer and schedule.
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
        global_batch_size: samples per optimizer step over all devices, which `optim.base_lr`
            scales with; `lavin-lightning` fills it in from the data module's global batch.
    """

    method: str = "peft"

    def __init__(self, optim: OptimConfig | None = None, adapter_path: str | None = None,
                 global_batch_size: int | None = None):
        super().__init__()
        self.optim = optim or OptimConfig()
        self.adapter_path = adapter_path
        self.global_batch_size = global_batch_size
        self.adapter = None  # the method's settings (a dataclass), set by subclasses
        self.model: nn.Module | None = None
        self.injection: Injection | None = None
        self._trainable: dict[str, nn.Parameter] = {}
        self._fingerprints: dict[str, dict] = {}
        # Checkpoints hold only adapter tensors; `on_load_checkpoint` checks them instead.
        self.strict_loading = False
        self._resumed_rng: dict | None = None  # a checkpoint's RNG states, put back when training starts

    # -- building ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """Load the frozen backbone(s) into the container module the method injects into."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def inject(self, model: nn.Module) -> Injection:
        """Put the method's adapters into `model` (the method's adapters file does it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement inject()")

    def backbones(self) -> dict[str, tuple[str, nn.Module]]:
        """The frozen backbones by role: (identifier, module), for the adapter export's fingerprint."""
        raise NotImplementedError(f"{type(self).__name__} must implement backbones()")

    @property
    def instruction_tokenizer(self):
        """The tokenizer of the model's instruction encoder (InstructBLIP's Q-Former); None here."""
        return None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.build_model()
        self.injection = self.inject(model)
        self.model = model
        trainable = mark_only_adapters_trainable(self.model, self.injection.trained)
        self._trainable = {f"model.{k}": p for k, p in trainable.items()}
        self._fingerprints = self._fingerprint_backbones()
        if self.adapter_path:
            from lavin_lightning.checkpoint import load_adapter

            load_adapter(self, self.adapter_path)

    @property
    def trainable_names(self) -> set[str]:
        return set(self._trainable)

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self._trainable.values())
        return {"total": total, "trainable": trainable}

    def inference(self) -> contextlib.AbstractContextManager:
        """The model as `predict` and `chat` run it (LoRA merges its updates meanwhile)."""
        return contextlib.nullcontext()

    def on_predict_start(self) -> None:
        self._inference = contextlib.ExitStack()
        self._inference.enter_context(self.inference())

    def on_predict_end(self) -> None:
        self._inference.close()

    # -- steps ------------------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """What `fit` minimises on `batch` ("loss") and the terms it is made of, by name."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_losses()")

    def generate_text(self, batch: dict) -> list[str]:
        """The generated continuation of every prompt of `batch`."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate_text()")

    def training_step(self, batch, batch_idx):
        losses = self.training_losses(batch)
        for name, value in losses.items():
            # The mean over processes: each holds a part of the global batch.
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(batch["pids"]), sync_dist=True)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        loss = self.model.loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["pids"]))
        return loss

    def test_step(self, batch, batch_idx):
        """Generated texts; the task's scoring callback reads the answers out of them."""
        return {"pids": list(batch["pids"]), "texts": self.generate_text(batch)}

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return {"pids": list(batch["pids"]), "texts": self.generate_text(batch)}

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        for logger in self.loggers:
            logger.log_hyperparams({"trainable_params": counts["trainable"], "total_params": counts["total"]})

    # -- optimisation -----------------------------------------------------------------
    def learning_rate(self) -> float:
        if self.optim.lr is not None:
            return self.optim.lr
        if self.optim.base_lr is None:
            raise ConfigError("set optim.lr (absolute) or optim.base_lr (per 256 samples)")
        if self.global_batch_size is None:
            raise ConfigError("optim.base_lr is per 256 samples and needs the module's global_batch_size "
                              "(lavin-lightning fills it in from the data module's); or set optim.lr")
        return self.optim.base_lr * self.global_batch_size / 256

    def configure_optimizers(self):
        decay, no_decay = [], []
        decay_also = {pattern: _regex(pattern, "optim.decay_also") for pattern in self.optim.decay_also}
        matched = set()
        for name, param in self._trainable.items():
            hits = {pattern for pattern, regex in decay_also.items() if regex.search(name)}
            matched |= hits
            vector = param.ndim <= 1 or name.endswith(".bias")
            (no_decay if vector and not hits else decay).append(param)
        if set(decay_also) - matched:
            raise ConfigError(f"optim.decay_also {sorted(set(decay_also) - matched)} matches no trainable parameter "
                              f"(names look like {sorted(self._trainable)[:2]})")
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
    def _fingerprint_backbones(self) -> dict:
        # Taken once, as built: the frozen weights never change afterwards, and a sharding
        # strategy (FSDP) splits them across processes and may cast them for training.
        from lavin_lightning.checkpoint import fingerprint

        return {role: {"id": name, **fingerprint(module)} for role, (name, module) in self.backbones().items()}

    def adapter_meta(self) -> dict:
        """What an adapter checkpoint records besides tensors: the method, its settings, the
        modules it targeted and a fingerprint of every frozen backbone (as built)."""
        return {"method": self.method, "trainable_params": self.parameter_counts()["trainable"],
                "config": asdict(self.adapter), "targets": list(self.injection.targets),
                "backbone": self._fingerprints,
                "evaluation_settings": list(getattr(self.adapter, "EVALUATION_SETTINGS", ()))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Called after the state dict is filled, whatever the strategy: filter here.
        from lavin_lightning.checkpoint import rng_state

        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self._trainable}
        checkpoint["adapter_meta"] = self.adapter_meta()
        # Lightning saves no RNG state; every process's (dropout draws differ per process), by rank.
        # Every process dumps the checkpoint (rank 0 writes it), so gathering here is collective.
        states = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from lavin_lightning.checkpoint import check_meta, settings_diff

        self.configure_model()
        trainer = self._trainer
        source = f"checkpoint {trainer.ckpt_path}" if trainer is not None and trainer.ckpt_path else "checkpoint"
        saved = checkpoint.get("adapter_meta")
        if saved is None:
            raise CheckpointError(f"the {source} has no adapter_meta (method, settings, backbone fingerprints): "
                                  "not one that lavin-lightning wrote")
        problems = check_meta(saved, self.adapter_meta())
        if problems:
            raise CheckpointError(f"the {source} does not fit this model:\n  " + "\n  ".join(problems))
        keys = set(checkpoint.get("state_dict", {}))
        unexpected = sorted(keys - self.trainable_names)
        missing = sorted(self.trainable_names - keys)
        if unexpected or missing:
            raise CheckpointError(
                f"checkpoint does not match this model's adapters: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        fitting = trainer is not None and trainer.state.fn == "fit"
        conflicts = settings_diff(checkpoint.get("hyper_parameters", {}), self.hparams)
        if conflicts and fitting:
            raise CheckpointError(
                f"resuming from the {source} with other settings than it was trained with:\n  "
                + "\n  ".join(conflicts) + "\nresuming continues that run exactly: give its settings, or start a new "
                "run from its trained adapters (the export of fit, model.init_args.adapter_path)")
        if conflicts:
            log.warning("the %s was trained with other settings; these of the model as configured are used:\n  %s",
                        source, "\n  ".join(conflicts))
        if fitting:
            # Lightning's ModelCheckpoint forgets that this step is saved: with gradient accumulation
            # it would save it again after the next micro batch, between two optimizer steps, over
            # the checkpoint that resumes exactly.
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback._last_global_step_saved = checkpoint["global_step"]
            states = checkpoint.get("rng_states") or []
            rank = trainer.global_rank
            if len(states) == trainer.world_size:
                self._resumed_rng = states[rank]
            else:
                log.warning("the %s holds the random number generators of %d processes, this run has %d: their "
                            "streams (dropout) start afresh", source, len(states), trainer.world_size)

    def on_train_start(self) -> None:
        # The RNG streams go on from the checkpoint once the restart is done (model set-up, loaders),
        # before the first batch and before a training loader without a seed draws the order of
        # the next epoch from them.
        if self._resumed_rng is not None:
            from lavin_lightning.checkpoint import set_rng_state

            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
