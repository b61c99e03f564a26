"""Score VQA-family test generations with their official evaluators, once, on rank 0.

Collects the generated texts of `test_step`, gathers them across processes, turns each
into an answer (its first line, stripped) and scores the answers against the data module's
ground truth: `VQAEvaluation` (VQAv2, OK-VQA) with `metrics.vqa.score_vqa`,
`TextVQAEvaluation` with `metrics.textvqa.score_textvqa`, `AOKVQAEvaluation` with
`metrics.aokvqa.score_aokvqa`. Each writes `results.json` (the format the matching
`lavin-lightning score` command reads) and `metrics.json`, and logs the accuracies (the
headline as `test/accuracy`), a table of questions, references, outputs and image thumbnails
and, for VQAv2 / OK-VQA, a bar chart of the accuracy per answer type (W&B).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.aokvqa import score_aokvqa
from lavin_lightning.metrics.textvqa import score_textvqa
from lavin_lightning.metrics.vqa import normalize_vqa_answer, score_vqa

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
        self.log_scores(trainer, {"test/accuracy": metrics["overall"], "test/vqa_overall": metrics["overall"],
                                  **{f"test/vqa_{kind}": value for kind, value in metrics["perAnswerType"].items()}})
        per_type = [[kind, value] for kind, value in metrics["perAnswerType"].items()]
        self.log_bar_chart(trainer, "test/vqa_answer_types", "VQA accuracy per answer type",
                           ["answer_type", "accuracy"], per_type)
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations["annotations"]}
        rows = [(str(q["question_id"]), [q["question_id"], q["question"], answer_counts(answers[q["question_id"]]),
                                         r["answer"], metrics["evalQA"][q["question_id"]]])
                for q, r in zip(questions["questions"], results[: self.table_rows])]  # results follow the questions
        self.log_table(trainer, "test/vqa_predictions", ["question_id", "question", "references", "answer", "accuracy"],
                       rows)


class TextVQAEvaluation(TestScoring):
    """TextVQA accuracy (the EvalAI / mmf evaluator, `score_textvqa`) for every test run on TextVQA.

    The published test split has no answers (EvalAI scores it): test on the val split
    (`splits={"test": "val"}` on the data module) or use `predict`. Writes `results.json`
    (`[{"question_id", "answer"}]`, what `lavin-lightning score textvqa` reads) and
    `metrics.json`; logs `test/textvqa_accuracy` and the headline `test/accuracy` (percent, rounded to 2).

    Args:
        output_dir: where results.json and metrics.json go (default: the trainer's
            default_root_dir).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "textvqa_data"  # TextVQA data modules: the TextVQA json of the served questions

    def score(self, trainer, records: list[dict]) -> None:
        data = trainer.datamodule.textvqa_data("test")
        unanswered = [q["question_id"] for q in data["data"] if "answers" not in q]
        if unanswered:
            raise ConfigError(f"test question_id {unanswered[0]!r} has no answers, so the test split cannot be scored "
                              "(TextVQA's test split is scored on EvalAI); test on the val split or use `predict`")
        texts = {r["pid"]: r["text"] for r in records}
        results = [{"question_id": q["question_id"], "answer": generated_answer(texts[str(q["question_id"])])}
                   for q in data["data"]]
        metrics = score_textvqa(data, results)
        out = self.output_path(trainer)
        write_json(out / "results.json", results, indent=1)
        write_json(out / "metrics.json", metrics)
        self.metrics = {k: v for k, v in metrics.items() if k != "evalQA"}
        log.info("TextVQA: accuracy %s over %d questions; wrote %s", metrics["accuracy"], len(results),
                 out / "metrics.json")
        self.log_scores(trainer, {"test/accuracy": metrics["accuracy"], "test/textvqa_accuracy": metrics["accuracy"]})
        rows = [(str(q["question_id"]), [q["question_id"], q["question"], answer_counts(q["answers"]), r["answer"],
                                         metrics["evalQA"][q["question_id"]]])
                for q, r in zip(data["data"], results[: self.table_rows])]
        self.log_table(trainer, "test/textvqa_predictions",
                       ["question_id", "question", "references", "answer", "accuracy"], rows)


def matching_choice(answer: str, choices: list[str]) -> str | None:
    """The first of ``choices`` equal to ``answer`` once both are normalised as VQA answers
    (lower case, punctuation, number words, articles), else None."""
    wanted = normalize_vqa_answer(answer)
    if not wanted:
        return None
    return next((choice for choice in choices if normalize_vqa_answer(choice) == wanted), None)


class AOKVQAEvaluation(TestScoring):
    """A-OKVQA accuracies (allenai/aokvqa's evaluator, `score_aokvqa`) for every test run on A-OKVQA.

    The model generates one free-form answer per question. Direct answer: that answer as
    generated (first line, stripped), matched exactly against the 10 direct answers as the
    official evaluator does (so case and punctuation count). Multiple choice: the choice equal
    to the answer after VQA normalisation on both sides (`matching_choice`); a question whose
    answer matches no choice has no multiple-choice prediction and is scored wrong (`strict=False`,
    counted in `counts.missing`). The model is not shown the choices, so this multiple-choice
    number is a lower bound of what a choice-listing prompt would give.

    The published test split has no answers (the leaderboard scores it): test on the val split
    (`splits={"test": "val"}` on the data module) or use `predict`. Writes `results.json`
    (`{question_id: {"direct_answer", "multiple_choice"}}`, the official predictions layout) and
    `metrics.json`; logs `test/aokvqa_direct_answer` (also as the headline `test/accuracy`) and
    `test/aokvqa_multiple_choice` (percent).

    Args:
        output_dir: where results.json and metrics.json go (default: the trainer's
            default_root_dir).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "aokvqa_dataset"  # A-OKVQA data modules: the question records served

    def score(self, trainer, records: list[dict]) -> None:
        dataset = trainer.datamodule.aokvqa_dataset("test")
        unanswered = [q["question_id"] for q in dataset if "direct_answers" not in q or "correct_choice_idx" not in q]
        if unanswered:
            raise ConfigError(f"test question_id {unanswered[0]!r} has no answers, so the test split cannot be scored "
                              "(A-OKVQA's test split is scored on its leaderboard); test on the val split or use "
                              "`predict`")
        texts = {r["pid"]: r["text"] for r in records}
        predictions = {}
        for q in dataset:
            answer = generated_answer(texts[str(q["question_id"])])
            choice = matching_choice(answer, q.get("choices") or [])
            predictions[q["question_id"]] = {"direct_answer": answer, **({} if choice is None else
                                                                          {"multiple_choice": choice})}
        metrics = score_aokvqa(dataset, predictions, strict=False)
        out = self.output_path(trainer)
        write_json(out / "results.json", predictions, indent=1)
        write_json(out / "metrics.json", metrics)
        self.metrics = metrics
        log.info("A-OKVQA: direct answer %s, multiple choice %s over %d questions (%d answers matched no choice); "
                 "wrote %s", metrics["direct_answer"], metrics["multiple_choice"], len(dataset),
                 metrics["counts"]["missing"], out / "metrics.json")
        numeric = {f"test/aokvqa_{setting}": metrics[setting] for setting in ("direct_answer", "multiple_choice")
                   if metrics[setting] is not None}
        if metrics["direct_answer"] is not None:  # the accuracy PETAL's tables print
            numeric = {"test/accuracy": metrics["direct_answer"], **numeric}
        self.log_scores(trainer, numeric)
        rows = []
        for q in dataset[: self.table_rows]:
            prediction = predictions[q["question_id"]]
            rows.append((str(q["question_id"]), [
                q["question_id"], q["question"], answer_counts(q["direct_answers"]), prediction["direct_answer"],
                " | ".join(q["choices"]), prediction.get("multiple_choice"), q["choices"][q["correct_choice_idx"]]]))
        self.log_table(trainer, "test/aokvqa_predictions", ["question_id", "question", "direct_answers", "answer",
                                                            "choices", "choice", "correct_choice"], rows)
