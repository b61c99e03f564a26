"""Image captioning on Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

Reads one file::

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
import random
from pathlib import Path
from typing import Any

from data_modules.base import IMAGENET_MEAN, IMAGENET_STD, GlobalBatchDataModule
from data_modules.instruct import (
    InstructRecord,
    ReadReport,
    RoleDataLoaders,
    _BadRecord,
    _log,
    _log_counts,
    encode_records,
    resolve_instruction_tokenizer,
    resolve_tokenizer,
)
from data_modules.scienceqa import ScienceQADataset
from data_modules.templates import instruction_suffix
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.io import read_json

ROLES = ("train", "val", "test", "predict")
SPLITS = ("train", "restval", "val", "test")
TRAIN_ON = ("all", "first")
# LAVIS' generic caption instruction; LaVIN / PETAL use other wordings, pass them as ``prompt``.
DEFAULT_PROMPT = "A short image caption:"
STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
LABELLED = ("train", "val")

_KARPATHY = (
    'expected Karpathy\'s split format {"images": [{"filepath": str (COCO), "filename": str, "imgid": int, '
    '"split": "train"|"restval"|"val"|"test", "cocoid": int (optional), "sentences": [{"raw": str}, ...]}, ...]}'
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Image:
    """One validated image: its id (cocoid, else imgid), file and stripped sentences."""

    __slots__ = ("imgid", "image_id", "split", "path", "sentences")

    def __init__(self, imgid: int, image_id: int, split: str, path: Path, sentences: list[str]) -> None:
        self.imgid, self.image_id, self.split, self.path, self.sentences = imgid, image_id, split, path, sentences


class CaptionDataModule(RoleDataLoaders, GlobalBatchDataModule):
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
        template: prompt template, "lavin" (LaVIN) or "alpaca".
        train_on: "all" -- one training row per (image, sentence), ~0.6M COCO pairs -- or
            "first" -- one row per image, with its first sentence.
        global_batch_size: training samples per optimizer step over all devices.
        micro_batch_size: per-device batch for one forward pass; None = global batch / world size.
        eval_batch_size: per-device batch for val/test/predict; None = the per-device training batch.
        max_seq_len: maximum tokens per row (BOS + prompt + caption + EOS).
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
        limit_train: use the first N valid training images (file order); None = all.
        limit_val: use the first N validation images; None = all.
        limit_test: use the first N test (and predict) images; None = all.
        k_shot: few-shot training: k training images drawn with ``seed`` from the valid (and
            limited) training images; with train_on="all" all their sentences are used.
        seed: seed of the k-shot draw and of the training shuffle.
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first bad image (no sentences, non-string raw,
            unknown split, duplicate imgid, missing image file); "skip" leaves it out and counts
            it in ``report`` ("file" for the file checks, the role for missing image files).
        original_instructions: PETAL's "original instructions" (paper Table 7), "caption" or "vqa",
            stacked line by line after the instruction given to a model's instruction encoder
            (InstructBLIP's Q-Former); None = the instruction alone. The LLM prompt is unchanged.
    """

    expected = _KARPATHY  # the format, quoted in bad-record messages

    def __init__(
        self,
        karpathy_file: str,
        image_root: str,
        train_splits: tuple[str, ...] | list[str] = ("train", "restval"),
        val_split: str | None = "val",
        test_split: str | None = "test",
        prompt: str = DEFAULT_PROMPT,
        template: str = "lavin",
        train_on: str = "all",
        global_batch_size: int = 32,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        max_seq_len: int = 64,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        k_shot: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer: Any = None,
        on_bad_record: str = "error",
        original_instructions: str | None = None,
    ) -> None:
        super().__init__(global_batch_size, micro_batch_size, num_workers)
        self.karpathy_file = Path(karpathy_file)
        self.image_root = Path(image_root)
        role_splits = {"train": tuple(train_splits), "val": (val_split,), "test": (test_split,),
                       "predict": (test_split,)}
        self.role_splits = {r: s for r, s in role_splits.items() if s and None not in s}
        for role, splits in self.role_splits.items():
            unknown = [s for s in splits if s not in SPLITS]
            if unknown:
                raise ConfigError(f"{role} splits {unknown} are not Karpathy splits; expected some of {list(SPLITS)}")
        if train_on not in TRAIN_ON:
            raise ConfigError(f"train_on must be one of {list(TRAIN_ON)}, got {train_on!r}")
        self.train_on = train_on
        self.prompt = prompt
        self._set_encoding_options(template, max_seq_len, eval_batch_size, (limit_train, limit_val, limit_test),
                                   k_shot, seed, tokenizer, on_bad_record, original_instructions, image_size,
                                   image_mean, image_std)
        self.datasets: dict[str, ScienceQADataset] = {}
        self.images: dict[str, list[_Image]] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self._valid: list[_Image] | None = None

    # ----------------------------------------------------------------- reading

    def _read_file(self) -> list[_Image]:
        """All valid images of the file, read and checked once (file order)."""
        if self._valid is not None:
            return self._valid
        path, report = self.karpathy_file, ReadReport(self.on_bad_record)
        data = read_json(path, _KARPATHY)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f'{path}: no "images" list; {_KARPATHY}')
        seen: set[int] = set()

        def image(raw: Any, position: int) -> _Image:
            if not isinstance(raw, dict) or not _is_int(raw.get("imgid")):
                raise _BadRecord("bad_image", f"image #{position} is not an object with an int imgid")
            imgid = raw["imgid"]
            if imgid in seen:
                raise _BadRecord("duplicate_imgid", "the imgid appears more than once")
            seen.add(imgid)
            if raw.get("split") not in SPLITS:
                raise _BadRecord("unknown_split", f"split {raw.get('split')!r} is not one of {list(SPLITS)}")
            cocoid = raw.get("cocoid")
            if cocoid is not None and not _is_int(cocoid):
                raise _BadRecord("bad_image", f"cocoid {cocoid!r} is not an int")
            filename, filepath = raw.get("filename"), raw.get("filepath", "")
            if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
                raise _BadRecord("bad_image", "filename (and filepath when present) must be strings")
            sentences = raw.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                raise _BadRecord("no_sentences", "field 'sentences' is missing, empty or not a list")
            captions = []
            for i, s in enumerate(sentences):
                text = s.get("raw") if isinstance(s, dict) else s
                if not isinstance(text, str):
                    raise _BadRecord("non_string_raw", f"sentences[{i}].raw is a {type(text).__name__}, "
                                                       "expected a string")
                if not text.strip():
                    raise _BadRecord("empty_raw", f"sentences[{i}].raw is empty")
                captions.append(text.strip())
            return _Image(imgid, imgid if cocoid is None else cocoid, raw["split"],
                          self.image_root / filepath / filename, captions)

        valid = []
        for position, raw in enumerate(data["images"]):
            imgid = raw.get("imgid") if isinstance(raw, dict) else None
            kept = report.screen(f"{path}: image imgid {imgid!r}", _KARPATHY, image, raw, position)
            if kept is not None:
                valid.append(kept)
        self.report["file"] = {"images": len(data["images"]), "skipped": dict(report.skipped)}
        if report.skipped:
            _log(logging.WARNING, "%s: kept %d images, skipped %d bad ones (on_bad_record='skip'): %s",
                 path, len(valid), sum(report.skipped.values()), dict(report.skipped))
        self._valid = valid
        return valid

    # What a caption format with other files overrides (TextCaps): where a role's images come
    # from and how messages name the file and an image.

    def _candidates(self, role: str) -> list[_Image]:
        """The valid images of ``role``'s splits, in file order."""
        return [im for im in self._read_file() if im.split in self.role_splits[role]]

    def _source(self, role: str) -> Path:
        """The file ``role``'s images are read from."""
        return self.karpathy_file

    def _where(self, im: _Image) -> str:
        """The file and id of an image, as bad-record messages name them."""
        return f"{self.karpathy_file}: image imgid {im.imgid!r}"

    def _select(self, role: str) -> list[_Image]:
        """The served images: the first ``limit`` with an existing file, then for train the k-shot draw."""
        report, limit = ReadReport(self.on_bad_record), self.limits[role]
        candidates = self._candidates(role)

        def exists(im: _Image) -> _Image:
            # Checked here (setup) so that a missing image cannot stop an epoch halfway.
            if not im.path.is_file():
                raise _BadRecord("missing_image", f"image {im.path} not found")
            return im

        chosen = []
        for im in candidates:
            if limit is not None and len(chosen) == limit:
                break
            kept = report.screen(self._where(im), self.expected, exists, im)
            if kept is not None:
                chosen.append(kept)
        self.report[role] = {"images": len(candidates), "skipped": dict(report.skipped)}
        if role == "train" and self.k_shot is not None:
            if self.k_shot > len(chosen):
                raise ConfigError(f"k_shot {self.k_shot} exceeds the {len(chosen)} usable training images")
            picked = sorted(random.Random(self.seed).sample(range(len(chosen)), self.k_shot))  # file order
            chosen = [chosen[i] for i in picked]
        return chosen

    def _records(self, role: str, images: list[_Image]) -> list[InstructRecord]:
        if role == "train":
            return [InstructRecord(f"{im.image_id}#{i}", ((self.prompt, s),), "", im.path)
                    for im in images for i, s in enumerate(im.sentences[: 1 if self.train_on == "first" else None])]
        answer = (lambda im: im.sentences[0]) if role == "val" else (lambda im: None)
        return [InstructRecord(str(im.image_id), ((self.prompt, answer(im)),), "", im.path) for im in images]

    def _build(self, role: str, tokenizer) -> bool:
        images = self._select(role)
        if role == "val" and not self.report["val"]["images"]:
            _log(logging.INFO, "%s has no %s images; validation is skipped", self._source(role),
                 self.role_splits["val"][0])
            return False
        samples, counts = encode_records(self._records(role, images), tokenizer, self.template, self.max_seq_len,
            resolve_instruction_tokenizer(self), instruction_suffix(self.original_instructions))
        if not samples:
            raise DataError(f"{self._source(role)}: no {role} samples left: {self.report[role]}")
        self.report[role].update(counts)
        _log_counts(f"{type(self).__name__} {role}", counts, self.max_seq_len)
        # References cover the images of the rows served (after limits, k-shot and dropped long rows).
        served = {s.pid.split("#")[0] for s in samples}
        self.images[role] = [im for im in images if str(im.image_id) in served]
        self.datasets[role] = ScienceQADataset(samples, self.transform, self.image_size)
        return True

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        roles = STAGE_ROLES.get(stage, ROLES) if stage else ROLES
        tokenizer = None
        for role in roles:
            if role in self.datasets:  # read and tokenised once, e.g. fit then test
                continue
            if role not in self.role_splits and (stage is None or role == "val"):
                continue
            if role not in self.role_splits:
                raise ConfigError(f"no split is configured for the {role} role")
            tokenizer = tokenizer or resolve_tokenizer(self)
            self._build(role, tokenizer)
        if "val" in self.datasets:
            # Lightning validates only if val_dataloader is overridden; bound per instance so
            # that without val data fit simply skips validation.
            self.val_dataloader = self._val_dataloader

    # ----------------------------------------------------------------- references

    def _served(self, role: str) -> list[_Image]:
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

    # ----------------------------------------------------------------- loaders

