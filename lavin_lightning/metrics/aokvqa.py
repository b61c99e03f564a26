"""A-OKVQA accuracies as allenai/aokvqa ``eval_predictions.py`` scores them.

**A-OKVQA** -- allenai/aokvqa ``eval_predictions.py``: direct answer = raw exact string match,
``min(1, matches / 3)`` over the 10 ``direct_answers`` (no leave-one-out, no normalisation),
questions flagged ``difficult_direct_answer`` excluded; multiple choice = the chosen string
equals ``choices[correct_choice_idx]``. Both as ``sum / n * 100``, unrounded.

Pure functions, written anew.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import first_few, records_at
from lavin_lightning.formats.vqa import (
    AOKVQA_FORMAT,
    index_by_question_id,
    read_aokvqa,
    read_aokvqa_predictions,
    string_list,
)
from lavin_lightning.io import write_json

__all__ = ["score_aokvqa", "score_aokvqa_files"]


def score_aokvqa(
    dataset: list,
    predictions: dict,
    *,
    strict: bool = True,
    dataset_source: str = "dataset",
    predictions_source: str = "predictions",
) -> dict:
    """A-OKVQA direct-answer and multiple-choice accuracies (percent, unrounded).

    ``predictions`` is ``{question_id: {"multiple_choice": str, "direct_answer": str}}``.
    ``strict=True`` (``eval_aokvqa``'s default) requires a multiple-choice prediction for every
    question, one of its choices, and a direct answer for every question that is not
    ``difficult_direct_answer``; ``strict=False`` (what the script's command line passes)
    scores a missing one as wrong and an off-list choice by plain comparison. Predictions for
    question ids not in the dataset are ignored, as officially, and counted.

    Returns ``{"direct_answer": float | None, "multiple_choice": float | None, "counts":
    {"direct_answer": n, "multiple_choice": n, "missing": n, "ignored_predictions": n}}``
    (None when no question is scored in that setting).
    """
    index = index_by_question_id(
        records_at(dataset, None, dataset_source, AOKVQA_FORMAT),
        dataset_source,
        "question",
        ("choices", "correct_choice_idx", "direct_answers", "difficult_direct_answer"),
    )
    if not isinstance(predictions, dict):
        kind = type(predictions).__name__
        raise DataError(f"{predictions_source}: top level is a {kind}; expected an object {{question_id: {{...}}}}")

    def prediction(qid: Hashable, field: str) -> str | None:
        entry = predictions.get(qid)
        if entry is None or field not in entry:
            return None
        value = entry[field]
        if not isinstance(value, str):
            kind = type(value).__name__
            raise DataError(f"{predictions_source}: question_id {qid!r}: {field} is a {kind}; expected a string")
        return value

    for qid, entry in predictions.items():
        if not isinstance(entry, dict):
            kind = type(entry).__name__
            raise DataError(f"{predictions_source}: question_id {qid!r} is a {kind}; expected an object")

    da_accs: list[float] = []
    mc_accs: list[float] = []
    missing: dict[str, list] = {"multiple_choice": [], "direct_answer": []}
    for qid, record in index.items():
        choices = string_list(record["choices"], dataset_source, qid, "choices")
        correct = record["correct_choice_idx"]
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(choices):
            raise DataError(f"{dataset_source}: question_id {qid!r}: correct_choice_idx {correct!r} is not a choice")
        difficult = record["difficult_direct_answer"]
        if not isinstance(difficult, bool):
            raise DataError(f"{dataset_source}: question_id {qid!r}: difficult_direct_answer must be true or false")

        chosen = prediction(qid, "multiple_choice")
        if chosen is None:
            missing["multiple_choice"].append(qid)
            mc_accs.append(0.0)
        else:
            if strict and chosen not in choices:
                raise DataError(
                    f"{predictions_source}: question_id {qid!r}: multiple_choice {chosen!r} is not one of its choices"
                )
            mc_accs.append(float(chosen == choices[correct]))

        if difficult:  # excluded from the direct-answer setting only
            continue
        direct_answers = string_list(record["direct_answers"], dataset_source, qid, "direct_answers")
        answer = prediction(qid, "direct_answer")
        if answer is None:
            missing["direct_answer"].append(qid)
            da_accs.append(0.0)
        else:
            da_accs.append(min(1.0, sum(answer == da for da in direct_answers) / 3.0))

    if strict:
        for field, qids in missing.items():
            if qids:
                raise DataError(
                    f"{predictions_source}: {len(qids)} question(s) have no {field} prediction, first: "
                    f"{first_few(qids, repr)}; the official evaluator requires one per question"
                )

    def percent(accs: list[float]) -> float | None:
        return sum(accs) / len(accs) * 100 if accs else None  # the script's order: mean, then x100

    return {
        "direct_answer": percent(da_accs),
        "multiple_choice": percent(mc_accs),
        "counts": {
            "direct_answer": len(da_accs),
            "multiple_choice": len(mc_accs),
            "missing": len(set(missing["multiple_choice"]) | set(missing["direct_answer"])),
            "ignored_predictions": sum(qid not in index for qid in predictions),
        },
    }


def score_aokvqa_files(
    dataset_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    strict: bool = True,
) -> dict:
    """:func:`score_aokvqa` on files; with ``output``, also written there atomically."""
    dataset = read_aokvqa(dataset_path)
    predictions = read_aokvqa_predictions(predictions_path)
    scores = score_aokvqa(
        dataset,
        predictions,
        strict=strict,
        dataset_source=str(dataset_path),
        predictions_source=str(predictions_path),
    )
    if output is not None:
        write_json(Path(output), scores)
    return scores
