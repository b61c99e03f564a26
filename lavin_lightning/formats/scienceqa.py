"""ScienceQA's public files (lupantech/ScienceQA, data/scienceqa) and the predictions format.

    <data_root>/problems.json                    {pid: problem}
    <data_root>/pid_splits.json                  {split: [pid, ...]}
    <data_root>/images/<split>/<pid>/<image>     for problems whose "image" is set; <split> is
                                                 the problem's own "split" field
    <data_root>/captions.json                    {"captions": {pid: text}} (optional)
    predictions                                  {pid: prediction} or {"results": {pid: prediction}, ...}
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import (
    BadRecord,
    describe,
    first_few,
    int_field,
    is_id,
    object_record,
    read_json_unique,
    text_field,
    text_list_field,
)

LAYOUT = (
    "the public ScienceQA layout (lupantech/ScienceQA, data/scienceqa): <data_root>/problems.json, "
    "<data_root>/pid_splits.json, <data_root>/images/<split>/<pid>/image.png and optionally "
    "<data_root>/captions.json"
)

_LETTERS = "ABCDE"
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²"

PROBLEM_FORMAT = (
    'a ScienceQA problem {"question": str, "choices": [str, ...] (1 to 5), "answer": index into choices, "hint": str, '
    '"image": file name or null, "split": str, "lecture": str, "solution": str, "subject": str, "grade": str, '
    '"topic": str, ...}'
)
# The fields the prompts read, and those the scorer reads (lavin_lightning.metrics.scienceqa).
PROMPT_FIELDS = ("question", "choices", "answer")
SCORED_FIELDS = ("answer", "subject", "grade", "hint", "image", "topic")


def _answer(problem: dict) -> None:
    choices = problem.get("choices")
    int_field(problem, "answer", low=0, below=len(choices) if isinstance(choices, list) else None,
              name="field 'answer' (an index into choices)")


# How each field a reader uses is checked (BadRecord naming the field); the others are not read.
# Text that may be empty or null in the public file (no hint, no lecture, no image) may be here too.
_FIELD_CHECKS = {
    "question": lambda p: text_field(p, "question"),
    "choices": lambda p: text_list_field(p, "choices", max_items=len(_LETTERS)),
    "answer": _answer,
    **{name: (lambda p, name=name: text_field(p, name, required=False))
       for name in ("hint", "image", "split", "lecture", "solution")},
    **{name: (lambda p, name=name: text_field(p, name, blank=True)) for name in ("subject", "grade", "topic")},
}


def check_problem(problem: Any, required: Iterable[str] = PROMPT_FIELDS) -> dict:
    """The problem, with the ``required`` fields there and every field a reader uses of its type
    (text, a list of 1-5 choices, an answer that indexes them); BadRecord naming the field otherwise."""
    problem = object_record(problem, "the problem")
    absent = [f for f in required if f not in problem]
    if absent:
        raise BadRecord("missing_field", f"lacks the field(s) {', '.join(absent)}")
    for name, check in _FIELD_CHECKS.items():
        if name in problem:
            check(problem)
    if problem.get("image") and not problem.get("split"):
        raise BadRecord("missing_field", "has an image but no 'split' field (the folder of its image)")
    return problem


def read_problems(data_root: str | os.PathLike) -> dict[str, dict]:
    """``<data_root>/problems.json``: ``{pid: problem}``, every problem an object, no pid twice."""
    path = Path(data_root) / "problems.json"
    data = read_json_unique(path, f"the ScienceQA problems {{pid: problem}}; {LAYOUT}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise DataError(f"{path}: top level is a {kind}; expected an object {{pid: problem}}")
    for pid, problem in data.items():
        if not pid.strip():
            raise DataError(f"{path}: a problem has the empty pid {pid!r}; expected an object {{pid: problem}}")
        if not isinstance(problem, dict):
            kind = type(problem).__name__
            raise DataError(f"{path}: pid {pid} is a {kind}; expected an object (a problem)")
    return data


def require_fields(problem: dict, pid: str, fields: Iterable[str], source: str | os.PathLike) -> None:
    """DataError naming ``source``, the pid and the field when the problem lacks some of ``fields``
    or a field it has is not of its type (:func:`check_problem`)."""
    absent = [f for f in fields if f not in problem]
    if absent:
        raise DataError(f"{source}: pid {pid} lacks the field(s) {', '.join(absent)}; expected {PROBLEM_FORMAT}")
    try:
        check_problem(problem, ())
    except BadRecord as e:
        raise DataError(f"{source}: pid {pid}: {e}; expected {PROBLEM_FORMAT}") from None


def read_pid_splits(data_root: str | os.PathLike) -> dict:
    """``<data_root>/pid_splits.json``: ``{split: [pid, ...]}`` (see :func:`split_pids` for one split)."""
    path = Path(data_root) / "pid_splits.json"
    splits = read_json_unique(path, f"the ScienceQA split lists {{split: [pid, ...]}}; {LAYOUT}")
    if not isinstance(splits, dict):
        kind = type(splits).__name__
        raise DataError(f"{path}: top level is a {kind}; expected an object {{split: [pid, ...]}}")
    return splits


def split_pids(pid_splits: dict, split: str, data_root: str | os.PathLike) -> list[str]:
    """The pids of one split of a :func:`read_pid_splits` object, as strings, in file order."""
    path = Path(data_root) / "pid_splits.json"
    if split not in pid_splits:
        available = ", ".join(sorted(pid_splits))
        raise DataError(f"{path}: unknown split {split!r}; available splits: {available}")
    pids = pid_splits[split]
    if not isinstance(pids, list):
        raise DataError(f"{path}: split {split!r} is a {type(pids).__name__}; expected a list of pids")
    for index, pid in enumerate(pids):
        if not is_id(pid) or not str(pid).strip():
            raise DataError(f"{path}: split {split!r}, item {index} is {pid!r}; expected a pid (a string or an "
                            "integer)")
    pids = [str(pid) for pid in pids]
    repeated = [pid for pid, n in Counter(pids).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: split {split!r} lists {len(repeated)} pid(s) more than once, first: "
                        f"{first_few(repeated)}; expected each pid once")
    return pids


def require_problems(pids: Iterable[str], split: str, data_root: str | os.PathLike, problems: dict) -> None:
    """DataError at the first pid of ``split`` that is not a problem."""
    root = Path(data_root)
    for pid in pids:
        if pid not in problems:
            raise DataError(
                f"{root / 'pid_splits.json'}: split {split!r} lists pid {pid}, which is not in {root / 'problems.json'}"
            )


def read_split_pids(data_root: str | os.PathLike, split: str, problems: dict[str, dict] | None = None) -> list[str]:
    """The pids of ``split``, checked against the problems.

    ``problems`` (as from :func:`read_problems`) avoids reading ``problems.json`` a second
    time; by default it is read from ``data_root``.
    """
    pids = split_pids(read_pid_splits(data_root), split, data_root)
    require_problems(pids, split, data_root, read_problems(data_root) if problems is None else problems)
    return pids


def problem_image(data_root: str | os.PathLike, pid: str, problem: dict) -> Path | None:
    """The image file of a problem checked by :func:`check_problem` (None without one); whether
    it is there and decodes is :mod:`~lavin_lightning.formats.images`' check.

    The folder is the problem's own ``split`` field: the split lists "trainval" and
    "minitest" have no image folders of their own.
    """
    if not problem.get("image"):
        return None
    return Path(data_root) / "images" / problem["split"] / pid / problem["image"]


def read_captions(data_root: str | os.PathLike, problems: dict | None = None) -> dict[str, str]:
    """``<data_root>/captions.json``: ``{pid: caption}`` (the text-only ablation's image captions),
    every caption a string; with ``problems``, every pid one of them."""
    path = Path(data_root) / "captions.json"
    expected = 'image captions {"captions": {pid: text}} (use_caption=True)'
    captions = read_json_unique(path, expected)
    if not isinstance(captions, dict) or not isinstance(captions.get("captions"), dict):
        raise DataError(f'{path}: expected {{"captions": {{pid: text}}}}')
    captions = captions["captions"]
    for pid, caption in captions.items():
        if not isinstance(caption, str):
            raise DataError(f"{path}: the caption of pid {pid} is {describe(caption)}; expected {expected}")
    if problems is not None:
        unknown = [pid for pid in captions if pid not in problems]
        if unknown:
            raise DataError(f"{path}: {len(unknown)} caption(s) for pids that are not in "
                            f"{Path(data_root) / 'problems.json'}, first: {first_few(unknown)}; expected {expected}")
    return captions


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


def read_predictions(path: str | os.PathLike) -> dict[str, object]:
    """``{pid: prediction}`` from a JSON file.

    Either a bare object ``{pid: prediction}`` or the official result layout, an object whose
    ``"results"`` key holds it (other keys such as ``"acc"`` are ignored).
    """
    path = Path(path)
    what = 'an object {pid: prediction} or {"results": {pid: prediction}, ...}'
    data = read_json_unique(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a {type(data).__name__}; expected {what}")
    if "results" in data:
        data = data["results"]
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise DataError(f'{path}: "results" is a {kind}; expected an object {{pid: prediction}}')
    return data
