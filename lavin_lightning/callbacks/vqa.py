"""Score VQA test generations with the official VQA evaluator, once, on rank 0.

Collects the generated texts of `test_step`, gathers them across processes, turns each
into an answer (its first line, stripped), scores the results with
`metrics.vqa.score_vqa` against the data module's questions and annotations, writes
`results.json` (the official results format, which `lavin-lightning score vqa` reads) and
`metrics.json`, and logs the accuracies and a table of questions, references and outputs.
"""

from __future__ import annotations

import logging
from collections import Counter

from lightning.pytorch.loggers import WandbLogger

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.vqa import score_vqa


def generated_answer(text: str) -> str:
    """The answer in a generation: its first non-empty line, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class VQAEvaluation(TestScoring):
    """Official VQA accuracy for every test run (VQAv2, OK-VQA, the embedded easy-VQA).

    Args:
        output_dir: where results.json and metrics.json go (default: the trainer's
            default_root_dir).
        mode: "official" (the 2021 evaluator) or "legacy" (the pre-2021 one LAVIS/PETAL vendor).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "official"  # VQA data modules: questions and annotations per role

    def __init__(self, output_dir: str | None = None, mode: str = "official", table_rows: int = 200):
        if mode not in ("official", "legacy"):
            raise ConfigError(f"mode must be 'official' or 'legacy', got {mode!r}")
        super().__init__(output_dir, table_rows)
        self.mode = mode

    def score(self, trainer, records: list[dict]) -> None:
        questions, annotations = trainer.datamodule.official("test")
        if annotations is None:
            raise ConfigError("the test split has no annotations, so it cannot be scored; use `predict` instead")
        texts = {r["pid"]: r["text"] for r in records}
        results = [{"question_id": q["question_id"], "answer": generated_answer(texts[str(q["question_id"])])}
                   for q in questions["questions"]]
        metrics = score_vqa(questions, annotations, results, mode=self.mode)
        out = self.output_path(trainer)
        write_json(out / "results.json", results, indent=1)
        write_json(out / "metrics.json", metrics)
        self.metrics = {k: v for k, v in metrics.items() if k != "evalQA"}
        logging.getLogger(__name__).info("VQA (%s): overall %s over %d questions; wrote %s", self.mode,
                                         metrics["overall"], len(results), out / "metrics.json")
        numeric = {"test/vqa_overall": metrics["overall"],
                   **{f"test/vqa_{kind}": value for kind, value in metrics["perAnswerType"].items()}}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                question_text = {q["question_id"]: q["question"] for q in questions["questions"]}
                references = {a["question_id"]: ", ".join(f"{answer} x{n}" for answer, n in Counter(
                    x["answer"] for x in a["answers"]).most_common()) for a in annotations["annotations"]}
                rows = [[r["question_id"], question_text[r["question_id"]], references[r["question_id"]], r["answer"],
                         metrics["evalQA"][r["question_id"]]] for r in results[: self.table_rows]]
                logger.log_table("test/vqa_predictions", columns=["question_id", "question", "references", "answer",
                                                                  "accuracy"], data=rows)
