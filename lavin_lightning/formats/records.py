"""Checking the records of a public file: stop at the first bad one, or leave bad ones out and count them.

Shared by every reader: the bad-record screening (``on_bad_record``), the id checks, the
"these ids are not covered" errors and the list-of-records JSON file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.io import read_json

ON_BAD_RECORD = ("error", "skip")

# How many ids an error message lists before saying "...".
_SHOW = 5

Parsed = TypeVar("Parsed")


class BadRecord(Exception):
    """What is wrong with one record; ``reason`` is the short name it is counted under when skipped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ReadReport:
    """What a reader left out: bad records per reason, and unanswered trailing turns (LLaVA).

    ``first_skipped`` is the full message of the first record left out, for the caller's log.
    """

    on_bad_record: str = "error"
    skipped: Counter = field(default_factory=Counter)
    unanswered_turns: int = 0
    first_skipped: str | None = None

    def screen(self, where: str, expected: str, parse: Callable[..., Parsed], *args: Any) -> Parsed | None:
        """``parse(*args)``; a BadRecord becomes a DataError located at ``where``, or (skip) is counted."""
        try:
            return parse(*args)
        except BadRecord as e:
            message = f"{where}: {e}; expected {expected}"
            if self.on_bad_record == "error":
                raise DataError(message) from None
            if self.first_skipped is None:
                self.first_skipped = message
            self.skipped[e.reason] += 1
            return None

    def summary(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "unanswered_turns": self.unanswered_turns}


def check_on_bad_record(on_bad_record: str) -> str:
    if on_bad_record not in ON_BAD_RECORD:
        raise ConfigError(f"on_bad_record must be one of {list(ON_BAD_RECORD)}, got {on_bad_record!r}")
    return on_bad_record


def is_id(value: Any) -> bool:
    """An id of a JSON record: an int or a string (bool is an int subclass; floats do not survive as keys)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def first_few(items: Sequence, render: Callable[[Any], str] = str) -> str:
    """The first few items for an error message, then "..." if there are more."""
    shown = ", ".join(render(item) for item in items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def require_known(
    ids: Iterable, known: Container, message: Callable[[int, str], str], render: Callable[[Any], str] = str
) -> None:
    """DataError ``message(count, first few)`` when some of ``ids`` are not in ``known``."""
    absent = [i for i in ids if i not in known]
    if absent:
        raise DataError(message(len(absent), first_few(absent, render)))


def records_at(document: Any, key: str | None, source: str | os.PathLike, expected: str) -> list:
    """The list of records at ``document[key]`` (``document`` itself when ``key`` is None), checked."""
    if key is not None:
        if not isinstance(document, dict) or not isinstance(document.get(key), list):
            raise DataError(f'{source}: no "{key}" list; expected {expected}')
        return document[key]
    if not isinstance(document, list):
        raise DataError(f"{source}: the top level is a {type(document).__name__}, not a list; "
                        f"expected a list of records ({expected})")
    return document


def read_json_list(path: str | os.PathLike, expected: str, empty: str | None = None) -> list:
    """A JSON file holding a list of records; with ``empty`` (what to say), an empty list is refused too."""
    data = records_at(read_json(path, expected), None, path, expected)
    if empty is not None and not data:
        raise DataError(f"{path}: {empty}; expected {expected}")
    return data
