"""easy-VQA as captioning data: Karpathy's COCO and Flickr30k split files, and TextCaps.

Each image is one of easy-VQA's pictures whose shape and colour its questions settle; its five
reference captions state those facts in varied words ("A red circle.", "There is a red circle on
a light background.", ...). Train and val images come from easy-VQA's train images (disjoint),
test images from its test images; only easy-VQA's own PNG bytes are written.

* ``build_coco_captions_from_easy_vqa``: ``dataset_coco.json`` (Karpathy's format with
  ``filepath`` and ``cocoid``; a quarter of the training images are marked "restval", which
  training joins by default, as in Karpathy's COCO file) and ``images/<train|test>/<cocoid>.png``.
* ``build_flickr30k_from_easy_vqa``: ``dataset_flickr30k.json`` (no filepath, no cocoid) and
  ``images/<image id>.png``.
* ``build_textcaps_from_easy_vqa``: ``TextCaps_0.1_<split>.json`` (train and val: one entry per
  caption; test: one entry per image, no captions, as published) and the images where TextCaps
  keeps them, ``train_images/train/<image_id>.png`` (train and val) and
  ``test_images/test/<image_id>.png``, ``image_id`` being 16 hex digits.

Each also writes the references of its captioned evaluation splits as COCO caption annotation
files, ``annotations/captions_<split>.json``, under the ids the data modules score with (for
``lavin-lightning score captions``). Builds are idempotent and atomic, as
:func:`data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`'s.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from data_modules.prepare.easy_vqa import (
    _build_once,
    _copy_image,
    _draw,
    _layout_params,
    _load_sources,
    _Picture,
    _pictures,
    _split_sources,
    _words,
    _write_json,
    _write_layout_manifest,
)

__all__ = ["build_coco_captions_from_easy_vqa", "build_flickr30k_from_easy_vqa", "build_textcaps_from_easy_vqa",
           "CAPTIONS_PER_IMAGE"]

CAPTIONS_PER_IMAGE = 5
# Each image gets CAPTIONS_PER_IMAGE of these, drawn and ordered per image, so references vary.
# Every one is true of every easy-VQA picture: one shape on a light, plain background.
_CAPTION_TEMPLATES = (
    "A {color} {shape}.",
    "There is a {color} {shape} on a light background.",
    "A picture of a {color} {shape}.",
    "A simple drawing of one {color} {shape}.",
    "The image shows a single {color} {shape}.",
    "A {color} {shape} drawn on a plain background.",
    "One {color} {shape} and nothing else.",
    "A small picture with a {color} {shape} in it.",
)
_KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
# TextVQA's image folders, which TextCaps shares: keyed by the easy-VQA split the image comes from.
_TEXTCAPS_FOLDERS = {"train": "train_images", "test": "test_images"}


def _captions(picture: _Picture, rng: random.Random) -> list[str]:
    return [t.format(color=picture.color, shape=picture.shape)
            for t in rng.sample(_CAPTION_TEMPLATES, CAPTIONS_PER_IMAGE)]


def _drawn_pictures(easy_vqa, sizes: dict[str, int], rng: random.Random) -> dict[str, list[_Picture]]:
    """``sizes[split]`` distinct pictures with known facts per split, in id order."""
    loaded = _load_sources(easy_vqa)
    pools = _split_sources(loaded, sizes["train"], sizes["val"], rng)
    drawn = {}
    for split, n in sizes.items():
        questions, source = pools[split]
        chosen = _draw(_pictures(loaded, questions, source), n, rng, f"{split} images with a known shape and color")
        drawn[split] = sorted(chosen, key=lambda p: p.image_id)
    return drawn


def _write_references(tmp: Path, split: str, images: list[tuple[int | str, str, list[str]]]) -> None:
    """A COCO caption annotation file of ``(scored image id, file name, captions)``."""
    annotations = [{"image_id": image_id, "id": n, "caption": caption}
                   for n, (image_id, caption) in enumerate(
                       ((image_id, c) for image_id, _, captions in images for c in captions), start=1)]
    (tmp / "annotations").mkdir(exist_ok=True)
    _write_json(tmp / "annotations" / f"captions_{split}.json",
                {"images": [{"id": image_id, "file_name": name} for image_id, name, _ in images],
                 "annotations": annotations})


# --------------------------------------------------------------------------- Karpathy


def _write_karpathy_build(tmp: Path, easy_vqa, params: dict, sizes: dict[str, int], seed: int, dataset: str) -> dict:
    rng = random.Random(seed)
    images, counts, sentid = [], {}, 0
    for split, pictures in _drawn_pictures(easy_vqa, sizes, rng).items():
        references = []
        for k, picture in enumerate(pictures):
            imgid = len(images)
            captions = _captions(picture, rng)
            sentences = [{"tokens": _words(c), "raw": c, "imgid": imgid, "sentid": sentid + i}
                         for i, c in enumerate(captions)]
            sentids = [s["sentid"] for s in sentences]
            sentid += len(sentences)
            filename = f"{picture.image_id}.png"
            if dataset == "coco":
                # One training image in four is "restval", which Karpathy's COCO file joins to training.
                karpathy_split = "restval" if split == "train" and k % 4 == 3 else split
                image = {"filepath": picture.source, "sentids": sentids, "filename": filename, "imgid": imgid,
                         "split": karpathy_split, "sentences": sentences, "cocoid": picture.image_id}
                _copy_image(picture.path, tmp / "images" / picture.source / filename)
                scored_id = picture.image_id  # the data module scores COCO images under their cocoid
            else:
                karpathy_split = split
                image = {"sentids": sentids, "imgid": imgid, "sentences": sentences, "split": karpathy_split,
                         "filename": filename}
                _copy_image(picture.path, tmp / "images" / filename)
                scored_id = imgid
            images.append(image)
            references.append((scored_id, filename, captions))
            split_counts = counts.setdefault(karpathy_split, {"images": 0, "sentences": 0})
            split_counts["images"] += 1
            split_counts["sentences"] += len(sentences)
        if split != "train":
            _write_references(tmp, split, references)
    _write_json(tmp / _KARPATHY_FILES[dataset], {"images": images, "dataset": dataset})
    return _write_layout_manifest(tmp, params, counts)


def _build_karpathy(dataset: str, out_dir, n_train: int, n_val: int, n_test: int, seed: int,
                    overwrite: bool) -> Path:
    layout = "coco-captions" if dataset == "coco" else dataset
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = _layout_params(layout, sizes, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_karpathy_build(tmp, easy_vqa, params, sizes, seed, dataset),
                       files=(_KARPATHY_FILES[dataset],))


def build_coco_captions_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, n_val: int = 50, n_test: int = 100, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA as Karpathy's COCO caption split in ``out_dir`` and return its path.

    ``dataset_coco.json`` ({"images": [{filepath, sentids, filename, imgid, split, sentences:
    [{tokens, raw, imgid, sentid}], cocoid}], "dataset": "coco"}) with ``n_train`` training
    images (a quarter of them split "restval"), ``n_val`` and ``n_test``, five captions each;
    ``images/<filepath>/<filename>`` (filepath: the easy-VQA split, "train" or "test"; filename:
    ``<cocoid>.png``, test ids offset by 1,000,000); ``annotations/captions_{val,test}.json``
    (COCO caption annotations under the cocoids). Idempotent and atomic; the errors of
    :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    return _build_karpathy("coco", out_dir, n_train, n_val, n_test, seed, overwrite)


def build_flickr30k_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, n_val: int = 50, n_test: int = 100, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA as Karpathy's Flickr30k caption split in ``out_dir`` and return its path.

    ``dataset_flickr30k.json`` ({"images": [{sentids, imgid, sentences: [{tokens, raw, imgid,
    sentid}], split, filename}], "dataset": "flickr30k"}: no filepath, no cocoid) with five
    captions per image; ``images/<filename>`` (``<image id>.png``, test ids offset by
    1,000,000); ``annotations/captions_{val,test}.json`` (COCO caption annotations under the
    imgids, as the data module scores Flickr30k). Idempotent and atomic.
    """
    return _build_karpathy("flickr30k", out_dir, n_train, n_val, n_test, seed, overwrite)


# --------------------------------------------------------------------------- TextCaps


def _write_textcaps_build(tmp: Path, easy_vqa, params: dict, sizes: dict[str, int], seed: int) -> dict:
    rng = random.Random(seed)
    counts, caption_id = {}, 0
    for split, pictures in _drawn_pictures(easy_vqa, sizes, rng).items():
        entries, references = [], []
        for picture in pictures:
            image_id = f"{picture.image_id:016x}"  # TextCaps' ids are 16 hex digits
            image_path = f"{picture.source}/{image_id}.png"
            _copy_image(picture.path, tmp / _TEXTCAPS_FOLDERS[picture.source] / image_path)
            base = {"image_id": image_id, "image_width": 64, "image_height": 64, "set_name": split,
                    "image_name": image_id, "image_path": image_path}
            if split == "test":  # as published: one entry per image, no captions
                entries.append(base)
                continue
            captions = _captions(picture, rng)
            references.append((image_id, image_path, captions))
            for caption in captions:
                caption_id += 1
                entries.append({**base, "caption_id": caption_id, "caption_str": caption,
                                "caption_tokens": _words(caption), "reference_strs": captions,
                                "reference_tokens": [_words(c) for c in captions]})
        _write_json(tmp / f"TextCaps_0.1_{split}.json",
                    {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1", "data": entries})
        if split == "val":
            _write_references(tmp, split, references)
        counts[split] = {"images": len(pictures), "entries": len(entries)}
    return _write_layout_manifest(tmp, params, counts)


def build_textcaps_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, n_val: int = 50, n_test: int = 100, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA as TextCaps 0.1 in ``out_dir`` and return its path.

    ``TextCaps_0.1_{train,val,test}.json`` ({"dataset_type", "dataset_name", "dataset_version",
    "data": [{image_id, image_width, image_height, set_name, image_name, image_path, caption_id,
    caption_str, caption_tokens, reference_strs, reference_tokens}]}): train and val hold one
    entry per caption (five per image), test one entry per image without captions. Images at
    ``<train_images|test_images>/<image_path>``, image_path being ``train/<image_id>.png`` for
    train and val, ``test/<image_id>.png`` for test; ``annotations/captions_val.json`` holds
    the val references. (easy-VQA's pictures hold no text to read: the captions only name the
    shape and colour.) Idempotent and atomic.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = _layout_params("textcaps", sizes, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_textcaps_build(tmp, easy_vqa, params, sizes, seed),
                       files=("TextCaps_0.1_test.json",))
