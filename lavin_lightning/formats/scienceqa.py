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
from collections.abc import Iterable
from pathlib import Path

from lavin_lightning.errors import DataError
from lavin_lightning.io import read_json

LAYOUT = (
    "the public ScienceQA layout (lupantech/ScienceQA, data/scienceqa): <data_root>/problems.json, "
    "<data_root>/pid_splits.json, <data_root>/images/<split>/<pid>/image.png and optionally "
    "<data_root>/captions.json"
)

_LETTERS = "ABCDE"
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() would accept "²"


def read_problems(data_root: str | os.PathLike) -> dict[str, dict]:
    """``<data_root>/problems.json``: ``{pid: problem}``, every problem an object."""
    path = Path(data_root) / "problems.json"
    data = read_json(path, f"the ScienceQA problems {{pid: problem}}; {LAYOUT}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise DataError(f"{path}: top level is a {kind}; expected an object {{pid: problem}}")
    for pid, problem in data.items():
        if not isinstance(problem, dict):
            kind = type(problem).__name__
            raise DataError(f"{path}: pid {pid} is a {kind}; expected an object (a problem)")
    return data


def require_fields(problem: dict, pid: str, fields: Iterable[str], source: str | os.PathLike) -> None:
    """DataError naming ``source`` and the pid when the problem lacks some of ``fields``."""
    absent = [f for f in fields if f not in problem]
    if absent:
        raise DataError(f"{source}: pid {pid} lacks the field(s) {', '.join(absent)}")


def read_pid_splits(data_root: str | os.PathLike) -> dict:
    """``<data_root>/pid_splits.json``: ``{split: [pid, ...]}`` (see :func:`split_pids` for one split)."""
    path = Path(data_root) / "pid_splits.json"
    splits = read_json(path, f"the ScienceQA split lists {{split: [pid, ...]}}; {LAYOUT}")
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
    return [str(pid) for pid in pids]


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
    """The image file of a problem (None without one), checked to exist.

    The folder is the problem's own ``split`` field: the split lists "trainval" and
    "minitest" have no image folders of their own.
    """
    if not problem.get("image"):
        return None
    problems_path = Path(data_root) / "problems.json"
    folder = problem.get("split")
    if not folder:
        raise DataError(f"{problems_path}: pid {pid} has an image but no 'split' field")
    path = Path(data_root) / "images" / folder / pid / problem["image"]
    if not path.is_file():
        raise DataError(f"image {path} of pid {pid} not found; expected {LAYOUT}")
    return path


def read_captions(data_root: str | os.PathLike) -> dict[str, str]:
    """``<data_root>/captions.json``: ``{pid: caption}`` (the text-only ablation's image captions)."""
    path = Path(data_root) / "captions.json"
    captions = read_json(path, 'image captions {"captions": {pid: text}} (use_caption=True)')
    if not isinstance(captions, dict) or not isinstance(captions.get("captions"), dict):
        raise DataError(f'{path}: expected {{"captions": {{pid: text}}}}')
    return captions["captions"]


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
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a {type(data).__name__}; expected {what}")
    if "results" in data:
        data = data["results"]
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise DataError(f'{path}: "results" is a {kind}; expected an object {{pid: prediction}}')
    return data
