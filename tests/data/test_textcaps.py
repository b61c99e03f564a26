"""TextCapsDataModule on hand-written TextCaps_0.1 files (tests/conftest.py): hex image ids, one entry per caption."""

from __future__ import annotations

import json

import pytest
from conftest import TEXTCAPS_CAPTIONS, answer_targets, make_textcaps, textcaps_entries, write_textcaps
from PIL import Image

from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError, DataError


def test_splits_rows_and_references(textcaps_root):
    dm = make_textcaps(textcaps_root)
    dm.setup()
    # train_on="all": one row per caption, stripped, case kept.
    train = answer_targets(dm, "train")
    assert len(train) == 3 + 2 + 6
    assert train["aa01#0"] == "A red Coca-Cola can." and train["aa01#2"] == "A soda can on a desk."
    assert train["bb02#1"] == "A red sign that says STOP."
    # val: one row per image, its first caption; references: all captions of the image.
    assert answer_targets(dm, "val") == {"dd04": "a red bus", "ee05": "the blue sign"}
    assert dm.references("val") == TEXTCAPS_CAPTIONS["val"]
    coco = dm.coco_references("val")
    assert coco["images"] == [{"id": "dd04"}, {"id": "ee05"}] and len(coco["annotations"]) == 4
    # test: one generation prompt per image, no captions.
    batch = next(iter(dm.test_dataloader()))
    assert batch["pids"] == ["ff06", "ab07"] and "labels" not in batch
    assert dm.tokenizer.decode(batch["input_ids"][0]).endswith("A short image caption:\nResponse:")
    assert dm.references("test") == {"ff06": [], "ab07": []}
    assert [s.pid for s in dm.datasets["predict"].samples] == ["ff06", "ab07"]
    # <root>/<folder>/<image_path>: val images live in the train folder.
    assert dm.image_paths("val")["dd04"] == textcaps_root / "train_images" / "val" / "dd04.jpg"
    assert dm.image_paths("test")["ff06"] == textcaps_root / "test_images" / "test" / "ff06.jpg"
    assert dm.image_paths("train")["aa01#1"] == textcaps_root / "train_images" / "train" / "aa01.jpg"


def test_train_on_first_and_configurable_images(tmp_path):
    root = write_textcaps(tmp_path)
    dm = make_textcaps(root, train_on="first")
    dm.setup("fit")
    assert sorted(answer_targets(dm, "train")) == sorted(f"{i}#0" for i in TEXTCAPS_CAPTIONS["train"])
    for image_id in TEXTCAPS_CAPTIONS["val"]:
        path = root / "flat" / f"{image_id}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    dm = make_textcaps(root, test_split="val", image_pattern="flat/{image_id}.png")
    dm.setup("test")
    assert dm.image_paths("test") == {"dd04": root / "flat" / "dd04.png", "ee05": root / "flat" / "ee05.png"}
    with pytest.raises(ConfigError, match="image_pattern"):
        make_textcaps(root, image_pattern="{nope}.jpg")


def test_no_val_file_skips_validation(tmp_path):
    root = write_textcaps(tmp_path, {"train": textcaps_entries("train")})
    dm = make_textcaps(root)
    dm.setup("fit")
    assert "val" not in dm.datasets and "val_dataloader" not in vars(dm)


def test_k_shot_and_limits(textcaps_root):
    def shot(seed):
        dm = make_textcaps(textcaps_root, k_shot=3, seed=seed, train_on="first")
        dm.setup("fit")
        return [s.pid for s in dm.datasets["train"].samples]

    assert shot(0) == shot(0) != shot(1) and len(shot(2)) == 3
    with pytest.raises(ConfigError, match="k_shot 50 exceeds"):
        make_textcaps(textcaps_root, k_shot=50).setup("fit")
    dm = make_textcaps(textcaps_root, limit_train=2, limit_val=1, limit_test=1)
    dm.setup()
    assert [s.pid for s in dm.datasets["train"].samples] == ["aa01#0", "aa01#1", "aa01#2", "bb02#0", "bb02#1"]
    assert list(dm.references("val")) == ["dd04"] and list(dm.references("test")) == ["ff06"]


def test_instruction_tokenizer_reaches_the_batches(textcaps_root):
    dm = make_textcaps(textcaps_root, instruction_tokenizer=byte_tokenizer())
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
    data = {s: textcaps_entries(s) for s in TEXTCAPS_CAPTIONS}
    data[split][index] = {k: v for k, v in {**data[split][index], **change}.items() if v is not None}
    root = write_textcaps(tmp_path, data)
    with pytest.raises(DataError) as error:
        make_textcaps(root).setup()
    text = str(error.value)
    assert f"TextCaps_0.1_{split}.json: {where}" in text and message in text, text
    dm = make_textcaps(root, on_bad_record="skip")
    dm.setup()
    skipped = {k: v for key, report in dm.report.items() for k, v in report["skipped"].items()}
    assert sum(skipped.values()) == 1, dm.report


def test_wrong_top_level(tmp_path):
    root = write_textcaps(tmp_path)
    (root / "TextCaps_0.1_train.json").write_text(json.dumps(textcaps_entries("train")))
    with pytest.raises(DataError, match=r'TextCaps_0\.1_train\.json: no "data" list'):
        make_textcaps(root).setup("fit")


def test_entries_of_one_image_naming_two_files_are_refused(tmp_path):
    entries = textcaps_entries("train")
    entries[1]["image_path"] = "train/bb02.jpg"  # the second caption of aa01, another image's file
    root = write_textcaps(tmp_path, {"train": entries})
    with pytest.raises(DataError, match=r"TextCaps_0\.1_train\.json: image_id 'aa01': its entries name 2 image files: "
                                        r".*aa01\.jpg \(the first entry's\) and .*bb02\.jpg"):
        make_textcaps(root, val_split=None).setup("fit")
    dm = make_textcaps(root, val_split=None, on_bad_record="skip")
    dm.setup("fit")
    assert dm.report["train"]["skipped"] == {"conflicting_image_path": 1} and "aa01" not in dm.references("train")
