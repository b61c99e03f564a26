"""Prediction gathering and writing: `predictions.jsonl` for `predict`, and the base of the test-scoring callbacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from lavin_lightning.io import atomic_write

log = logging.getLogger(__name__)


def wandb_loggers(trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers: what the W&B-only work (tables, charts, histograms) is for."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


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


class TestScoring(Callback):
    """Base of the callbacks that score `test` generations: collects one record per sample,
    gathers them across processes and scores them once, on rank 0 (`score`).

    Base configs list every such callback for every run; each acts only on data modules whose
    `datamodule_attribute` (what it scores against) is set, so a subclass of a data module can
    opt out of its parent's scorer by setting that attribute to None.
    """

    datamodule_attribute = ""
    thumbnail_size = 128  # longest side of the table images, in pixels: keeps W&B runs small

    def __init__(self, output_dir: str | None = None, table_rows: int = 200):
        self.output_dir = output_dir
        self.table_rows = table_rows
        self.records: list[dict] = []
        self.metrics: dict | None = None

    def applies(self, trainer) -> bool:
        return getattr(trainer.datamodule, self.datamodule_attribute, None) is not None

    def output_path(self, trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def record(self, outputs: dict, index: int) -> dict:
        """What is kept of sample `index` of a test batch's outputs."""
        return {"pid": outputs["pids"][index], "text": outputs["texts"][index]}

    def score(self, trainer, records: list[dict]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def thumbnails(self, trainer, pids: list[str]) -> list:
        """A `wandb.Image` thumbnail of each pid's test image (None without one); the image files
        come from the data module's `image_paths("test")`."""
        import wandb

        paths_of = getattr(trainer.datamodule, "image_paths", None)
        paths = paths_of("test") if paths_of is not None else {}
        images = []
        for pid in pids:
            path = paths.get(pid)
            if path is None:
                images.append(None)
                continue
            try:
                with Image.open(path) as image:
                    thumbnail = image.convert("RGB")
            except OSError:  # gone or unreadable since setup: the table goes without it, the scores stand
                images.append(None)
                continue
            thumbnail.thumbnail((self.thumbnail_size, self.thumbnail_size))  # in place, never enlarges
            images.append(wandb.Image(thumbnail))
        return images

    def log_scores(self, trainer, scores: dict[str, float]) -> None:
        """Log `scores` (`test/...` names, see README, "W&B dashboards") to every logger."""
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=trainer.global_step)

    def log_bar_chart(self, trainer, key: str, title: str, columns: list[str], rows: list[list]) -> None:
        """A W&B bar chart of `rows` (label, value, then any other columns) under `key`; its
        table comes with it (`<key>_table`)."""
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        import wandb

        chart = wandb.plot.bar(wandb.Table(columns=columns, data=rows), columns[0], columns[1], title=title)
        for logger in loggers:
            logger.log_metrics({key: chart}, step=trainer.global_step)

    def log_table(self, trainer, key: str, columns: list[str], rows: list[tuple[str, list]]) -> None:
        """Log the first `table_rows` of `rows` -- `(pid, cells)` pairs -- to every W&B logger,
        as a table with an "image" column (a thumbnail of the pid's image) before `columns`."""
        loggers = wandb_loggers(trainer)
        if not loggers:
            return
        rows = rows[: self.table_rows]
        images = self.thumbnails(trainer, [pid for pid, _ in rows])
        data = [[image, *cells] for image, (_, cells) in zip(images, rows, strict=True)]
        for logger in loggers:
            logger.log_table(key, columns=["image", *columns], data=data)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.records = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.applies(trainer):
            self.records += [self.record(outputs, i) for i in range(len(outputs["pids"]))]

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.applies(trainer):
            return
        records = gather_by_pid(self.records)
        if trainer.is_global_zero:
            self.score(trainer, records)


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
            log.info("predict: wrote %d predictions to %s", len(rows), path)
