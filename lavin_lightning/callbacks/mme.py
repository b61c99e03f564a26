"""Score MME test generations as the benchmark's eval tool does, once, on rank 0.

Collects the generated text of every question (`test_step`), gathers them across processes,
writes the eval tool's results layout -- `<output dir>/mme_results/<subtask>.txt`, one line
`image<TAB>question<TAB>ground truth<TAB>prediction` per question -- and scores that folder
with `metrics.mme.score_mme_files`, exactly as `lavin-lightning score mme --results DIR` does,
so that the two always agree. Writes `metrics.json` beside the folder and logs
`test/mme_perception`, `test/mme_cognition` and `test/mme/<subtask>_{acc,acc_plus,score}`;
to W&B also a bar chart of the subtask scores and a table of the questions and answers.
"""

from __future__ import annotations

import logging

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.errors import DataError
from lavin_lightning.formats.mme import MMEResult, write_mme_results
from lavin_lightning.formats.records import first_few
from lavin_lightning.metrics.mme import check_parsing, expected_answers, parse_prediction, score_mme_files

log = logging.getLogger(__name__)

RESULTS_FOLDER = "mme_results"


class MMEEvaluation(TestScoring):
    """MME scores (accuracy, accuracy+, Perception and Cognition totals) for every test run on MME.

    Args:
        output_dir: where `mme_results/` and `metrics.json` go (default: the trainer's
            default_root_dir).
        parsing: "official" (the eval tool: the ground-truth column) or "release" (LaVIN's
            eval_mme.py: first question of an image "yes", second "no", ground truth ignored).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "mme_questions"  # MME data modules: the questions served, in order

    def __init__(self, output_dir: str | None = None, parsing: str = "official", table_rows: int = 200):
        super().__init__(output_dir, table_rows)
        self.parsing = check_parsing(parsing)

    def score(self, trainer, records: list[dict]) -> None:
        questions = trainer.datamodule.mme_questions("test")
        texts = {r["pid"]: r["text"] for r in records}
        unanswered = [q.pid for q in questions if q.pid not in texts]
        if unanswered:
            raise DataError(f"{len(unanswered)} of the {len(questions)} MME test questions have no generation, "
                            f"first: {first_few(unanswered)}")
        # Served in the eval tool's subtask order, the two questions of an image together.
        results: dict[str, list[MMEResult]] = {}
        pids: dict[str, list[str]] = {}
        for q in questions:
            results.setdefault(q.subtask, []).append(MMEResult(q.image, q.question, q.answer, texts[q.pid]))
            pids.setdefault(q.subtask, []).append(q.pid)
        out = self.output_path(trainer)
        results_dir = out / RESULTS_FOLDER
        write_mme_results(results_dir, results)
        metrics = score_mme_files(results_dir, self.parsing, output=out / "metrics.json")
        self.metrics = metrics
        log.info("MME (%s parsing): perception %s, cognition %s over %d questions; wrote %s and %s", self.parsing,
                 _total(metrics["perception"]), _total(metrics["cognition"]), len(questions), results_dir,
                 out / "metrics.json")
        numeric = {f"test/mme_{group}": metrics[group] for group in ("perception", "cognition")
                   if metrics[group] is not None}
        for subtask, scores in metrics["subtasks"].items():
            numeric.update({f"test/mme/{subtask}_{key}": scores[key] for key in ("acc", "acc_plus", "score")})
        self.log_scores(trainer, numeric)
        self.log_bar_chart(trainer, "test/mme_subtasks", f"MME score per subtask ({self.parsing} parsing)",
                           ["subtask", "score", "acc", "acc_plus"],
                           [[name, s["score"], s["acc"], s["acc_plus"]] for name, s in metrics["subtasks"].items()])
        self._log_predictions(trainer, results, pids)

    def _log_predictions(self, trainer, results: dict[str, list[MMEResult]], pids: dict[str, list[str]]) -> None:
        rows = []
        for subtask, lines in results.items():
            for pid, line, expected in zip(pids[subtask], lines, expected_answers(lines, self.parsing)):
                answer = parse_prediction(line.prediction)
                rows.append((pid, [subtask, line.image, line.question, line.ground_truth, line.prediction, answer,
                                   answer == expected]))
        self.log_table(trainer, "test/mme_predictions",
                       ["subtask", "image_file", "question", "ground_truth", "prediction", "parsed", "correct"], rows)


def _total(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
