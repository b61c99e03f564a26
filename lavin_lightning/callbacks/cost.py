"""What a training run cost (LaVIN Table 6's columns), measured on every fit.

`<default_root_dir>/cost.json` after fit:

    trainable_params, total_params   counted on the module that trained
    peak_memory_gb                   the largest peak over the processes: CUDA
                                     `max_memory_allocated` on a GPU, else the process's peak
                                     resident set (which includes Python and the frozen weights)
    memory_kind                      "cuda_max_allocated" or "cpu_peak_rss"
    wall_hours                       fit's wall time (setup to the end of training)
    devices, device_hours            processes x nodes, and wall_hours times that
    adapter_bytes                    size of the adapter export (the file when it was written,
                                     else the same tensors serialised: fp32 safetensors)
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from lavin_lightning.checkpoint import ADAPTER_WEIGHTS, adapter_file_size
from lavin_lightning.io import write_json

log = logging.getLogger(__name__)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """The peak memory of this process on `device`, and what was measured."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (peak if sys.platform == "darwin" else peak * 1024), "cpu_peak_rss"


class RunCost(Callback):
    """Writes `cost.json` at the end of fit (list it after ExportAdapter, so that the export's
    file is measured) and logs the same numbers under `cost/`."""

    def __init__(self):
        self.started: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.started is None:
            return
        wall_hours = (time.perf_counter() - self.started) / 3600
        peak, kind = peak_memory_bytes(pl_module.device)
        peak = int(trainer.strategy.reduce(torch.tensor(float(peak), device=pl_module.device), reduce_op="max").item())
        if not trainer.is_global_zero:
            return
        devices = trainer.world_size
        counts = pl_module.parameter_counts()
        root = Path(trainer.default_root_dir)
        export = root / "adapter" / ADAPTER_WEIGHTS
        cost = {
            "trainable_params": counts["trainable"],
            "total_params": counts["total"],
            "peak_memory_gb": round(peak / 1e9, 3),
            "memory_kind": kind,
            "wall_hours": round(wall_hours, 5),
            "devices": devices,
            "device_hours": round(wall_hours * devices, 5),
            "adapter_bytes": export.stat().st_size if export.is_file() else adapter_file_size(pl_module),
            "accelerator": pl_module.device.type,
        }
        write_json(root / "cost.json", cost)
        log.info("cost: %s trainable parameters, peak memory %.2f GB (%s), %.3f h on %d device(s); wrote %s",
                 f"{cost['trainable_params']:,}", cost["peak_memory_gb"], kind, wall_hours, devices,
                 root / "cost.json")
        numeric = {f"cost/{k}": v for k, v in cost.items() if isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
