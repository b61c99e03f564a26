"""MME scores as the benchmark's eval tool (``eval_tool/calculation.py``) computes them.

* A prediction is lower-cased (not stripped) and read as "yes" if its first four characters
  contain "yes", else "no" if they contain "no", else "other" (always wrong). So "Yes, it
  is" and "No." count, "The answer is yes" does not.
* The lines of a subtask's results file pair up in order (1-2, 3-4, ...), one image each.
  accuracy = % of questions right; accuracy+ = % of images with both questions right;
  subtask score = accuracy + accuracy+ (at most 200).
* Perception = the sum of the 10 perception subtasks' scores (at most 2000), Cognition of the
  4 cognition subtasks (at most 800), added in the tool's order. Unrounded, as the tool prints
  them.

``parsing="release"`` scores as LaVIN's ``eval_mme.py`` does: the same reading of the
prediction, but the ground-truth column is ignored and the first question of every image is
taken to be a "yes" question and the second a "no" question.

Pure functions, written anew; the files are read by :mod:`lavin_lightning.formats.mme`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.mme import COGNITION, PERCEPTION, SUBTASKS, MMEResult, read_mme_results
from lavin_lightning.io import write_json

__all__ = ["GROUPS", "PARSINGS", "expected_answers", "parse_prediction", "score_mme", "score_mme_files",
           "score_subtask"]

PARSINGS = ("official", "release")
GROUPS = {"perception": PERCEPTION, "cognition": COGNITION}


def check_parsing(parsing: str) -> str:
    if parsing not in PARSINGS:
        raise ConfigError(f"parsing must be one of {list(PARSINGS)}, got {parsing!r}")
    return parsing


def parse_prediction(prediction: str) -> str:
    """"yes", "no" or "other", as the eval tool reads a prediction."""
    # The tool first takes an exact "yes"/"no" as it is; the four-character rule gives the same.
    head = prediction.lower()[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def expected_answers(results: list[MMEResult], parsing: str = "official") -> list[str]:
    """The answer each line is scored against: its ground truth (lower-cased), or with
    ``parsing="release"`` "yes" for the first line of each image and "no" for the second."""
    check_parsing(parsing)
    if parsing == "release":
        return ["yes" if position % 2 == 0 else "no" for position in range(len(results))]
    return [result.ground_truth.lower() for result in results]


def score_subtask(results: list[MMEResult], parsing: str = "official") -> dict:
    """accuracy, accuracy+ and score (percent, unrounded) of one subtask's lines, paired in order,
    plus the counts of questions, images and "other" predictions."""
    if not results or len(results) % 2:
        raise ValueError(f"a subtask needs a positive, even number of lines (two per image), got {len(results)}")
    answers = [parse_prediction(result.prediction) for result in results]
    right = [answer == expected for answer, expected in zip(answers, expected_answers(results, parsing))]
    images = len(results) // 2
    both_right = sum(right[i] and right[i + 1] for i in range(0, len(right), 2))
    # The tool's arithmetic, in its order: fraction x 100, accuracy first.
    acc = sum(right) / len(right) * 100
    acc_plus = both_right / images * 100
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(results),
            "images": images, "other": answers.count("other")}


def score_mme(results: dict[str, list[MMEResult]], parsing: str = "official") -> dict:
    """Every subtask's scores and the Perception and Cognition totals of ``{subtask: lines}``.

    Returns ``{"parsing", "perception", "cognition", "subtasks": {name: score_subtask(...)},
    "missing_subtasks": [...]}``; a total adds the subtasks of its group that are present and is
    None when none is (the eval tool itself needs all 14 files).
    """
    check_parsing(parsing)
    unknown = [name for name in results if name not in SUBTASKS]
    if unknown:
        raise ConfigError(f"unknown MME subtask(s) {unknown}; expected some of {list(SUBTASKS)}")
    subtasks = {name: score_subtask(results[name], parsing) for name in SUBTASKS if name in results}
    totals = {}
    for group, names in GROUPS.items():
        scored = [subtasks[name]["score"] for name in names if name in subtasks]
        totals[group] = sum(scored) if scored else None
    return {"parsing": parsing, **totals, "subtasks": subtasks,
            "missing_subtasks": [name for name in SUBTASKS if name not in subtasks]}


def score_mme_files(
    results_dir: str | os.PathLike, parsing: str = "official", output: str | os.PathLike | None = None,
) -> dict:
    """:func:`score_mme` on a results folder (``<subtask>.txt`` files); with ``output``, also
    written there as JSON, atomically."""
    check_parsing(parsing)
    scores = score_mme(read_mme_results(results_dir), parsing)
    if output is not None:
        write_json(Path(output), scores)
    return scores
