"""ScienceQA's files: problems, split lists and predictions, and how a prediction is read."""

from __future__ import annotations

import pytest
from conftest import write_json

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import BadRecord
from lavin_lightning.formats.scienceqa import (
    check_problem,
    parse_prediction,
    read_captions,
    read_predictions,
    read_problems,
    read_split_pids,
    require_fields,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (3, 3),
        (7, 7),  # out of range for a problem: still parsed (and scored wrong)
        ("2", 2),
        (" 2 ", 2),
        ("10", 10),
        ("A", 0),
        ("E", 4),
        (True, None),  # bool is not an index
        (False, None),
        (None, None),
        ("F", None),
        ("b", None),
        ("AB", None),
        ("", None),
        ("²", None),  # str.isdigit() would accept it
        ("-1", None),
        (-1, None),
        (2.0, None),
        ([1], None),
    ],
)
def test_parse_prediction(value, expected):
    assert parse_prediction(value) == expected


def test_read_predictions_formats(tmp_path):
    bare = write_json(tmp_path / "bare.json", {"p1": 1})
    official = write_json(tmp_path / "official.json", {"acc": 50.0, "results": {"p1": "B"}, "outputs": {}})
    assert read_predictions(bare) == {"p1": 1}
    assert read_predictions(official) == {"p1": "B"}


def test_read_predictions_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=r"nope\.json not found"):
        read_predictions(missing)
    bad = write_json(tmp_path / "bad.json", '{"p1": 1,\n "p2": }')
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON \(line 2, column 8"):
        read_predictions(bad)
    listed = write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(DataError, match=r"list\.json: top level is a list"):
        read_predictions(listed)
    results_list = write_json(tmp_path / "rl.json", {"results": [1]})
    with pytest.raises(DataError, match=r'rl\.json: "results" is a list'):
        read_predictions(results_list)


def test_missing_data_files_name_the_path(tmp_path, scienceqa_root):
    with pytest.raises(DataError, match=r"empty[/\\]problems\.json not found.*pid_splits\.json"):
        read_problems(tmp_path / "empty")
    (scienceqa_root / "pid_splits.json").unlink()
    with pytest.raises(DataError, match=r"sqa[/\\]pid_splits\.json not found"):
        read_split_pids(scienceqa_root, "test")


def test_split_errors(scienceqa_root):
    assert read_split_pids(scienceqa_root, "minitest") == ["p1", "p2"]
    with pytest.raises(DataError, match=r"unknown split 'tset'; available splits: minitest, test, train"):
        read_split_pids(scienceqa_root, "tset")
    splits = {"test": ["p1", "ghost"]}
    write_json(scienceqa_root / "pid_splits.json", splits)
    expected = r"pid_splits\.json: split 'test' lists pid ghost, which is not in .*problems\.json"
    with pytest.raises(DataError, match=expected):
        read_split_pids(scienceqa_root, "test")


# --------------------------------------------------------------------------- field types


def good_problem(**changes):
    problem = {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0, "hint": "", "image": None,
               "lecture": "", "solution": "", "subject": "natural science", "grade": "grade1", "topic": "colors",
               "split": "train"}
    problem.update(changes)
    return problem


@pytest.mark.parametrize(
    ("changes", "reason", "message"),
    [
        # The two: once trained silently as "(A) n (B) o" and as the question "None".
        ({"choices": "no"}, "not_a_list", "field 'choices' is a str ('no'), expected a list of strings"),
        ({"question": None}, "missing_field", "field 'question' is null"),
        ({"question": "  "}, "empty_field", "field 'question' is empty"),
        ({"choices": ["a", 3]}, "not_a_string", "choices[1] is a int (3)"),
        ({"choices": []}, "item_count", "field 'choices' has 0 item(s), expected 1 to 5"),
        ({"choices": list("abcdef")}, "item_count", "has 6 item(s)"),
        ({"answer": 2}, "out_of_range", "field 'answer' (an index into choices) is 2, expected 0 to 1"),
        ({"answer": True}, "not_an_int", "is a bool (True), expected an integer"),
        ({"answer": "0"}, "not_an_int", "is a str ('0')"),
        ({"hint": 5}, "not_a_string", "field 'hint' is a int (5)"),
        ({"lecture": ["x"]}, "not_a_string", "field 'lecture'"),
        ({"grade": 3}, "not_a_string", "field 'grade'"),
        ({"image": "image.png", "split": None}, "missing_field", "has an image but no 'split' field"),
    ],
)
def test_check_problem_names_the_field_and_what_was_expected(changes, reason, message):
    with pytest.raises(BadRecord) as error:
        check_problem(good_problem(**changes))
    assert error.value.reason == reason and message in str(error.value), str(error.value)


def test_check_problem_accepts_the_public_layout():
    # Null and empty texts occur in the public file (no hint, no lecture, no image).
    assert check_problem(good_problem(hint=None, lecture=None, solution="", image=""))
    problem = {k: v for k, v in good_problem().items() if k not in ("hint", "subject", "grade", "topic")}
    assert check_problem(problem) is problem  # only the prompt's fields are required
    with pytest.raises(BadRecord, match="lacks the field"):
        check_problem({"question": "q", "choices": ["a"]})


def test_require_fields_names_source_pid_and_field():
    with pytest.raises(DataError, match=r"^problems\.json: pid 7: field 'grade' is a list \(\[3\]\), expected a str"):
        require_fields(good_problem(grade=[3]), "7", ("answer", "grade"), "problems.json")
    with pytest.raises(DataError, match=r"^problems\.json: pid 7 lacks the field\(s\) topic"):
        require_fields({k: v for k, v in good_problem().items() if k != "topic"}, "7", ("topic",), "problems.json")


def test_problems_and_splits_refuse_repeated_and_odd_ids(tmp_path, scienceqa_root):
    (tmp_path / "problems.json").write_text('{"1": {"question": "a"}, "1": {"question": "b"}}')
    with pytest.raises(DataError, match=r"problems\.json: the key '1' appears more than once"):
        read_problems(tmp_path)
    write_json(tmp_path / "problems.json", {" ": good_problem()})
    with pytest.raises(DataError, match=r"problems\.json: a problem has the empty pid ' '"):
        read_problems(tmp_path)
    write_json(scienceqa_root / "pid_splits.json", {"test": ["p1", "p2", "p1"]})
    with pytest.raises(DataError, match=r"split 'test' lists 1 pid\(s\) more than once, first: p1"):
        read_split_pids(scienceqa_root, "test")
    write_json(scienceqa_root / "pid_splits.json", {"test": ["p1", None]})
    with pytest.raises(DataError, match=r"pid_splits\.json: split 'test', item 1 is None; expected a pid"):
        read_split_pids(scienceqa_root, "test")
    (scienceqa_root / "pid_splits.json").write_text('{"test": ["p1"], "test": ["p2"]}')
    with pytest.raises(DataError, match="the key 'test' appears more than once"):
        read_split_pids(scienceqa_root, "test")


def test_captions_are_strings_of_known_pids(scienceqa_root):
    problems = read_problems(scienceqa_root)
    write_json(scienceqa_root / "captions.json", {"captions": {"p1": "A red apple.", "p2": ""}})
    assert read_captions(scienceqa_root, problems) == {"p1": "A red apple.", "p2": ""}
    write_json(scienceqa_root / "captions.json", {"captions": {"p1": 3}})
    with pytest.raises(DataError, match=r"captions\.json: the caption of pid p1 is a int \(3\)"):
        read_captions(scienceqa_root, problems)
    write_json(scienceqa_root / "captions.json", {"captions": {"p1": "x", "p99": "y"}})
    with pytest.raises(DataError, match=r"captions\.json: 1 caption\(s\) for pids that are not in .*problems\.json, "
                                        r"first: p99"):
        read_captions(scienceqa_root, problems)


def test_predictions_refuse_a_repeated_pid(tmp_path):
    (tmp_path / "preds.json").write_text('{"p1": 1, "p1": 2}')
    with pytest.raises(DataError, match=r"preds\.json: the key 'p1' appears more than once"):
        read_predictions(tmp_path / "preds.json")
