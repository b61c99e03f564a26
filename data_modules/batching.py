"""The generic sample, dataset and collator, and the one encoder of BOS + prompt + answer + EOS.

Every data module turns its records into :class:`Sample` s (token ids, loss labels, an image
file), serves them through a :class:`SampleDataset` and batches them with :class:`Collator`
into the batch contract of :mod:`lavin_lightning.batch`.

:func:`encode_segments` lays out one row -- BOS, the prompt and answer segments, EOS after
each answer, the labels and the truncation -- for training rows (ScienceQA, instructions,
VQA, captions), generation prompts (test/predict, chat, the demos) and the multiple-choice
evaluator's scored rows alike. It takes token ids: the callers tokenise (prompt and answer
jointly as the LaVIN release does, or segment by segment), so each keeps its exact ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError

# How a row longer than max_length is cut (generation prompts always lose prompt tokens from
# the left, after BOS, so that their end -- the response header -- survives):
#   "keep_start"  the row keeps its beginning, as LLaMA-Adapter does; answers may be cut or lost
#   "cut_prompt"  the last answer is shortened down to min_answer_tokens (never, when None),
#                 then the prompt before it loses tokens from the left (after BOS)
TRUNCATIONS = ("keep_start", "cut_prompt")


class Encoded(NamedTuple):
    """One encoded row; ``labels`` is None for a generation prompt (the last segment is a prompt)."""

    input_ids: list[int]
    labels: list[int] | None
    truncated: bool  # the row was longer than max_length
    prompt_cut: bool  # the prompt lost tokens from its left end


def _lay_out(segments: Sequence[tuple[Sequence[int], bool]], eos_id: int | None) -> tuple[list[int], list[int]]:
    """Ids and labels of segments in order: EOS after each answer; answers (and their EOS) labelled."""
    ids: list[int] = []
    labels: list[int] = []
    for segment, is_answer in segments:
        segment = list(segment)
        ids += segment
        labels += segment if is_answer else [IGNORE_INDEX] * len(segment)
        if is_answer and eos_id is not None:
            ids.append(eos_id)
            labels.append(eos_id)
    return ids, labels


def encode_segments(
    segments: Sequence[tuple[Sequence[int], bool]],
    bos_id: int | None,
    eos_id: int | None,
    max_length: int | None = None,
    truncation: str = "keep_start",
    min_answer_tokens: int | None = None,
    where: str = "the row",
) -> Encoded:
    """BOS (if any) + ``(token ids, is_answer)`` segments, EOS after every answer (``eos_id`` None: none).

    Labels are IGNORE_INDEX on BOS and prompts and equal the ids on answers and their EOS
    (not shifted). If the last segment is a prompt, the row is a generation prompt: labels
    None, and a row longer than ``max_length`` loses tokens after BOS so that its end survives.
    Otherwise ``truncation`` (see :data:`TRUNCATIONS`) says how a too-long row is cut; with
    "cut_prompt" the last answer must keep a token before it (BOS, or a prompt token), else a
    ConfigError naming ``where``. ``max_length`` None: no limit.
    """
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}")
    head = [] if bos_id is None else [bos_id]
    if not segments or not segments[-1][1]:  # a generation prompt
        ids, _ = _lay_out(segments, eos_id)
        ids = head + ids
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids = head + ids[len(ids) - (max_length - len(head)):]
        return Encoded(ids, None, truncated, truncated)
    if truncation == "keep_start":
        ids, labels = _lay_out(segments, eos_id)
        ids, labels = head + ids, [IGNORE_INDEX] * len(head) + labels
        truncated = max_length is not None and len(ids) > max_length
        return Encoded(ids[:max_length], labels[:max_length], truncated, False)

    prompt, prompt_labels = _lay_out(segments[:-1], eos_id)
    answer, tail = list(segments[-1][0]), [] if eos_id is None else [eos_id]
    truncated = prompt_cut = False
    if max_length is not None:
        budget = max_length - len(head) - len(tail)  # room for prompt and answer tokens
        truncated = len(prompt) + len(answer) > budget
        if truncated and min_answer_tokens is not None:
            answer = answer[: min(len(answer), max(min_answer_tokens, budget - len(prompt)))]
        room = budget - len(answer)  # for the prompt
        # The first answer token is predicted from the token before it: BOS, or a prompt token.
        if room < (0 if head else 1):
            raise ConfigError(f"{where}: max_length={max_length} leaves no room for its {len(answer)} answer tokens "
                              "and a token before them")
        if room < len(prompt):
            prompt, prompt_labels = prompt[len(prompt) - room:], prompt_labels[len(prompt) - room:]
            prompt_cut = True
    ids = head + prompt + answer + tail
    labels = [IGNORE_INDEX] * len(head) + prompt_labels + answer + tail
    return Encoded(ids, labels, truncated, prompt_cut)


def eos_token_id(tokenizer) -> int:
    """The tokenizer's EOS id; a ConfigError without one (answers end with EOS)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token_id; answers end with EOS")
    return tokenizer.eos_token_id


def pad_token_id(tokenizer) -> int:
    """The id that fills padding: the pad token, else EOS, else 0 (pads are masked and never labelled)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


# --------------------------------------------------------------------------- padding


def pad_sequences(
    rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``, both (B, T) long: the rows padded with ``pad_id`` to the longest."""
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(length - len(row), length)
        ids[b, span] = torch.as_tensor(row, dtype=torch.long)
        mask[b, span] = 1
    return ids, mask


def collate_sequences(
    input_ids: Sequence[Sequence[int] | torch.Tensor],
    labels: Sequence[Sequence[int] | torch.Tensor] | None,
    pad_id: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (and ``labels``, IGNORE_INDEX on padding) of the batch contract."""
    ids, mask = pad_sequences(input_ids, pad_id, padding_side)
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = pad_sequences(labels, IGNORE_INDEX, padding_side)[0]
    return batch


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One tokenised record; ``labels`` is None for test/predict (a generation prompt)."""

    pid: str
    input_ids: list[int]
    labels: list[int] | None
    image_path: Path | None
    # The instruction alone, tokenised for a model's instruction encoder (InstructBLIP's Q-Former).
    instruction_ids: list[int] | None = None


class SampleDataset(Dataset):
    """Tokenised samples plus image loading; text-only samples get a zero image."""

    def __init__(self, samples: list[Sample], transform, image_size: int) -> None:
        self.samples = samples
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        if s.image_path is None:
            # Text-only samples feed a zero image that the model never uses.
            pixels = torch.zeros(3, self.image_size, self.image_size)
        else:
            with Image.open(s.image_path) as image:
                pixels = self.transform(image)
        return {
            "pid": s.pid,
            "input_ids": torch.tensor(s.input_ids, dtype=torch.long),
            "labels": None if s.labels is None else torch.tensor(s.labels, dtype=torch.long),
            "pixel_values": pixels,
            "has_image": s.image_path is not None,
            "instruction_ids": None if s.instruction_ids is None else torch.tensor(s.instruction_ids, dtype=torch.long),
        }


class Collator:
    """Pad a list of dataset items to the longest sequence of the batch.

    Right padding by default (training); the pad id fills ``input_ids``, IGNORE_INDEX fills
    ``labels``. Items without labels (test/predict) give a batch without a ``labels`` key;
    items with instruction ids add ``instruction_input_ids`` / ``instruction_attention_mask``.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        with_labels = items[0]["labels"] is not None
        batch = collate_sequences([item["input_ids"] for item in items],
                                  [item["labels"] for item in items] if with_labels else None,
                                  self.pad_token_id, self.padding_side)
        batch.update({
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "has_image": torch.tensor([item["has_image"] for item in items], dtype=torch.bool),
            "pids": [item["pid"] for item in items],
        })
        if items[0].get("instruction_ids") is not None:
            # Padded with 0 on the right whatever the LLM rows do: never attended.
            batch["instruction_input_ids"], batch["instruction_attention_mask"] = pad_sequences(
                [item["instruction_ids"] for item in items], 0)
        return batch
