"""`lavin-lightning score vqa|textvqa|aokvqa|captions` on files, and the embedded easy-VQA in the VQA layout."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, fit_test_and_rescore_vqa, prepare_easy_vqa

from lavin_lightning.cli import main


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory):
    return prepare_easy_vqa(tmp_path_factory.mktemp("data") / "vqa", n_train=20, n_val=5, n_test=30)


def test_easy_vqa_in_the_vqa_layout(easy_vqa):
    questions = json.loads((easy_vqa / "questions_test.json").read_text())["questions"]
    annotations = json.loads((easy_vqa / "annotations_test.json").read_text())["annotations"]
    assert len(questions) == len(annotations) == 30
    assert all(len(a["answers"]) == 10 and len({x["answer"] for x in a["answers"]}) == 1 for a in annotations)
    assert {a["answer_type"] for a in annotations} <= {"yes/no", "other"}
    for split in ("train", "val", "test"):
        for q in json.loads((easy_vqa / f"questions_{split}.json").read_text())["questions"]:
            assert (easy_vqa / "images" / split / f"{q['image_id']}.png").is_file()
    train_ids = {q["question_id"] for q in json.loads((easy_vqa / "questions_train.json").read_text())["questions"]}
    assert not train_ids & {q["question_id"] for q in questions}


def test_score_vqa_command(easy_vqa, tmp_path, capsys):
    annotations = json.loads((easy_vqa / "annotations_test.json").read_text())["annotations"]
    # Right answers, except that every third one is wrong; the casing differs (unanimous ground
    # truth: the official evaluator does not normalise, the legacy one does).
    results = [{"question_id": a["question_id"],
                "answer": "wrong" if i % 3 == 0 else a["multiple_choice_answer"].upper()}
               for i, a in enumerate(annotations)]
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    common = ["--questions", str(easy_vqa / "questions_test.json"), "--annotations",
              str(easy_vqa / "annotations_test.json"), "--results", str(results_path)]
    main(["score", "vqa", *common, "--output", str(tmp_path / "official.json"), "--json"])
    official = json.loads((tmp_path / "official.json").read_text())
    assert official["overall"] == 0.0 and set(official) == {"overall", "perAnswerType", "perQuestionType", "evalQA"}
    assert "evalQA" not in json.loads(capsys.readouterr().out)
    # Without --json: a short summary and where every score went.
    main(["score", "vqa", *common, "--output", str(tmp_path / "official.json")])
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["VQA accuracy: 0.00 (other 0.00, yes/no 0.00)",
                       f"wrote every score to {tmp_path / 'official.json'}"]
    main(["score", "vqa", *common, "--mode", "legacy", "--output", str(tmp_path / "legacy.json")])
    legacy = json.loads((tmp_path / "legacy.json").read_text())
    assert legacy["overall"] == round(100 * 20 / 30, 2)


def test_score_vqa_names_unknown_ids(easy_vqa, tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps([{"question_id": 123456789, "answer": "yes"}]))
    with pytest.raises(SystemExit, match="123456789"):
        main(["score", "vqa", "--questions", str(easy_vqa / "questions_test.json"), "--annotations",
              str(easy_vqa / "annotations_test.json"), "--results", str(results_path)])


def test_score_textvqa_and_aokvqa_commands(tmp_path):
    data = tmp_path / "textvqa.json"
    data.write_text(json.dumps({"data": [{"question_id": 1, "answers": ["Coca-Cola's"] * 10, "image_id": "a",
                                          "question": "What brand?"}]}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 1, "answer": "coca-cola's"}]))
    main(["score", "textvqa", "--data", str(data), "--results", str(results), "--output", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())["accuracy"] == 100.0

    dataset = tmp_path / "aokvqa.json"
    dataset.write_text(json.dumps([{"question_id": "q1", "question": "?", "choices": ["a", "b", "c", "d"],
                                    "correct_choice_idx": 2, "direct_answers": ["dog"] * 10,
                                    "difficult_direct_answer": False, "image_id": 1}]))
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"q1": {"multiple_choice": "c", "direct_answer": "Dog"}}))
    main(["score", "aokvqa", "--dataset", str(dataset), "--predictions", str(predictions),
          "--output", str(tmp_path / "a.json")])
    scores = json.loads((tmp_path / "a.json").read_text())
    assert scores["multiple_choice"] == 100.0 and scores["direct_answer"] == 0.0  # raw match: "Dog" != "dog"


@pytest.mark.slow
def test_score_captions_command(tmp_path):
    references = tmp_path / "refs.json"
    references.write_text(json.dumps({"annotations": [
        {"image_id": 1, "id": 1, "caption": "A dog runs on the grass."},
        {"image_id": 1, "id": 2, "caption": "A brown dog running outside."},
        {"image_id": 2, "id": 3, "caption": "Two cats sleep on a sofa."},
        {"image_id": 2, "id": 4, "caption": "Cats sleeping on the couch."}]}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "caption": "A dog runs on the grass"},
                                   {"image_id": 2, "caption": "two cats sleep on a sofa"}]))
    main(["score", "captions", "--references", str(references), "--results", str(results),
          "--output", str(tmp_path / "c.json")])
    scores = json.loads((tmp_path / "c.json").read_text())
    assert {"Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "ROUGE_1_F", "ROUGE_L_R"} <= set(scores)
    assert scores["Bleu_1"] == pytest.approx(1.0, abs=1e-6)  # every candidate equals one reference
    assert scores["ROUGE_1_F"] == pytest.approx(1.0)


@pytest.mark.slow
def test_fit_and_test_on_easy_vqa_with_the_official_vqa_scorer(easy_vqa, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    args = ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
            "--config", str(REPO / "experiments/tiny/lavin_tiny_vqa.yaml")]
    metrics, results, again = fit_test_and_rescore_vqa(args, easy_vqa, tmp_path / "run")
    assert len(results) == 30 and set(metrics) == {"overall", "perAnswerType", "perQuestionType", "evalQA"}
    # The standalone scorer on the test loop's results file agrees with it.
    assert again == metrics
