"""Checking the records of a public file: stop at the first bad one, or leave bad ones out and count them.

Shared by every reader: the bad-record screening (``on_bad_record``), the field checks (each
field's type, emptiness and range, as a BadRecord naming the field), the id checks, the
"these ids are not covered" errors, the list-of-records JSON file and the keyed JSON file
whose repeated keys (ids) are an error rather than silently the last one.
"""

from __future__ import annotations

import json
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
    """An id of a JSON record: an int or a non-blank string (bool is an int subclass; floats do not
    survive as keys)."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int) and not isinstance(value, bool)


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


def read_json_unique(path: str | os.PathLike, expected: str) -> object:
    """A JSON file, as :func:`~lavin_lightning.io.read_json` reads it, except that a key repeated
    within one object is a DataError: JSON keeps only its last value, so in a file keyed by id
    (ScienceQA's problems.json, {pid: ...} predictions) a repeated id would silently drop a record."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_unique_keys)
    except _RepeatedKey as e:
        raise DataError(f"{path}: the key {e.key!r} appears more than once in one object (JSON would keep only its "
                        f"last value); expected {expected}") from None
    except (OSError, ValueError):  # not found, not JSON, not UTF-8: read_json says which
        return read_json(path, expected)


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return data


# --------------------------------------------------------------------------- field checks
#
# Each takes a record (a dict) and a key, and returns the checked value or raises BadRecord with
# a reason (the name it is counted under when skipped) and a message naming the field. A field
# that is absent or null is "missing"; optional fields then give their default.


def describe(value: Any) -> str:
    """``a str ('no')``: the type and a short repr of a value, for messages."""
    text = repr(value)
    return f"a {type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


def _field_name(key: str | int, name: str | None) -> str:
    return name or f"field {key!r}"


def _present(record: dict, key: str, name: str, required: bool = True) -> Any:
    """``record[key]``; None when it is absent or null and not ``required``, else a named error."""
    value = record.get(key)
    if value is None and required:
        raise BadRecord("missing_field", f"{name} is missing" if key not in record else f"{name} is null")
    return value


def object_record(value: Any, name: str = "the record") -> dict:
    """``value`` when it is a JSON object."""
    if not isinstance(value, dict):
        raise BadRecord("not_an_object", f"{name} is a {type(value).__name__}, not an object")
    return value


def text_field(record: dict, key: str, required: bool = True, name: str | None = None, blank: bool = False) -> str:
    """A string field. A required one must be there and (unless ``blank``) hold more than white
    space; an optional one that is absent or null is ``""``."""
    name = _field_name(key, name)
    value = _present(record, key, name, required)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRecord("not_a_string", f"{name} is {describe(value)}, expected a string")
    if required and not blank and not value.strip():
        raise BadRecord("empty_field", f"{name} is empty")
    return value


def text_list_field(
    record: dict, key: str, required: bool = True, name: str | None = None, min_items: int = 1,
    max_items: int | None = None,
) -> list[str] | None:
    """A list of non-blank strings, ``min_items`` to ``max_items`` long; None when optional and absent."""
    items = name or str(key)  # items are named as in "choices[2]"
    name = _field_name(key, name)
    value = _present(record, key, name, required)
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRecord("not_a_list", f"{name} is {describe(value)}, expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRecord("not_a_string", f"{items}[{i}] is {describe(item)}, expected a string")
        if not item.strip():
            raise BadRecord("empty_field", f"{items}[{i}] is empty")
    if len(value) < min_items or (max_items is not None and len(value) > max_items):
        wanted = f"{min_items} to {max_items}" if max_items is not None else f"at least {min_items}"
        raise BadRecord("item_count", f"{name} has {len(value)} item(s), expected {wanted}")
    return value


def int_field(
    record: dict, key: str, required: bool = True, name: str | None = None, low: int | None = None,
    below: int | None = None,
) -> int | None:
    """An integer (not a bool) with ``low <= value < below`` where given; None when optional and absent."""
    name = _field_name(key, name)
    value = _present(record, key, name, required)
    if value is None:
        return None
    if not is_int(value):
        raise BadRecord("not_an_int", f"{name} is {describe(value)}, expected an integer")
    if (low is not None and value < low) or (below is not None and value >= below):
        bounds = f"{low if low is not None else '...'} to {below - 1 if below is not None else '...'}"
        raise BadRecord("out_of_range", f"{name} is {value}, expected {bounds}")
    return value


def bool_field(record: dict, key: str, required: bool = True, name: str | None = None) -> bool | None:
    """true or false; None when optional and absent."""
    name = _field_name(key, name)
    value = _present(record, key, name, required)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRecord("not_a_bool", f"{name} is {describe(value)}, expected true or false")
    return value


def id_field(record: dict, key: str, name: str | None = None) -> int | str:
    """A record id: an integer or a non-blank string."""
    name = _field_name(key, name)
    value = _present(record, key, name)
    if not is_id(value):
        raise BadRecord("bad_id", f"{name} is {describe(value)}, expected an integer or a non-empty string")
    return value
