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

from data_modules.base import LABELLED, check_format, log_rank_zero, log_skipped
from data_modules.captions import CaptionDataModule
from data_modules.textvqa import DEFAULT_IMAGE_FOLDERS
from lavin_lightning.formats.captions import TEXTCAPS_FORMAT, CaptionImage, read_textcaps
from lavin_lightning.formats.records import BadRecord, ReadReport


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

    expected = TEXTCAPS_FORMAT

    def __init__(self, root: str, data_pattern: str = "TextCaps_0.1_{split}.json",
                 image_pattern: str = "{folder}/{image_path}", image_folders: dict[str, str] | None = None,
                 train_splits: tuple[str, ...] | list[str] = ("train",), **kwargs: Any) -> None:
        super().__init__("", root, train_splits=train_splits, **kwargs)
        self.karpathy_file = None  # one file per split: split_file()
        self.root = Path(root)
        self.data_pattern = check_format("data_pattern", data_pattern, split="x")
        self.image_pattern = check_format("image_pattern", image_pattern, folder="x", image_path="x", image_id="x",
                                          split="x")
        self.image_folders = dict(DEFAULT_IMAGE_FOLDERS if image_folders is None else image_folders)
        self._read_splits: dict[tuple[str, bool], list[CaptionImage]] = {}

    def split_file(self, split: str) -> Path:
        """The json file of ``split``."""
        return self.root / self.data_pattern.format(split=split)

    def _source(self, role: str) -> Path:
        return self.split_file(self.role_splits[role][0])

    def _where(self, im: CaptionImage) -> str:
        return f"{self.split_file(im.split)}: image_id {im.image_id!r}"

    def _candidates(self, role: str) -> list[CaptionImage]:
        images = []
        for split in self.role_splits[role]:
            if role == "val" and not self.split_file(split).is_file():
                log_rank_zero(logging.INFO, "no validation file %s; validation is skipped", self.split_file(split))
                continue
            images += self._read_split(split, role in LABELLED)
        return images

    def _entry_image(self, split: str, entry: dict) -> Path:
        folder = self.image_folders.get(split, f"{split}_images")
        try:
            image = self.image_pattern.format(folder=folder, image_path=entry["image_path"],
                                              image_id=entry["image_id"], split=split)
        except (ValueError, TypeError) as e:
            raise BadRecord("bad_entry", f"the entry does not fit image_pattern ({e})") from None
        return self.root / image

    def _read_split(self, split: str, labelled: bool) -> list[CaptionImage]:
        """The valid images of a split file (first-entry order), read and checked once; ``labelled``
        splits need a caption in every entry."""
        if (split, labelled) not in self._read_splits:
            path, report = self.split_file(split), ReadReport(self.on_bad_record)
            valid, n_entries = read_textcaps(path, split, labelled, report,
                                             lambda entry: self._entry_image(split, entry))
            self.report[f"{split} file"] = {"entries": n_entries, "images": len(valid),
                                            "skipped": dict(report.skipped)}
            log_skipped(str(path), f"{len(valid)} images", report)
            self._read_splits[(split, labelled)] = valid
        return self._read_splits[(split, labelled)]
