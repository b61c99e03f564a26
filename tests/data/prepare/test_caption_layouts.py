"""easy-VQA as COCO / Flickr30k Karpathy captions and TextCaps, read back by our caption data modules."""

import json

import pytest
from conftest import COMMON, make_textcaps

pytest.importorskip("easy_vqa")

from data_modules.captions import CaptionDataModule  # noqa: E402
from data_modules.prepare import easy_vqa as builder  # noqa: E402
from data_modules.prepare.captions import (  # noqa: E402
    CAPTIONS_PER_IMAGE,
    build_coco_captions_from_easy_vqa,
    build_flickr30k_from_easy_vqa,
    build_textcaps_from_easy_vqa,
)
from data_modules.prepare.easy_vqa import COLORS, SHAPES, TEST_IMAGE_OFFSET  # noqa: E402
from lavin_lightning.backbones.tiny import byte_tokenizer  # noqa: E402
from lavin_lightning.batch import IGNORE_INDEX  # noqa: E402
from lavin_lightning.formats.captions import read_coco_references  # noqa: E402

SIZES = {"n_train": 8, "n_val": 3, "n_test": 4}


def easy_vqa_picture(image_id: int) -> tuple[str, str, str, str]:
    """(easy-VQA split, shape, colour, PNG file) of the picture behind a layout's image id."""
    import easy_vqa

    source, own = ("train", image_id) if image_id < TEST_IMAGE_OFFSET else ("test", image_id - TEST_IMAGE_OFFSET)
    loaded = builder._load_sources(easy_vqa)
    return (source, *loaded[source].facts[own], loaded[source].image_paths[own])


def assert_captions_state_the_facts(captions: list[str], shape: str, color: str) -> None:
    assert len(captions) == CAPTIONS_PER_IMAGE == len(set(captions))
    for caption in captions:
        assert f"{color} {shape}" in caption and caption[0].isupper() and caption.endswith(".")
        words = set(caption.lower().rstrip(".").split())
        assert not words & (set(SHAPES) - {shape}) and not words & (set(COLORS) - {color})


def karpathy_module(root, name, **kwargs):
    return CaptionDataModule(str(root / name), str(root / "images"), tokenizer=byte_tokenizer(),
                             **{**COMMON, **kwargs})


def decoded_targets(dm, batch) -> dict[str, str]:
    return {pid: dm.tokenizer.decode([t for t in labels.tolist() if t != IGNORE_INDEX][:-1]).strip()
            for pid, labels in zip(batch["pids"], batch["labels"])}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return build_coco_captions_from_easy_vqa(tmp_path_factory.mktemp("coco") / "data", **SIZES)


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    return build_flickr30k_from_easy_vqa(tmp_path_factory.mktemp("flickr") / "data", **SIZES)


@pytest.fixture(scope="module")
def textcaps(tmp_path_factory):
    return build_textcaps_from_easy_vqa(tmp_path_factory.mktemp("textcaps") / "data", **SIZES)


def test_coco_file_images_and_captions(coco):
    data = json.loads((coco / "dataset_coco.json").read_text())
    assert data["dataset"] == "coco"
    images = data["images"]
    assert [im["imgid"] for im in images] == list(range(len(images)))
    splits = [im["split"] for im in images]
    assert splits.count("train") + splits.count("restval") == 8 and splits.count("restval") == 8 // 4
    assert splits.count("val") == 3 and splits.count("test") == 4
    sentids = [s["sentid"] for im in images for s in im["sentences"]]
    assert sentids == list(range(len(sentids)))
    sources = {}
    for im in images:
        source, shape, color, png = easy_vqa_picture(im["cocoid"])
        assert im["filepath"] == source == ("test" if im["split"] == "test" else "train")
        assert im["filename"] == f"{im['cocoid']}.png" and im["sentids"] == [s["sentid"] for s in im["sentences"]]
        # A byte copy of easy-VQA's picture.
        assert (coco / "images" / im["filepath"] / im["filename"]).read_bytes() == open(png, "rb").read()
        assert_captions_state_the_facts([s["raw"] for s in im["sentences"]], shape, color)
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"] and s["tokens"] == s["raw"].lower().rstrip(".").split()
        sources.setdefault(im["split"] if im["split"] != "restval" else "train", set()).add(im["cocoid"])
    assert not sources["train"] & sources["val"]  # val pictures are held out from training
    assert all(image_id >= TEST_IMAGE_OFFSET for image_id in sources["test"])


def test_coco_is_read_by_the_caption_data_module(coco):
    dm = karpathy_module(coco, "dataset_coco.json")
    dm.setup("fit")
    # train_on="all" over train + restval: every sentence of every training image.
    assert len(dm.datasets["train"]) == 8 * CAPTIONS_PER_IMAGE and len(dm.datasets["val"]) == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["has_image"].all()
    for pid, target in decoded_targets(dm, batch).items():
        _, shape, color, _ = easy_vqa_picture(int(pid.split("#")[0]))
        assert f"{color} {shape}" in target
    dm.setup("test")
    references = dm.references("test")
    assert len(references) == 4 and all(image_id >= TEST_IMAGE_OFFSET for image_id in references)
    # The reference file of `score captions` holds exactly what the data module scores against.
    assert read_coco_references(coco / "annotations" / "captions_test.json") == references
    test_batch = next(iter(dm.test_dataloader()))
    assert "labels" not in test_batch and set(test_batch["pids"]) <= {str(i) for i in references}


def test_flickr30k_file_and_data_module(flickr):
    data = json.loads((flickr / "dataset_flickr30k.json").read_text())
    assert data["dataset"] == "flickr30k"
    for im in data["images"]:
        assert "filepath" not in im and "cocoid" not in im and im["split"] in ("train", "val", "test")
        _, shape, color, png = easy_vqa_picture(int(im["filename"].removesuffix(".png")))
        assert (flickr / "images" / im["filename"]).read_bytes() == open(png, "rb").read()
        assert_captions_state_the_facts([s["raw"] for s in im["sentences"]], shape, color)
    dm = karpathy_module(flickr, "dataset_flickr30k.json", train_on="first")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 3
    next(iter(dm.train_dataloader()))
    dm.setup("test")
    # Flickr30k images are scored under their imgid.
    test_imgids = {im["imgid"] for im in data["images"] if im["split"] == "test"}
    assert set(dm.references("test")) == test_imgids
    assert read_coco_references(flickr / "annotations" / "captions_test.json") == dm.references("test")
    assert len(read_coco_references(flickr / "annotations" / "captions_val.json")) == 3


def test_textcaps_files(textcaps):
    for split, n_images in (("train", 8), ("val", 3), ("test", 4)):
        data = json.loads((textcaps / f"TextCaps_0.1_{split}.json").read_text())
        assert data["dataset_type"] == split and data["dataset_version"] == "0.1"
        by_image = {}
        for entry in data["data"]:
            by_image.setdefault(entry["image_id"], []).append(entry)
        assert len(by_image) == n_images
        for image_id, entries in by_image.items():
            source, shape, color, png = easy_vqa_picture(int(image_id, 16))
            assert len(image_id) == 16 and source == ("test" if split == "test" else "train")
            folder = "test_images" if split == "test" else "train_images"
            assert entries[0]["image_path"] == f"{source}/{image_id}.png"
            assert (textcaps / folder / entries[0]["image_path"]).read_bytes() == open(png, "rb").read()
            if split == "test":  # as published: one entry per image, no captions
                assert len(entries) == 1 and "caption_str" not in entries[0]
                continue
            captions = [e["caption_str"] for e in entries]
            assert_captions_state_the_facts(captions, shape, color)
            assert all(e["reference_strs"] == captions for e in entries)


def test_textcaps_is_read_by_the_textcaps_data_module(textcaps):
    dm = make_textcaps(textcaps)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 * CAPTIONS_PER_IMAGE and len(dm.datasets["val"]) == 3
    batch = next(iter(dm.train_dataloader()))
    for pid, target in decoded_targets(dm, batch).items():
        _, shape, color, _ = easy_vqa_picture(int(pid.split("#")[0], 16))
        assert f"{color} {shape}" in target
    dm.setup("predict")  # the test split: generation prompts for its four images
    assert "labels" not in next(iter(dm.predict_dataloader())) and len(dm.datasets["predict"]) == 4
    # The PETAL row tests on val, whose references are also written for `score captions`.
    scored = make_textcaps(textcaps, val_split=None, test_split="val")
    scored.setup("test")
    assert read_coco_references(textcaps / "annotations" / "captions_val.json") == scored.references("test")
