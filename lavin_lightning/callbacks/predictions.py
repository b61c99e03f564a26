"""Write what `predict_step` generates to `predictions.jsonl`, one line per sample, on rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import Callback

from lavin_lightning.io import atomic_write


def gather_by_pid(records: list[dict]) -> list[dict]:
    """All processes' records, each pid once (DistributedSampler repeats samples to pad the
    last batch; the first copy is kept). Without a process group: the records as they are."""
    if not (dist.is_available() and dist.is_initialized()):
        return records
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    merged: dict = {}
    for part in parts:
        for record in part:
            merged.setdefault(record["pid"], record)
    return list(merged.values())


class WritePredictions(Callback):
    """`lavin-lightning predict` output, one JSON object per line: `{"pid": ..., "text": ...}`;
    when the data module keeps its input records by id (prompt files), the record with its
    `"response"` instead: `{"id": ..., "instruction": ..., "input": ..., "image": ..., "response": ...}`.

    Args:
        output_dir: where predictions.jsonl goes (default: the trainer's default_root_dir).
    """

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir
        self.rows: list[dict] = []

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.rows += [{"pid": pid, "text": text} for pid, text in zip(outputs["pids"], outputs["texts"])]

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        rows = gather_by_pid(self.rows)
        records = getattr(trainer.datamodule, "records", None)
        if records is not None:
            rows = [{"id": row["pid"], **records[row["pid"]], "response": row["text"]} for row in rows]
        if trainer.is_global_zero:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            path = Path(self.output_dir or trainer.default_root_dir) / "predictions.jsonl"
            atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
