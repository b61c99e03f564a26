"""ScienceQA accuracy: the official per-category scores of choice predictions.

The scores re-implement the semantics of lupantech/ScienceQA ``tools/evaluate_acc.py``
(written anew, no pandas): a prediction is a choice index, correct iff it equals the
problem's ``answer``; accuracies are reported per subject (NAT/SOC/LAN), per context
(TXT = hint non-empty, IMG = image present -- these overlap --, NO = neither), per grade band
and per topic, each as the string ``"{:.2f}"`` of a percentage. Pure functions, stdlib only.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from lavin_lightning.errors import DataError
from lavin_lightning.io import read_json, write_json

__all__ = [
    "OFFICIAL_KEYS",
    "PAPER_LABELS",
    "load_predictions",
    "load_problems",
    "load_split_pids",
    "parse_prediction",
    "score_scienceqa",
    "score_scienceqa_files",
]

_LETTERS = "ABCDE"
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²"

_LAYOUT = (
    "a ScienceQA data root holds problems.json, pid_splits.json and "
    "images/<split>/<pid>/image.png, as in the public lupantech/ScienceQA release"
)

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

# How many pids an error message lists before saying "...".
_SHOW = 5


def parse_prediction(value: object) -> int | None:
    """A prediction as a choice index, or None when it cannot be read ("unparsed").

    Accepted: an int (not a bool), a string of ASCII digits (surrounding whitespace is
    stripped), or a single capital letter "A".."E" (-> 0..4, also stripped). Anything else --
    None, floats, lists, lower-case or other letters, negative numbers -- is None and scores as
    wrong. An index that is out of range for its problem is returned as is: it is not unparsed,
    it is simply wrong (the official script just compares it to ``answer``).
    """
    if isinstance(value, bool):  # bool is an int subclass: True would score as "B"
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            return int(text)
        if len(text) == 1 and text in _LETTERS:
            return _LETTERS.index(text)
    return None


# --------------------------------------------------------------------------- loading


def load_predictions(path: str | os.PathLike) -> dict[str, object]:
    """Read ``{pid: prediction}`` from a JSON file.

    Either a bare object ``{pid: prediction}`` or the official result layout, an object whose
    ``"results"`` key holds it (other keys such as ``"acc"`` are ignored).
    """
    path = Path(path)
    what = 'an object {pid: prediction} or {"results": {pid: prediction}, ...}'
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a {type(data).__name__}; expected {what}")
    if "results" in data:
        data = data["results"]
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise DataError(f'{path}: "results" is a {kind}; expected an object {{pid: prediction}}')
    return data


def load_problems(data_root: str | os.PathLike) -> dict[str, dict]:
    """Read ``<data_root>/problems.json``: ``{pid: problem}``."""
    path = Path(data_root) / "problems.json"
    data = read_json(path, f"the ScienceQA problems {{pid: problem}}; {_LAYOUT}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise DataError(f"{path}: top level is a {kind}; expected an object {{pid: problem}}")
    for pid, problem in data.items():
        if not isinstance(problem, dict):
            kind = type(problem).__name__
            raise DataError(f"{path}: pid {pid} is a {kind}; expected an object (a problem)")
    return data


def load_split_pids(
    data_root: str | os.PathLike, split: str, problems: dict[str, dict] | None = None
) -> list[str]:
    """The pids of ``split`` from ``<data_root>/pid_splits.json``, checked against the problems.

    ``problems`` (as from :func:`load_problems`) avoids reading ``problems.json`` a second
    time; by default it is read from ``data_root``.
    """
    root = Path(data_root)
    path = root / "pid_splits.json"
    splits = read_json(path, f"the ScienceQA split lists {{split: [pid, ...]}}; {_LAYOUT}")
    if not isinstance(splits, dict):
        kind = type(splits).__name__
        raise DataError(f"{path}: top level is a {kind}; expected an object {{split: [pid, ...]}}")
    if split not in splits:
        available = ", ".join(sorted(splits))
        raise DataError(f"{path}: unknown split {split!r}; available splits: {available}")
    pids = splits[split]
    if not isinstance(pids, list):
        kind = type(pids).__name__
        raise DataError(f"{path}: split {split!r} is a {kind}; expected a list of pids")
    pids = [str(pid) for pid in pids]
    if problems is None:
        problems = load_problems(root)
    for pid in pids:
        if pid not in problems:
            raise DataError(
                f"{path}: split {split!r} lists pid {pid}, which is not in {root / 'problems.json'}"
            )
    return pids


# --------------------------------------------------------------------------- scoring


def _first_few(pids: list[str]) -> str:
    shown = ", ".join(pids[:_SHOW])
    return shown + (", ..." if len(pids) > _SHOW else "")


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
    must cover exactly these pids. A prediction is read with :func:`parse_prediction` and is
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
        raise DataError(f"the evaluated pids list some pids more than once: {_first_few(dupes)}")

    unknown = [pid for pid in pids if pid not in problems]
    if unknown:
        raise DataError(
            f"{problems_source}: {len(unknown)} evaluated pid(s) are not problems, "
            f"first: {_first_few(unknown)}"
        )
    missing = [pid for pid in pids if pid not in predictions]
    if missing:
        raise DataError(
            f"{predictions_source}: {len(missing)} of {len(pids)} evaluated pid(s) have no "
            f"prediction, first: {_first_few(missing)}; expected one prediction per pid"
        )
    wanted = set(pids)
    extra = [pid for pid in predictions if pid not in wanted]
    if extra:
        raise DataError(
            f"{predictions_source}: {len(extra)} prediction(s) for pids outside the evaluated "
            f"set, first: {_first_few(extra)}; expected predictions for exactly the evaluated pids"
        )

    # One pass: [correct, total] per official key and per topic.
    tallies = {key: [0, 0] for key in _CATEGORIES}
    topics: dict[str, list[int]] = {}
    unparsed = 0
    for pid in pids:
        problem = problems[pid]
        absent = [f for f in _SCORED_FIELDS if f not in problem]
        if absent:
            raise DataError(f"{problems_source}: pid {pid} lacks the field(s) {', '.join(absent)}")
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
    problems = load_problems(data_root)
    pids = load_split_pids(data_root, split, problems)
    predictions = load_predictions(predictions_path)
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
