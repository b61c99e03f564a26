"""LaVIN on a Karpathy-format caption set: fit, then test scored by CaptionEvaluation."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
from PIL import Image

from lavin_lightning.callbacks.captions import CaptionEvaluation


@pytest.mark.slow
def test_lavin_fits_and_scores_captions(tmp_path, make_tiny_lavin):
    if shutil.which("java") is None:
        pytest.skip("the caption metrics need Java")
    from data_modules.captions import CaptionDataModule

    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}
    images = []
    for i, (name, rgb) in enumerate(list(colours.items()) * 2):
        split = "train" if i < 3 else "test"
        (tmp_path / "val2014").mkdir(exist_ok=True)
        filename = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40, 40), rgb).save(tmp_path / "val2014" / filename)
        images.append({"filepath": "val2014", "filename": filename, "imgid": i, "cocoid": 1000 + i, "split": split,
                       "sentences": [{"raw": f"A {name} square.", "imgid": i, "sentid": 2 * i},
                                     {"raw": f"A plain {name} picture.", "imgid": i, "sentid": 2 * i + 1}]})
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": images, "dataset": "coco"}))

    module = make_tiny_lavin()
    module.generation.max_new_tokens = 6
    module.generation.temperature = 0.0
    datamodule = CaptionDataModule(str(karpathy), str(tmp_path), global_batch_size=2, image_size=32, max_seq_len=128,
                                   tokenizer=module.tokenizer)
    evaluation = CaptionEvaluation(output_dir=str(tmp_path / "scores"), metrics=["Bleu", "CIDEr", "ROUGE_1"])
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluation])
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    results = json.loads((tmp_path / "scores" / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [1003, 1004, 1005]
    assert {"Bleu_1", "Bleu_4", "CIDEr", "ROUGE_1_F", "ROUGE_L_R"} <= set(metrics)
    assert metrics == evaluation.metrics
