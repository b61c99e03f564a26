"""TextCapsDataModule and CaptionEvaluation on TextCaps' hex image ids, on hand-written TextCaps_0.1 files."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image
from test_vqa_family_datamodules import FakeWandb, run_test_epoch

from data_modules.templates import IGNORE_INDEX
from data_modules.textcaps import TextCapsDataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.callbacks.captions import CaptionEvaluation
from lavin_lightning.callbacks.vqa import AOKVQAEvaluation, TextVQAEvaluation, VQAEvaluation
from lavin_lightning.errors import ConfigError, DataError

FOLDERS = {"train": "train_images", "val": "train_images", "test": "test_images"}
# image_id -> captions, per split; train and val have one entry per caption.
CAPTIONS = {
    "train": {"aa01": ["A red Coca-Cola can.", "A can of coke.", " A soda can on a desk. "],
              "bb02": ["A stop sign.", "A red sign that says STOP."],
              **{f"c{i:03x}": [f"A sign with the number {i}."] for i in range(3, 9)}},
    "val": {"dd04": ["a red bus", "a big red bus"], "ee05": ["the blue sign", "a sign"]},
    "test": {"ff06": [], "ab07": []},
}


def entries(split, captions=CAPTIONS):
    """TextCaps entries of a split: one per caption (train/val), one per image (test)."""
    rows, caption_id = [], {"train": 0, "val": 1000, "test": 2000}[split]
    for image_id, sentences in captions[split].items():
        base = {"image_id": image_id, "image_classes": ["Sign"], "image_path": f"{split}/{image_id}.jpg",
                "image_width": 8, "image_height": 8, "set_name": split}
        if not sentences:
            rows.append(base)
        for sentence in sentences:
            caption_id += 1
            rows.append({**base, "caption_id": caption_id, "caption_str": sentence, "caption_tokens": sentence.split(),
                         "reference_strs": sentences, "reference_tokens": [s.split() for s in sentences]})
    return rows


def write(root, data=None):
    data = data or {split: entries(split) for split in CAPTIONS}
    for split, rows in data.items():
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("image_path"), str) and "missing" not in row["image_path"]:
                path = root / FOLDERS[split] / row["image_path"]
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8) if row["image_id"] != "dd04" else (256, 64), (20, 20, 200)).save(path)
        (root / f"TextCaps_0.1_{split}.json").write_text(json.dumps(
            {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1", "data": rows}))
    return root


def make(root, **kwargs):
    kwargs = {"global_batch_size": 2, "image_size": 16, "max_seq_len": 128, "tokenizer": byte_tokenizer(), **kwargs}
    return TextCapsDataModule(str(root), **kwargs)


@pytest.fixture
def root(tmp_path):
    return write(tmp_path / "textcaps")


def targets(dm, role):
    tok = dm.tokenizer
    return {s.pid: tok.decode([t for t in s.labels if t != IGNORE_INDEX][:-1]).strip()
            for s in dm.datasets[role].samples}


def test_splits_rows_and_references(root):
    dm = make(root)
    dm.setup()
    # train_on="all": one row per caption, stripped, case kept.
    train = targets(dm, "train")
    assert len(train) == 3 + 2 + 6
    assert train["aa01#0"] == "A red Coca-Cola can." and train["aa01#2"] == "A soda can on a desk."
    assert train["bb02#1"] == "A red sign that says STOP."
    # val: one row per image, its first caption; references: all captions of the image.
    assert targets(dm, "val") == {"dd04": "a red bus", "ee05": "the blue sign"}
    assert dm.references("val") == CAPTIONS["val"]
    coco = dm.coco_references("val")
    assert coco["images"] == [{"id": "dd04"}, {"id": "ee05"}] and len(coco["annotations"]) == 4
    # test: one generation prompt per image, no captions.
    batch = next(iter(dm.test_dataloader()))
    assert batch["pids"] == ["ff06", "ab07"] and "labels" not in batch
    assert dm.tokenizer.decode(batch["input_ids"][0]).endswith("A short image caption:\nResponse:")
    assert dm.references("test") == {"ff06": [], "ab07": []}
    assert [s.pid for s in dm.datasets["predict"].samples] == ["ff06", "ab07"]
    # <root>/<folder>/<image_path>: val images live in the train folder.
    assert dm.image_paths("val")["dd04"] == root / "train_images" / "val" / "dd04.jpg"
    assert dm.image_paths("test")["ff06"] == root / "test_images" / "test" / "ff06.jpg"
    assert dm.image_paths("train")["aa01#1"] == root / "train_images" / "train" / "aa01.jpg"


def test_train_on_first_and_configurable_images(tmp_path):
    root = write(tmp_path)
    dm = make(root, train_on="first")
    dm.setup("fit")
    assert sorted(targets(dm, "train")) == sorted(f"{i}#0" for i in CAPTIONS["train"])
    for image_id in CAPTIONS["val"]:
        path = root / "flat" / f"{image_id}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    dm = make(root, test_split="val", image_pattern="flat/{image_id}.png")
    dm.setup("test")
    assert dm.image_paths("test") == {"dd04": root / "flat" / "dd04.png", "ee05": root / "flat" / "ee05.png"}
    with pytest.raises(ConfigError, match="image_pattern"):
        make(root, image_pattern="{nope}.jpg")


def test_no_val_file_skips_validation(tmp_path):
    root = write(tmp_path, {"train": entries("train")})
    dm = make(root)
    dm.setup("fit")
    assert "val" not in dm.datasets and "val_dataloader" not in vars(dm)


def test_k_shot_and_limits(root):
    def shot(seed):
        dm = make(root, k_shot=3, seed=seed, train_on="first")
        dm.setup("fit")
        return [s.pid for s in dm.datasets["train"].samples]

    assert shot(0) == shot(0) != shot(1) and len(shot(2)) == 3
    with pytest.raises(ConfigError, match="k_shot 50 exceeds"):
        make(root, k_shot=50).setup("fit")
    dm = make(root, limit_train=2, limit_val=1, limit_test=1)
    dm.setup()
    assert [s.pid for s in dm.datasets["train"].samples] == ["aa01#0", "aa01#1", "aa01#2", "bb02#0", "bb02#1"]
    assert list(dm.references("val")) == ["dd04"] and list(dm.references("test")) == ["ff06"]


def test_instruction_tokenizer_reaches_the_batches(root):
    dm = make(root)
    dm.instruction_tokenizer = byte_tokenizer()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    n = int(batch["instruction_attention_mask"][0].sum())
    assert dm.instruction_tokenizer.decode(batch["instruction_input_ids"][0][:n]).startswith("A short image caption:")


def bad_cases():
    """(split, index of the changed entry, change, where, message)."""
    return {
        "missing image": ("train", 3, {"image_path": "train/missing.jpg"}, "image_id 'bb02'", "not found"),
        "duplicate caption id": ("train", 1, {"caption_id": 1}, "image_id 'aa01' caption_id 1",
                                 "caption_id 1 appears more than once"),
        "non-string caption": ("train", 3, {"caption_str": ["A stop sign."]}, "image_id 'bb02' caption_id 4",
                               "caption_str is a list"),
        "caption missing in a labelled split": ("val", 0, {"caption_str": None}, "image_id 'dd04' caption_id 1001",
                                                "field 'caption_str' is missing"),
        "duplicate image id in test": ("test", 1, {"image_id": "ff06"}, "image_id 'ff06'",
                                       "the image_id appears more than once"),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_bad_entries_error_and_skip(tmp_path, case):
    split, index, change, where, message = bad_cases()[case]
    data = {s: entries(s) for s in CAPTIONS}
    data[split][index] = {k: v for k, v in {**data[split][index], **change}.items() if v is not None}
    root = write(tmp_path, data)
    with pytest.raises(DataError) as error:
        make(root).setup()
    text = str(error.value)
    assert f"TextCaps_0.1_{split}.json: {where}" in text and message in text, text
    dm = make(root, on_bad_record="skip")
    dm.setup()
    skipped = {k: v for key, report in dm.report.items() for k, v in report["skipped"].items()}
    assert sum(skipped.values()) == 1, dm.report


def test_wrong_top_level(tmp_path):
    root = write(tmp_path)
    (root / "TextCaps_0.1_train.json").write_text(json.dumps(entries("train")))
    with pytest.raises(DataError, match=r'TextCaps_0\.1_train\.json: no "data" list'):
        make(root).setup("fit")


def test_caption_evaluation_on_hex_ids(root, tmp_path, monkeypatch):
    if shutil.which("java") is None:
        pytest.skip("the caption metrics need Java")
    dm = make(root, test_split="val")
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


def test_caption_evaluation_needs_references(root, tmp_path):
    dm = make(root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="test image 'ff06' has no reference captions"):
        run_test_epoch(CaptionEvaluation(metrics=["Bleu"]), dm, tmp_path, {"ff06": "a sign", "ab07": "a can"})
