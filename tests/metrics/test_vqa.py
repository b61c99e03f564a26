"""VQAv2 / OK-VQA scoring: the official normalisation quirks, leave-one-out accuracy, aggregation, bad input.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import json

import pytest
from conftest import expect_data_error, write_json

from lavin_lightning.errors import ConfigError
from lavin_lightning.metrics.vqa import (
    CONTRACTIONS,
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
    score_vqa,
    score_vqa_files,
    vqa_accuracy,
)

# --------------------------------------------------------------------------- normalisation


def test_punctuation_bordered_by_a_space_is_removed_else_spaced():
    assert process_punctuation("t-shirt") == "t shirt"
    # " -" occurs somewhere, so *every* "-" is deleted, joining "t" and "shirt".
    assert process_punctuation("t-shirt -") == "tshirt "
    assert normalize_vqa_answer("t-shirt -") == "tshirt"
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("yes!") == "yes "
    # ":" and "'" are not punctuation marks.
    assert process_punctuation("10:30 o'clock") == "10:30 o'clock"


def test_punctuation_decision_reads_the_input_text():
    # "(" becomes a space first ("x -ya-b"); "-" is still spaced, not deleted, because the
    # *input* has no space next to a "-".
    assert process_punctuation("x(-ya-b") == "x  ya b"
    assert normalize_vqa_answer("x(-ya-b") == "x ya b"


def test_digit_comma_digit_deletes_every_mark():
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("1,000 (approx)") == "1000 approx"
    assert process_punctuation("1, 2") == "1 2"  # bordered by a space: deleted, no digit-comma-digit


def test_periods():
    assert process_punctuation("3.5") == "3.5"  # followed by a digit: kept
    assert process_punctuation(".5") == ".5"
    assert process_punctuation("dog.") == "dog"
    assert process_punctuation("3.") == "3"  # a preceding digit does not protect it
    assert process_punctuation("a.b") == "ab"  # deleted, not spaced


def test_at_most_32_periods_are_removed():
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("x" + "." * 40) == "x" + "." * 8
    assert normalize_vqa_answer("wow" + "." * 40) == "wow" + "." * 8
    assert process_punctuation("." * 32) == ""


def test_digit_article_processing():
    assert process_digit_article("Two Dogs") == "2 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("ten") == "10"
    assert process_digit_article("eleven") == "eleven"  # only none/zero..ten
    assert process_digit_article("The dog on a couch") == "dog on couch"  # articles anywhere
    assert process_digit_article("an  apple\tpie") == "apple pie"  # any whitespace splits
    assert process_digit_article("Dont know") == "don't know"
    assert process_digit_article("isnt youre arent") == "isn't you're aren't"
    # The official table's quirks: capitalised keys never apply after lower-casing, and
    # "somebody'd" is mapped *to* "somebodyd".
    assert process_digit_article("Im") == "im"
    assert process_digit_article("somebody'd") == "somebodyd"


def test_contraction_table_follows_the_official_one():
    assert len(CONTRACTIONS) == 120
    for key, value in CONTRACTIONS.items():
        assert "'" in value or key == "somebody'd", key
        assert key.replace("'", "") == value.replace("'", ""), key


def test_normalize_modes():
    assert normalize_vqa_answer("  The Two\tCats!\n") == "2 cats"
    assert normalize_vqa_answer("  The Two\tCats!\n", mode="legacy") == "2 cats"
    assert normalize_vqa_answer("Dog's bowl", mode="textvqa") == "dog 's bowl"
    with pytest.raises(ConfigError, match="'strict'"):
        normalize_vqa_answer("x", mode="strict")
    with pytest.raises(ConfigError, match="'textvqa'"):
        vqa_accuracy("x", ["x"], mode="textvqa")


# --------------------------------------------------------------------------- VQA accuracy


def test_unanimous_ground_truth_is_not_normalised():
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # only stripping applies


def test_mixed_ground_truth_normalises_both_sides():
    # 9 x "yes" and 1 x "no": every left-out subset still holds >= 8 "yes" -> 1.
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("Yes", ["YES!"] + ["no"] * 9) == pytest.approx(0.3)


def test_leave_one_out_values():
    # k matching of 10: the k subsets without a match hold k-1, the 10-k others hold k.
    assert vqa_accuracy("dog", ["cat"] * 10) == 0.0
    assert vqa_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx((1 * 0 + 9 * (1 / 3)) / 10)  # 0.3
    assert vqa_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert vqa_accuracy("dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)  # 0.9
    assert vqa_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0  # every subset holds >= 3
    # Over however many answers there are: 1 of 5 -> (0 + 4/3) / 5.
    assert vqa_accuracy("dog", ["dog"] + ["cat"] * 4) == pytest.approx(4 / 15)


def test_number_words_articles_and_contractions_in_scoring():
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("a dog", ["the dog"] + ["cat"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("dont", ["don't"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("1,000", ["1000"] * 3 + ["many"] * 7) == pytest.approx(0.9)


def test_legacy_differs_from_official():
    # Unanimous "yes": legacy normalises the prediction anyway.
    assert vqa_accuracy("Yes.", ["yes"] * 10, mode="legacy") == 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 10, mode="official") == 0.0
    # Mixed ground truth: legacy never lower-cases it, so "Yes" can never be matched.
    assert vqa_accuracy("yes", ["Yes"] * 5 + ["no"] * 5, mode="official") == 1.0
    assert vqa_accuracy("yes", ["Yes"] * 5 + ["no"] * 5, mode="legacy") == 0.0
    # Legacy does not strip the ground truth either.
    assert vqa_accuracy("yes", ["yes "] * 10, mode="official") == 1.0
    assert vqa_accuracy("yes", ["yes "] * 10, mode="legacy") == 0.0
    # Legacy does not map number words in the ground truth ("two" stays "two").
    assert vqa_accuracy("2", ["two"] * 3 + ["3"] * 7, mode="official") == pytest.approx(0.9)
    assert vqa_accuracy("2", ["two"] * 3 + ["3"] * 7, mode="legacy") == 0.0


def _answers(texts: list[str], ids: bool = True) -> list[dict]:
    return [
        {"answer": t, "answer_confidence": "yes", **({"answer_id": i} if ids else {})} for i, t in enumerate(texts, 1)
    ]


def _vqa_fixture(preds: dict[int, str]):
    specs = [
        # qid, question_type, answer_type, answers
        (1, "what color is the", "other", ["red"] * 3 + ["blue"] * 7),
        (2, "is the", "yes/no", ["yes"] * 10),
        (3, "what is the", "other", ["green"] + ["blue"] * 6),  # 7 answers
    ]
    questions = {"questions": [{"question_id": q, "image_id": 100 + q, "question": "?"} for q, *_ in specs]}
    annotations = {
        "annotations": [
            {"question_id": q, "image_id": 100 + q, "question_type": qt, "answer_type": at, "answers": _answers(a)}
            for q, qt, at, a in specs
        ]
    }
    results = [{"question_id": q, "answer": a} for q, a in preds.items()]
    return questions, annotations, results


def test_score_vqa_aggregation_and_rounding():
    scores = score_vqa(*_vqa_fixture({1: "Red", 2: "yes", 3: "green."}))
    assert list(scores) == ["overall", "perQuestionType", "perAnswerType", "evalQA"]
    # q1: 3 of 10 -> 0.9; q2: unanimous exact -> 1.0; q3: 1 of 7 -> (0 + 6/3) / 7 = 2/7 = 0.285714.
    assert scores["evalQA"] == {1: 90.0, 2: 100.0, 3: 28.57}
    # overall: 100 * (0.9 + 1 + 0.285714) / 3 = 72.857 -> 72.86
    assert scores["overall"] == 72.86
    assert scores["perQuestionType"] == {"what color is the": 90.0, "is the": 100.0, "what is the": 28.57}
    # other: 100 * (0.9 + 0.285714) / 2 = 59.2857 -> 59.29
    assert scores["perAnswerType"] == {"other": 59.29, "yes/no": 100.0}


def test_score_vqa_legacy_mode():
    data = _vqa_fixture({1: "Red", 2: "Yes", 3: "green."})
    official, legacy = score_vqa(*data), score_vqa(*data, mode="legacy")
    assert official["evalQA"][2] == 0.0 and legacy["evalQA"][2] == 100.0
    # official: 100 * (0.9 + 0 + 0.285714) / 3 = 39.52; legacy as in the test above: 72.86
    assert official["overall"] == 39.52
    assert legacy["overall"] == 72.86
    with pytest.raises(ConfigError, match="'2017'"):
        score_vqa(*data, mode="2017")


def test_leave_one_out_compares_answer_records():
    # Without answer ids, equal records are left out together (the evaluator compares the dicts).
    texts = ["cat", "cat", "dog", "dog", "bird", "bird", "fish", "fish", "cow", "cow"]
    questions, annotations, _ = _vqa_fixture({})
    questions["questions"] = questions["questions"][:1]
    annotations["annotations"] = annotations["annotations"][:1]
    results = [{"question_id": 1, "answer": "cat"}]
    # With distinct ids: 2 x 1/3 (a cat left out) + 8 x 2/3, over 10 = 0.6.
    annotations["annotations"][0]["answers"] = _answers(texts)
    assert score_vqa(questions, annotations, results)["evalQA"] == {1: 60.0}
    # Without ids: leaving out a cat removes both -> 0; 8 x 2/3 over 10 = 0.5333.
    annotations["annotations"][0]["answers"] = _answers(texts, ids=False)
    assert score_vqa(questions, annotations, results)["evalQA"] == {1: 53.33}


def _vqa_files(tmp_path, questions, annotations, results):
    return (
        write_json(tmp_path / "questions.json", questions),
        write_json(tmp_path / "annotations.json", annotations),
        write_json(tmp_path / "results.json", results),
    )


def test_score_vqa_files_writes_output(tmp_path):
    paths = _vqa_files(tmp_path, *_vqa_fixture({1: "Red", 2: "yes", 3: "green."}))
    out = tmp_path / "out" / "vqa_scores.json"
    scores = score_vqa_files(*paths, output=out)
    assert scores["overall"] == 72.86
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["evalQA"] == {"1": 90.0, "2": 100.0, "3": 28.57}
    assert written["perAnswerType"] == scores["perAnswerType"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_vqa_bad_results(tmp_path):
    q, a, _ = _vqa_fixture({})
    cases = [
        # (results, fragments the message must contain)
        ([{"question_id": 1, "answer": "x"}, {"question_id": 2, "answer": "x"}, {"question_id": 3, "answer": "x"},
          {"question_id": 99, "answer": "x"}], ["99"]),
        ([{"question_id": 1, "answer": "x"}], ["2 of 3", "2, 3"]),
        ([{"question_id": 1, "answer": "x"}, {"question_id": 1, "answer": "y"}], ["1", "more than once"]),
        ([{"question_id": 1, "answer": 7}, {"question_id": 2, "answer": "x"}, {"question_id": 3, "answer": "x"}],
         ["question_id 1", "int", "string"]),
        ([{"question_id": "1", "answer": "x"}, {"question_id": 2, "answer": "x"}, {"question_id": 3, "answer": "x"}],
         ["'1'"]),
        ({"question_id": 1}, ["list"]),
    ]  # fmt: skip
    for results, fragments in cases:
        paths = _vqa_files(tmp_path, q, a, results)
        expect_data_error(lambda paths=paths: score_vqa_files(*paths), str(paths[2]), *fragments)


def test_vqa_bad_ground_truth(tmp_path):
    results = [{"question_id": i, "answer": "x"} for i in (1, 2, 3)]
    # A question without an annotation: named in the questions file.
    q, a, _ = _vqa_fixture({})
    q["questions"].append({"question_id": 4, "image_id": 104, "question": "?"})
    paths = _vqa_files(tmp_path, q, a, results)
    expect_data_error(lambda: score_vqa_files(*paths), str(paths[0]), "4", str(paths[1]))
    # An annotation for an unknown question: named in the annotations file.
    q, a, _ = _vqa_fixture({})
    a["annotations"][0]["question_id"] = 42
    paths = _vqa_files(tmp_path, q, a, results)
    expect_data_error(lambda: score_vqa_files(*paths), str(paths[1]), "42")
    # Annotation records that are malformed.
    for field, value, fragment in [("answers", [], "no answers"), ("answers", [{"answer": 3}], "string")]:
        q, a, _ = _vqa_fixture({})
        a["annotations"][1][field] = value
        paths = _vqa_files(tmp_path, q, a, results)
        expect_data_error(lambda paths=paths: score_vqa_files(*paths), str(paths[1]), "question_id 2", fragment)
    q, a, _ = _vqa_fixture({})
    del a["annotations"][2]["answer_type"]
    paths = _vqa_files(tmp_path, q, a, results)
    expect_data_error(lambda: score_vqa_files(*paths), str(paths[1]), "question_id 3", "answer_type")
    # Unreadable files name themselves.
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    expect_data_error(lambda: score_vqa_files(tmp_path / "broken.json", paths[1], paths[2]), "broken.json")
    expect_data_error(lambda: score_vqa_files(paths[0], tmp_path / "absent.json", paths[2]), "absent.json")

