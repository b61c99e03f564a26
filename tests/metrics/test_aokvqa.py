"""A-OKVQA scoring: raw direct-answer matches, multiple choice, strictness, bad input.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import aokvqa_question, expect_data_error, write_json

from lavin_lightning.metrics.aokvqa import score_aokvqa, score_aokvqa_files


def _aokvqa_fixture():
    dataset = [
        aokvqa_question("q1", 1, "?", ["dog", "cat", "bird", "fish"], 0, ["dog"] * 2 + ["puppy"] * 8),
        aokvqa_question("q2", 2, "?", ["dog", "cat", "bird", "fish"], 1, ["dog"] * 10),
        aokvqa_question("q3", 3, "?", ["red", "blue", "green", "pink"], 2, ["green"] * 10, difficult=True),
    ]
    predictions = {
        "q1": {"multiple_choice": "dog", "direct_answer": "dog"},  # MC right; DA 2 matches -> 2/3
        "q2": {"multiple_choice": "dog", "direct_answer": "Dog"},  # MC wrong; DA raw "Dog" != "dog" -> 0
        "q3": {"multiple_choice": "green", "direct_answer": "red"},  # MC right; DA excluded (difficult)
    }
    return dataset, predictions


def test_score_aokvqa():
    dataset, predictions = _aokvqa_fixture()
    scores = score_aokvqa(dataset, predictions)
    # DA over q1, q2: (2/3 + 0) / 2 * 100 = 33.33..; MC over all three: 2/3 * 100 = 66.67..
    assert scores["direct_answer"] == (2 / 3 + 0.0) / 2 * 100
    assert scores["multiple_choice"] == (1.0 + 0.0 + 1.0) / 3 * 100
    assert scores["counts"] == {"direct_answer": 2, "multiple_choice": 3, "missing": 0, "ignored_predictions": 0}
    # No leave-one-out: 3 raw matches of 10 give 1 (VQA's leave-one-out would give 0.9).
    dataset[0]["direct_answers"] = ["dog"] * 3 + ["puppy"] * 7
    assert score_aokvqa(dataset, predictions)["direct_answer"] == 50.0
    # No normalisation at all: whitespace and articles count.
    predictions["q1"]["direct_answer"] = "the dog"
    assert score_aokvqa(dataset, predictions)["direct_answer"] == 0.0
    # A flipped difficulty flag brings q3's DA (wrong) in.
    dataset[2]["difficult_direct_answer"] = False
    assert score_aokvqa(dataset, predictions)["counts"]["direct_answer"] == 3


def test_aokvqa_missing_and_strict(tmp_path):
    dataset, predictions = _aokvqa_fixture()
    data_path = write_json(tmp_path / "aokvqa_v1p0_val.json", dataset)
    partial = {"q1": predictions["q1"]}
    pred_path = write_json(tmp_path / "aokvqa_preds.json", partial)
    expect_data_error(lambda: score_aokvqa_files(data_path, pred_path), str(pred_path), "2 question(s)", "'q2', 'q3'")
    # Not strict: missing predictions score 0 (MC 1/3, DA (2/3 + 0) / 2).
    lenient = score_aokvqa_files(data_path, pred_path, strict=False)
    assert lenient["multiple_choice"] == pytest.approx(100 / 3)
    assert lenient["direct_answer"] == pytest.approx(100 / 3)
    assert lenient["counts"]["missing"] == 2
    # A direct answer is not needed for a difficult question, even when strict.
    no_da = json.loads(json.dumps(predictions))
    del no_da["q3"]["direct_answer"]
    assert score_aokvqa(dataset, no_da)["direct_answer"] == pytest.approx(100 / 3)
    # Predictions for unknown ids are ignored, as officially, and counted.
    extra = {**predictions, "q9": {"multiple_choice": "x", "direct_answer": "x"}}
    assert score_aokvqa(dataset, extra)["counts"]["ignored_predictions"] == 1
    out = tmp_path / "aokvqa_scores.json"
    score_aokvqa_files(data_path, write_json(tmp_path / "full.json", predictions), output=out)
    assert json.loads(out.read_text(encoding="utf-8"))["counts"]["multiple_choice"] == 3


def test_aokvqa_bad_input(tmp_path):
    dataset, predictions = _aokvqa_fixture()
    data_path = write_json(tmp_path / "aokvqa_val.json", dataset)
    for change, fragments in [
        ({"q2": {"multiple_choice": "horse", "direct_answer": "x"}}, ["'q2'", "'horse'", "not one of its choices"]),
        ({"q1": {"multiple_choice": 0, "direct_answer": "x"}}, ["'q1'", "multiple_choice", "int"]),
        ({"q1": {"multiple_choice": "dog", "direct_answer": ["dog"]}}, ["'q1'", "direct_answer", "list"]),
        ({"q1": "dog"}, ["'q1'", "str", "object"]),
    ]:
        path = write_json(tmp_path / "aokvqa_bad_preds.json", {**predictions, **change})
        expect_data_error(lambda path=path: score_aokvqa_files(data_path, path), str(path), *fragments)
    pred_path = write_json(tmp_path / "aokvqa_preds.json", predictions)
    for index, change, fragments in [
        (1, {"question_id": "q1"}, ["'q1'", "more than once"]),
        (1, {"correct_choice_idx": 4}, ["'q2'", "correct_choice_idx"]),
        (0, {"difficult_direct_answer": 0}, ["'q1'", "difficult_direct_answer"]),
        (0, {"direct_answers": "dog"}, ["'q1'", "direct_answers", "list of strings"]),
    ]:
        bad = json.loads(json.dumps(dataset))
        bad[index].update(change)
        path = write_json(tmp_path / "aokvqa_bad.json", bad)
        expect_data_error(lambda path=path: score_aokvqa_files(path, pred_path), str(path), *fragments)
    test_split = [{k: v for k, v in r.items() if k not in ("correct_choice_idx", "direct_answers")} for r in dataset]
    path = write_json(tmp_path / "aokvqa_v1p0_test.json", test_split)
    message = expect_data_error(lambda: score_aokvqa_files(path, pred_path), str(path), "'q1'")
    assert re.search(r"correct_choice_idx, direct_answers", message)
