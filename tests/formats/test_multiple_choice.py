"""MMLU's CSVs and TruthfulQA's mc_task.json: parsing, and errors that name the file and the row."""

from __future__ import annotations

import pytest
from conftest import write_mmlu, write_text, write_truthfulqa

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.multiple_choice import read_mmlu, read_mmlu_dev, read_truthfulqa_mc1


def test_mmlu_csv_fields_with_commas_quotes_and_newlines(tmp_path):
    root = tmp_path / "mmlu"
    write_text(root / "test" / "misc_test.csv",
          '"What is 1,000 + ""2""?\nThink first.",1002,"1,002","say ""hi""","two\nlines",B\r\n'
          "Plain?,a,b,c,d,D\r\n")
    questions = read_mmlu(root)["misc"]
    assert [q.question for q in questions] == ['What is 1,000 + "2"?\nThink first.', "Plain?"]
    assert questions[0].choices == ("1002", "1,002", 'say "hi"', "two\nlines")
    assert [q.answer for q in questions] == [1, 3]
    assert [q.id for q in questions] == ["misc/test/0", "misc/test/1"]
    assert questions[0].benchmark == "mmlu" and questions[0].subject == "misc"


def test_mmlu_subjects_discovered_sorted_or_chosen(tmp_path):
    root = write_mmlu(tmp_path)
    assert list(read_mmlu(root)) == ["alpha", "high_school_physics"]
    assert list(read_mmlu(root, subjects=["high_school_physics"])) == ["high_school_physics"]
    dev = read_mmlu_dev(root, ["alpha"])
    assert [q.question for q in dev["alpha"]] == ["d?", "e?"]
    with pytest.raises(DataError, match="zoology_test.csv not found"):
        read_mmlu(root, subjects=["zoology"])
    with pytest.raises(ConfigError, match="split"):
        read_mmlu(root, "train")


@pytest.mark.parametrize(
    "records, message",
    [
        ({"question": "x"}, "top level is a dict"),
        ([], "the list is empty"),
        ([{"question": "q", "mc1_targets": {"a": 1}}, ["not", "a", "dict"]], "record 1 is a list"),
        ([{"question": "q", "mc1_targets": {"a": 0, "b": 0}}], "record 0.*0 true answers"),
        ([{"question": "q", "mc1_targets": {"a": 1}}, {"question": "q", "mc1_targets": {"a": 1}},
          {"question": "q", "mc1_targets": {"a": 1, "b": 1, "c": 0}}], "record 2.*2 true answers"),
        ([{"question": " ", "mc1_targets": {"a": 1}}], 'record 0: "question" is missing or empty'),
        ([{"question": "q"}], 'record 0: "mc1_targets" is missing'),
        ([{"question": "q", "mc1_targets": {"a": 2}}], "record 0.*is 2; expected 0 or 1"),
    ],
)
def test_truthfulqa_bad_input(tmp_path, records, message):
    path = write_truthfulqa(tmp_path, records)
    with pytest.raises(DataError, match=message) as info:
        read_truthfulqa_mc1(path)
    assert "mc_task.json" in str(info.value)


def test_truthfulqa_missing_and_invalid_file(tmp_path):
    with pytest.raises(DataError, match="absent.json not found"):
        read_truthfulqa_mc1(tmp_path / "absent.json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_truthfulqa_mc1(write_text(tmp_path / "mc_task.json", "[{"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("ok?,a,b,c,d,A\nshort?,a,b,C\n", r"row 2 \(line 2\) has 4 columns; expected 6"),
        ('"multi\nline?",a,b,c,d,A\nq?,a,b,c,d,E\n',
         r"row 2 \(line 3\): answer 'E' \(column 6\) is not one of A, B, C, D"),
        ('ok?,a,b,c,d,A\nok?,a,b,c,d,A\n  ,a,b,c,d,B\n', r"row 3 \(line 3\): the question \(column 1\) is empty"),
        ("", "holds no questions"),
    ],
)
def test_mmlu_bad_rows(tmp_path, text, message):
    write_text(tmp_path / "mmlu" / "test" / "anatomy_test.csv", text)
    with pytest.raises(DataError, match=message) as info:
        read_mmlu(tmp_path / "mmlu")
    assert "anatomy_test.csv" in str(info.value)


def test_mmlu_no_subjects(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="no MMLU subjects found under .*mmlu") as info:
        read_mmlu(tmp_path / "mmlu")
    assert "<subject>_test.csv" in str(info.value)


def test_mmlu_not_utf8(tmp_path):
    path = tmp_path / "mmlu" / "test" / "law_test.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"q\xff?,a,b,c,d,A\n")
    with pytest.raises(DataError, match="law_test.csv is not UTF-8"):
        read_mmlu(tmp_path / "mmlu")


def test_mmlu_empty_option_and_truthfulqa_wrong_types(tmp_path):
    write_text(tmp_path / "mmlu" / "test" / "anatomy_test.csv", "ok?,a,b,c,d,A\nq?,a, ,c,d,B\n")
    with pytest.raises(DataError, match=r"anatomy_test\.csv: row 2 \(line 2\): choice B \(column 3\) is empty"):
        read_mmlu(tmp_path / "mmlu")
    for records, message in [
        ([{"question": "Q?", "mc1_targets": {"Yes.": 1.0, "No.": 0}}], r"\"mc1_targets\"\['Yes\.'\] is 1\.0"),
        ([{"question": 7, "mc1_targets": {"Yes.": 1}}], r'record 0: "question" is a int \(7\)'),
        ([{"question": "Q?", "mc1_targets": ["Yes."]}], r'"mc1_targets" is a list'),
    ]:
        with pytest.raises(DataError, match=message):
            read_truthfulqa_mc1(write_truthfulqa(tmp_path, records))
    # JSON would keep the last of two equal answers: the question would lose a choice silently.
    write_text(tmp_path / "mc_task.json", '[{"question": "Q?", "mc1_targets": {"Yes.": 1, "No.": 0, "Yes.": 0}}]')
    with pytest.raises(DataError, match=r"mc_task\.json: the key 'Yes\.' appears more than once"):
        read_truthfulqa_mc1(tmp_path / "mc_task.json")
