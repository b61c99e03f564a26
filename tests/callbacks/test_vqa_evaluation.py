"""The VQA-family scoring callbacks (VQAv2, TextVQA, A-OKVQA) on their data modules, and their W&B tables."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import COMMON, FakeWandb, make_aokvqa, make_textvqa, run_test_epoch, write_official_vqa

from data_modules.vqa import VQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.callbacks.captions import CaptionEvaluation
from lavin_lightning.callbacks.vqa import AOKVQAEvaluation, TextVQAEvaluation, VQAEvaluation, matching_choice
from lavin_lightning.errors import ConfigError


def test_textvqa_evaluation_hand_computed(textvqa_root, tmp_path, monkeypatch):
    dm = make_textvqa(textvqa_root, splits={"test": "val"})
    dm.setup("test")
    created = []
    monkeypatch.setattr("wandb.Image", lambda picture: created.append(picture.size) or ("wandb.Image", picture.size))
    wandb, other = FakeWandb(), SimpleNamespace(metrics=[])
    other.log_metrics = lambda metrics, step=None: other.metrics.append(metrics)
    callback = TextVQAEvaluation(table_rows=1)
    # 101: "Red." normalises to "red", all 10 answers agree -> 1. 102: "yes" is 2 of 10 answers ->
    # leave-one-out (2 x 1/3 + 8 x 2/3) / 10 = 0.6. Mean 0.8.
    run_test_epoch(callback, dm, tmp_path, {"101": "Red.\nmore", "102": "yes"}, [wandb, other])
    assert callback.metrics["accuracy"] == 80.0 and callback.metrics["accuracy_fraction"] == pytest.approx(0.8)
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text()) == [{"question_id": 101, "answer": "Red."},
                                                              {"question_id": 102, "answer": "yes"}]
    assert json.loads((out / "metrics.json").read_text())["evalQA"]["102"] == pytest.approx(0.6)
    assert wandb.metrics == other.metrics == [{"test/accuracy": 80.0, "test/textvqa_accuracy": 80.0}]
    ((key, columns, rows),) = wandb.tables
    assert key == "test/textvqa_predictions" and columns[0] == "image" and len(rows) == 1  # table_rows
    assert rows[0][0] == ("wandb.Image", (128, 85)) and rows[0][1:4] == [101, "what colour is the text?", "red x10"]
    assert created == [(128, 85)]  # the 300 x 200 image as a 128 px thumbnail


def test_textvqa_evaluation_needs_answers(textvqa_root, tmp_path):
    dm = make_textvqa(textvqa_root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="question_id 201 has no answers"):
        run_test_epoch(TextVQAEvaluation(), dm, tmp_path, {"201": "x", "202": "y"})


def test_matching_choice():
    assert matching_choice("The cat.", ["two dogs", "a cat"]) == "a cat"
    assert matching_choice("two", ["2", "two dogs"]) == "2"  # number words normalise to digits
    assert matching_choice("banana", ["a cat"]) is None and matching_choice("", ["a"]) is None


def test_aokvqa_evaluation_hand_computed(aokvqa_root, tmp_path, monkeypatch):
    dm = make_aokvqa(aokvqa_root, splits={"test": "val"})
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = AOKVQAEvaluation()
    # v1: "red" is 2 of the 10 direct answers -> 2/3; its choice "red" is correct.
    # v2: "The cat" is no direct answer as written -> 0; normalised it is the choice "a cat", correct.
    # v3: difficult, so out of the direct-answer setting; "banana" matches no choice -> wrong.
    run_test_epoch(callback, dm, tmp_path, {"v1": "red", "v2": "The cat", "v3": "banana"}, [wandb])
    metrics = callback.metrics
    assert metrics["direct_answer"] == pytest.approx(100 / 3) and metrics["multiple_choice"] == pytest.approx(200 / 3)
    assert metrics["counts"] == {"direct_answer": 2, "multiple_choice": 3, "missing": 1, "ignored_predictions": 0}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results == {"v1": {"direct_answer": "red", "multiple_choice": "red"},
                       "v2": {"direct_answer": "The cat", "multiple_choice": "a cat"},
                       "v3": {"direct_answer": "banana"}}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert wandb.metrics == [{"test/accuracy": pytest.approx(100 / 3),  # the headline: direct answer
                              "test/aokvqa_direct_answer": pytest.approx(100 / 3),
                              "test/aokvqa_multiple_choice": pytest.approx(200 / 3)}]
    ((key, columns, rows),) = wandb.tables
    assert key == "test/aokvqa_predictions" and columns[0] == "image" and len(rows) == 3
    assert rows[1] == [("wandb.Image", (8, 8)), "v2", "Which animal sleeps here?", "cat x10", "The cat",
                       "two dogs | a cat | three | none", "a cat", "a cat"]


def test_aokvqa_evaluation_needs_answers(aokvqa_root, tmp_path):
    dm = make_aokvqa(aokvqa_root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="question_id 's1' has no answers"):
        run_test_epoch(AOKVQAEvaluation(), dm, tmp_path, {"s1": "food"})


def test_each_callback_scores_only_its_data_module(textvqa_root, aokvqa_root, tmp_path):
    vqa = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                        tokenizer=byte_tokenizer(), **COMMON)
    modules = {"vqa": vqa, "textvqa": make_textvqa(textvqa_root), "aokvqa": make_aokvqa(aokvqa_root)}
    callbacks = {"vqa": VQAEvaluation(), "textvqa": TextVQAEvaluation(), "aokvqa": AOKVQAEvaluation()}
    for name, callback in callbacks.items():
        applies = {module: callback.applies(SimpleNamespace(datamodule=dm)) for module, dm in modules.items()}
        assert applies == {module: module == name for module in modules}, name
    assert not any(CaptionEvaluation().applies(SimpleNamespace(datamodule=dm)) for dm in modules.values())


def test_vqa_evaluation_table_has_thumbnails(tmp_path, monkeypatch):
    dm = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                       tokenizer=byte_tokenizer(), **COMMON)
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = VQAEvaluation()
    run_test_epoch(callback, dm, tmp_path, {"7": "yes"}, [wandb])
    assert callback.metrics["overall"] == 100.0
    ((key, columns, rows),) = wandb.tables
    assert columns == ["image", "question_id", "question", "references", "answer", "accuracy"]
    assert rows == [[("wandb.Image", (32, 128)), 7, "Is it tall?", "yes x10", "yes", 100.0]]


def test_real_wandb_image_offline(textvqa_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    dm = make_textvqa(textvqa_root, splits={"test": "val"})
    dm.setup("test")
    callback = TextVQAEvaluation()
    (thumbnail, small) = callback.thumbnails(SimpleNamespace(datamodule=dm), ["101", "102"])
    assert isinstance(thumbnail, wandb.Image) and thumbnail.image.size == (128, 85)
    assert small.image.size == (8, 8)  # thumbnails never enlarge
    assert callback.thumbnails(SimpleNamespace(datamodule=dm), ["unknown"]) == [None]
