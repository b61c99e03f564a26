"""The generic sample, dataset and collator, and the one encoder of BOS + prompt + answer + EOS.

Every data module turns its records into :class:`Sample` s (token ids, loss labels, an image
file), serves them through a :class:`SampleDataset` and batches them with :class:`Collator`
into the batch contract of :mod:`lavin_lightning.batch`.

:func:`encode_segments` lays out one row -- BOS, the prompt and answer segments, EOS after
each answer, the labels and the truncation -- for training rows (ScienceQA, instructions,
VQA, captions), generation prompts (test/predict, chat, the demos) and the multiple-choice
evaluator's scored rows alike. It takes token ids: the callers tokenise (prompt and answer
jointly as the LaVIN release does, or segment by segment), so each keeps its exact ids.

:class:`EpochShuffle` and :class:`ResumableLoader` give the training order: the usual shuffles,
reproducible for any epoch, and a position in the epoch that Lightning checkpoints, so that a
run resumed mid-epoch trains on exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import CheckpointError, ConfigError, DataError
from lavin_lightning.formats.images import image_error_message, load_image

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
    # Answers scored by log-likelihood instead of generated (test rows of an option-scoring
    # evaluation): the token ids of each candidate continuation of the prompt.
    candidates: tuple[tuple[int, ...], ...] | None = None


class SampleDataset(Dataset):
    """Tokenised samples plus image loading; text-only samples get a zero image.

    The data modules decode every image at setup; one that fails here all the same (changed or
    lost since) is a DataError naming the file and the sample's pid, not PIL's bare error.
    """

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
            try:
                image = load_image(s.image_path)
            except Exception as e:  # checked at setup: the file changed or the disk failed since
                raise DataError(image_error_message(s.image_path, s.pid, e)) from e
            pixels = self.transform(image)
        return {
            "pid": s.pid,
            "input_ids": torch.tensor(s.input_ids, dtype=torch.long),
            "labels": None if s.labels is None else torch.tensor(s.labels, dtype=torch.long),
            "pixel_values": pixels,
            "has_image": s.image_path is not None,
            "instruction_ids": None if s.instruction_ids is None else torch.tensor(s.instruction_ids, dtype=torch.long),
            "candidates": s.candidates,
        }


class Collator:
    """Pad a list of dataset items to the longest sequence of the batch.

    Right padding by default (training); the pad id fills ``input_ids``, IGNORE_INDEX fills
    ``labels``. Items without labels (test/predict) give a batch without a ``labels`` key;
    items with instruction ids add ``instruction_input_ids`` / ``instruction_attention_mask``;
    items with candidate answers add ``candidates`` (per sample, a list of token id lists).
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
        if items[0].get("candidates") is not None:
            batch["candidates"] = [[list(c) for c in item["candidates"]] for item in items]
        if items[0].get("instruction_ids") is not None:
            # Padded with 0 on the right whatever the LLM rows do: never attended.
            batch["instruction_input_ids"], batch["instruction_attention_mask"] = pad_sequences(
                [item["instruction_ids"] for item in items], 0)
        return batch


# --------------------------------------------------------------------------- training order


def _draw(generator: torch.Generator | None) -> int:
    """An int64 drawn as DataLoader and RandomSampler draw their seeds (None: torch's global RNG)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class EpochShuffle(DistributedSampler):
    """This process's share of an epoch's shuffled order, reproducible for any epoch.

    The orders are the usual ones. One process: PyTorch's ``DataLoader(shuffle=True)``: with a
    ``seed``, the e-th permutation of a generator seeded with it (each epoch first draws the
    worker processes' seed from it), replayed from the seed; without one, each epoch draws its
    worker seed and its order's seed from torch's global RNG as it starts. Several processes:
    Lightning's DistributedSampler, ``randperm(global seed + e)`` dealt out by rank (being one,
    Lightning keeps it instead of putting its own in its place).

    ``begin_epoch`` fixes the epoch's order (with the global draws a checkpoint kept, if any);
    the iteration after it leaves out the first ``start`` indices.

    With ``buckets``, the epoch's order (the same permutation) becomes length-bucketed batches
    (:class:`LengthBuckets`), as reproducible and resumable as the plain order.

    Args:
        dataset: the training samples.
        seed: the shuffle's seed on one process; None draws from the global RNG.
        num_replicas: training processes (the world size).
        rank: this process's rank.
        buckets: length bucketing of every epoch; None: the plain shuffled order.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None, num_replicas: int = 1, rank: int = 0,
                 buckets: LengthBuckets | None = None) -> None:
        global_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # what seed_everything set, as Lightning reads it
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=global_seed if num_replicas > 1 or seed is None else seed)
        # What fixes every epoch's order: a seed, or nothing (drawn from the global RNG).
        self.order_seed = self.seed if num_replicas > 1 or seed is not None else None
        self.drawn: list[int] | None = None  # this epoch's global draws (worker seed, order seed)
        self.start = 0
        self._order: list[int] | None = None
        if buckets is not None and len(buckets.lengths) != len(dataset):
            raise ConfigError(f"length buckets of {len(buckets.lengths)} samples for a dataset of {len(dataset)}")
        self.buckets = buckets

    def begin_epoch(self, drawn: list[int] | None = None) -> int:
        """Fix the order of the current epoch (``drawn``: its global draws, from a checkpoint);
        return the worker processes' base seed."""
        n = len(self.dataset)
        if self.num_replicas > 1:
            if self.buckets is None:
                self._order = list(super().__iter__())
                return self.seed + self.epoch
            # DistributedSampler's permutation and padding, bucketed before it is dealt out.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
            order += (order * math.ceil(self.total_size / n))[: self.total_size - n]
            self._order = self.buckets.share(order, self.num_replicas, self.rank, generator)
            return self.seed + self.epoch
        if self.order_seed is None:
            self.drawn = drawn or [_draw(None), _draw(None)]
            worker, order = self.drawn
            self._order = torch.randperm(n, generator=torch.Generator().manual_seed(order)).tolist()
        else:
            generator = torch.Generator().manual_seed(self.order_seed)
            for _ in range(self.epoch):  # what each epoch before drew: a worker seed, two permutations
                _draw(generator)
                torch.randperm(n, generator=generator)
                torch.randperm(n, generator=generator)  # RandomSampler's last (empty) slice draws one too
            worker = _draw(generator)
            self._order = torch.randperm(n, generator=generator).tolist()
        if self.buckets is not None:
            # The batches' order comes from a generator of the epoch's own (the shared one replays).
            mixed = (worker * 6364136223846793005 + 1442695040888963407) % 2**64
            self._order = self.buckets.share(self._order, 1, 0, torch.Generator().manual_seed(mixed))
        return worker

    def __iter__(self):
        if self._order is None:
            self.begin_epoch()
        order, self._order = self._order[self.start:], None
        self.start = 0
        return iter(order)


# --------------------------------------------------------------------------- length buckets


def micro_batch_sizes(total: int, num_replicas: int, batch_size: int) -> list[int]:
    """Sizes of the micro-batches of an epoch of ``total`` samples (a multiple of ``num_replicas``),
    global batch after global batch (``num_replicas`` micro-batches each): every process takes
    ``total / num_replicas`` samples in batches of ``batch_size``, its last one short."""
    full, rest = divmod(total // num_replicas, batch_size)
    return [batch_size] * (full * num_replicas) + [rest] * (num_replicas if rest else 0)


def process_share(micro_batches: list[list[int]], num_replicas: int, rank: int) -> list[int]:
    """The indices of process ``rank``: its micro-batch of every global batch, in order."""
    return [i for j in range(rank, len(micro_batches), num_replicas) for i in micro_batches[j]]


class LengthBuckets:
    """Training batches of similar length that keep both modalities in every batch.

    An epoch's shuffled order (the permutation an unbucketed epoch takes) is cut into pools of
    ``pool`` global batches. In a pool, the image-text samples and the text-only samples are
    each sorted by length, and the pool's i-th micro-batch takes the i-th slice of both lists,
    so every batch holds the two modalities in the pool's proportion (to one sample): a
    modality whose samples are longer or shorter is spread over the batches instead of filling
    batches of its own. Within a batch the samples keep their shuffled order. Global batches
    (one micro-batch per process, neighbours in length, so that processes wait little for
    each other) are shuffled with the epoch's generator; a short last global batch stays last.

    Args:
        lengths: tokens per sample.
        has_image: whether each sample is image-text; None: one modality.
        batch_size: the per-process micro-batch (what the DataLoader batches).
        pool: global batches per pool: more pads less, and makes batches less random.
    """

    def __init__(self, lengths: Sequence[int], has_image: Sequence[bool] | None = None, batch_size: int = 1,
                 pool: int = 64) -> None:
        if batch_size < 1 or pool < 1:
            raise ConfigError(f"length buckets need batch_size >= 1 and pool >= 1, got {batch_size} and {pool}")
        self.lengths = list(lengths)
        self.has_image = [bool(x) for x in has_image] if has_image is not None else [False] * len(self.lengths)
        if len(self.has_image) != len(self.lengths):
            raise ConfigError(f"{len(self.has_image)} modalities for {len(self.lengths)} lengths")
        self.batch_size = batch_size
        self.pool = pool

    def layout(self) -> dict[str, int]:
        return {"pool": self.pool}

    def _mixed(self, members: list[int], sizes: list[int]) -> list[list[int]]:
        """``members`` as micro-batches of ``sizes``, ascending in length, each with both modalities."""
        rank = {index: k for k, index in enumerate(members)}
        images = sorted((i for i in members if self.has_image[i]), key=lambda i: (self.lengths[i], rank[i]))
        texts = sorted((i for i in members if not self.has_image[i]), key=lambda i: (self.lengths[i], rank[i]))
        batches, placed, taken_images, taken_texts = [], 0, 0, 0
        for size in sizes:
            placed += size
            images_until = placed * len(images) // len(members)
            texts_until = taken_texts + size - (images_until - taken_images)
            batch = images[taken_images:images_until] + texts[taken_texts:texts_until]
            batches.append(sorted(batch, key=rank.__getitem__))
            taken_images, taken_texts = images_until, texts_until
        return batches

    def share(self, order: list[int], num_replicas: int, rank: int, generator: torch.Generator) -> list[int]:
        """Process ``rank``'s indices of an epoch whose shuffled order (padded to a multiple of
        ``num_replicas``, as DistributedSampler pads) is ``order``."""
        sizes = micro_batch_sizes(len(order), num_replicas, self.batch_size)
        n_global = len(sizes) // num_replicas
        n_full = n_global - (bool(sizes) and sizes[-1] != self.batch_size)
        groups: list[list[list[int]]] = []
        start = 0
        # Pools of full global batches; a short last one joins the last pool (it stays last).
        bounds = [[first, min(first + self.pool, n_full)] for first in range(0, n_full, self.pool)] or [[0, 0]]
        bounds[-1][1] = n_global
        for first, end in bounds:
            micro = sizes[first * num_replicas: end * num_replicas]
            members = order[start: start + sum(micro)]
            start += len(members)
            batches = self._mixed(members, micro)
            groups += [batches[k: k + num_replicas] for k in range(0, len(batches), num_replicas)]
        full, last = groups[:n_full], groups[n_full:]
        shuffled = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()] + last
        return process_share([batch for group in shuffled for batch in group], num_replicas, rank)


class LengthOrder(DistributedSampler):
    """Evaluation batches of similar length: the samples sorted by length (longest first: a batch
    that does not fit in memory fails at once) and cut into global batches, every process taking
    its micro-batch of each; as DistributedSampler, a process's share is padded by repeating
    samples (here the shortest) so that every process runs as many batches.

    Args:
        dataset: the samples.
        lengths: tokens per sample.
        batch_size: the per-process batch.
        num_replicas: processes (the world size).
        rank: this process's rank.
    """

    def __init__(self, dataset: Dataset, lengths: Sequence[int], batch_size: int, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        if len(lengths) != len(dataset):
            raise ConfigError(f"{len(lengths)} lengths for a dataset of {len(dataset)}")
        n = len(lengths)
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        order += [order[n - 1 - k % n] for k in range(self.total_size - n)]
        batches, start = [], 0
        for size in micro_batch_sizes(self.total_size, num_replicas, batch_size):
            batches.append(order[start: start + size])
            start += size
        self.indices = process_share(batches, num_replicas, rank)

    def __iter__(self):
        return iter(self.indices)


class ResumableLoader(DataLoader):
    """The training DataLoader, whose position in the epoch is part of every Lightning checkpoint.

    Lightning saves ``state_dict()`` of a training loader that has one into each checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and hands it to ``load_state_dict()`` when
    ``fit`` resumes. The state is the epoch, the number of batches this loader has *yielded* in
    it -- what the training loop consumed; worker processes read the sampler ahead -- and the
    epoch's global draws; the resumed iteration of that epoch leaves those batches out. A
    checkpoint of another epoch (one saved at an epoch's end) resumes at the next one's start.

    Args:
        dataset: the training samples.
        sampler: an :class:`EpochShuffle` (a keyword, so that Lightning can put its own in place).
        accumulation: micro batches per optimizer step; a checkpoint saved between two
            optimizer steps lacks the gradients accumulated so far, and resuming from it warns.
        **kwargs: DataLoader's other arguments (batch_size, collate_fn, workers, generator, ...).
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochShuffle, accumulation: int = 1, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.accumulation = accumulation
        self.epoch = 0  # the epoch of the current (or last) iteration
        self.batches = 0  # batches of it yielded so far, those left out on resuming included
        self._resume: dict[str, Any] | None = None  # a checkpoint's state, for the next iteration

    def __iter__(self):
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffle):  # Lightning put its own in place (overfit_batches)
            yield from super().__iter__()
            return
        resume, self._resume = self._resume, None
        resumed = resume is not None and resume["epoch"] == sampler.epoch
        self.epoch, self.batches = sampler.epoch, resume["batches"] if resumed else 0
        worker_seed = sampler.begin_epoch(resume["drawn"] if resumed else None)
        sampler.start = self.batches * self.batch_size
        if self.generator is not None:
            self.generator.manual_seed(worker_seed)
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def _layout(self) -> dict[str, Any]:
        """What must be the same for a saved position to mean the same samples."""
        buckets = self.sampler.buckets
        return {"batch_size": self.batch_size, "processes": self.sampler.num_replicas, "samples": len(self.dataset),
                "seed": self.sampler.order_seed, "length_buckets": None if buckets is None else buckets.layout()}

    def state_dict(self) -> dict[str, Any]:
        if not isinstance(self.sampler, EpochShuffle):
            return {}
        return {"epoch": self.epoch, "batches": self.batches, "drawn": self.sampler.drawn, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not isinstance(self.sampler, EpochShuffle):
            return
        wrong = [f"{key}: checkpoint {state.get(key)!r}, now {value!r}"
                 for key, value in self._layout().items() if state.get(key) != value]
        if wrong:
            raise CheckpointError("the checkpoint's place in the training data does not fit this run (per-process "
                                  "batch size, processes, training samples and shuffle seed must be the same):\n  "
                                  + "\n  ".join(wrong))
        if state["batches"] % self.accumulation:
            warnings.warn(f"the checkpoint was saved after {state['batches']} micro batches of epoch "
                          f"{state['epoch']}, between two optimizer steps (accumulation {self.accumulation}): the "
                          "gradients accumulated since the last step are not in it, so the resumed run differs "
                          "from an uninterrupted one", stacklevel=2)
        self._resume = state
