"""Export the trained adapter (adapter.safetensors + adapter_config.json) after fit."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback

from lavin_lightning.checkpoint import save_adapter

log = logging.getLogger(__name__)


class ExportAdapter(Callback):
    """Write the adapter-only export at the end of fit, on rank 0.

    Args:
        dirpath: target directory (default: `<trainer.default_root_dir>/adapter`).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        target = Path(self.dirpath or Path(trainer.default_root_dir) / "adapter")
        save_adapter(pl_module, target)
        log.info("adapter written to %s", target)
