"""ScienceQA accuracy: the official per-category scores of choice predictions.

The scores re-implement the semantics of lupantech/ScienceQA ``tools/evaluate_acc.py``
(written anew, no pandas): a prediction is a choice index, correct iff it equals the
problem's ``answer``; accuracies are reported per subject (NAT/SOC/LAN), per context
(TXT = hint non-empty, IMG = image present -- these overlap --, NO = neither), per grade band
and per topic, each as the string ``"{:.2f}"`` of a percentage. Pure functions; the files are
read through :mod:`lavin_lightning.formats.scienceqa`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import first_few, require_known
from lavin_lightning.formats.scienceqa import (
    parse_prediction,
    read_predictions,
    read_problems,
    read_split_pids,
    require_fields,
)
from lavin_lightning.io import write_json

__all__ = [
    "OFFICIAL_KEYS",
    "PAPER_LABELS",
    "score_scienceqa",
    "score_scienceqa_files",
]

# Fields of a problem that scoring reads.
_SCORED_FIELDS = ("answer", "subject", "grade", "hint", "image", "topic")

_GRADES_1_6 = frozenset(f"grade{g}" for g in range(1, 7))
_GRADES_7_12 = frozenset(f"grade{g}" for g in range(7, 13))

# The official keys, in the official script's order, each with its membership test.
_CATEGORIES = {
    "acc_natural": lambda p: p["subject"] == "natural science",
    "acc_social": lambda p: p["subject"] == "social science",
    "acc_language": lambda p: p["subject"] == "language science",
    "acc_has_text": lambda p: bool(p["hint"]),
    "acc_has_image": lambda p: bool(p["image"]),
    "acc_no_context": lambda p: not p["hint"] and not p["image"],
    "acc_grade_1_6": lambda p: p["grade"] in _GRADES_1_6,
    "acc_grade_7_12": lambda p: p["grade"] in _GRADES_7_12,
    "acc_average": lambda p: True,
}
OFFICIAL_KEYS = tuple(_CATEGORIES)
# The column labels papers print for the official keys (LaVIN Table 1), in the same order.
PAPER_LABELS = dict(zip(OFFICIAL_KEYS, ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")))


# --------------------------------------------------------------------------- scoring


def _accuracy(correct: int, total: int) -> str | None:
    # Same operation order as the official script (correct / total * 100), so that the
    # rare float ties round the same way.
    if total == 0:
        return None
    return f"{correct / total * 100:.2f}"


def score_scienceqa(
    problems: dict[str, dict],
    predictions: dict[str, object],
    pids: list[str] | None = None,
    *,
    problems_source: str = "problems",
    predictions_source: str = "predictions",
) -> dict:
    """Official ScienceQA accuracies of ``predictions`` over ``pids``.

    ``pids`` are the evaluated pids (default: every pid of ``predictions``); the predictions
    must cover exactly these pids. A prediction is read with
    :func:`~lavin_lightning.formats.scienceqa.parse_prediction` and is
    correct iff it equals the problem's ``answer``; unreadable ones count as wrong and are
    counted in ``counts["unparsed"]``.

    Returns a JSON-ready dict: the nine official keys (``acc_natural``, ``acc_social``,
    ``acc_language``, ``acc_has_text``, ``acc_has_image``, ``acc_no_context``,
    ``acc_grade_1_6``, ``acc_grade_7_12``, ``acc_average``), then ``acc_<topic>`` for each
    topic present (sorted), each the string ``"{:.2f}"`` of a percentage -- or **None for a
    category with no evaluated problem** (the official script would divide by zero) -- then
    ``"counts"``: ``{"total", "correct", "unparsed", "per_category": {key: [correct, total]}}``.

    ``problems_source``/``predictions_source`` name the inputs in error messages (file paths
    when called by :func:`score_scienceqa_files`).
    """
    pids = list(predictions) if pids is None else list(pids)
    if not pids:
        raise DataError(f"{predictions_source}: no pids to score; expected at least one prediction")
    dupes = [pid for pid, n in Counter(pids).items() if n > 1]
    if dupes:
        raise DataError(f"the evaluated pids list some pids more than once: {first_few(dupes)}")
    require_known(pids, problems, lambda n, first: (
        f"{problems_source}: {n} evaluated pid(s) are not problems, first: {first}"))
    require_known(pids, predictions, lambda n, first: (
        f"{predictions_source}: {n} of {len(pids)} evaluated pid(s) have no prediction, first: {first}; "
        "expected one prediction per pid"))
    require_known(predictions, set(pids), lambda n, first: (
        f"{predictions_source}: {n} prediction(s) for pids outside the evaluated set, first: {first}; "
        "expected predictions for exactly the evaluated pids"))

    # One pass: [correct, total] per official key and per topic.
    tallies = {key: [0, 0] for key in _CATEGORIES}
    topics: dict[str, list[int]] = {}
    unparsed = 0
    for pid in pids:
        problem = problems[pid]
        require_fields(problem, pid, _SCORED_FIELDS, problems_source)
        pred = parse_prediction(predictions[pid])
        unparsed += pred is None
        hit = int(pred is not None and pred == problem["answer"])
        for key, member in _CATEGORIES.items():
            if member(problem):
                tallies[key][0] += hit
                tallies[key][1] += 1
        topic_tally = topics.setdefault(str(problem["topic"]), [0, 0])
        topic_tally[0] += hit
        topic_tally[1] += 1

    for topic in sorted(topics):
        key = f"acc_{topic}"
        if key in tallies:  # a topic named like an official key would overwrite it
            raise DataError(f"{problems_source}: topic {topic!r} clashes with the official key {key!r}")
        tallies[key] = topics[topic]

    scores: dict = {key: _accuracy(c, t) for key, (c, t) in tallies.items()}
    correct, total = tallies["acc_average"]
    scores["counts"] = {
        "total": total,
        "correct": correct,
        "unparsed": unparsed,
        "per_category": {key: list(ct) for key, ct in tallies.items()},
    }
    return scores


def score_scienceqa_files(
    data_root: str | os.PathLike,
    predictions_path: str | os.PathLike,
    split: str = "test",
    output: str | os.PathLike | None = None,
) -> dict:
    """Score a predictions file over one split of a ScienceQA data root.

    The predictions must cover exactly the split's pids. With ``output``, the scores are also
    written there as JSON (indent 2), atomically.
    """
    problems = read_problems(data_root)
    pids = read_split_pids(data_root, split, problems)
    predictions = read_predictions(predictions_path)
    scores = score_scienceqa(
        problems,
        predictions,
        pids,
        problems_source=str(Path(data_root) / "problems.json"),
        predictions_source=f"{predictions_path} (split {split!r})",
    )
    if output is not None:
        write_json(Path(output), scores)
    return scores
