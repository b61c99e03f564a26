"""The bad-record screening every reader shares: stop at the first bad record, or skip and count per reason."""

from __future__ import annotations

import pytest
from conftest import write_json

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.records import (
    BadRecord,
    ReadReport,
    check_on_bad_record,
    read_json_list,
    records_at,
    require_known,
)


def parse(value):
    if value < 0:
        raise BadRecord("negative", f"value {value} is negative")
    return value


def test_error_stops_at_the_first_bad_record_naming_where_and_what_was_expected():
    report = ReadReport("error")
    assert report.screen("f.json: record 0", "non-negative numbers", parse, 3) == 3
    with pytest.raises(DataError, match=r"^f\.json: record 1: value -1 is negative; expected non-negative numbers$"):
        report.screen("f.json: record 1", "non-negative numbers", parse, -1)


def test_skip_counts_per_reason_and_keeps_the_first_message():
    report = ReadReport("skip")
    kept = [report.screen(f"record {i}", "numbers", parse, v) for i, v in enumerate([1, -2, 3, -4])]
    assert kept == [1, None, 3, None]
    assert report.skipped == {"negative": 2}
    assert report.first_skipped == "record 1: value -2 is negative; expected numbers"
    assert report.summary() == {"skipped": {"negative": 2}, "unanswered_turns": 0}
    with pytest.raises(ConfigError, match="on_bad_record"):
        check_on_bad_record("ignore")


def test_require_known_names_how_many_and_the_first_few():
    require_known(["a", "b"], {"a", "b", "c"}, lambda n, first: f"{n}: {first}")
    with pytest.raises(DataError, match=r"^7 missing: 'g', 'h', 'i', 'j', 'k', \.\.\.$"):
        require_known("abcdefghijklm", set("abcdef"), lambda n, first: f"{n} missing: {first}", repr)


def test_lists_of_records(tmp_path):
    assert records_at({"data": [1]}, "data", "f.json", "a data list") == [1]
    with pytest.raises(DataError, match=r'f\.json: no "data" list; expected a data list'):
        records_at({"data": {}}, "data", "f.json", "a data list")
    with pytest.raises(DataError, match="the top level is a dict, not a list; expected a list of records"):
        read_json_list(write_json(tmp_path / "d.json", {}), "the format")
    assert read_json_list(write_json(tmp_path / "e.json", []), "the format") == []
    with pytest.raises(DataError, match=r"e\.json: no records; expected the format"):
        read_json_list(tmp_path / "e.json", "the format", empty="no records")
