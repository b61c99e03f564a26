"""Instruction-tuning data: Alpaca, LLaVA-Instruct, their mixture and prompt files for predict.

Reads the public formats::

    Alpaca (alpaca_data.json of Stanford Alpaca)
        [{"instruction": str, "input": str (optional), "output": str}, ...]
    LLaVA-Instruct (llava_instruct_150k.json of LLaVA-Instruct-150K)
        [{"id": str|int, "image": "000000033471.jpg" (optional),
          "conversations": [{"from": "human"|"gpt", "value": str}, ...]}, ...]
        the image file is <image_root>/<image>
    Prompts for predict (JSONL, one object a line)
        {"instruction": str, "input": str, "image": str, "id": str}   all but "instruction" optional

Every record is validated and tokenised once in ``setup()``, so a bad record fails (or,
with ``on_bad_record="skip"``, is left out and counted) before training starts.
Batches follow the project's contract: ``input_ids``, ``attention_mask``, ``labels``
(train/val only), ``pixel_values``, ``has_image``, ``pids`` (plus ScienceQA's
``n_choices``, all 0, from the shared collator). The "<image>" marker is removed from the
text: images reach the models through ``pixel_values`` and ``has_image`` only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from data_modules.base import IMAGENET_MEAN, IMAGENET_STD, GlobalBatchDataModule, image_transform
from data_modules.scienceqa import ScienceQACollator, ScienceQADataset, ScienceQASample
from data_modules.templates import (
    IGNORE_INDEX,
    assemble_conversation,
    check_max_seq_len,
    check_template,
    conversation_segments,
    eos_token_id,
    instruction_suffix,
)
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.io import read_json

log = logging.getLogger(__name__)

ON_BAD_RECORD = ("error", "skip")
IMAGE_MARKER = "<image>"

_ALPACA = 'expected the Alpaca format: a list of {"instruction": str, "input": str (optional), "output": str}'
_LLAVA = (
    'expected the LLaVA-Instruct format: a list of {"id": str|int, "image": file under image_root (optional), '
    '"conversations": [{"from": "human"|"gpt", "value": str}, ...]} alternating human, gpt, ..., with "<image>" '
    'in the first human turn exactly when "image" is set'
)
_PROMPTS = (
    'expected one JSON object per line: {"instruction": str, "input": str, "image": str (relative to the '
    'file\'s folder), "id": str}, all but "instruction" optional'
)


def _log(level: int, message: str, *args) -> None:
    if rank_zero_only.rank == 0:
        log.log(level, message, *args)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class InstructRecord:
    """One validated conversation; a generation prompt has None as its last answer."""

    pid: str
    turns: tuple[tuple[str, str | None], ...]
    input_text: str = ""
    image: Path | None = None


class _BadRecord(Exception):
    """A problem of one record: a DataError, or a skip with on_bad_record="skip"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ReadReport:
    """What a reader left out: bad records per reason, and unanswered trailing turns."""

    on_bad_record: str = "error"
    skipped: Counter = field(default_factory=Counter)
    unanswered_turns: int = 0

    def screen(self, where: str, expected: str, parse: Callable[..., InstructRecord], *args) -> InstructRecord | None:
        """``parse(*args)``; a bad record raises a DataError located at ``where`` or is counted."""
        try:
            return parse(*args)
        except _BadRecord as e:
            message = f"{where}: {e}; {expected}"
            if self.on_bad_record == "error":
                raise DataError(message) from None
            if not self.skipped[e.reason]:
                _log(logging.WARNING, "skipping bad records (on_bad_record='skip'), for example %s", message)
            self.skipped[e.reason] += 1
            return None

    def summary(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "unanswered_turns": self.unanswered_turns}


def check_on_bad_record(on_bad_record: str) -> str:
    if on_bad_record not in ON_BAD_RECORD:
        raise ConfigError(f"on_bad_record must be one of {list(ON_BAD_RECORD)}, got {on_bad_record!r}")
    return on_bad_record


def _object(value: Any, name: str = "the record") -> dict:
    if not isinstance(value, dict):
        raise _BadRecord("not_an_object", f"{name} is a {type(value).__name__}, not an object")
    return value


def _text(record: dict, key: str, required: bool = True, name: str | None = None) -> str:
    """A string field; a required one must not be blank, an optional one defaults to ""."""
    name = name or f"field {key!r}"
    value = record.get(key)
    if value is None:
        if required:
            raise _BadRecord("missing_field", f"{name} is missing")
        return ""
    if not isinstance(value, str):
        raise _BadRecord("not_a_string", f"{name} is a {type(value).__name__}, expected a string")
    if required and not value.strip():
        raise _BadRecord("empty_field", f"{name} is empty")
    return value


def _image_file(path: Path) -> Path:
    # Checked here (setup) so that a missing image cannot stop an epoch halfway.
    if not path.is_file():
        raise _BadRecord("missing_image", f"image {path} not found")
    return path


def _read_list(path: Path, expected: str) -> list:
    records = read_json(path, expected)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records, got {type(records).__name__}; {expected}")
    return records


def _alpaca_record(raw: Any, index: int) -> InstructRecord:
    record = _object(raw)
    instruction = _text(record, "instruction")
    input_text = _text(record, "input", required=False)
    output = _text(record, "output")
    return InstructRecord(f"alpaca-{index}", ((instruction, output),), input_text)


def read_alpaca(path: str | Path, on_bad_record: str = "error") -> tuple[list[InstructRecord], ReadReport]:
    """The records of an Alpaca JSON file in file order (pids ``alpaca-<index>``)."""
    path, report = Path(path), ReadReport(check_on_bad_record(on_bad_record))
    records = [
        report.screen(f"{path}: record {index}", _ALPACA, _alpaca_record, raw, index)
        for index, raw in enumerate(_read_list(path, _ALPACA))
    ]
    return [r for r in records if r is not None], report


def _llava_record(raw: Any, index: int, image_root: Path, report: ReadReport) -> InstructRecord:
    record = _object(raw)
    image = _text(record, "image", required=False)
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise _BadRecord("bad_conversations", "field 'conversations' is missing, empty or not a list")
    texts = []
    for turn, raw_turn in enumerate(conversation):
        where = f"conversations[{turn}]"
        role = _object(raw_turn, where).get("from")
        if role not in ("human", "gpt"):
            raise _BadRecord("unknown_role", f"{where}.from is {role!r}, expected 'human' or 'gpt'")
        if role != ("human", "gpt")[turn % 2]:
            raise _BadRecord("bad_turn_order", f"{where}.from is {role!r}; turns must alternate human, gpt, ...")
        value = _text(raw_turn, "value", name=f"{where}.value")
        if IMAGE_MARKER in value:
            if turn:
                raise _BadRecord("misplaced_image_marker", f"{where} has {IMAGE_MARKER!r}; only the first turn may")
            if not image:
                raise _BadRecord("marker_without_image", f"{where} has {IMAGE_MARKER!r} but 'image' is not set")
            # LLaVA puts the marker at the start or end of the question, next to a newline.
            value = value.replace(IMAGE_MARKER, "").strip()
            if not value:
                raise _BadRecord("empty_field", f"{where}.value has no text besides {IMAGE_MARKER!r}")
        elif turn == 0 and image:
            raise _BadRecord("image_without_marker", f"'image' is set but {where} has no {IMAGE_MARKER!r} marker")
        texts.append(value)
    if len(texts) < 2:
        raise _BadRecord("no_answer", "the conversation has no 'gpt' turn")
    image_path = _image_file(image_root / image) if image else None
    if len(texts) % 2:
        texts.pop()  # a question without an answer supervises nothing
        report.unanswered_turns += 1
    return InstructRecord(f"llava-{index}", tuple(zip(texts[0::2], texts[1::2])), "", image_path)


def read_llava_instruct(
    path: str | Path, image_root: str | Path, on_bad_record: str = "error"
) -> tuple[list[InstructRecord], ReadReport]:
    """The records of a LLaVA-Instruct JSON file in file order (pids ``llava-<index>``)."""
    path, image_root, report = Path(path), Path(image_root), ReadReport(check_on_bad_record(on_bad_record))
    if not image_root.is_dir():
        raise DataError(
            f"image_root {image_root} is not a folder; expected the images named by the 'image' fields of "
            f"{path} (COCO train2017 for llava_instruct_150k.json)"
        )
    records = [
        report.screen(f"{path}: record {index}", _LLAVA, _llava_record, raw, index, image_root, report)
        for index, raw in enumerate(_read_list(path, _LLAVA))
    ]
    return [r for r in records if r is not None], report


def _prompt_record(line: str, line_number: int, folder: Path, seen: dict[str, int]) -> InstructRecord:
    try:
        record = _object(json.loads(line))
    except json.JSONDecodeError as e:
        raise _BadRecord("invalid_json", f"not valid JSON ({e.msg}, column {e.colno})") from None
    # Images arrive as pixels, so a pasted "<image>" marker is dropped rather than fed as text.
    instruction = _text(record, "instruction").replace(IMAGE_MARKER, "").strip()
    if not instruction:
        raise _BadRecord("empty_field", f"field 'instruction' has no text besides {IMAGE_MARKER!r}")
    input_text = _text(record, "input", required=False)
    pid = record.get("id", str(line_number))
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise _BadRecord("bad_id", f"field 'id' is {pid!r}, expected a non-empty string or an integer")
    pid = str(pid)
    if pid in seen:
        raise _BadRecord("duplicate_id", f"id {pid!r} is already used on line {seen[pid]}")
    image = _text(record, "image", required=False)
    image_path = _image_file(folder / image) if image else None
    seen[pid] = line_number
    return InstructRecord(pid, ((instruction, None),), input_text, image_path)


def read_prompts(path: str | Path, on_bad_record: str = "error") -> tuple[list[InstructRecord], ReadReport]:
    """Generation prompts of a JSONL file; blank lines are skipped, ids default to line numbers."""
    path, report = Path(path), ReadReport(check_on_bad_record(on_bad_record))
    if not path.is_file():
        raise DataError(f"{path} not found: {_PROMPTS}")
    records, seen = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    records.append(
                        report.screen(f"{path}:{line_number}", _PROMPTS, _prompt_record, line, line_number,
                                      path.parent, seen)
                    )
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); {_PROMPTS}") from None
    return [r for r in records if r is not None], report


# --------------------------------------------------------------------------- tokenising


def encode_records(
    records: list[InstructRecord],
    tokenizer,
    template: str,
    max_seq_len: int,
    instruction_tokenizer=None,
    instruction_suffix: str = "",
    instruction_max_len: int = 128,
) -> tuple[list[ScienceQASample], dict[str, int]]:
    """Samples for the records plus ``{"samples", "truncated", "dropped"}`` counts.

    The same encoding as :func:`data_modules.templates.encode_conversation`, with one
    batched tokenizer call. ``truncated`` counts samples longer than ``max_seq_len``;
    ``dropped`` those of them with no supervised token left (left out). With an
    ``instruction_tokenizer`` (a model's instruction encoder, e.g. InstructBLIP's Q-Former)
    each sample also carries its first user turn plus ``instruction_suffix`` tokenised by it
    (special tokens included, at most ``instruction_max_len`` ids).
    """
    segments = [conversation_segments(template, r.turns, r.input_text) for r in records]
    texts = [text for parts in segments for text, _ in parts]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    instructions = iter([None] * len(records))
    if instruction_tokenizer is not None and records:
        instructions = iter(instruction_tokenizer([r.turns[0][0] + instruction_suffix for r in records],
                                                  truncation=True, max_length=instruction_max_len)["input_ids"])
    bos, eos = tokenizer.bos_token_id, eos_token_id(tokenizer)
    samples, truncated, dropped = [], 0, 0
    for record, parts in zip(records, segments):
        input_ids, labels, cut = assemble_conversation(
            [next(ids) for _ in parts], [answer for _, answer in parts], bos, eos, max_seq_len
        )
        instruction_ids = next(instructions)
        truncated += cut
        # Only a cut sample can lose all its targets (an uncut one keeps at least EOS).
        if cut and labels is not None and labels.count(IGNORE_INDEX) == len(labels):
            dropped += 1
            continue
        samples.append(ScienceQASample(record.pid, input_ids, labels, record.image, 0, instruction_ids))
    return samples, {"samples": len(samples), "truncated": truncated, "dropped": dropped}


def resolve_tokenizer(datamodule: L.LightningDataModule):
    """The data module's tokenizer, else the attached LightningModule's."""
    if datamodule.tokenizer is None:
        module = datamodule.trainer.lightning_module if datamodule.trainer is not None else None
        datamodule.tokenizer = getattr(module, "tokenizer", None)
    if datamodule.tokenizer is None:
        raise ConfigError(
            f"{type(datamodule).__name__} needs a tokenizer: pass tokenizer=... or attach it to a Trainer "
            "whose LightningModule has a `tokenizer` attribute"
        )
    eos_token_id(datamodule.tokenizer)
    return datamodule.tokenizer


def resolve_instruction_tokenizer(datamodule: L.LightningDataModule):
    """The attached LightningModule's ``instruction_tokenizer`` (None for models without an
    instruction encoder), else the data module's own ``instruction_tokenizer`` attribute."""
    module = datamodule.trainer.lightning_module if datamodule.trainer is not None else None
    return getattr(module, "instruction_tokenizer", None) or getattr(datamodule, "instruction_tokenizer", None)


def _loader(
    dataset: ScienceQADataset, tokenizer, batch_size: int, num_workers: int, generator: torch.Generator | None = None
) -> DataLoader:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataLoader(
        dataset,
        batch_size=batch_size,
        # Training mixes text-only and image-text samples at random (no bucketing).
        shuffle=generator is not None,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=ScienceQACollator(pad),
    )


class RoleDataLoaders:
    """train/val/test/predict loaders over ``self.datasets[role]``, for data modules that set
    ``datasets``, ``tokenizer``, ``seed``, ``num_workers``, ``eval_batch_size`` and the per-device
    batch (the VQA and caption modules); ``_val_dataloader`` is bound as ``val_dataloader``
    only when there is validation data."""

    def _set_encoding_options(self, template: str, max_seq_len: int, eval_batch_size: int | None,
                              limits: tuple[int | None, int | None, int | None], k_shot: int | None, seed: int,
                              tokenizer, on_bad_record: str, original_instructions: str | None, image_size: int,
                              image_mean, image_std) -> None:
        """Check and keep the options these data modules share (their __init__ arguments of
        the same names; `limits` are limit_train, limit_val, limit_test)."""
        self.template = check_template(template)
        self.max_seq_len = check_max_seq_len(max_seq_len)
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.eval_batch_size = eval_batch_size
        for name, value in (*zip(("limit_train", "limit_val", "limit_test"), limits), ("k_shot", k_shot)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None (all), got {value}")
        self.limits = dict(zip(("train", "val", "test", "predict"), (*limits, limits[2])))
        self.k_shot = k_shot
        self.seed = seed
        self.tokenizer = tokenizer
        self.on_bad_record = check_on_bad_record(on_bad_record)
        instruction_suffix(original_instructions)  # fail at construction on an unknown set
        self.original_instructions = original_instructions
        self.image_size = image_size
        self.transform = image_transform(image_size, image_mean, image_std)

    def _dataset(self, role: str) -> ScienceQADataset:
        if role not in self.datasets:
            raise ConfigError(f"the {role} dataset is not set up; call setup() first")
        return self.datasets[role]

    def image_paths(self, role: str) -> dict[str, Path | None]:
        """``{pid: image file}`` of the samples served in ``role`` (None for a text-only sample),
        for the image column of the test scoring callbacks' W&B tables."""
        return {s.pid: s.image_path for s in self._dataset(role).samples}

    def _eval_loader(self, role: str) -> DataLoader:
        batch = self.eval_batch_size or self.per_device_batch_size
        return _loader(self._dataset(role), self.tokenizer, batch, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return _loader(self._dataset("train"), self.tokenizer, self.per_device_batch_size, self.num_workers, generator)

    def _val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def _log_read(path: str, n_records: int, read: ReadReport) -> None:
    if read.skipped:
        _log(logging.WARNING, "%s: kept %d records, skipped %d bad ones (on_bad_record='skip'): %s",
             path, n_records, sum(read.skipped.values()), dict(read.skipped))
    if read.unanswered_turns:
        _log(logging.INFO, "%s: dropped %d trailing questions without an answer", path, read.unanswered_turns)


def _log_counts(name: str, counts: dict[str, int], max_seq_len: int) -> None:
    level = logging.WARNING if counts["truncated"] else logging.INFO
    _log(level, "%s: %d samples; %d exceeded max_seq_len=%d and were truncated, %d of them dropped "
         "(nothing supervised left)", name, counts["samples"], counts["truncated"], max_seq_len, counts["dropped"])


# --------------------------------------------------------------------------- data modules


class Source(NamedTuple):
    """The validated records of one file, in file order, and how many train on."""

    name: str
    path: str
    records: list[InstructRecord]
    report: ReadReport
    limit: int | None


class InstructionDataModule(GlobalBatchDataModule):
    """Base of the training data modules: sources -> train (+ val) datasets.

    Subclasses implement :meth:`read_sources`. Of each source, the last ``val_size``
    records are held out for validation, and the first ``limit`` of the rest train.
    ``report`` holds per source the records read, skipped (per reason) and the dropped
    unanswered turns, and per role (train/val) the sample, truncation and drop counts.
    """

    def __init__(
        self,
        template: str,
        val_size: int,
        max_seq_len: int,
        global_batch_size: int,
        micro_batch_size: int | None,
        eval_batch_size: int | None,
        num_workers: int,
        tokenizer: Any,
        on_bad_record: str,
        seed: int,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__(global_batch_size, micro_batch_size, num_workers)
        self.template = check_template(template)
        self.max_seq_len = check_max_seq_len(max_seq_len)
        self.on_bad_record = check_on_bad_record(on_bad_record)
        if val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {val_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.val_size = val_size
        self.eval_batch_size = eval_batch_size
        self.tokenizer = tokenizer
        self.seed = seed
        self.image_size = image_size
        self.transform = image_transform(image_size, image_mean, image_std)
        self.datasets: dict[str, ScienceQADataset] = {}
        self.report: dict[str, dict[str, Any]] = {}
        if val_size:
            # Lightning validates only if val_dataloader is overridden; bound per instance so
            # that without held-out data fit simply skips validation.
            self.val_dataloader = self._val_dataloader

    @staticmethod
    def _check_limit(name: str, limit: int | None) -> int | None:
        if limit is not None and limit < 1:
            raise ConfigError(f"{name} must be >= 1 or None (all records), got {limit}")
        return limit

    def read_sources(self) -> list[Source]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        if self.datasets:  # read and tokenised once, e.g. fit then validate
            return
        tokenizer = resolve_tokenizer(self)
        roles = {"train": [], "val": []}
        for source in self.read_sources():
            n = len(source.records)
            if not n:
                raise DataError(f"{source.path}: no usable records ({source.report.summary()})")
            if self.val_size >= n:
                raise ConfigError(f"val_size {self.val_size} leaves no training records: {source.name} has {n}")
            roles["train"] += source.records[: n - self.val_size][: source.limit]
            roles["val"] += source.records[n - self.val_size:]
            self.report[source.name] = {"records": n, **source.report.summary()}
            _log_read(source.path, n, source.report)
        for role, records in roles.items():
            if role == "val" and not self.val_size:
                continue
            samples, counts = encode_records(records, tokenizer, self.template, self.max_seq_len,
                                            resolve_instruction_tokenizer(self))
            if not samples:
                raise DataError(f"no {role} samples left (max_seq_len={self.max_seq_len}): {self.report}")
            self.report[role] = counts
            _log_counts(f"{type(self).__name__} {role}", counts, self.max_seq_len)
            self.datasets[role] = ScienceQADataset(samples, self.transform, self.image_size)

    def _dataset(self, role: str) -> ScienceQADataset:
        if role not in self.datasets:
            raise ConfigError(f"the {role} dataset is not set up; call setup() first")
        return self.datasets[role]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return _loader(self._dataset("train"), self.tokenizer, self.per_device_batch_size, self.num_workers, generator)

    def _val_dataloader(self) -> DataLoader:
        batch = self.eval_batch_size or self.per_device_batch_size
        return _loader(self._dataset("val"), self.tokenizer, batch, self.num_workers)


class AlpacaDataModule(InstructionDataModule):
    """Text-only instruction tuning on Alpaca-format data (Stanford Alpaca, LLaMA-Adapter).

    Batches (train/val): ``input_ids`` (BOS + prompt + output + EOS, right-padded),
    ``attention_mask``, ``labels`` (output + EOS supervised), ``pixel_values`` (1-pixel zero placeholders),
    ``has_image`` (False), ``pids`` (``alpaca-<record index>``).

    Args:
        path: JSON file, a list of {"instruction": str, "input": str (optional), "output": str}
            (alpaca_data.json).
        template: prompt template, "alpaca" (Stanford Alpaca / LLaMA-Adapter) or "lavin"
            (LaVIN's "Instruction: ...\\nResponse:").
        val_size: hold out the last N records (in file order) for the validation loss;
            0 = no validation.
        limit: train on the first N records only (quick runs); None = all.
        max_seq_len: maximum tokens per sample (BOS + prompt + output + EOS); longer samples
            keep their beginning, as LLaMA-Adapter; samples left with no output token are dropped.
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for validation; None = the per-device training batch.
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first malformed record; "skip" leaves bad
            records out and counts them per reason (``report``, logged).
        seed: seed of the training shuffle (single device; DDP's sampler uses the global seed).
    """

    def __init__(
        self,
        path: str,
        template: str = "alpaca",
        val_size: int = 0,
        limit: int | None = None,
        max_seq_len: int = 512,
        global_batch_size: int = 64,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        tokenizer: Any = None,
        on_bad_record: str = "error",
        seed: int = 0,
    ) -> None:
        # Text only: a 1-pixel placeholder image per row, never read (has_image is False).
        super().__init__(template, val_size, max_seq_len, global_batch_size, micro_batch_size, eval_batch_size,
                         num_workers, tokenizer, on_bad_record, seed, image_size=1)
        self.path = path
        self.limit = self._check_limit("limit", limit)

    def read_sources(self) -> list[Source]:
        return [Source("alpaca", self.path, *read_alpaca(self.path, self.on_bad_record), self.limit)]


class LLaVAInstructDataModule(InstructionDataModule):
    """Image-text instruction tuning on LLaVA-Instruct conversations (llava_instruct_150k.json).

    Each conversation is one sample: the first question renders as the template's
    prompt, later ones as continuations; every answer and the EOS after it are
    supervised, the questions are not. The "<image>" marker is removed from the text;
    the image arrives as ``pixel_values`` with ``has_image`` True. Pids are
    ``llava-<record index>`` (LLaVA ids repeat: one image has several conversations).

    Args:
        path: JSON file, a list of {"id", "image" (optional), "conversations": [{"from":
            "human"|"gpt", "value"}, ...]} alternating human, gpt, ...; a trailing
            question without an answer is dropped (counted in ``report``).
        image_root: folder of the images named by "image" (COCO train2017 for LLaVA-Instruct-150K).
        template: prompt template, "lavin" (LaVIN) or "alpaca".
        val_size: hold out the last N records (in file order) for the validation loss;
            0 = no validation.
        limit: train on the first N records only (quick runs); None = all.
        max_seq_len: maximum tokens per sample (BOS + all turns + EOS after each answer);
            longer samples keep their beginning; samples left with no answer token are dropped.
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for validation; None = the per-device training batch.
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first malformed record (missing image file,
            marker without image, ...); "skip" leaves bad records out and counts them per
            reason (``report``, logged).
        seed: seed of the training shuffle (single device; DDP's sampler uses the global seed).
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
    """

    def __init__(
        self,
        path: str,
        image_root: str,
        template: str = "lavin",
        val_size: int = 0,
        limit: int | None = None,
        max_seq_len: int = 512,
        global_batch_size: int = 64,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        tokenizer: Any = None,
        on_bad_record: str = "error",
        seed: int = 0,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__(template, val_size, max_seq_len, global_batch_size, micro_batch_size, eval_batch_size,
                         num_workers, tokenizer, on_bad_record, seed, image_size, image_mean, image_std)
        self.path = path
        self.image_root = image_root
        self.limit = self._check_limit("limit", limit)

    def read_sources(self) -> list[Source]:
        records, report = read_llava_instruct(self.path, self.image_root, self.on_bad_record)
        return [Source("llava", self.path, records, report, self.limit)]


class InstructionMixtureDataModule(InstructionDataModule):
    """LaVIN's chatbot data: Alpaca (text-only) and LLaVA-Instruct (image-text) in one training set.

    The two sources are shuffled together, so batches mix modalities (mixture-of-modality
    training). Samples are encoded as by :class:`AlpacaDataModule` and
    :class:`LLaVAInstructDataModule`; pids are ``alpaca-<index>`` and ``llava-<index>``.

    Args:
        alpaca_path: Alpaca JSON file (alpaca_data.json, 52k records).
        llava_path: LLaVA-Instruct JSON file (llava_instruct_150k.json, 158k conversations).
        image_root: folder of the LLaVA images (COCO train2017).
        template: prompt template, "lavin" (LaVIN) or "alpaca".
        val_size: hold out the last N records of each source (in file order) for the
            validation loss, so validation covers both modalities; 0 = no validation.
        limit_alpaca: train on the first N Alpaca records only; None = all.
        limit_llava: train on the first N LLaVA conversations only; None = all.
        max_seq_len: maximum tokens per sample; longer samples keep their beginning;
            samples left with no answer token are dropped.
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for validation; None = the per-device training batch.
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first malformed record; "skip" leaves bad
            records out and counts them per source and reason (``report``, logged).
        seed: seed of the training shuffle (single device; DDP's sampler uses the global seed).
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
    """

    def __init__(
        self,
        alpaca_path: str,
        llava_path: str,
        image_root: str,
        template: str = "lavin",
        val_size: int = 0,
        limit_alpaca: int | None = None,
        limit_llava: int | None = None,
        max_seq_len: int = 512,
        global_batch_size: int = 64,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        tokenizer: Any = None,
        on_bad_record: str = "error",
        seed: int = 0,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__(template, val_size, max_seq_len, global_batch_size, micro_batch_size, eval_batch_size,
                         num_workers, tokenizer, on_bad_record, seed, image_size, image_mean, image_std)
        self.alpaca_path = alpaca_path
        self.llava_path = llava_path
        self.image_root = image_root
        self.limit_alpaca = self._check_limit("limit_alpaca", limit_alpaca)
        self.limit_llava = self._check_limit("limit_llava", limit_llava)

    def read_sources(self) -> list[Source]:
        llava, llava_report = read_llava_instruct(self.llava_path, self.image_root, self.on_bad_record)
        return [
            Source("alpaca", self.alpaca_path, *read_alpaca(self.alpaca_path, self.on_bad_record), self.limit_alpaca),
            Source("llava", self.llava_path, llava, llava_report, self.limit_llava),
        ]


class PromptsDataModule(L.LightningDataModule):
    """Generation prompts from a JSONL file, for ``predict`` only.

    Each row is BOS + the template's prompt (no labels); a prompt longer than
    ``max_seq_len`` loses tokens from the left after BOS, so its end (the response
    header) survives. A record with an image gets ``has_image`` True and its pixels.
    ``records[pid]`` gives the parsed record ({"instruction", "input", "image"}) so a
    prediction writer can echo it next to the response. Not a GlobalBatchDataModule:
    nothing trains, so no global batch has to divide the world size.

    Args:
        path: JSONL file, one {"instruction": str, "input": str (optional), "image": str
            (optional, relative to the file's folder), "id": str (optional, default: the
            line number)} a line; blank lines are skipped, ids must be unique.
        template: prompt template, "alpaca" or "lavin"; use the one the model was trained with.
        max_seq_len: maximum tokens per prompt (BOS + prompt).
        eval_batch_size: prompts per device and batch.
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first malformed line; "skip" leaves bad lines
            out and counts them per reason (``report``, logged).
    """

    def __init__(
        self,
        path: str,
        template: str = "alpaca",
        max_seq_len: int = 512,
        eval_batch_size: int = 8,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        num_workers: int = 0,
        tokenizer: Any = None,
        on_bad_record: str = "error",
    ) -> None:
        super().__init__()
        if eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.path = path
        self.template = check_template(template)
        self.max_seq_len = check_max_seq_len(max_seq_len)
        self.eval_batch_size = eval_batch_size
        self.image_size = image_size
        self.transform = image_transform(image_size, image_mean, image_std)
        self.num_workers = num_workers
        self.tokenizer = tokenizer
        self.on_bad_record = check_on_bad_record(on_bad_record)
        self.records: dict[str, dict[str, str | None]] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self.dataset: ScienceQADataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        tokenizer = resolve_tokenizer(self)
        records, read = read_prompts(self.path, self.on_bad_record)
        _log_read(self.path, len(records), read)
        if not records:
            raise DataError(f"{self.path}: no prompts ({read.summary()}); {_PROMPTS}")
        self.records = {
            r.pid: {"instruction": r.turns[0][0], "input": r.input_text, "image": r.image and str(r.image)}
            for r in records  # image: the resolved path, or None
        }
        samples, counts = encode_records(records, tokenizer, self.template, self.max_seq_len,
                                         resolve_instruction_tokenizer(self))
        self.report = {"prompts": {"records": len(records), **read.summary()}, "predict": counts}
        _log_counts(f"prompts {self.path}", counts, self.max_seq_len)
        self.dataset = ScienceQADataset(samples, self.transform, self.image_size)

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            raise ConfigError("the prompts are not set up; call setup() first")
        return _loader(self.dataset, self.tokenizer, self.eval_batch_size, self.num_workers)
