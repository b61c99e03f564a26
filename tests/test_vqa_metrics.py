"""VQA-family scorers: the official normalisation quirks, leave-one-out accuracy, aggregation, bad input.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import json
import re

import pytest

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.metrics.vqa import (
    CONTRACTIONS,
    normalize_textvqa_answer,
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
    score_aokvqa,
    score_aokvqa_files,
    score_textvqa,
    score_textvqa_files,
    score_vqa,
    score_vqa_files,
    textvqa_accuracy,
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


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _vqa_files(tmp_path, questions, annotations, results):
    return (
        _write(tmp_path / "questions.json", questions),
        _write(tmp_path / "annotations.json", annotations),
        _write(tmp_path / "results.json", results),
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


def _expect_error(call, *fragments):
    with pytest.raises(DataError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


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
        _expect_error(lambda paths=paths: score_vqa_files(*paths), str(paths[2]), *fragments)


def test_vqa_bad_ground_truth(tmp_path):
    results = [{"question_id": i, "answer": "x"} for i in (1, 2, 3)]
    # A question without an annotation: named in the questions file.
    q, a, _ = _vqa_fixture({})
    q["questions"].append({"question_id": 4, "image_id": 104, "question": "?"})
    paths = _vqa_files(tmp_path, q, a, results)
    _expect_error(lambda: score_vqa_files(*paths), str(paths[0]), "4", str(paths[1]))
    # An annotation for an unknown question: named in the annotations file.
    q, a, _ = _vqa_fixture({})
    a["annotations"][0]["question_id"] = 42
    paths = _vqa_files(tmp_path, q, a, results)
    _expect_error(lambda: score_vqa_files(*paths), str(paths[1]), "42")
    # Annotation records that are malformed.
    for field, value, fragment in [("answers", [], "no answers"), ("answers", [{"answer": 3}], "string")]:
        q, a, _ = _vqa_fixture({})
        a["annotations"][1][field] = value
        paths = _vqa_files(tmp_path, q, a, results)
        _expect_error(lambda paths=paths: score_vqa_files(*paths), str(paths[1]), "question_id 2", fragment)
    q, a, _ = _vqa_fixture({})
    del a["annotations"][2]["answer_type"]
    paths = _vqa_files(tmp_path, q, a, results)
    _expect_error(lambda: score_vqa_files(*paths), str(paths[1]), "question_id 3", "answer_type")
    # Unreadable files name themselves.
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    _expect_error(lambda: score_vqa_files(tmp_path / "broken.json", paths[1], paths[2]), "broken.json")
    _expect_error(lambda: score_vqa_files(paths[0], tmp_path / "absent.json", paths[2]), "absent.json")


# --------------------------------------------------------------------------- TextVQA


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
        _write(tmp_path / "TextVQA_0.5.1_val.json", data), _write(tmp_path / "res.json", results), output=out
    )
    assert from_files == scores
    assert json.loads(out.read_text(encoding="utf-8"))["accuracy"] == 43.33


def test_textvqa_bad_input(tmp_path):
    data, results = _textvqa_fixture()
    data_path = _write(tmp_path / "textvqa.json", data)
    bad_results = [
        (results + [{"question_id": 77, "answer": "x"}], ["77"]),
        (results[:1], ["2 of 3", "11, 12"]),
        (results + [results[0]], ["10", "more than once"]),
        ([{"question_id": 10, "answer": None}] + results[1:], ["question_id 10", "NoneType"]),
    ]
    for res, fragments in bad_results:
        res_path = _write(tmp_path / "textvqa_results.json", res)
        _expect_error(lambda res_path=res_path: score_textvqa_files(data_path, res_path), str(res_path), *fragments)
    res_path = _write(tmp_path / "textvqa_results.json", results)
    for change, fragments in [
        ({"answers": ["yes"] * 9}, ["question_id 11", "9 answers", "exactly 10"]),
        ({"answers": ["yes"] * 9 + [3]}, ["question_id 11", "strings"]),
    ]:
        bad = json.loads(json.dumps(data))
        bad["data"][1].update(change)
        path = _write(tmp_path / "textvqa_bad.json", bad)
        _expect_error(lambda path=path: score_textvqa_files(path, res_path), str(path), *fragments)
    bad = json.loads(json.dumps(data))
    del bad["data"][2]["answers"]
    path = _write(tmp_path / "textvqa_test.json", bad)
    _expect_error(lambda: score_textvqa_files(path, res_path), str(path), "question_id 12", "no answers")


# --------------------------------------------------------------------------- A-OKVQA


def _aokvqa_fixture():
    dataset = [
        {
            "question_id": "q1",
            "question": "?",
            "image_id": 1,
            "choices": ["dog", "cat", "bird", "fish"],
            "correct_choice_idx": 0,
            "direct_answers": ["dog"] * 2 + ["puppy"] * 8,
            "difficult_direct_answer": False,
        },
        {
            "question_id": "q2",
            "question": "?",
            "image_id": 2,
            "choices": ["dog", "cat", "bird", "fish"],
            "correct_choice_idx": 1,
            "direct_answers": ["dog"] * 10,
            "difficult_direct_answer": False,
        },
        {
            "question_id": "q3",
            "question": "?",
            "image_id": 3,
            "choices": ["red", "blue", "green", "pink"],
            "correct_choice_idx": 2,
            "direct_answers": ["green"] * 10,
            "difficult_direct_answer": True,
        },
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
    data_path = _write(tmp_path / "aokvqa_v1p0_val.json", dataset)
    partial = {"q1": predictions["q1"]}
    pred_path = _write(tmp_path / "aokvqa_preds.json", partial)
    _expect_error(lambda: score_aokvqa_files(data_path, pred_path), str(pred_path), "2 question(s)", "'q2', 'q3'")
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
    score_aokvqa_files(data_path, _write(tmp_path / "full.json", predictions), output=out)
    assert json.loads(out.read_text(encoding="utf-8"))["counts"]["multiple_choice"] == 3


def test_aokvqa_bad_input(tmp_path):
    dataset, predictions = _aokvqa_fixture()
    data_path = _write(tmp_path / "aokvqa_val.json", dataset)
    for change, fragments in [
        ({"q2": {"multiple_choice": "horse", "direct_answer": "x"}}, ["'q2'", "'horse'", "not one of its choices"]),
        ({"q1": {"multiple_choice": 0, "direct_answer": "x"}}, ["'q1'", "multiple_choice", "int"]),
        ({"q1": {"multiple_choice": "dog", "direct_answer": ["dog"]}}, ["'q1'", "direct_answer", "list"]),
        ({"q1": "dog"}, ["'q1'", "str", "object"]),
    ]:
        path = _write(tmp_path / "aokvqa_bad_preds.json", {**predictions, **change})
        _expect_error(lambda path=path: score_aokvqa_files(data_path, path), str(path), *fragments)
    pred_path = _write(tmp_path / "aokvqa_preds.json", predictions)
    for index, change, fragments in [
        (1, {"question_id": "q1"}, ["'q1'", "more than once"]),
        (1, {"correct_choice_idx": 4}, ["'q2'", "correct_choice_idx"]),
        (0, {"difficult_direct_answer": 0}, ["'q1'", "difficult_direct_answer"]),
        (0, {"direct_answers": "dog"}, ["'q1'", "direct_answers", "list of strings"]),
    ]:
        bad = json.loads(json.dumps(dataset))
        bad[index].update(change)
        path = _write(tmp_path / "aokvqa_bad.json", bad)
        _expect_error(lambda path=path: score_aokvqa_files(path, pred_path), str(path), *fragments)
    test_split = [{k: v for k, v in r.items() if k not in ("correct_choice_idx", "direct_answers")} for r in dataset]
    path = _write(tmp_path / "aokvqa_v1p0_test.json", test_split)
    message = _expect_error(lambda: score_aokvqa_files(path, pred_path), str(path), "'q1'")
    assert re.search(r"correct_choice_idx, direct_answers", message)
