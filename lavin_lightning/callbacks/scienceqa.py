"""Score ScienceQA test generations with the official metric, once, on rank 0.

Collects what `test_step` returns (pids, generated texts, extracted answer indices),
gathers it across processes, scores it with `metrics.scienceqa.score_scienceqa`, writes
`predictions.json` (the format `lavin-lightning score scienceqa` reads) and
`metrics.json` next to each other, and logs the accuracies and a predictions table.
"""

from __future__ import annotations

import logging

from lightning.pytorch.loggers import WandbLogger

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.io import write_json
from lavin_lightning.metrics.scienceqa import score_scienceqa

log = logging.getLogger(__name__)


class ScienceQAEvaluation(TestScoring):
    """Official ScienceQA accuracy for every test run.

    Args:
        output_dir: where predictions.json and metrics.json go (default: the
            trainer's default_root_dir).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "problems"

    def record(self, outputs: dict, index: int) -> dict:
        guessed = outputs.get("guessed", [False] * len(outputs["pids"]))
        return {**super().record(outputs, index), "pred": outputs["preds"][index], "guessed": bool(guessed[index])}

    def score(self, trainer, records: list[dict]) -> None:
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
