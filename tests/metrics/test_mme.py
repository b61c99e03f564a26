"""MME scoring as the eval tool's calculation.py: prediction parsing, accuracy+, totals, LaVIN's release parsing."""

from __future__ import annotations

import json

import pytest

from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.mme import MMEResult, write_mme_results
from lavin_lightning.metrics.mme import expected_answers, parse_prediction, score_mme, score_mme_files, score_subtask


def pair(image, truths, predictions):
    return [MMEResult(image, f"question {i}", truth, prediction)
            for i, (truth, prediction) in enumerate(zip(truths, predictions))]


@pytest.mark.parametrize("prediction, parsed", [
    ("yes", "yes"), ("No", "no"), ("Yes, there is a dog.", "yes"), ("No.", "no"), ("YES!", "yes"),
    (" yes", "yes"),  # the first four characters hold "yes"
    ("  yes", "other"),  # ... not here: the tool does not strip
    ("The answer is yes", "other"), ("I don't know", "other"), ("", "other"), ("maybe", "other"),
    ("nope", "no"), ("not sure", "no"),  # "no" anywhere in the first four characters, as the tool
    ("no, yes", "no"), ("ayes", "yes"), ("no yes", "no"), ("noyes", "no"),  # yes is looked for first, in 4 chars
])
def test_parse_prediction_as_the_eval_tool(prediction, parsed):
    assert parse_prediction(prediction) == parsed


def test_subtask_hand_computed():
    lines = (pair("1.jpg", ["Yes", "No"], ["Yes", "no"])  # both right
             + pair("2.jpg", ["Yes", "No"], ["yes", "Yes"])  # one right
             + pair("3.jpg", ["No", "Yes"], ["The answer is no", "Yes it is"]))  # "other" is wrong: one right
    scores = score_subtask(lines)
    # 4 of 6 questions, 1 of 3 images with both right.
    assert scores == {"acc": 4 / 6 * 100, "acc_plus": 1 / 3 * 100, "score": 4 / 6 * 100 + 1 / 3 * 100,
                      "questions": 6, "images": 3, "other": 1}
    assert scores["score"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="even number of lines"):
        score_subtask(lines[:3])


def test_acc_plus_needs_both_questions_of_an_image():
    # Every image has exactly one right answer: accuracy 50, accuracy+ 0.
    lines = pair("1.jpg", ["Yes", "No"], ["yes", "yes"]) + pair("2.jpg", ["Yes", "No"], ["no", "no"])
    assert score_subtask(lines)["acc"] == 50.0 and score_subtask(lines)["acc_plus"] == 0.0


def test_totals_sum_the_right_subtasks():
    perfect = pair("1.jpg", ["Yes", "No"], ["Yes", "No"])  # 200
    half = pair("1.jpg", ["Yes", "No"], ["Yes", "Yes"])  # 50 + 0
    scores = score_mme({"OCR": perfect, "existence": half, "code_reasoning": perfect, "text_translation": half})
    assert list(scores["subtasks"]) == ["existence", "OCR", "text_translation", "code_reasoning"]  # the tool's order
    assert scores["perception"] == 250.0 and scores["cognition"] == 250.0
    assert scores["missing_subtasks"] == ["count", "position", "color", "posters", "celebrity", "scene", "landmark",
                                          "artwork", "commonsense_reasoning", "numerical_calculation"]
    only_cognition = score_mme({"code_reasoning": perfect})
    assert only_cognition["perception"] is None and only_cognition["cognition"] == 200.0
    with pytest.raises(ConfigError, match="unknown MME subtask"):
        score_mme({"ocr": perfect})


def test_release_parsing_ignores_the_ground_truth():
    # Ground truth no-then-yes, answered right: the eval tool gives 200; LaVIN's eval_mme.py takes
    # the first question as "yes" and the second as "no", so the same answers score 0.
    lines = pair("1.jpg", ["No", "Yes"], ["No", "Yes"])
    assert expected_answers(lines) == ["no", "yes"] and expected_answers(lines, "release") == ["yes", "no"]
    assert score_mme({"color": lines})["perception"] == 200.0
    release = score_mme({"color": lines}, parsing="release")
    assert release["perception"] == 0.0 and release["parsing"] == "release"
    # Where the ground truth is yes-then-no, the two agree.
    agreeing = pair("2.jpg", ["Yes", "No"], ["Yes", "Yes"])
    assert score_mme({"color": agreeing}) == {**score_mme({"color": agreeing}, parsing="release"),
                                              "parsing": "official"}
    with pytest.raises(ConfigError, match="parsing must be one of"):
        score_mme({"color": lines}, parsing="lavin")


def test_score_files_writes_the_same_scores(tmp_path):
    results = {"count": pair("1.jpg", ["Yes", "No"], ["Yes", "Yes"]) + pair("2.jpg", ["No", "Yes"], ["No", "Yes"]),
               "numerical_calculation": pair("n.png", ["Yes", "No"], ["yes", "no"])}
    write_mme_results(tmp_path / "results", results)
    scores = score_mme_files(tmp_path / "results", output=tmp_path / "scores.json")
    assert scores == score_mme(results)
    assert scores["perception"] == 75.0 + 50.0 and scores["cognition"] == 200.0
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
