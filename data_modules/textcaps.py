"""TextCaps 0.1 captions (reading the text in images).

Reads per split ``TextCaps_0.1_{split}.json``::

    {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1",
     "data": [{"image_id": str (hex), "image_path": "train/<image_id>.jpg", "caption_id": int,
               "caption_str": str (absent in test), "reference_strs": [5 str] (absent in test),
               "image_classes": [...], ...}, ...]}

train and val hold one entry per caption (so several per image), test one per image.

    images  <root>/<image_pattern formatted with folder, image_path, image_id and split>; by
            default <root>/<folder>/<image_path>, the folder being train_images for train and
            val, test_images for test (TextCaps uses TextVQA's images)

Every entry is validated once in ``setup()`` (a bad one fails, or with ``on_bad_record="skip"``
is left out and counted in ``report``); the image files of the served images are checked there
too. Selection, batching and tokenising are :class:`~data_modules.captions.CaptionDataModule`'s;
``references(role)`` / ``coco_references(role)`` hold the captions of the served images under
their hex ids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_modules.captions import LABELLED, CaptionDataModule, _Image, _is_int
from data_modules.instruct import ReadReport, _BadRecord, _log
from data_modules.textvqa import DEFAULT_IMAGE_FOLDERS
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.io import read_json

_TEXTCAPS = (
    'expected TextCaps\' format {"data": [{"image_id": str, "image_path": str, "caption_id": int, '
    '"caption_str": str (not in test), "reference_strs": [str, ...] (not in test)}, ...]}'
)


class TextCapsDataModule(CaptionDataModule):
    """TextCaps 0.1 (``TextCaps_0.1_{split}.json``) captioning.

    An image's sentences are the ``caption_str`` of its entries, in file order (its
    ``reference_strs`` in the published files). Each image becomes the user turn ``prompt``;
    train rows supervise one caption each (``train_on="all"``) or the first caption per image
    (``"first"``), val rows the first caption, test/predict rows are one generation prompt per
    image. ``pids`` are the hex image ids (``"<image_id>#<caption index>"`` for train). The
    test split has no captions (EvalAI scores it): to score a test run, test on the val split
    (``test_split="val"``).

    Args:
        root: folder holding the TextCaps json files and the image folders.
        data_pattern: the json file name under ``root``, formatted with ``split``.
        image_pattern: image path under ``root``, formatted with ``folder`` (from
            ``image_folders``), ``image_path`` (the entry's), ``image_id`` and ``split``; for
            images unpacked as <folder>/<image_id>.jpg use "{folder}/{image_id}.jpg".
        image_folders: split -> image folder; None = train_images for train and val,
            test_images for test. A split not listed uses "<split>_images".
        train_splits: the splits trained on.
        **kwargs: the other arguments of :class:`~data_modules.captions.CaptionDataModule`
            (``val_split``, ``test_split``, ``prompt``, ``train_on``, batch sizes, ``limit_*``,
            ``k_shot`` -- drawn over images --, ``seed``, ``on_bad_record``, ...).
            on_bad_record="error" stops at the first bad entry: no or a non-string caption_str in
            train/val, duplicate caption_id (or image_id in test), missing image, ...
    """

    expected = _TEXTCAPS

    def __init__(
        self,
        root: str,
        data_pattern: str = "TextCaps_0.1_{split}.json",
        image_pattern: str = "{folder}/{image_path}",
        image_folders: dict[str, str] | None = None,
        train_splits: tuple[str, ...] | list[str] = ("train",),
        **kwargs: Any,
    ) -> None:
        try:  # fail at construction on a pattern with unknown fields
            data_pattern.format(split="x")
            image_pattern.format(folder="x", image_path="x", image_id="x", split="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"bad pattern ({e!r}): data_pattern may use {{split}}, image_pattern {{folder}}, "
                              "{image_path}, {image_id} and {split}") from None
        super().__init__("", root, train_splits=train_splits, **kwargs)
        self.karpathy_file = None  # one file per split: split_file()
        self.root = Path(root)
        self.data_pattern = data_pattern
        self.image_pattern = image_pattern
        self.image_folders = dict(DEFAULT_IMAGE_FOLDERS if image_folders is None else image_folders)
        self._read_splits: dict[tuple[str, bool], list[_Image]] = {}

    def split_file(self, split: str) -> Path:
        """The json file of ``split``."""
        return self.root / self.data_pattern.format(split=split)

    def _source(self, role: str) -> Path:
        return self.split_file(self.role_splits[role][0])

    def _where(self, im: _Image) -> str:
        return f"{self.split_file(im.split)}: image_id {im.image_id!r}"

    def _candidates(self, role: str) -> list[_Image]:
        images = []
        for split in self.role_splits[role]:
            if role == "val" and not self.split_file(split).is_file():
                _log(logging.INFO, "no validation file %s; validation is skipped", self.split_file(split))
                continue
            images += self._read_split(split, role in LABELLED)
        return images

    def _read_split(self, split: str, labelled: bool) -> list[_Image]:
        """The valid images of a split file (first-entry order), read and checked once; ``labelled``
        splits need a caption in every entry."""
        if (split, labelled) in self._read_splits:
            return self._read_splits[(split, labelled)]
        path, report = self.split_file(split), ReadReport(self.on_bad_record)
        doc = read_json(path, _TEXTCAPS)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise DataError(f'{path}: no "data" list; {_TEXTCAPS}')
        images: dict[str, _Image] = {}
        caption_ids: set[int] = set()

        def entry(raw: Any, position: int) -> tuple[dict, Path]:
            if not isinstance(raw, dict) or not isinstance(raw.get("image_id"), str) or not raw["image_id"]:
                raise _BadRecord("bad_entry", f"entry #{position} is not an object with a string image_id")
            image_path = raw.get("image_path")
            if not isinstance(image_path, str) or not image_path:
                raise _BadRecord("bad_entry", "field 'image_path' is missing or not a string")
            caption, caption_id = raw.get("caption_str"), raw.get("caption_id")
            if caption is None:
                if labelled:
                    raise _BadRecord("no_caption", "field 'caption_str' is missing (train and val entries need one)")
                # Without captions an image has one entry, so a repeat is a duplicate.
                if raw["image_id"] in images:
                    raise _BadRecord("duplicate_image_id", "the image_id appears more than once")
            elif not isinstance(caption, str):
                raise _BadRecord("non_string_caption", f"caption_str is a {type(caption).__name__}, expected a string")
            elif not caption.strip():
                raise _BadRecord("empty_caption", "caption_str is empty")
            if caption_id is not None:
                if not _is_int(caption_id):
                    raise _BadRecord("bad_caption_id", f"caption_id {caption_id!r} is not an int")
                if caption_id in caption_ids:
                    raise _BadRecord("duplicate_caption_id", f"caption_id {caption_id} appears more than once")
                caption_ids.add(caption_id)
            references = raw.get("reference_strs")
            if references is not None and (not isinstance(references, list)
                                           or not all(isinstance(r, str) for r in references)):
                raise _BadRecord("non_string_reference", "reference_strs must be a list of strings")
            folder = self.image_folders.get(split, f"{split}_images")
            try:
                image = self.image_pattern.format(folder=folder, image_path=image_path, image_id=raw["image_id"],
                                                  split=split)
            except (ValueError, TypeError) as e:
                raise _BadRecord("bad_entry", f"the entry does not fit image_pattern ({e})") from None
            return raw, self.root / image

        for position, raw in enumerate(doc["data"]):
            image_id = raw.get("image_id") if isinstance(raw, dict) else None
            caption_id = raw.get("caption_id") if isinstance(raw, dict) else None
            where = f"{path}: image_id {image_id!r}" + (f" caption_id {caption_id!r}" if caption_id is not None else "")
            kept = report.screen(where, _TEXTCAPS, entry, raw, position)
            if kept is None:
                continue
            raw, image = kept
            im = images.setdefault(raw["image_id"], _Image(raw["image_id"], raw["image_id"], split, image, []))
            if raw.get("caption_str") is not None:
                im.sentences.append(raw["caption_str"].strip())
        valid = list(images.values())
        self.report[f"{split} file"] = {"entries": len(doc["data"]), "images": len(valid),
                                        "skipped": dict(report.skipped)}
        if report.skipped:
            _log(logging.WARNING, "%s: kept %d images, skipped %d bad entries (on_bad_record='skip'): %s",
                 path, len(valid), sum(report.skipped.values()), dict(report.skipped))
        self._read_splits[(split, labelled)] = valid
        return valid
