"""ScienceQA's files: problems, split lists and predictions, and how a prediction is read."""

from __future__ import annotations

import pytest
from conftest import write_json

from lavin_lightning.errors import DataError
from lavin_lightning.formats.scienceqa import parse_prediction, read_predictions, read_problems, read_split_pids


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
