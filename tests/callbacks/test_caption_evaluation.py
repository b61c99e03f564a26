"""CaptionEvaluation on TextCaps' hex image ids, and its W&B table."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import FakeWandb, make_textcaps, run_test_epoch

from lavin_lightning.callbacks.captions import CaptionEvaluation
from lavin_lightning.callbacks.vqa import AOKVQAEvaluation, TextVQAEvaluation, VQAEvaluation
from lavin_lightning.errors import ConfigError


def test_caption_evaluation_on_hex_ids(textcaps_root, tmp_path, monkeypatch):
    if shutil.which("java") is None:
        pytest.skip("the caption metrics need Java")
    dm = make_textcaps(textcaps_root, test_split="val")
    dm.setup("test")
    assert CaptionEvaluation().applies(SimpleNamespace(datamodule=dm))
    assert not any(c.applies(SimpleNamespace(datamodule=dm))
                   for c in (VQAEvaluation(), TextVQAEvaluation(), AOKVQAEvaluation()))
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = CaptionEvaluation(metrics=["Bleu"])
    # Corpus BLEU-1: "a red bus" matches 3 of 3 words, "zzz qqq www" none; 6 candidate words
    # against closest reference lengths 3 + 3 (no brevity penalty) -> 3 / 6.
    run_test_epoch(callback, dm, tmp_path, {"dd04": "A red bus.\nsecond line", "ee05": "zzz qqq www"}, [wandb])
    assert callback.metrics["Bleu_1"] == pytest.approx(0.5, abs=1e-6)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results == [{"image_id": "dd04", "caption": "A red bus."}, {"image_id": "ee05", "caption": "zzz qqq www"}]
    assert wandb.metrics[0]["test/Bleu_1"] == pytest.approx(0.5, abs=1e-6)
    ((key, columns, rows),) = wandb.tables
    assert key == "test/captions" and columns == ["image", "image_id", "references", "generated"]
    assert rows[0] == [("wandb.Image", (128, 32)), "dd04", "a red bus | a big red bus", "A red bus."]


def test_caption_evaluation_needs_references(textcaps_root, tmp_path):
    dm = make_textcaps(textcaps_root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="test image 'ff06' has no reference captions"):
        run_test_epoch(CaptionEvaluation(metrics=["Bleu"]), dm, tmp_path, {"ff06": "a sign", "ab07": "a can"})
