"""Score ScienceQA test generations with the official metric, once, on rank 0.

Collects what `test_step` returns (pids, generated texts, extracted answer indices),
gathers it across processes, scores it with `metrics.scienceqa.score_scienceqa`, writes
`predictions.json` (the format `lavin-lightning score scienceqa` reads) and
`metrics.json` next to each other, and logs the accuracies and a predictions table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

from lavin_lightning.callbacks.predictions import gather_by_pid
from lavin_lightning.io import write_json
from lavin_lightning.metrics.scienceqa import score_scienceqa

log = logging.getLogger(__name__)


class ScienceQAEvaluation(Callback):
    """Official ScienceQA accuracy for every test run.

    Args:
        output_dir: where predictions.json and metrics.json go (default: the
            trainer's default_root_dir).
        table_rows: rows of the predictions table sent to W&B.
    """

    def __init__(self, output_dir: str | None = None, table_rows: int = 200):
        self.output_dir = output_dir
        self.table_rows = table_rows
        self.records: list[dict] = []
        self.metrics: dict | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.records = []

    @staticmethod
    def applies(trainer) -> bool:
        """Only ScienceQA data modules have problems to score against (base configs list this
        callback for every run)."""
        return hasattr(trainer.datamodule, "problems")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.applies(trainer):
            return
        for i, pid in enumerate(outputs["pids"]):
            self.records.append({"pid": pid, "text": outputs["texts"][i], "pred": outputs["preds"][i],
                                 "guessed": bool(outputs.get("guessed", [False] * len(outputs["pids"]))[i])})

    def output_path(self, trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.applies(trainer):
            return
        records = gather_by_pid(self.records)
        if not trainer.is_global_zero:
            return
        problems = trainer.datamodule.problems
        records.sort(key=lambda r: int(r["pid"]) if r["pid"].isdigit() else r["pid"])
        predictions = {r["pid"]: r["pred"] for r in records}
        metrics = score_scienceqa(problems, predictions, [r["pid"] for r in records])
        metrics["counts"]["random_fallback"] = sum(r["guessed"] for r in records)
        self.metrics = metrics
        out = self.output_path(trainer)
        results = {"results": predictions, "outputs": {r["pid"]: r["text"] for r in records}}
        write_json(out / "predictions.json", results, indent=1)
        write_json(out / "metrics.json", metrics)
        log.info("ScienceQA: average %s%% over %d problems (%d unparsed); wrote %s",
                 metrics["acc_average"], len(records), metrics["counts"]["unparsed"], out / "metrics.json")
        numeric = {f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, str)}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                rows = [[r["pid"], problems[r["pid"]]["question"], r["text"], r["pred"],
                         problems[r["pid"]]["answer"], r["pred"] == problems[r["pid"]]["answer"]]
                        for r in records[: self.table_rows]]
                logger.log_table("test/predictions", columns=["pid", "question", "generated", "prediction",
                                                              "answer", "correct"], data=rows)
