"""TextVQA accuracy as the EvalAI / mmf evaluator (``TextVQAAccuracyEvaluator``) scores it.

**TextVQA** -- the EvalAI / mmf ``EvalAIAnswerProcessor`` and ``TextVQAAccuracyEvaluator``:
both sides are always normalised (lower-case, ``,`` and ``?`` removed, ``'s`` -> `` 's``, then
the VQA punctuation and digit/article steps); the same leave-one-out over exactly 10 answers;
no rounding of the per-question score; the accuracy is the plain mean.

Pure functions, written anew; the normalisation is
:func:`lavin_lightning.metrics.vqa.normalize_textvqa_answer`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import records_at
from lavin_lightning.formats.vqa import (
    TEXTVQA_FORMAT,
    index_by_question_id,
    read_textvqa,
    read_vqa_results,
    result_answers,
    string_list,
)
from lavin_lightning.io import write_json
from lavin_lightning.metrics.vqa import leave_one_out, normalize_textvqa_answer

__all__ = ["score_textvqa", "score_textvqa_files", "textvqa_accuracy"]


def textvqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """TextVQA accuracy of one prediction (EvalAI normalisation on both sides), unrounded."""
    if not gt_answers:
        raise ValueError("textvqa_accuracy needs at least one ground-truth answer")
    answers = [normalize_textvqa_answer(answer) for answer in gt_answers]
    return leave_one_out(normalize_textvqa_answer(prediction), answers)


def score_textvqa(data: dict, results: list, *, data_source: str = "data", results_source: str = "results") -> dict:
    """TextVQA accuracy of ``results`` against a TextVQA json (``{"data": [...]}``).

    Returns ``{"accuracy": percent rounded to 2 (for display), "accuracy_fraction": the
    unrounded mean in 0..1 (what the EvalAI / mmf evaluator returns), "evalQA": {question_id:
    unrounded score in 0..1}}``. Every question needs exactly 10 answers (the evaluator
    asserts it) and exactly one string result.
    """
    index = index_by_question_id(records_at(data, "data", data_source, TEXTVQA_FORMAT), data_source, "question")
    gts = {}
    for qid, record in index.items():
        if "answers" not in record:
            raise DataError(f"{data_source}: question_id {qid!r} has no answers (the test split is scored on EvalAI)")
        gts[qid] = string_list(record["answers"], data_source, qid, "answers", length=10)
    predictions = result_answers(results, results_source, index)
    per_question = {qid: textvqa_accuracy(predictions[qid], answers) for qid, answers in gts.items()}
    if not per_question:
        raise DataError(f"{data_source}: no questions to score")
    fraction = sum(per_question.values()) / len(per_question)
    return {"accuracy": round(100 * fraction, 2), "accuracy_fraction": fraction, "evalQA": per_question}


def score_textvqa_files(
    data_path: str | os.PathLike, results_path: str | os.PathLike, output: str | os.PathLike | None = None
) -> dict:
    """:func:`score_textvqa` on files; with ``output``, also written there atomically."""
    data = read_textvqa(data_path)
    results = read_vqa_results(results_path)
    scores = score_textvqa(data, results, data_source=str(data_path), results_source=str(results_path))
    if output is not None:
        write_json(Path(output), scores)
    return scores
