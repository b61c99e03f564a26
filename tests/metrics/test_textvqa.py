"""TextVQA scoring: the EvalAI answer processor on both sides, leave-one-out over 10 answers, bad input.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import json

import pytest
from conftest import expect_data_error, write_json

from lavin_lightning.metrics.textvqa import score_textvqa, score_textvqa_files, textvqa_accuracy
from lavin_lightning.metrics.vqa import normalize_textvqa_answer, vqa_accuracy


def test_textvqa_normalisation():
    assert normalize_textvqa_answer("Yes") == "yes"
    assert normalize_textvqa_answer("Dog's bowl") == "dog 's bowl"
    assert normalize_textvqa_answer("Stop?Sign") == "stopsign"  # removed, not spaced as in VQA
    assert normalize_textvqa_answer("hello,world") == "helloworld"
    assert normalize_textvqa_answer("The  Two\tcats.") == "2 cats"
    assert normalize_textvqa_answer("cafe-bar") == "cafe bar"


def test_textvqa_accuracy_always_normalises():
    assert textvqa_accuracy("Yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # the VQA rule leaves unanimous GT alone
    assert textvqa_accuracy("dog 's bowl", ["dog's bowl"] * 10) == 1.0
    assert vqa_accuracy("dog 's bowl", ["dog's bowl"] * 10) == 0.0
    assert textvqa_accuracy("stopsign", ["stop?sign"] * 10) == 1.0
    assert textvqa_accuracy("1000", ["1,000"] + ["x"] * 9) == pytest.approx(0.3)
    assert textvqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def _textvqa_fixture():
    data = {
        "dataset_name": "textvqa",
        "data": [
            {"question_id": 10, "image_id": "a", "question": "?", "answers": ["yes"] * 10},
            {"question_id": 11, "image_id": "b", "question": "?", "answers": ["2"] + ["3"] * 9},
            {"question_id": 12, "image_id": "c", "question": "?", "answers": ["dog's bowl"] * 10},
        ],
    }
    results = [
        {"question_id": 10, "answer": "Yes"},  # 1.0
        {"question_id": 11, "answer": "two"},  # 1 of 10 -> 0.3
        {"question_id": 12, "answer": "bowl"},  # 0
    ]
    return data, results


def test_score_textvqa(tmp_path):
    data, results = _textvqa_fixture()
    scores = score_textvqa(data, results)
    assert scores["evalQA"] == {10: 1.0, 11: pytest.approx(0.3), 12: 0.0}
    # (1 + 0.3 + 0) / 3 = 0.43333
    assert scores["accuracy_fraction"] == pytest.approx(1.3 / 3)
    assert scores["accuracy_fraction"] == sum(scores["evalQA"].values()) / 3
    assert scores["accuracy"] == 43.33
    out = tmp_path / "textvqa_scores.json"
    from_files = score_textvqa_files(
        write_json(tmp_path / "TextVQA_0.5.1_val.json", data), write_json(tmp_path / "res.json", results), output=out
    )
    assert from_files == scores
    assert json.loads(out.read_text(encoding="utf-8"))["accuracy"] == 43.33


def test_textvqa_bad_input(tmp_path):
    data, results = _textvqa_fixture()
    data_path = write_json(tmp_path / "textvqa.json", data)
    bad_results = [
        (results + [{"question_id": 77, "answer": "x"}], ["77"]),
        (results[:1], ["2 of 3", "11, 12"]),
        (results + [results[0]], ["10", "more than once"]),
        ([{"question_id": 10, "answer": None}] + results[1:], ["question_id 10", "NoneType"]),
    ]
    for res, fragments in bad_results:
        res_path = write_json(tmp_path / "textvqa_results.json", res)
        expect_data_error(lambda res_path=res_path: score_textvqa_files(data_path, res_path), str(res_path), *fragments)
    res_path = write_json(tmp_path / "textvqa_results.json", results)
    for change, fragments in [
        ({"answers": ["yes"] * 9}, ["question_id 11", "9 answers", "exactly 10"]),
        ({"answers": ["yes"] * 9 + [3]}, ["question_id 11", "strings"]),
    ]:
        bad = json.loads(json.dumps(data))
        bad["data"][1].update(change)
        path = write_json(tmp_path / "textvqa_bad.json", bad)
        expect_data_error(lambda path=path: score_textvqa_files(path, res_path), str(path), *fragments)
    bad = json.loads(json.dumps(data))
    del bad["data"][2]["answers"]
    path = write_json(tmp_path / "textvqa_test.json", bad)
    expect_data_error(lambda: score_textvqa_files(path, res_path), str(path), "question_id 12", "no answers")
