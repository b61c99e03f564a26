"""Score VQA-family test generations with their official evaluators, once, on rank 0.

Collects the generated texts of `test_step`, gathers them across processes, turns each
into an answer (its first line, stripped) and scores the answers against the data module's
ground truth: `VQAEvaluation` (VQAv2, OK-VQA) with `metrics.vqa.score_vqa`,
`TextVQAEvaluation` with `score_textvqa`, `AOKVQAEvaluation` with `score_aokvqa`. Each
writes `results.json` (the format the matching `lavin-lightning score` command reads) and
`metrics.json`, and logs the accuracies and a table of questions, references, outputs and
image thumbnails (W&B).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.vqa import normalize_vqa_answer, score_aokvqa, score_textvqa, score_vqa

log = logging.getLogger(__name__)


def generated_answer(text: str) -> str:
    """The answer in a generation: its first non-empty line, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def answer_counts(answers: Iterable[str]) -> str:
    """Human answers as the table shows them: "red x3, dark red x2", most frequent first."""
    return ", ".join(f"{answer} x{n}" for answer, n in Counter(answers).most_common())


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
        log.info("VQA (%s): overall %s over %d questions; wrote %s", self.mode, metrics["overall"], len(results),
                 out / "metrics.json")
        numeric = {"test/vqa_overall": metrics["overall"],
                   **{f"test/vqa_{kind}": value for kind, value in metrics["perAnswerType"].items()}}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=trainer.global_step)
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations["annotations"]}
        rows = [(str(q["question_id"]), [q["question_id"], q["question"], answer_counts(answers[q["question_id"]]),
                                         r["answer"], metrics["evalQA"][q["question_id"]]])
                for q, r in zip(questions["questions"], results[: self.table_rows])]  # results follow the questions
        self.log_table(trainer, "test/vqa_predictions", ["question_id", "question", "references", "answer", "accuracy"],
                       rows)
