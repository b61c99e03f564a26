"""Instruction-tuning data: Alpaca, LLaVA-Instruct, their mixture, and prompt files for predict.

The files are read by :mod:`lavin_lightning.formats.instructions` (Alpaca, LLaVA-Instruct,
prompt JSONL). Every record is validated and tokenised once in ``setup()``, so a bad record
fails (or, with ``on_bad_record="skip"``, is left out and counted) before training starts.
Batches follow the project's contract: ``input_ids``, ``attention_mask``, ``labels``
(train/val only), ``pixel_values``, ``has_image``, ``pids``. The "<image>" marker is removed from the text: images
reach the models through ``pixel_values`` and ``has_image`` only.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from torch.utils.data import DataLoader

from data_modules.base import ConversationDataModule, SampleDataModule, log_counts, log_rank_zero, log_skipped
from data_modules.templates import check_max_seq_len, check_template, encode_records
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.instructions import (
    PROMPTS_FORMAT,
    InstructRecord,
    read_alpaca,
    read_llava_instruct,
    read_prompts,
)
from lavin_lightning.formats.records import ReadReport, check_on_bad_record


def _log_read(path: str, n_records: int, read: ReadReport) -> None:
    log_skipped(path, f"{n_records} records", read)
    if read.unanswered_turns:
        log_rank_zero(logging.INFO, "%s: dropped %d trailing questions without an answer", path, read.unanswered_turns)


def _check_limit(name: str, limit: int | None) -> int | None:
    if limit is not None and limit < 1:
        raise ConfigError(f"{name} must be >= 1 or None (all records), got {limit}")
    return limit


class Source(NamedTuple):
    """The validated records of one file, in file order, and how many train on."""

    name: str
    path: str
    records: list[InstructRecord]
    report: ReadReport
    limit: int | None


class InstructionDataModule(ConversationDataModule):
    """Base of the instruction-tuning data modules: sources -> train (+ val) datasets.

    Subclasses implement :meth:`read_sources`. Of each source, the last ``val_size``
    records are held out for validation, and the first ``limit`` of the rest train.
    ``report`` holds per source the records read, skipped (per reason) and the dropped
    unanswered turns, and per role (train/val) the sample, truncation and drop counts.

    Args:
        val_size: hold out the last N records of each source (in file order) for the
            validation loss; 0 = no validation.
        global_batch_size: training samples per optimizer step over all devices.
        **kwargs: the options of :class:`~data_modules.base.ConversationDataModule` (``template``,
            ``max_seq_len``, ``on_bad_record``, ``seed``) and of its bases (``micro_batch_size``,
            ``eval_batch_size``, ``num_workers``, ``tokenizer``, ``instruction_tokenizer``, ``image_*``).
    """

    def __init__(self, val_size: int = 0, global_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(global_batch_size=global_batch_size, **kwargs)
        if val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {val_size}")
        self.val_size = val_size
        self.report: dict[str, dict[str, Any]] = {}
        if val_size:
            # Lightning validates only if val_dataloader is overridden; bound per instance so
            # that without held-out data fit simply skips validation.
            self.val_dataloader = self._val_dataloader

    def read_sources(self) -> list[Source]:
        raise NotImplementedError

    def _usable_records(self, source: Source, records: list[InstructRecord], limit: int | None = None) -> list:
        # Named as the reader names them: the pids are "<source>-<index in the file>".
        return self._usable(records, lambda r: r.image, lambda r: f"{source.path}: record {r.pid.rpartition('-')[2]}",
                            source.report, limit)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        if self.datasets:  # read and tokenised once, e.g. fit then validate
            return
        self.require_tokenizer()
        roles = {"train": [], "val": []}
        sources = self.read_sources()
        for source in sources:
            n = len(source.records)
            if not n:
                raise DataError(f"{source.path}: no usable records ({source.report.summary()})")
            if self.val_size >= n:
                raise ConfigError(f"val_size {self.val_size} leaves no training records: {source.name} has {n}")
            # The records served whose image decodes (checked now, before any batch): of the training
            # part the first `limit` such, of the held-out part all such.
            roles["train"] += self._usable_records(source, source.records[: n - self.val_size], source.limit)
            roles["val"] += self._usable_records(source, source.records[n - self.val_size:])
            self.report[source.name] = {"records": n, **source.report.summary()}
            _log_read(source.path, n, source.report)
        for role, records in roles.items():
            if role == "val" and not self.val_size:
                continue
            samples, counts = self._encode(role, records)
            if not samples:
                files = ", ".join(str(source.path) for source in sources)
                raise DataError(f"{files}: no {role} samples left (every one lost its answer to max_seq_len="
                                f"{self.max_seq_len}, or was skipped): {self.report}")
            self.report[role] = counts
            self._serve(role, samples)


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
        limit: train on the first N records only (quick runs); None = all.
        **kwargs: the options of :class:`InstructionDataModule` (``val_size``, ``max_seq_len``,
            batch sizes, ``on_bad_record``, ``seed``, ``tokenizer``, ...).
    """

    def __init__(self, path: str, template: str = "alpaca", limit: int | None = None, **kwargs: Any) -> None:
        # Text only: a 1-pixel placeholder image per row, never read (has_image is False).
        super().__init__(template=template, image_size=1, **kwargs)
        self.path = path
        self.limit = _check_limit("limit", limit)

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
        limit: train on the first N records only (quick runs); None = all.
        **kwargs: the options of :class:`InstructionDataModule` (``template``, ``val_size``,
            ``max_seq_len``, batch sizes, ``on_bad_record`` -- "error" also stops at a missing
            image file --, ``seed``, ``image_*``, ``tokenizer``, ...).
    """

    def __init__(self, path: str, image_root: str, limit: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.image_root = image_root
        self.limit = _check_limit("limit", limit)

    def read_sources(self) -> list[Source]:
        records, report = read_llava_instruct(self.path, self.image_root, self.on_bad_record)
        return [Source("llava", self.path, records, report, self.limit)]


class InstructionMixtureDataModule(InstructionDataModule):
    """LaVIN's chatbot data: Alpaca (text-only) and LLaVA-Instruct (image-text) in one training set.

    The two sources are shuffled together, so batches mix modalities (mixture-of-modality
    training). Samples are encoded as by :class:`AlpacaDataModule` and
    :class:`LLaVAInstructDataModule`; pids are ``alpaca-<index>`` and ``llava-<index>``.
    ``val_size`` holds out the last N records of each source, so validation covers both
    modalities.

    Args:
        alpaca_path: Alpaca JSON file (alpaca_data.json, 52k records).
        llava_path: LLaVA-Instruct JSON file (llava_instruct_150k.json, 158k conversations).
        image_root: folder of the LLaVA images (COCO train2017).
        limit_alpaca: train on the first N Alpaca records only; None = all.
        limit_llava: train on the first N LLaVA conversations only; None = all.
        **kwargs: the options of :class:`InstructionDataModule` (``template``, ``val_size``,
            ``max_seq_len``, batch sizes, ``on_bad_record``, ``seed``, ``image_*``, ``tokenizer``, ...).
    """

    def __init__(
        self,
        alpaca_path: str,
        llava_path: str,
        image_root: str,
        limit_alpaca: int | None = None,
        limit_llava: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.alpaca_path = alpaca_path
        self.llava_path = llava_path
        self.image_root = image_root
        self.limit_alpaca = _check_limit("limit_alpaca", limit_alpaca)
        self.limit_llava = _check_limit("limit_llava", limit_llava)

    def read_sources(self) -> list[Source]:
        llava, llava_report = read_llava_instruct(self.llava_path, self.image_root, self.on_bad_record)
        return [
            Source("alpaca", self.alpaca_path, *read_alpaca(self.alpaca_path, self.on_bad_record), self.limit_alpaca),
            Source("llava", self.llava_path, llava, llava_report, self.limit_llava),
        ]


class PromptsDataModule(SampleDataModule):
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
        on_bad_record: "error" stops at the first malformed line; "skip" leaves bad lines
            out and counts them per reason (``report``, logged).
        **kwargs: the worker, tokenizer and image options of :class:`~data_modules.base.SampleDataModule`.
    """

    def __init__(
        self,
        path: str,
        template: str = "alpaca",
        max_seq_len: int = 512,
        eval_batch_size: int = 8,
        on_bad_record: str = "error",
        **kwargs: Any,
    ) -> None:
        if eval_batch_size is None:
            raise ConfigError("eval_batch_size must be >= 1, got None")
        super().__init__(eval_batch_size=eval_batch_size, **kwargs)
        self.path = path
        self.template = check_template(template)
        self.max_seq_len = check_max_seq_len(max_seq_len)
        self.on_bad_record = check_on_bad_record(on_bad_record)
        self.records: dict[str, dict[str, str | None]] = {}
        self.report: dict[str, dict[str, Any]] = {}

    @property
    def dataset(self):
        """The prompts' dataset (None before setup)."""
        return self.datasets.get("predict")

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        tokenizer = self.require_tokenizer()
        records, read = read_prompts(self.path, self.on_bad_record)
        # Their images decode (checked now, before any batch).
        records = self._usable(records, lambda r: r.image, lambda r: f"{self.path}: id {r.pid!r}", read)
        _log_read(self.path, len(records), read)
        if not records:
            raise DataError(f"{self.path}: no prompts ({read.summary()}); expected {PROMPTS_FORMAT}")
        self.records = {
            r.pid: {"instruction": r.turns[0][0], "input": r.input_text, "image": r.image and str(r.image)}
            for r in records  # image: the resolved path, or None
        }
        samples, counts = encode_records(records, tokenizer, self.template, self.max_seq_len,
                                         self.instruction_tokenizer)
        self.report = {"prompts": {"records": len(records), **read.summary()}, "predict": counts}
        log_counts(f"prompts {self.path}", counts, self.max_seq_len)
        self._serve("predict", samples)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
