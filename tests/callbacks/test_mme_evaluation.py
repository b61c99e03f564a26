"""MMEEvaluation: the eval tool's results layout, metrics.json and logs from a test run, read back by `score mme`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
from conftest import COMMON, FakeWandb, expect_data_error, run_test_epoch, write_image, write_official_vqa, write_text

from data_modules.mme import MMEDataModule
from data_modules.vqa import VQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.callbacks.mme import MMEEvaluation
from lavin_lightning.callbacks.vqa import VQAEvaluation
from lavin_lightning.cli import main
from lavin_lightning.errors import ConfigError


def write_small_mme(root):
    """existence: a.jpg (Yes, No), b.jpg (No, Yes) beside their files; code_reasoning: c.png (Yes, No)."""
    for name, lines in (("a", "Is there a dog?\tYes\nIs there a cat?\tNo\n"),
                        ("b", "Is there a bus?\tNo\nIs there a car?\tYes\n")):
        write_image(root / "existence" / f"{name}.jpg")
        write_text(root / "existence" / f"{name}.txt", lines)
    write_image(root / "code_reasoning" / "images" / "c.png")
    write_text(root / "code_reasoning" / "questions_answers_YN" / "c.txt",
               "Does it print 3?\tYes\nDoes it print 4?\tNo\n")
    return root


# existence a: both right; b: "no" right, "I think so" is other -> 3 of 4, 1 of 2 images: 75 + 50.
# code_reasoning c: "Yes" right, "Yes" wrong -> 50 + 0.
TEXTS = {"existence/a.jpg/0": " Yes, it is.\nInstruction: more", "existence/a.jpg/1": "No",
         "existence/b.jpg/0": "no", "existence/b.jpg/1": "I think so",
         "code_reasoning/c.png/0": "Yes", "code_reasoning/c.png/1": "Yes\tindeed"}


@pytest.fixture
def mme_module(tmp_path):
    dm = MMEDataModule(str(write_small_mme(tmp_path / "mme")), tokenizer=byte_tokenizer(), **COMMON)
    dm.setup("test")
    return dm


def test_results_layout_metrics_and_logs(mme_module, tmp_path, monkeypatch):
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = MMEEvaluation()
    run_test_epoch(callback, mme_module, tmp_path, TEXTS, [wandb])
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "mme_results").iterdir()) == ["code_reasoning.txt", "existence.txt"]
    assert (run / "mme_results" / "existence.txt").read_text() == (
        "a.jpg\tIs there a dog?\tYes\tYes, it is. Instruction: more\n"
        "a.jpg\tIs there a cat?\tNo\tNo\n"
        "b.jpg\tIs there a bus?\tNo\tno\n"
        "b.jpg\tIs there a car?\tYes\tI think so\n")
    assert (run / "mme_results" / "code_reasoning.txt").read_text().splitlines()[1] == (
        "c.png\tDoes it print 4?\tNo\tYes indeed")
    metrics = callback.metrics
    assert metrics["subtasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4,
                                                "images": 2, "other": 1}
    assert metrics["subtasks"]["code_reasoning"]["score"] == 50.0
    assert (metrics["perception"], metrics["cognition"]) == (125.0, 50.0)
    assert json.loads((run / "metrics.json").read_text()) == metrics
    scores, chart = wandb.metrics
    assert scores == {"test/mme_perception": 125.0, "test/mme_cognition": 50.0,
                      "test/mme/existence_acc": 75.0, "test/mme/existence_acc_plus": 50.0,
                      "test/mme/existence_score": 125.0, "test/mme/code_reasoning_acc": 50.0,
                      "test/mme/code_reasoning_acc_plus": 0.0, "test/mme/code_reasoning_score": 50.0}
    assert list(chart) == ["test/mme_subtasks"]
    assert chart["test/mme_subtasks"].table.data == [["existence", 125.0, 75.0, 50.0],
                                                     ["code_reasoning", 50.0, 50.0, 0.0]]
    ((key, columns, rows),) = wandb.tables
    assert key == "test/mme_predictions" and len(rows) == 6
    assert columns == ["image", "subtask", "image_file", "question", "ground_truth", "prediction", "parsed", "correct"]
    assert rows[3][1:] == ["existence", "b.jpg", "Is there a car?", "Yes", "I think so", "other", False]
    assert rows[3][0] == ("wandb.Image", (8, 8))


def test_score_mme_reads_the_results_back_to_the_same_numbers(mme_module, tmp_path, capsys):
    for parsing in ("official", "release"):
        callback = MMEEvaluation(output_dir=str(tmp_path / parsing), parsing=parsing)
        run_test_epoch(callback, mme_module, tmp_path, TEXTS)
        again = tmp_path / f"{parsing}.json"
        main(["score", "mme", "--results", str(tmp_path / parsing / "mme_results"), "--parsing", parsing,
              "--output", str(again)])
        assert json.loads(again.read_text()) == callback.metrics
    # Release parsing (first question "yes", second "no"): b.jpg's right "no" to its first
    # question counts as wrong -> existence 2 of 4, 1 of 2 images: 50 + 50.
    assert json.loads((tmp_path / "release.json").read_text())["perception"] == 100.0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == [
        "MME (official parsing): perception 125.00 (1 of 10 subtasks), cognition 50.00 (1 of 4 subtasks)",
        "  existence              acc  75.00  acc+  50.00  score 125.00",
        "  code_reasoning         acc  50.00  acc+   0.00  score  50.00",
        f"wrote every score to {tmp_path / 'official.json'}"]


def test_a_later_run_leaves_no_stale_subtask(mme_module, tmp_path):
    run_test_epoch(MMEEvaluation(), mme_module, tmp_path, TEXTS)
    only = MMEDataModule(str(tmp_path / "mme"), subtasks=["code_reasoning"], tokenizer=byte_tokenizer(), **COMMON)
    only.setup("test")
    callback = MMEEvaluation()
    run_test_epoch(callback, only, tmp_path, {k: v for k, v in TEXTS.items() if k.startswith("code")})
    assert [p.name for p in (tmp_path / "run" / "mme_results").iterdir()] == ["code_reasoning.txt"]
    assert callback.metrics["perception"] is None and callback.metrics["missing_subtasks"][0] == "existence"


def test_every_question_needs_a_generation(mme_module, tmp_path):
    texts = dict(TEXTS)
    del texts["existence/b.jpg/1"]
    expect_data_error(lambda: run_test_epoch(MMEEvaluation(), mme_module, tmp_path, texts),
                      "1 of the 6 MME test questions have no generation, first: existence/b.jpg/1")
    with pytest.raises(ConfigError, match="parsing must be one of"):
        MMEEvaluation(parsing="lavin")


def test_scores_only_mme_data_modules(mme_module, tmp_path):
    vqa = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                        tokenizer=byte_tokenizer(), **COMMON)
    assert MMEEvaluation().applies(SimpleNamespace(datamodule=mme_module))
    assert not MMEEvaluation().applies(SimpleNamespace(datamodule=vqa))
    assert not VQAEvaluation().applies(SimpleNamespace(datamodule=mme_module))


def _tiny_test_run(tmp_path, make_tiny_lavin, **trainer_kwargs):
    """A tiny LaVIN tested on the small MME fixture by Lightning's own test loop."""
    module = make_tiny_lavin(seed=0)
    module.generation.max_new_tokens = 3
    dm = MMEDataModule(str(write_small_mme(tmp_path / "mme")), global_batch_size=2, eval_batch_size=2,
                       image_size=32, tokenizer=module.tokenizer)
    callback = MMEEvaluation(output_dir=str(tmp_path / "scores"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback], **trainer_kwargs)
    trainer.test(module, datamodule=dm, verbose=False)
    return tmp_path / "scores"


def _check_run(scores_dir):
    existence = (scores_dir / "mme_results" / "existence.txt").read_text().splitlines()
    assert [line.split("\t")[:3] for line in existence] == [
        ["a.jpg", "Is there a dog?", "Yes"], ["a.jpg", "Is there a cat?", "No"],
        ["b.jpg", "Is there a bus?", "No"], ["b.jpg", "Is there a car?", "Yes"]]  # each question once, in pairs
    metrics = json.loads((scores_dir / "metrics.json").read_text())
    assert set(metrics["subtasks"]) == {"existence", "code_reasoning"}
    main(["score", "mme", "--results", str(scores_dir / "mme_results"), "--output", str(scores_dir / "again.json")])
    assert json.loads((scores_dir / "again.json").read_text()) == metrics


def test_lightning_test_loop(tmp_path, make_tiny_lavin):
    _check_run(_tiny_test_run(tmp_path, make_tiny_lavin, devices=1))


@pytest.mark.slow
def test_ddp_gathers_every_question_once(tmp_path, make_tiny_lavin):
    # 6 questions over 2 processes of batch 2: each process generates for half, rank 0 scores all.
    _check_run(_tiny_test_run(tmp_path, make_tiny_lavin, devices=2, strategy="ddp_fork"))
