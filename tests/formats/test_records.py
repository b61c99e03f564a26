"""The bad-record screening every reader shares: stop at the first bad record, or skip and count per reason."""

from __future__ import annotations

import pytest
from conftest import write_json

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.records import (
    BadRecord,
    ReadReport,
    bool_field,
    check_on_bad_record,
    id_field,
    int_field,
    object_record,
    read_json_list,
    read_json_unique,
    records_at,
    require_known,
    text_field,
    text_list_field,
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


# --------------------------------------------------------------------------- field checks


def reason_and_message(check, *args, **kwargs):
    with pytest.raises(BadRecord) as error:
        check(*args, **kwargs)
    return error.value.reason, str(error.value)


def test_text_fields_name_the_field_the_type_and_the_value():
    assert text_field({"a": "x"}, "a") == "x" and text_field({}, "a", required=False) == ""
    assert text_field({"a": " "}, "a", blank=True) == " "
    assert reason_and_message(text_field, {"a": None}, "a") == ("missing_field", "field 'a' is null")
    assert reason_and_message(text_field, {}, "a") == ("missing_field", "field 'a' is missing")
    assert reason_and_message(text_field, {"a": " \n"}, "a") == ("empty_field", "field 'a' is empty")
    assert reason_and_message(text_field, {"a": ["x"]}, "a", required=False) == (
        "not_a_string", "field 'a' is a list (['x']), expected a string")
    reason, message = reason_and_message(text_field, {"a": 7 * 10**60}, "a")
    assert reason == "not_a_string" and message.endswith("...), expected a string") and len(message) < 90


def test_list_int_bool_and_id_fields():
    assert text_list_field({"c": ["a", "b"]}, "c", max_items=5) == ["a", "b"]
    assert text_list_field({}, "c", required=False) is None
    assert reason_and_message(text_list_field, {"c": "no"}, "c") == (
        "not_a_list", "field 'c' is a str ('no'), expected a list of strings")
    assert reason_and_message(text_list_field, {"c": ["a", 1]}, "c")[1] == "c[1] is a int (1), expected a string"
    assert reason_and_message(text_list_field, {"c": ["a", ""]}, "c")[0] == "empty_field"
    assert reason_and_message(text_list_field, {"c": list("abcdef")}, "c", max_items=5) == (
        "item_count", "field 'c' has 6 item(s), expected 1 to 5")
    assert int_field({"n": 2}, "n", low=0, below=3) == 2
    for value, reason in ((True, "not_an_int"), (1.0, "not_an_int"), ("1", "not_an_int"), (3, "out_of_range"),
                          (-1, "out_of_range")):
        assert reason_and_message(int_field, {"n": value}, "n", low=0, below=3)[0] == reason, value
    assert reason_and_message(int_field, {"n": 3}, "n", low=0, below=3)[1] == "field 'n' is 3, expected 0 to 2"
    assert bool_field({"b": False}, "b") is False and bool_field({}, "b", required=False) is None
    assert reason_and_message(bool_field, {"b": 0}, "b")[0] == "not_a_bool"
    assert id_field({"i": 0}, "i") == 0 and id_field({"i": "x"}, "i") == "x"
    for value in (" ", True, 1.5, None, []):
        assert reason_and_message(id_field, {"i": value}, "i")[0] in ("bad_id", "missing_field"), value
    assert reason_and_message(object_record, [1])[1] == "the record is a list, not an object"


def test_read_json_unique_refuses_a_repeated_key(tmp_path):
    path = tmp_path / "problems.json"
    path.write_text('{"1": {"question": "a"}, "2": {"question": "b", "question": "c"}}')
    with pytest.raises(DataError, match=r"problems\.json: the key 'question' appears more than once .*; expected pids"):
        read_json_unique(path, "pids")
    path.write_text('{"1": {}, "1": {}}')
    with pytest.raises(DataError, match="the key '1' appears more than once"):
        read_json_unique(path, "pids")
    path.write_text('{"1": {"a": [1, {"b": 2}]}}')
    assert read_json_unique(path, "pids") == {"1": {"a": [1, {"b": 2}]}}
    path.write_text("{")  # the errors of read_json otherwise
    with pytest.raises(DataError, match=r"problems\.json is not valid JSON"):
        read_json_unique(path, "pids")
    with pytest.raises(DataError, match=r"absent\.json not found: expected pids"):
        read_json_unique(tmp_path / "absent.json", "pids")
