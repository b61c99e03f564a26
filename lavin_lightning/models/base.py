"""`PEFTModule`: what every method's LightningModule shares.

* `configure_model` builds the frozen backbone(s) (`build_model`), injects the method's
  adapters once (`inject`, which calls the method's adapters file), fixes the trainable set
  structurally and loads `adapter_path` if given. It is idempotent, so FSDP and meta-device
  initialisation work.
* The optimizer is AdamW with no weight decay on 1-D parameters; the learning rate is
  absolute, or `base_lr x global batch / 256` when a base lr is given; the schedule is a
  per-step linear warmup followed by a half-cycle cosine (the MAE/LaVIN recipe).
* Before each optimizer step the losses of its batches and the adapters' gradients are checked:
  a NaN or inf stops training with a message naming the step and the batches, or, with
  `optim.on_nonfinite: skip`, skips that step (`skipped_steps`); every process decides alike.
* Lightning checkpoints hold only the trainable tensors (+ optimizer state), the adapter
  export's record (method, settings, targets, backbone fingerprints) and every process's random
  number generators. Loading one checks the record as loading an export does, that the keys are
  exactly the trainable set and that the module's settings are the checkpoint's; resuming `fit`
  then continues the random streams where the checkpoint left them.
* `activation_checkpointing` makes every repeated block of the backbones (LLaMA decoder layers,
  CLIP / InstructBLIP ViT and Q-Former layers, T5 blocks, timm ViT blocks) keep only its input in
  training and recompute the rest in backward (`set_activation_checkpointing`): the adapters'
  gradients are exactly the same, at the cost of one more forward pass per block.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn

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
        on_nonfinite: what an optimizer step does when a loss of its batches or a gradient is NaN
            or inf: "error" stops training with a message naming the step and the batches; "skip"
            leaves the adapters as they are for that step (the schedule goes on), logs
            `train/skipped_steps` and reports the skipped steps at the end. With fp16's gradient
            scaler, non-finite gradients are the scaler's to skip; the loss is still checked.
    """

    base_lr: float | None = 9e-3
    lr: float | None = None
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 2.0
    min_lr: float = 0.0
    decay_also: tuple[str, ...] = ()
    on_nonfinite: Literal["error", "skip"] = "error"


class NonFiniteError(FloatingPointError):
    """Training met a NaN or inf loss or gradient (`OptimConfig.on_nonfinite: error`)."""


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate after `step` optimizer steps (the release: 0 at step 0)."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _few(items: list, n: int = 5) -> str:
    """The first `n` of `items`, and how many there are when there are more."""
    return f"{items[:n]}" if len(items) <= n else f"{items[:n]} ... ({len(items)} in all)"


def _regex(pattern: str, field: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{field}: {pattern!r} is not a regular expression ({err})") from None


# Context managers that hold per-batch state on modules for one forward (`held_for_forward`),
# entered again around every recomputation of a checkpointed block that ran inside them.
_HELD: ContextVar[tuple[Callable[[], contextlib.AbstractContextManager], ...]] = ContextVar("held", default=())


@contextlib.contextmanager
def held_for_forward(enter: Callable[[], contextlib.AbstractContextManager]):
    """Enter `enter()`, a context manager that sets per-batch state on modules for one forward (where
    a seam has no keyword path), so that activation checkpointing can set it again, with the same
    tensors, when backward recomputes a block that read it."""
    token = _HELD.set(_HELD.get() + (enter,))
    try:
        with enter():
            yield
    finally:
        _HELD.reset(token)


def _checkpoint(function, *args, **kwargs):
    held = _HELD.get()  # at forward time; the recomputation runs later, in backward

    @contextlib.contextmanager
    def replay():
        with contextlib.ExitStack() as stack:
            for enter in held:
                stack.enter_context(enter())
            yield

    def contexts():  # (around the forward, around the recomputation)
        return contextlib.nullcontext(), replay()

    return checkpoint(function, *args, use_reentrant=False, context_fn=contexts if held else noop_context_fn,
                      **kwargs)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> dict[str, int]:
    """Make every repeated block of the backbones in `model` recompute its activations in backward
    (non-reentrant `torch.utils.checkpoint`) or, `enabled=False`, store them again; idempotent.
    Returns the number of blocks switched, by class.

    A block is checkpointed whole, adapters inside it included, so gradients are exact (dropout
    draws are replayed, and so is per-batch state held with `held_for_forward`). transformers'
    blocks (`GradientCheckpointingLayer`: LLaMA, CLIP, InstructBLIP, T5) do it only in training
    mode with autograd recording, around `forward`, so module hooks (FSDP2's) stay outside; timm's
    ViT does it whenever autograd records, which validation, test and generation (no_grad) never do.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    switched: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            # The switch that transformers' own `activation_checkpointing_enable` sets, per block:
            # that method would also make the input embeddings require grad, which
            # non-reentrant checkpointing does not need and which would cost memory.
            module.gradient_checkpointing = enabled
            module._gradient_checkpointing_func = _checkpoint
            switched[type(module).__name__] += 1
        elif type(module).__module__.startswith("timm.") and callable(getattr(module, "set_grad_checkpointing", None)) \
                and isinstance(getattr(module, "blocks", None), nn.Sequential):
            from timm.layers import use_reentrant_ckpt

            if enabled and use_reentrant_ckpt():
                # Reentrant checkpoints of a frozen tower pass no gradient to adapters inside it.
                raise ConfigError("activation_checkpointing: timm is set to reentrant checkpoints "
                                  "(TIMM_REENTRANT_CKPT); unset it, adapters in the ViT would get no gradient")
            module.set_grad_checkpointing(enabled)
            switched[f"{type(module).__name__}.blocks"] += len(module.blocks)
    return dict(switched)


def _refuse_training_quantized(trained) -> None:
    """Full / head tuning of quantized frozen weights (llm.quantization) has no gradient to take."""
    from lavin_lightning.backbones.llama import is_quantized

    for part in trained:
        named = [("", part)] if isinstance(part, nn.Parameter) else list(part.named_parameters())
        quantized = [name for name, p in named if is_quantized(p)]
        if quantized:
            raise ConfigError(f"this method trains backbone weights as a whole, and {quantized[:3]} of "
                              f"{type(part).__name__} are quantized: quantized weights stay frozen. Drop "
                              "llm.quantization for full or head tuning, or train adapters over the quantized backbone")


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
        allow_backbone_mismatch: load `adapter_path` although it was trained on a backbone of the
            same architecture with other weights (a fine-tuned or re-quantised copy).
        activation_checkpointing: in training, keep only each backbone block's input and recompute
            its activations in backward (`set_activation_checkpointing`): much less memory for
            activations, one more forward pass per step; the same gradients, so not part of the
            settings a checkpoint or export records or is checked against.
    """

    method: str = "peft"

    def __init__(self, optim: OptimConfig | None = None, adapter_path: str | None = None,
                 global_batch_size: int | None = None, allow_backbone_mismatch: bool = False,
                 activation_checkpointing: bool = False):
        super().__init__()
        self.optim = optim or OptimConfig()
        self.adapter_path = adapter_path
        self.global_batch_size = global_batch_size
        self.allow_backbone_mismatch = allow_backbone_mismatch
        self.activation_checkpointing = activation_checkpointing
        self.adapter = None  # the method's settings (a dataclass), set by subclasses
        self.model: nn.Module | None = None
        self.injection: Injection | None = None
        self._trainable: dict[str, nn.Parameter] = {}
        self._fingerprints: dict[str, dict] = {}
        # Checkpoints hold only adapter tensors; `on_load_checkpoint` checks them instead.
        self.strict_loading = False
        self._resumed_rng: dict | None = None  # a checkpoint's RNG states, put back when training starts
        # (batch index, sample ids, loss is finite) of the micro-batches of the optimizer step under way.
        self._step_batches: list[tuple[int, list, torch.Tensor]] = []
        self.skipped_steps: list[int] = []  # global steps skipped with `optim.on_nonfinite: skip`

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
        _refuse_training_quantized(self.injection.trained)
        self.model = model
        trainable = mark_only_adapters_trainable(self.model, self.injection.trained)
        self._trainable = {f"model.{k}": p for k, p in trainable.items()}
        self._fingerprints = self._fingerprint_backbones()
        if self.activation_checkpointing:
            self.enable_activation_checkpointing()
        if self.adapter_path:
            from lavin_lightning.checkpoint import load_adapter

            load_adapter(self, self.adapter_path, allow_backbone_mismatch=self.allow_backbone_mismatch)

    def enable_activation_checkpointing(self) -> None:
        """Turn `activation_checkpointing` on (now, or when `configure_model` builds the model); the
        FSDP strategy's option of that name calls this too."""
        self.activation_checkpointing = True
        if self.model is None:
            return
        switched = set_activation_checkpointing(self.model)
        if not switched:
            raise ConfigError(f"activation_checkpointing: {type(self).__name__} has no block that can be "
                              "checkpointed (transformers' GradientCheckpointingLayer, timm's ViT blocks)")
        log.info("activation checkpointing: %s", ", ".join(f"{n} x {c}" for c, n in sorted(switched.items())))

    @property
    def trainable_names(self) -> set[str]:
        return set(self._trainable)

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self._trainable.values())
        return {"total": total, "trainable": trainable}

    def inference(self) -> contextlib.AbstractContextManager:
        """The model as `test`, `predict` and `chat` run it (LoRA merges its updates meanwhile,
        LaVIN folds its MM-Adapters into the frozen weights)."""
        return contextlib.nullcontext()

    def on_predict_start(self) -> None:
        self._inference = contextlib.ExitStack()
        self._inference.enter_context(self.inference())

    def on_predict_end(self) -> None:
        self._inference.close()

    on_test_start, on_test_end = on_predict_start, on_predict_end

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
        # Read back once per optimizer step (`on_before_optimizer_step`), not here: no sync per batch.
        self._step_batches.append((batch_idx, list(batch["pids"]), torch.isfinite(losses["loss"].detach()).all()))
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
        for field in ("lr", "base_lr"):
            value = getattr(self.optim, field)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"optim.{field}: {value} is not a learning rate (expected a finite number >= 0; "
                                  "0 trains nothing)")
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
        if self.optim.on_nonfinite not in ("error", "skip"):
            raise ConfigError(f"optim.on_nonfinite: {self.optim.on_nonfinite!r}, expected 'error' or 'skip'")
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.optim.betas))
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = self.optim.warmup_epochs * total / epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(
            # LambdaLR multiplies the optimizer's lr: the schedule's value relative to it (lr 0: all 0).
            optimizer, lambda step: warmup_cosine(step, warmup, total, lr, self.optim.min_lr) / lr if lr else 0.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Here every micro-batch of the step has run its backward and the gradients are averaged
        # over processes (DDP, AdapterFSDPStrategy) and unscaled (AMP): all processes decide alike.
        batches, self._step_batches = self._step_batches, []
        finite_losses = [finite for _, _, finite in batches]
        grads = {name: p.grad for name, p in self._trainable.items() if p.grad is not None}
        # fp16's scaler meets inf gradients by design; it skips those steps itself.
        check_grads = getattr(self.trainer.precision_plugin, "scaler", None) is None
        checks = finite_losses + ([torch.isfinite(g).all() for g in grads.values()] if check_grads else [])
        bad_here = bool(checks) and not bool(torch.stack([c.to(checks[0].device) for c in checks]).all())
        if not self.trainer.strategy.reduce_boolean_decision(bad_here, all=False):
            if self.optim.on_nonfinite == "skip":
                self.log("train/skipped_steps", float(len(self.skipped_steps)))
            return
        step = self.trainer.global_step
        bad_losses = [(i, pids) for (i, pids, _), finite in zip(batches, finite_losses) if not bool(finite)]
        bad_grads = [name for name, g in grads.items() if check_grads and not bool(torch.isfinite(g).all())]
        what = []
        if bad_losses:
            what.append("the loss is NaN or inf on " + "; ".join(
                f"batch {i} (sample ids {_few(pids)})" for i, pids in bad_losses))
        if bad_grads and bad_losses:
            what.append(f"so are the gradients of adapter tensors ({len(bad_grads)}, e.g. {bad_grads[:3]})")
        elif bad_grads:
            what.append(f"the gradients of adapter tensors are NaN or inf ({len(bad_grads)}, e.g. {bad_grads[:3]}) "
                        "after " + "; ".join(f"batch {i} (sample ids {_few(pids)})" for i, pids, _ in batches))
        if not what:
            what.append("another process met a NaN or inf loss or gradient (this process ran "
                        + "; ".join(f"batch {i}" for i, _, _ in batches) + ")")
        rank = f" on process {self.trainer.global_rank}" if self.trainer.world_size > 1 else ""
        message = f"non-finite training at global step {step} (epoch {self.current_epoch}){rank}: " + "; ".join(what)
        if self.optim.on_nonfinite == "error":
            raise NonFiniteError(f"{message}. The adapters are left as they were before this step. Lower the "
                                 f"learning rate (optim.lr / optim.base_lr; it is {optimizer.param_groups[0]['lr']:g} "
                                 "now), or set optim.on_nonfinite: skip to skip such steps")
        for param in self._trainable.values():
            param.grad = None  # the optimizer leaves a parameter without gradient as it is
        self.skipped_steps.append(step)
        self.log("train/skipped_steps", float(len(self.skipped_steps)))
        log.warning("%s; skipped this optimizer step (%d skipped so far)", message, len(self.skipped_steps))

    def on_train_end(self) -> None:
        if self.skipped_steps and self.trainer.is_global_zero:
            total = self.trainer.global_step
            log.warning("optim.on_nonfinite: skip: %d of %d optimizer steps were skipped (NaN or inf loss or "
                        "gradients) at global steps %s", len(self.skipped_steps), total, _few(self.skipped_steps, 20))

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
        from lavin_lightning.checkpoint import MISMATCH_HINT, check_meta, check_record, settings_diff

        self.configure_model()
        trainer = self._trainer
        source = f"checkpoint {trainer.ckpt_path}" if trainer is not None and trainer.ckpt_path else "checkpoint"
        saved = checkpoint.get("adapter_meta")
        if saved is None:
            raise CheckpointError(f"the {source} has no adapter_meta (method, settings, backbone fingerprints): "
                                  "not one that lavin-lightning wrote")
        check_record(saved, f"the {source} (its adapter_meta)", export=False)
        problems = check_meta(saved, self.adapter_meta(), self.allow_backbone_mismatch, weights_hint=MISMATCH_HINT)
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
        # What a step does with a NaN/inf is not part of the run: resuming a diverged run with
        # `skip` is what that option is for. Activation checkpointing changes memory, not results.
        conflicts = [line for line in settings_diff(checkpoint.get("hyper_parameters", {}), self.hparams)
                     if not line.startswith(("optim.on_nonfinite:", "activation_checkpointing:"))]
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
