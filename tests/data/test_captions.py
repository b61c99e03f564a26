"""CaptionDataModule: hand-written Karpathy split files (COCO style and Flickr30K style)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from data_modules.captions import CaptionDataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import DataError

# imgid, split, cocoid, sentences
COCO = [
    (0, "train", 100, ["A dog runs.", " Two dogs play in grass. "]),
    (1, "train", 101, ["A Red bus."]),
    (2, "restval", 102, ["A cat sleeps.", "A cat on a sofa.", "Sleeping cat."]),
    (3, "val", 103, ["A man surfs.", "Surfer on a wave."]),
    (4, "test", 104, ["A plate of food.", "Lunch on a table."]),
    (5, "test", 105, ["A kite in the sky."]),
]


def coco_image(imgid, split, cocoid, sentences):
    folder = "val2014" if split in ("val", "test", "restval") else "train2014"
    return {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "imgid": imgid, "split": split,
            "cocoid": cocoid, "sentences": [{"raw": s, "tokens": s.split(), "imgid": imgid, "sentid": 10 * imgid + i}
                                            for i, s in enumerate(sentences)]}


def write(tmp_path, images, dataset="coco", name="dataset_coco.json"):
    for im in images:
        path = tmp_path / "images" / im.get("filepath", "") / im["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.new("RGB", (8, 8), (im["imgid"] * 40 % 256, 0, 0)).save(path)
    file = tmp_path / name
    file.write_text(json.dumps({"images": images, "dataset": dataset}))
    return file


@pytest.fixture
def coco(tmp_path):
    return write(tmp_path, [coco_image(*row) for row in COCO])


def make(file, **kwargs):
    # Byte tokens: prompt plus a caption can exceed the default 64.
    kwargs = {"global_batch_size": 2, "image_size": 16, "max_seq_len": 128, "tokenizer": byte_tokenizer(),
              **kwargs}
    return CaptionDataModule(str(file), str(file.parent / "images"), **kwargs)


def test_batch_contract_and_targets(coco):
    dm = make(coco)
    dm.setup("fit")
    tok = dm.tokenizer
    captions = {str(c): [s.strip() for s in sents] for _, _, c, sents in COCO}
    rows = 0
    for batch in dm.train_dataloader():
        b, t = batch["input_ids"].shape
        assert batch["attention_mask"].shape == (b, t) == batch["labels"].shape
        assert batch["pixel_values"].shape == (b, 3, 16, 16)
        assert batch["has_image"].dtype == torch.bool and batch["has_image"].all()
        assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
        for row, pid in enumerate(batch["pids"]):
            image_id, index = pid.split("#")
            labels = batch["labels"][row]
            target = labels[labels != IGNORE_INDEX].tolist()
            assert target[-1] == tok.eos_token_id
            assert tok.decode(target[:-1]) == " " + captions[image_id][int(index)]  # stripped, case kept
            n = int(batch["attention_mask"][row].sum())
            assert batch["attention_mask"][row, :n].all()
            assert "A short image caption:" in tok.decode(batch["input_ids"][row, :n])
            rows += 1
    # train_on="all": every sentence of train + restval images (restval joins training).
    assert rows == len(dm.datasets["train"]) == 2 + 1 + 3
    assert {im.imgid for im in dm.images["train"]} == {0, 1, 2}
    val = next(iter(dm.val_dataloader()))
    assert val["pids"] == ["103"] and "labels" in val


def test_train_on_first_and_train_only(coco):
    dm = make(coco, train_on="first")
    dm.setup("fit")
    assert sorted(s.pid for s in dm.datasets["train"].samples) == ["100#0", "101#0", "102#0"]
    dm = make(coco, train_splits=["train"])
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3


def test_no_val_images_skips_validation(tmp_path):
    file = write(tmp_path, [coco_image(*row) for row in COCO if row[1] != "val"])
    dm = make(file)
    dm.setup("fit")
    assert "val" not in dm.datasets and "val_dataloader" not in vars(dm)


def test_test_rows_and_references(coco):
    dm = make(coco, eval_batch_size=4)
    dm.setup("test")
    tok = dm.tokenizer
    batch = next(iter(dm.test_dataloader()))
    assert "labels" not in batch and batch["pids"] == ["104", "105"]
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        assert tok.decode(ids[: int(mask.sum())]).endswith("A short image caption:\nResponse:")
    refs = dm.references("test")
    assert refs == {104: ["A plate of food.", "Lunch on a table."], 105: ["A kite in the sky."]}
    coco_refs = dm.coco_references("test")
    assert coco_refs["images"] == [{"id": 104}, {"id": 105}]
    assert [(a["image_id"], a["caption"]) for a in coco_refs["annotations"]] == [
        (104, "A plate of food."), (104, "Lunch on a table."), (105, "A kite in the sky.")]
    assert len({a["id"] for a in coco_refs["annotations"]}) == 3
    dm.setup("predict")
    assert [s.pid for s in dm.datasets["predict"].samples] == ["104", "105"]


def test_flickr_style(tmp_path):
    images = [{"filename": f"{i}.jpg", "imgid": i, "split": split, "sentences": [{"raw": f"Caption {i} {j}."}
                                                                                  for j in range(5)]}
              for i, split in enumerate(["train", "train", "val", "test"])]
    file = write(tmp_path, images, "flickr30k", "dataset_flickr30k.json")
    dm = make(file)
    dm.setup()
    assert len(dm.datasets["train"]) == 10 and len(dm.datasets["val"]) == 1
    assert [s.pid for s in dm.datasets["test"].samples] == ["3"]
    assert dm.datasets["test"].samples[0].image_path == tmp_path / "images" / "3.jpg"
    assert dm.references("test") == {3: [f"Caption 3 {j}." for j in range(5)]}


def test_k_shot_and_limits(coco):
    def shot(seed):
        dm = make(coco, k_shot=2, seed=seed, train_on="first")
        dm.setup("fit")
        return [s.pid for s in dm.datasets["train"].samples]

    draws = {tuple(shot(seed)) for seed in range(6)}
    assert shot(0) == shot(0) and len(draws) > 1 and all(len(d) == 2 for d in draws)
    dm = make(coco, limit_train=1, limit_test=1)
    dm.setup()
    assert [s.pid for s in dm.datasets["train"].samples] == ["100#0", "100#1"]
    assert list(dm.references("test")) == [104]


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (lambda im: im.update(sentences=[]), "no_sentences", "sentences"),
        (lambda im: im["sentences"][0].update(raw=3), "non_string_raw", "is a int"),
        (lambda im: im.update(split="extra"), "unknown_split", "split 'extra'"),
        (lambda im: im.update(filename="absent.jpg"), "missing_image", "absent.jpg not found"),
    ],
)
def test_bad_images_error_and_skip(tmp_path, change, reason, message):
    images = [coco_image(*row) for row in COCO]
    file = write(tmp_path, images)
    change(images[1])  # after the image files are written, so that a renamed file is missing
    file.write_text(json.dumps({"images": images}))
    with pytest.raises(DataError) as error:
        make(file).setup()
    assert str(file) in str(error.value) and "imgid 1" in str(error.value) and message in str(error.value)
    dm = make(file, on_bad_record="skip")
    dm.setup()
    skipped = {**dm.report["file"]["skipped"], **dm.report["train"]["skipped"]}
    assert skipped == {reason: 1}
    assert 101 not in dm.references("train") and len(dm.references("train")) == 2


def test_duplicate_imgid(tmp_path):
    images = [coco_image(*row) for row in COCO]
    images[5]["imgid"] = 4
    file = write(tmp_path, images)
    with pytest.raises(DataError, match=r"dataset_coco\.json: image imgid 4: the imgid appears more than once"):
        make(file).setup()
    dm = make(file, on_bad_record="skip")
    dm.setup()
    assert dm.report["file"]["skipped"] == {"duplicate_imgid": 1} and list(dm.references("test")) == [104]


def test_two_images_under_one_cocoid_are_refused(tmp_path):
    """They would be served and scored under one id, the references of one overwriting the other's."""
    images = [coco_image(*row) for row in COCO]
    images[1]["cocoid"] = 100
    file = write(tmp_path, images)
    with pytest.raises(DataError, match=r"image imgid 1: the image id 100 \(cocoid, else imgid\) appears more than "
                                        "once"):
        make(file).setup()
    dm = make(file, on_bad_record="skip")
    dm.setup()
    assert dm.report["file"]["skipped"] == {"duplicate_cocoid": 1} and list(dm.references("train")) == [100, 102]


def test_a_corrupt_image_is_caught_in_setup(coco):
    image = coco.parent / "images" / "train2014" / "COCO_train2014_000000000101.jpg"
    image.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError, match=rf"dataset_coco\.json: image imgid 1: image {image} cannot be decoded"):
        make(coco).setup()
    dm = make(coco, on_bad_record="skip")
    dm.setup()
    assert dm.report["train"]["skipped"] == {"bad_image": 1} and 101 not in dm.references("train")
