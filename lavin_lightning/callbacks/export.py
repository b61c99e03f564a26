"""Export the trained adapter (adapter.safetensors + adapter_config.json) after fit."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback

from lavin_lightning.checkpoint import check_export_target, save_adapter
from lavin_lightning.errors import CheckpointError

log = logging.getLogger(__name__)


class ExportAdapter(Callback):
    """Write the adapter-only export at the end of fit, on rank 0.

    The two files are written as one unit (`save_adapter`), replacing an earlier export there;
    a target that holds other files is refused when fit starts, not after training. Training
    that diverged stops before the export (`OptimConfig.on_nonfinite`), and NaN/inf adapters
    are never written.

    Every process holds the trainable tensors whole (DDP replicates the model; the FSDP strategy,
    `lavin_lightning.strategies.AdapterFSDPStrategy`, shards only the frozen backbone), so rank 0
    writes them without gathering anything.

    Args:
        dirpath: target directory (default: `<trainer.default_root_dir>/adapter`).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def _target(self, trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "adapter")

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        refusal = None
        if trainer.is_global_zero:
            try:
                check_export_target(self._target(trainer))
            except CheckpointError as err:
                refusal = str(err)
        # Every process stops, not rank 0 alone (the others would wait for it in a collective).
        refusal = trainer.strategy.broadcast(refusal, src=0)
        if refusal:
            raise CheckpointError(refusal)

    def on_fit_end(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        # A strategy that shards the trainable tensors would leave each process a part of them.
        sharded = [name for name, p in pl_module.named_parameters() if p.requires_grad and isinstance(p, DTensor)]
        if sharded:
            raise RuntimeError(
                f"{type(trainer.strategy).__name__} shards trainable tensors ({sharded[:3]}, {len(sharded)} in all); "
                "the adapter export needs them whole on rank 0: train with lavin_lightning.strategies."
                "AdapterFSDPStrategy (experiments/base/trainer_fsdp.yaml), which keeps them whole")
        if not trainer.is_global_zero:
            return
        target = self._target(trainer)
        save_adapter(pl_module, target)
        log.info("adapter written to %s", target)
