"""The data modules' common ground: global batch arithmetic, the image transform, the bases.

Configs state the *global* batch size (ARCHITECTURE.md principle 7); the data module
derives the per-device batch and the gradient accumulation from the trainer's world
size, so the same YAML gives the same optimisation on 1 CPU or 8 GPUs.

Tokenizers reach a data module only as arguments (``tokenizer``, ``instruction_tokenizer``):
``lavin-lightning`` hands it the model's, scripts and tests pass them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader
from torchvision import transforms

from data_modules.batching import (
    Collator,
    EpochShuffle,
    LengthBuckets,
    LengthOrder,
    ResumableLoader,
    Sample,
    SampleDataset,
    eos_token_id,
    pad_token_id,
)
from data_modules.templates import check_max_seq_len, check_template, encode_records, instruction_suffix
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.images import ImageCheck, screen_images
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.formats.records import ReadReport, check_on_bad_record

Item = TypeVar("Item")

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test", "predict")
EVAL_ORDERS = ("auto", "split", "length")
STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
# Roles whose rows are supervised; test/predict rows are generation prompts.
LABELLED = ("train", "val")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_global_batch(
    global_batch_size: int, world_size: int, micro_batch_size: int | None
) -> tuple[int, int]:
    """Return ``(per_device_batch, accumulation)`` for a global batch.

    Without a micro batch every device takes ``global / world`` samples per step and no
    accumulation happens; with one, ``accumulation = global / (world * micro)``.
    """
    if global_batch_size < 1 or world_size < 1:
        raise ConfigError(
            f"global_batch_size ({global_batch_size}) and world size ({world_size}) must be >= 1"
        )
    if micro_batch_size is None:
        if global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size {global_batch_size} is not divisible by the world size "
                f"{world_size}; choose a global batch that is a multiple of {world_size} "
                "or set micro_batch_size"
            )
        return global_batch_size // world_size, 1
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    per_step = world_size * micro_batch_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not divisible by world size "
            f"{world_size} x micro_batch_size {micro_batch_size} = {per_step}"
        )
    return micro_batch_size, global_batch_size // per_step


class _ToRGB:
    """Convert a PIL image to RGB (a named class, unlike a lambda, pickles for workers)."""

    def __call__(self, image):
        return image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def image_transform(
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> transforms.Compose:
    """RGB -> Resize((s, s)) -> ToTensor -> Normalize.

    With the defaults this is the LaVIN release's ScienceQA transform (224 px bicubic,
    ImageNet mean/std rather than CLIP's own statistics).
    """
    try:
        mode = transforms.InterpolationMode(interpolation)
    except ValueError:
        valid = [m.value for m in transforms.InterpolationMode]
        raise ConfigError(f"unknown interpolation {interpolation!r}; expected one of {valid}") from None
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"image mean/std need 3 values (RGB), got {list(mean)} / {list(std)}")
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize((image_size, image_size), interpolation=mode),
            transforms.ToTensor(),
            transforms.Normalize(list(mean), list(std)),
        ]
    )


def check_format(name: str, pattern: str, **fields: Any) -> str:
    """``pattern`` if it formats with ``fields`` (example values); a ConfigError naming the fields otherwise.

    Checked at construction, so that a pattern with an unknown field fails before any data is read.
    """
    try:
        pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        allowed = ", ".join("{" + field + "}" for field in fields)
        raise ConfigError(f"bad {name} {pattern!r} ({e!r}): it may use {allowed}") from None
    return pattern


def log_rank_zero(level: int, message: str, *args: Any) -> None:
    """Log once per run, from the process of rank 0."""
    if rank_zero_only.rank == 0:
        log.log(level, message, *args)


def log_skipped(where: str, kept: str, report: ReadReport) -> None:
    """Warn about the records a reader left out (on_bad_record="skip"), per reason, with the first one."""
    if report.skipped:
        log_rank_zero(logging.WARNING, "%s: kept %s, skipped %d bad ones (on_bad_record='skip'): %s; the first: %s",
                      where, kept, sum(report.skipped.values()), dict(report.skipped), report.first_skipped)


def log_counts(name: str, counts: dict[str, int], max_seq_len: int) -> None:
    level = logging.WARNING if counts["truncated"] else logging.INFO
    log_rank_zero(level, "%s: %d samples; %d exceeded max_seq_len=%d and were truncated, %d of them dropped "
                  "(nothing supervised left)", name, counts["samples"], counts["truncated"], max_seq_len,
                  counts["dropped"])


class SampleDataModule(L.LightningDataModule):
    """Base of the data modules that tokenise their records in ``setup()`` and serve ``datasets[role]``.

    Keeps the tokenizers it is given, the image transform and one
    :class:`~data_modules.batching.SampleDataset` per role (train, val, test, predict), and
    makes the loaders; every batch is collated by :class:`~data_modules.batching.Collator`.

    Args:
        eval_batch_size: per-device batch for val/test/predict.
        num_workers: DataLoader worker processes.
        tokenizer: the model's tokenizer (Hugging Face); required by ``setup()``. ``lavin-lightning``
            passes the model's own.
        instruction_tokenizer: the tokenizer of the model's instruction encoder (InstructBLIP's
            Q-Former), which then also gets each sample's instruction, tokenised by it; None for
            causal-LM models. ``lavin-lightning`` passes the model's own.
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
        length_buckets: training batches of similar length (:class:`~data_modules.batching.LengthBuckets`:
            less padding, both modalities in every batch, reproducible and resumable per epoch,
            every process its share of each bucketed batch); False: the plain shuffled order.
        bucket_pool: global batches pooled per length sort (more: less padding, less random batches).
        eval_order: the order of val/test/predict samples. "split": the split's (file) order;
            "length": sorted by length into batches (:class:`~data_modules.batching.LengthOrder`;
            refused when the model's generation depends on its batch); "auto": "length" for
            test when the model says its generations do not depend on their batch
            (``batch_dependence()`` empty), else "split" (predict keeps the file's order, which
            its predictions.jsonl follows).
    """

    def __init__(
        self,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        tokenizer: Any = None,
        instruction_tokenizer: Any = None,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        length_buckets: bool = False,
        bucket_pool: int = 64,
        eval_order: Literal["auto", "split", "length"] = "auto",
    ) -> None:
        super().__init__()
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if bucket_pool < 1:
            raise ConfigError(f"bucket_pool must be >= 1, got {bucket_pool}")
        if eval_order not in EVAL_ORDERS:
            raise ConfigError(f"eval_order must be one of {list(EVAL_ORDERS)}, got {eval_order!r}")
        self.length_buckets = length_buckets
        self.bucket_pool = bucket_pool
        self.eval_order = eval_order
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.tokenizer = tokenizer
        self.instruction_tokenizer = instruction_tokenizer
        self.image_size = image_size
        self.transform = image_transform(image_size, image_mean, image_std)
        self.datasets: dict[str, SampleDataset] = {}
        self._image_check = ImageCheck()  # each image file is decoded once, however many records name it

    def require_tokenizer(self):
        """The tokenizer, checked; a ConfigError that says how to give one when there is none."""
        if self.tokenizer is None:
            raise ConfigError(f"{type(self).__name__} needs a tokenizer: pass tokenizer=..., or run through "
                              "lavin-lightning, which hands the model's tokenizer to the data module")
        eos_token_id(self.tokenizer)
        return self.tokenizer

    def _dataset(self, role: str) -> SampleDataset:
        if role not in self.datasets:
            raise ConfigError(f"the {role} dataset is not set up; call setup() with the matching stage first")
        return self.datasets[role]

    def image_paths(self, role: str) -> dict[str, Path | None]:
        """``{pid: image file}`` of the samples served in ``role`` (None for a text-only sample),
        for the image column of the test scoring callbacks' W&B tables."""
        return {s.pid: s.image_path for s in self._dataset(role).samples}

    def _usable(
        self, items: Sequence[Item], image_of: Callable[[Item], Path | None], where_of: Callable[[Item], str],
        report: ReadReport, limit: int | None = None, then: tuple[Callable[[Item], Any], str] | None = None,
    ) -> list[Item]:
        """The first ``limit`` of ``items`` (all: None) whose image decodes, checked now (setup) so that
        a corrupt file cannot stop training after it has started; a bad one is a DataError naming
        the record and the file, or with on_bad_record="skip" left out and counted in ``report``
        (:func:`~lavin_lightning.formats.images.screen_images`, also for ``then``)."""
        return screen_images(items, image_of, where_of, report, self._image_check, limit, then)

    def _serve(self, role: str, samples: list[Sample]) -> None:
        self.datasets[role] = SampleDataset(samples, self.transform, self.image_size)

    def _shuffle_seed(self) -> int | None:
        """The training shuffle's seed on one device; None: each epoch's is drawn from torch's global RNG."""
        return None

    def _loader_options(self, batch_size: int, fitting: bool) -> dict[str, Any]:
        options = {
            "batch_size": batch_size,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": Collator(pad_token_id(self.tokenizer)),
        }
        if fitting:
            # The loaders fit iterates seed their worker processes from a generator of their own,
            # not from torch's global RNG, whose stream (dropout) a resumed run restores; test and
            # predict loaders draw from it, as PyTorch's do.
            options["generator"] = torch.Generator()
        return options

    def _loader(self, role: str, batch_size: int) -> DataLoader:
        dataset = self._dataset(role)
        sampler = self._eval_sampler(role, dataset, batch_size)
        return DataLoader(dataset, sampler=sampler, **self._loader_options(batch_size, fitting=role == "val"))

    def _eval_sampler(self, role: str, dataset: SampleDataset, batch_size: int) -> LengthOrder | None:
        """The length order of ``role``'s batches (``eval_order``), or None for the split's order."""
        if self.eval_order == "split" or (self.eval_order == "auto" and role != "test"):
            return None
        module = self.trainer.lightning_module if self.trainer is not None else None
        declared = getattr(module, "batch_dependence", None)
        reasons = declared() if declared is not None else None
        if self.eval_order == "length" and reasons:
            raise ConfigError(f"eval_order 'length' regroups the {role} samples, but this model's generations depend "
                              "on their batch: " + "; ".join(reasons) + "; use eval_order 'split'")
        if self.eval_order == "auto" and not (reasons == [] and self.trainer is not None):
            if reasons:
                log_rank_zero(logging.INFO, "%s batches in the split's order: %s", role, "; ".join(reasons))
            return None
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return LengthOrder(dataset, [len(s.input_ids) for s in dataset.samples], batch_size, world_size, rank)

    def _train_loader(self, batch_size: int, accumulation: int) -> ResumableLoader:
        """Training mixes text-only and image-text samples at random (or, with ``length_buckets``, in
        batches of similar length that still hold both), in an order that can be reproduced for any
        epoch, dealt out to the processes, resumable mid-epoch."""
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset = self._dataset("train")
        buckets = None
        if self.length_buckets:
            buckets = LengthBuckets([len(s.input_ids) for s in dataset.samples],
                                    [s.image_path is not None for s in dataset.samples], batch_size, self.bucket_pool)
        sampler = EpochShuffle(dataset, self._shuffle_seed(), num_replicas=world_size, rank=rank, buckets=buckets)
        return ResumableLoader(dataset, sampler=sampler, accumulation=accumulation,
                               **self._loader_options(batch_size, fitting=True))

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size

    def _eval_loader(self, role: str) -> DataLoader:
        return self._loader(role, self.eval_batch)


class GlobalBatchDataModule(SampleDataModule):
    """A SampleDataModule that trains, configured by its global batch size.

    ``setup()`` sets ``per_device_batch_size`` from the trainer's world size (1 without a
    trainer) and writes the derived gradient accumulation into the attached trainer.
    Subclasses call ``super().setup(stage)`` first. The training loader's place in the epoch is
    part of every checkpoint, so that ``fit`` resumes mid-epoch exactly
    (:class:`~data_modules.batching.ResumableLoader`).

    Args:
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for val/test/predict; None = the per-device training batch.
        **kwargs: the worker, tokenizer and image options of :class:`SampleDataModule`.
    """

    def __init__(
        self,
        global_batch_size: int = 32,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eval_batch_size=eval_batch_size, **kwargs)
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        # Fail at construction for errors that do not depend on the world size.
        self.per_device_batch_size, self.accumulate_grad_batches = split_global_batch(
            global_batch_size, 1, micro_batch_size
        )

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.per_device_batch_size

    def setup(self, stage: str | None = None) -> None:
        self.per_device_batch_size, self.accumulate_grad_batches = split_global_batch(
            self.global_batch_size, self.world_size, self.micro_batch_size
        )
        if self.trainer is None:
            return
        configured = self.trainer.accumulate_grad_batches
        if configured not in (1, self.accumulate_grad_batches):
            raise ConfigError(
                f"Trainer(accumulate_grad_batches={configured}) conflicts with the data "
                f"module's global_batch_size {self.global_batch_size} (world size "
                f"{self.world_size}, micro_batch_size {self.micro_batch_size} -> "
                f"accumulation {self.accumulate_grad_batches}); state the global batch "
                "and leave accumulate_grad_batches at 1"
            )
        self.trainer.accumulate_grad_batches = self.accumulate_grad_batches

    def train_dataloader(self) -> ResumableLoader:
        return self._train_loader(self.per_device_batch_size, self.accumulate_grad_batches)

    def _val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")


class ConversationDataModule(GlobalBatchDataModule):
    """Base of the data modules whose records are conversations in a prompt template (instruction
    sets, VQA, captions), encoded by :func:`~data_modules.templates.encode_records`.

    Args:
        template: prompt template: "lavin" (LaVIN's "Instruction: ...\\nResponse:"), "alpaca"
            (Stanford Alpaca / LLaMA-Adapter) or "plain" (the instruction verbatim, InstructBLIP).
        max_seq_len: maximum tokens per sample (BOS + prompt + answer + EOS); longer training
            samples keep their beginning, as LLaMA-Adapter, and are dropped when no answer token
            is left; longer generation prompts keep their end.
        on_bad_record: "error" stops at the first malformed record; "skip" leaves bad records out
            and counts them per reason (``report``, logged).
        seed: seed of the training shuffle (single device; DDP's sampler uses the global seed).
        **kwargs: the batch, tokenizer and image options of :class:`GlobalBatchDataModule`.
    """

    def __init__(
        self, template: str = "lavin", max_seq_len: int = 512, on_bad_record: str = "error", seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.template = check_template(template)
        self.max_seq_len = check_max_seq_len(max_seq_len)
        self.on_bad_record = check_on_bad_record(on_bad_record)
        self.seed = seed

    def _shuffle_seed(self) -> int:
        return self.seed

    def _encode(self, name: str, records: list[InstructRecord], instruction_suffix: str = ""):
        """``encode_records`` with this module's tokenizers and template; the counts are logged."""
        samples, counts = encode_records(records, self.require_tokenizer(), self.template, self.max_seq_len,
                                         self.instruction_tokenizer, instruction_suffix)
        log_counts(f"{type(self).__name__} {name}", counts, self.max_seq_len)
        return samples, counts


class TaskDataModule(ConversationDataModule):
    """Base of the benchmark data modules (the VQA family, captions): each role -- train, val, test,
    predict -- serves a split of the benchmark; train/val rows supervise an answer, test/predict
    rows are generation prompts.

    ``setup(stage)`` builds each role of the stage once (:meth:`_build`, after a subclass's own
    reading and checks); a role without a configured split is left out when the stage can do
    without it (``setup()`` with no stage, or val: validation is then skipped). ``report[role]``
    counts what was read, skipped, truncated and dropped.

    Args:
        limit_train: use the first N valid training records (file order); None = all.
        limit_val: use the first N validation records; None = all.
        limit_test: use the first N test (and predict) records; None = all.
        k_shot: few-shot training (e.g. 50 or 150, as PETAL): k training records drawn at random
            with ``seed`` from the valid (and limited) ones -- over questions for VQA, over images
            for captions; the same seed gives the same subset. None = all.
        original_instructions: PETAL's "original instructions" (paper Table 7), "caption" or "vqa",
            stacked line by line after the instruction given to a model's instruction encoder
            (InstructBLIP's Q-Former); None = the instruction alone. The LLM prompt is unchanged.
        **kwargs: the options of :class:`ConversationDataModule` (``template``, ``max_seq_len``,
            ``on_bad_record``, ``seed`` -- also of the k-shot draw) and of its bases (batch sizes,
            ``num_workers``, ``tokenizer``, ``instruction_tokenizer``, ``image_*``).
    """

    record_kind = "records"  # what the k-shot draw picks, as its error message says

    def __init__(
        self,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        k_shot: int | None = None,
        original_instructions: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        limits = (limit_train, limit_val, limit_test)
        for name, value in (*zip(("limit_train", "limit_val", "limit_test"), limits), ("k_shot", k_shot)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None (all), got {value}")
        self.limits = dict(zip(ROLES, (*limits, limit_test)))  # predict serves the test split
        self.k_shot = k_shot
        instruction_suffix(original_instructions)  # fail at construction on an unknown set
        self.original_instructions = original_instructions
        self.report: dict[str, dict[str, Any]] = {}

    def _has_split(self, role: str) -> bool:
        """Whether a split is configured for ``role``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _has_split()")

    def _source(self, role: str) -> Path:
        """The file ``role``'s records are read from, as messages name it."""
        raise NotImplementedError(f"{type(self).__name__} must implement _source()")

    def _build(self, role: str) -> None:
        """Read, check and encode ``role``'s records (:meth:`_serve_records`); may leave val out."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build()")

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        for role in STAGE_ROLES.get(stage, ROLES) if stage else ROLES:
            if role in self.datasets:  # read and tokenised once, e.g. fit then test
                continue
            if not self._has_split(role):
                if stage is None or role == "val":
                    continue
                raise ConfigError(f"no split is configured for the {role} role")
            self.require_tokenizer()
            self._build(role)
        if "val" in self.datasets:
            # Lightning validates only if val_dataloader is overridden; bound per instance so
            # that without val data fit simply skips validation.
            self.val_dataloader = self._val_dataloader

    def _usable_in(self, role: str, items: Sequence[Item], image_of: Callable[[Item], Path | None],
                   where_of: Callable[[Item], str], limit: int | None = None,
                   then: tuple[Callable[[Item], Any], str] | None = None) -> list[Item]:
        """:meth:`_usable` with the images left out counted in ``report[role]["skipped"]`` and logged."""
        report = ReadReport(self.on_bad_record)
        kept = self._usable(items, image_of, where_of, report, limit, then)
        skipped = self.report.setdefault(role, {}).setdefault("skipped", {})
        for reason, n in report.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
        log_skipped(f"{role} {self._source(role)}", f"{len(kept)} {self.record_kind}", report)
        return kept

    def _draw_k_shot(self, role: str, chosen: list) -> list:
        """The training records of the k-shot draw, in file order (other roles: ``chosen`` as is)."""
        if role != "train" or self.k_shot is None:
            return chosen
        if self.k_shot > len(chosen):
            raise ConfigError(f"k_shot {self.k_shot} exceeds the {len(chosen)} usable training {self.record_kind}")
        picked = sorted(random.Random(self.seed).sample(range(len(chosen)), self.k_shot))
        return [chosen[i] for i in picked]

    def _serve_records(self, role: str, records: list[InstructRecord]) -> list[Sample]:
        """Encode and serve ``role``'s records; the samples (fewer when long rows were dropped)."""
        samples, counts = self._encode(role, records, instruction_suffix(self.original_instructions))
        if not samples:
            raise DataError(f"{self._source(role)}: no {role} samples left: {self.report[role]}")
        self.report[role].update(counts)
        self._serve(role, samples)
        return samples

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
