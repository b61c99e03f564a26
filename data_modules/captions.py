"""Image captioning on Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

Reads one file (:func:`lavin_lightning.formats.captions.read_karpathy`)::

    {"images": [{"filepath": "val2014" (COCO only), "filename": str, "imgid": int,
                 "split": "train"|"restval"|"val"|"test", "cocoid": int (COCO only),
                 "sentences": [{"raw": str, ...}, ...]}, ...], "dataset": "coco"|"flickr30k"}

Every image is validated once in ``setup()`` (a bad one fails, or with ``on_bad_record="skip"``
is left out and counted in ``report``); the image files of the served images are checked
there too. ``references(role)`` / ``coco_references(role)`` hold all sentences of the served
images, for :func:`lavin_lightning.metrics.captions.score_captions` or ``lavin-lightning score
captions``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_modules.base import TaskDataModule, log_rank_zero, log_skipped
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.captions import (
    KARPATHY_FORMAT,
    KARPATHY_SPLITS,
    CaptionImage,
    check_one_file,
    read_karpathy,
)
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.formats.records import ReadReport

TRAIN_ON = ("all", "first")
# LAVIS' generic caption instruction; LaVIN / PETAL use other wordings, pass them as ``prompt``.
DEFAULT_PROMPT = "A short image caption:"


class CaptionDataModule(TaskDataModule):
    """COCO / Flickr30K captions on the Karpathy splits.

    Each image becomes the user turn ``prompt`` of the prompt ``template``; train rows supervise
    a raw sentence (stripped, case kept: the scorer's PTB tokenizer lower-cases) and EOS, val rows
    the first sentence of each image (one row per image keeps validation cheap), test/predict rows
    are one generation prompt per image. Batches: ``input_ids`` (BOS first, right-padded),
    ``attention_mask``, ``labels`` (train/val), ``pixel_values``, ``has_image`` (True), ``pids``
    (``str(image_id)`` for val/test/predict, ``"<image_id>#<sentence index>"`` for train), where
    the image id is ``cocoid`` when present, else ``imgid``.

    Args:
        karpathy_file: ``dataset_coco.json`` / ``dataset_flickr30k.json`` (or a file of that format).
        image_root: folder of the images; an image is ``image_root/filepath/filename``
            (``image_root/filename`` without ``filepath``, as in Flickr30K).
        train_splits: Karpathy splits used for training; the default joins "restval" to "train"
            (the Karpathy convention, 113,287 COCO images).
        val_split: the validation split; validation is skipped when it has no images.
        test_split: the test split (5,000 COCO / 1,000 Flickr30K images), also used by predict.
        prompt: the user turn (default LAVIS' "A short image caption:"; LaVIN's and PETAL's
            caption prompts differ and can be passed here).
        train_on: "all" -- one training row per (image, sentence), ~0.6M COCO pairs -- or
            "first" -- one row per image, with its first sentence.
        max_seq_len: maximum tokens per row (BOS + prompt + caption + EOS).
        **kwargs: the options of :class:`~data_modules.base.TaskDataModule` (``limit_*`` -- over
            valid images --, ``k_shot`` -- drawn over images; with train_on="all" all their
            sentences are used --, ``original_instructions``) and of its bases (``template``,
            ``on_bad_record`` -- "error" stops at the first bad image: no sentences, non-string
            raw, unknown split, duplicate imgid, missing image file; "skip" leaves it out and
            counts it in ``report``, under "file" for the file checks and the role for missing
            image files --, ``seed``, batch sizes, ``num_workers``, ``tokenizer``,
            ``instruction_tokenizer``, ``image_*``).
    """

    expected = KARPATHY_FORMAT  # the format, quoted in bad-record messages
    record_kind = "images"

    def __init__(
        self,
        karpathy_file: str,
        image_root: str,
        train_splits: tuple[str, ...] | list[str] = ("train", "restval"),
        val_split: str | None = "val",
        test_split: str | None = "test",
        prompt: str = DEFAULT_PROMPT,
        train_on: str = "all",
        max_seq_len: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_seq_len=max_seq_len, **kwargs)
        self.karpathy_file = Path(karpathy_file)
        self.image_root = Path(image_root)
        role_splits = {"train": tuple(train_splits), "val": (val_split,), "test": (test_split,),
                       "predict": (test_split,)}
        self.role_splits = {r: s for r, s in role_splits.items() if s and None not in s}
        for role, splits in self.role_splits.items():
            unknown = [s for s in splits if s not in KARPATHY_SPLITS]
            if unknown:
                raise ConfigError(f"{role} splits {unknown} are not Karpathy splits; expected some of "
                                  f"{list(KARPATHY_SPLITS)}")
        if train_on not in TRAIN_ON:
            raise ConfigError(f"train_on must be one of {list(TRAIN_ON)}, got {train_on!r}")
        self.train_on = train_on
        self.prompt = prompt
        self.images: dict[str, list[CaptionImage]] = {}
        self._valid: list[CaptionImage] | None = None

    # ----------------------------------------------------------------- reading

    def _read_file(self) -> list[CaptionImage]:
        """All valid images of the file, read and checked once (file order)."""
        if self._valid is None:
            report = ReadReport(self.on_bad_record)
            self._valid, n_images = read_karpathy(self.karpathy_file, self.image_root, report)
            self.report["file"] = {"images": n_images, "skipped": dict(report.skipped)}
            log_skipped(str(self.karpathy_file), f"{len(self._valid)} images", report)
        return self._valid

    # What a caption format with other files overrides (TextCaps): where a role's images come
    # from and how messages name the file and an image.

    def _has_split(self, role: str) -> bool:
        return role in self.role_splits

    def _candidates(self, role: str) -> list[CaptionImage]:
        """The valid images of ``role``'s splits, in file order."""
        return [im for im in self._read_file() if im.split in self.role_splits[role]]

    def _source(self, role: str) -> Path:
        return self.karpathy_file

    def _where(self, im: CaptionImage) -> str:
        """The file and id of an image, as bad-record messages name them."""
        return f"{self.karpathy_file}: image imgid {im.imgid!r}"

    def _select(self, role: str) -> list[CaptionImage]:
        """The served images: the first ``limit`` whose file is there and decodes (checked here, at
        setup, so that a bad image cannot stop an epoch halfway), then for train the k-shot draw."""
        candidates = self._candidates(role)
        self.report[role] = {"images": len(candidates), "skipped": {}}
        chosen = self._usable_in(role, candidates, lambda im: im.path, self._where, self.limits[role],
                                 (check_one_file, self.expected))
        return self._draw_k_shot(role, chosen)

    def _records(self, role: str, images: list[CaptionImage]) -> list[InstructRecord]:
        if role == "train":
            return [InstructRecord(f"{im.image_id}#{i}", ((self.prompt, s),), "", im.path)
                    for im in images for i, s in enumerate(im.sentences[: 1 if self.train_on == "first" else None])]
        answer = (lambda im: im.sentences[0]) if role == "val" else (lambda im: None)
        return [InstructRecord(str(im.image_id), ((self.prompt, answer(im)),), "", im.path) for im in images]

    def _build(self, role: str) -> None:
        images = self._select(role)
        if role == "val" and not self.report["val"]["images"]:
            log_rank_zero(logging.INFO, "%s has no %s images; validation is skipped", self._source(role),
                          self.role_splits["val"][0])
            return
        samples = self._serve_records(role, self._records(role, images))
        # References cover the images of the rows served (after limits, k-shot and dropped long rows).
        served = {s.pid.split("#")[0] for s in samples}
        self.images[role] = [im for im in images if str(im.image_id) in served]

    # ----------------------------------------------------------------- references

    def _served(self, role: str) -> list[CaptionImage]:
        if role not in self.images:
            raise ConfigError(f"the {role} data is not set up; call setup() first")
        return self.images[role]

    def references(self, role: str) -> dict[int, list[str]]:
        """``{image_id: [sentence, ...]}`` of the images served in ``role`` (ids as ints; pids are their str)."""
        return {im.image_id: list(im.sentences) for im in self._served(role)}

    def coco_references(self, role: str) -> dict:
        """The references of ``role`` as a COCO caption annotation file (``lavin-lightning score captions``)."""
        images = self._served(role)
        annotations = [{"image_id": im.image_id, "id": n, "caption": s}
                       for n, (im, s) in enumerate(((im, s) for im in images for s in im.sentences), start=1)]
        return {"images": [{"id": im.image_id} for im in images], "annotations": annotations}
