"""Image-caption files: Karpathy's splits, TextCaps, COCO caption references and results.

    Karpathy (dataset_coco.json, dataset_flickr30k.json)
        {"images": [{"filepath": "val2014" (COCO only), "filename": str, "imgid": int,
                     "split": "train"|"restval"|"val"|"test", "cocoid": int (COCO only),
                     "sentences": [{"raw": str, ...}, ...]}, ...], "dataset": "coco"|"flickr30k"}
    TextCaps 0.1 (TextCaps_0.1_{split}.json; train/val hold one entry per caption, test one per image)
        {"dataset_type": split, ..., "data": [{"image_id": str (hex), "image_path": "train/<image_id>.jpg",
         "caption_id": int, "caption_str": str (absent in test), "reference_strs": [5 str] (absent in
         test), ...}, ...]}
    COCO caption references   {"images": [{"id", ...}] (optional), "annotations": [{"image_id", "id", "caption"}, ...]}
    COCO caption results      [{"image_id", "caption"}, ...]

The data-module readers screen each image or entry with a
:class:`~lavin_lightning.formats.records.ReadReport` (stop, or skip and count); the reference
and result readers, used by the scorer, stop at the first problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import BadRecord, ReadReport, is_id, is_int, read_json_list, records_at
from lavin_lightning.io import read_json

KARPATHY_SPLITS = ("train", "restval", "val", "test")

KARPATHY_FORMAT = (
    'Karpathy\'s split format {"images": [{"filepath": str (COCO), "filename": str, "imgid": int, '
    '"split": "train"|"restval"|"val"|"test", "cocoid": int (optional), "sentences": [{"raw": str}, ...]}, ...]}'
)
TEXTCAPS_FORMAT = (
    'TextCaps\' format {"data": [{"image_id": str, "image_path": str, "caption_id": int, '
    '"caption_str": str (not in test), "reference_strs": [str, ...] (not in test)}, ...]}'
)
REFERENCES_FORMAT = (
    'COCO caption annotations {"images": [...] (optional), '
    '"annotations": [{"image_id", "id", "caption"}, ...]}'
)
RESULTS_FORMAT = 'COCO caption results [{"image_id", "caption"}, ...]'


@dataclass
class CaptionImage:
    """One checked image: its record id (Karpathy's imgid; TextCaps' image id), the id it is scored
    under (COCO's cocoid when given, else the record id), its split, file and stripped sentences."""

    imgid: int | str
    image_id: int | str
    split: str
    path: Path
    sentences: list[str] = field(default_factory=list)
    # TextCaps: the image file each entry names (all the same in a consistent file); see check_one_file.
    entry_files: list[Path] = field(default_factory=list)


def check_one_file(image: CaptionImage) -> CaptionImage:
    """BadRecord when the entries of an image name different files (which one would be its picture?)."""
    others = sorted({str(path) for path in image.entry_files if path != image.path})
    if others:
        raise BadRecord("conflicting_image_path", f"its entries name {len(others) + 1} image files: {image.path} "
                        f"(the first entry's) and {', '.join(others)}")
    return image


# --------------------------------------------------------------------------- Karpathy


def _karpathy_image(raw: Any, position: int, image_root: Path, seen: set[int], scored: set[int]) -> CaptionImage:
    if not isinstance(raw, dict) or not is_int(raw.get("imgid")):
        raise BadRecord("bad_image", f"image #{position} is not an object with an int imgid")
    imgid = raw["imgid"]
    if imgid in seen:
        raise BadRecord("duplicate_imgid", "the imgid appears more than once")
    seen.add(imgid)
    if raw.get("split") not in KARPATHY_SPLITS:
        raise BadRecord("unknown_split", f"split {raw.get('split')!r} is not one of {list(KARPATHY_SPLITS)}")
    cocoid = raw.get("cocoid")
    if cocoid is not None and not is_int(cocoid):
        raise BadRecord("bad_image", f"cocoid {cocoid!r} is not an int")
    # The id an image is served and scored under: two images under one id would merge their references.
    image_id = imgid if cocoid is None else cocoid
    if image_id in scored:
        raise BadRecord("duplicate_cocoid", f"the image id {image_id} (cocoid, else imgid) appears more than once")
    scored.add(image_id)
    filename, filepath = raw.get("filename"), raw.get("filepath", "")
    if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
        raise BadRecord("bad_image", "filename (and filepath when present) must be strings")
    sentences = raw.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise BadRecord("no_sentences", "field 'sentences' is missing, empty or not a list")
    captions = []
    for i, s in enumerate(sentences):
        text = s.get("raw") if isinstance(s, dict) else s
        if not isinstance(text, str):
            raise BadRecord("non_string_raw", f"sentences[{i}].raw is a {type(text).__name__}, expected a string")
        if not text.strip():
            raise BadRecord("empty_raw", f"sentences[{i}].raw is empty")
        captions.append(text.strip())
    return CaptionImage(imgid, image_id, raw["split"], image_root / filepath / filename, captions)


def read_karpathy(path: str | os.PathLike, image_root: str | os.PathLike,
                  report: ReadReport) -> tuple[list[CaptionImage], int]:
    """The valid images of a Karpathy split file in file order, and how many records it holds; an
    image's file is ``image_root/filepath/filename`` (``image_root/filename`` without a filepath)."""
    data = read_json(path, KARPATHY_FORMAT)
    records = records_at(data, "images", path, KARPATHY_FORMAT)
    seen: set[int] = set()
    scored: set[int] = set()
    images = []
    for position, raw in enumerate(records):
        imgid = raw.get("imgid") if isinstance(raw, dict) else None
        kept = report.screen(f"{path}: image imgid {imgid!r}", KARPATHY_FORMAT, _karpathy_image, raw, position,
                             Path(image_root), seen, scored)
        if kept is not None:
            images.append(kept)
    return images, len(records)


# --------------------------------------------------------------------------- TextCaps


def read_textcaps(
    path: str | os.PathLike, split: str, labelled: bool, report: ReadReport, image_file: Callable[[dict], Path]
) -> tuple[list[CaptionImage], int]:
    """The valid images of a TextCaps split file (in order of their first entry), each with the
    captions of its entries, and how many entries the file holds. ``labelled`` splits (train, val)
    need a caption in every entry. ``image_file(entry)`` gives an entry's image file (it may
    raise BadRecord)."""
    data = read_json(path, TEXTCAPS_FORMAT)
    entries = records_at(data, "data", path, TEXTCAPS_FORMAT)
    images: dict[str, CaptionImage] = {}
    caption_ids: set[int] = set()

    def entry(raw: Any, position: int) -> tuple[dict, Path]:
        if not isinstance(raw, dict) or not isinstance(raw.get("image_id"), str) or not raw["image_id"].strip():
            raise BadRecord("bad_entry", f"entry #{position} is not an object with a (non-empty) string image_id")
        image_path = raw.get("image_path")
        if not isinstance(image_path, str) or not image_path.strip():
            raise BadRecord("bad_entry", "field 'image_path' is missing or not a string")
        caption, caption_id = raw.get("caption_str"), raw.get("caption_id")
        if caption is None:
            if labelled:
                raise BadRecord("no_caption", "field 'caption_str' is missing (train and val entries need one)")
            # Without captions an image has one entry, so a repeat is a duplicate.
            if raw["image_id"] in images:
                raise BadRecord("duplicate_image_id", "the image_id appears more than once")
        elif not isinstance(caption, str):
            raise BadRecord("non_string_caption", f"caption_str is a {type(caption).__name__}, expected a string")
        elif not caption.strip():
            raise BadRecord("empty_caption", "caption_str is empty")
        if caption_id is not None:
            if not is_int(caption_id):
                raise BadRecord("bad_caption_id", f"caption_id {caption_id!r} is not an int")
            if caption_id in caption_ids:
                raise BadRecord("duplicate_caption_id", f"caption_id {caption_id} appears more than once")
            caption_ids.add(caption_id)
        references = raw.get("reference_strs")
        if references is not None and (not isinstance(references, list)
                                       or not all(isinstance(r, str) for r in references)):
            raise BadRecord("non_string_reference", "reference_strs must be a list of strings")
        return raw, image_file(raw)

    for position, raw in enumerate(entries):
        image_id = raw.get("image_id") if isinstance(raw, dict) else None
        caption_id = raw.get("caption_id") if isinstance(raw, dict) else None
        where = f"{path}: image_id {image_id!r}" + (f" caption_id {caption_id!r}" if caption_id is not None else "")
        kept = report.screen(where, TEXTCAPS_FORMAT, entry, raw, position)
        if kept is None:
            continue
        raw, image = kept
        im = images.setdefault(raw["image_id"], CaptionImage(raw["image_id"], raw["image_id"], split, image))
        im.entry_files.append(image)
        if raw.get("caption_str") is not None:
            im.sentences.append(raw["caption_str"].strip())
    return list(images.values()), len(entries)


# --------------------------------------------------------------------------- COCO references and results


def _image_id(value: object, path: Path, where: str) -> int | str:
    if not is_id(value):
        raise DataError(f"{path}: {where} has image_id {value!r}; expected an integer or a non-empty string")
    return value


def _captioned(entry: object, path: Path, where: str, layout: str, empty: bool = True) -> tuple[int | str, str]:
    """(image_id, caption) of one annotation or result entry, checked; ``empty``: the caption may be
    blank (a generated one may; a reference may not)."""
    if not isinstance(entry, dict) or "image_id" not in entry:
        raise DataError(f'{path}: {where} has no "image_id"; expected {layout}')
    image_id = _image_id(entry["image_id"], path, where)
    caption = entry.get("caption")
    if not isinstance(caption, str):
        kind = "no" if "caption" not in entry else f"a {type(caption).__name__}"
        raise DataError(f"{path}: {where} (image id {image_id!r}) has {kind} caption; expected a string")
    if not empty and not caption.strip():
        raise DataError(f"{path}: {where} (image id {image_id!r}) has an empty caption; expected {layout}")
    return image_id, caption


def read_coco_references(path: str | os.PathLike) -> dict[int | str, list[str]]:
    """``{image_id: [caption, ...]}`` from a COCO caption annotation file.

    The ``images`` list is optional; when present it orders the images (as ``COCO.getImgIds``
    does), and images it lacks follow in order of first annotation.
    """
    path = Path(path)
    data = read_json(path, REFERENCES_FORMAT)
    annotations = records_at(data, "annotations", path, REFERENCES_FORMAT)
    if not annotations:
        raise DataError(f'{path}: the "annotations" list is empty; expected reference captions')
    by_image: dict[int | str, list[str]] = {}
    for index, ann in enumerate(annotations):
        image_id, caption = _captioned(ann, path, f"annotation {index}", REFERENCES_FORMAT, empty=False)
        by_image.setdefault(image_id, []).append(caption)

    images = data.get("images")
    if images is None:
        return by_image
    if not isinstance(images, list):
        raise DataError(f'{path}: "images" is a {type(images).__name__}; expected a list of {{"id", ...}}')
    ordered: dict[int | str, list[str]] = {}
    seen: set[int | str] = set()
    for index, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image:
            raise DataError(f'{path}: images entry {index} has no "id"')
        image_id = _image_id(image["id"], path, f"images entry {index}")
        if image_id in seen:
            raise DataError(f'{path}: images entry {index} repeats the id {image_id!r}; expected each image once')
        seen.add(image_id)
        if image_id in by_image:
            ordered[image_id] = by_image[image_id]
    for image_id, captions in by_image.items():
        ordered.setdefault(image_id, captions)
    return ordered


def read_coco_results(path: str | os.PathLike) -> dict[int | str, str]:
    """``{image_id: caption}`` from a COCO caption results file; one caption per image."""
    path = Path(path)
    data = read_json_list(path, RESULTS_FORMAT, empty="no results")
    results: dict[int | str, str] = {}
    first_index: dict[int | str, int] = {}
    for index, entry in enumerate(data):
        image_id, caption = _captioned(entry, path, f"result {index}", RESULTS_FORMAT)
        if image_id in results:
            # COCOEvalCap would stop on an assertion: BLEU/CIDEr take exactly one candidate per image.
            raise DataError(
                f"{path}: image id {image_id!r} has more than one result (entries {first_index[image_id]} "
                f"and {index}); expected one caption per image"
            )
        results[image_id] = caption
        first_index[image_id] = index
    return results
