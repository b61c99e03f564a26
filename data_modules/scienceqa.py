"""ScienceQA: dataset, collate and LightningDataModule (LaVIN's training recipe).

Reads the public layout of lupantech/ScienceQA::

    <data_root>/problems.json                    {pid: problem}
    <data_root>/pid_splits.json                  {split: [pid, ...]}
    <data_root>/images/<split>/<pid>/image.png   for problems whose "image" is set
    <data_root>/captions.json                    {"captions": {pid: text}} (optional)

Optionally, text-only instructions in the Alpaca format join the training set
(``text_instructions``), as in LaVIN's mixture-of-modality training.

All problems of a split are validated and tokenised once in ``setup()``, so a bad record
fails before training starts and the dataset only has to load images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data_modules.base import IMAGENET_MEAN, IMAGENET_STD, GlobalBatchDataModule, image_transform
from data_modules.prompts import parse_prompt_format, scienceqa_prompt
from data_modules.templates import instruction_prompt
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.scienceqa import read_problems
from lavin_lightning.io import read_json

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

_LAYOUT = (
    "expected the public ScienceQA layout (lupantech/ScienceQA, data/scienceqa): "
    "<data_root>/problems.json, <data_root>/pid_splits.json, "
    "<data_root>/images/<split>/<pid>/image.png and optionally <data_root>/captions.json"
)

_REQUIRED_FIELDS = ("question", "choices", "answer")


# --------------------------------------------------------------------------- sequences


def build_train_sequence(
    prompt_ids: list[int],
    full_ids: list[int],
    bos_id: int | None,
    eos_id: int,
    max_seq_len: int,
    min_answer_tokens: int,
) -> tuple[list[int], list[int], bool, bool]:
    """Return ``(input_ids, labels, truncated, prompt_cut)`` for one training sample.

    ``full_ids`` tokenises prompt + target; as in the release, its first
    ``len(prompt_ids)`` tokens count as prompt (loss-masked) and the rest plus EOS are
    supervised. When the sequence exceeds ``max_seq_len`` we do not cut the end (which
    can delete the whole answer, as the release does) but first shorten the answer's
    tail down to ``min_answer_tokens``, then drop prompt tokens from the left so that
    the prompt keeps its end ("Options: ... Response:").
    """
    n_prompt = len(prompt_ids)
    prompt, answer = list(full_ids[:n_prompt]), list(full_ids[n_prompt:])
    head = [bos_id] if bos_id is not None else []
    budget = max_seq_len - len(head) - 1  # room for text tokens between BOS and EOS
    truncated = prompt_cut = False
    if len(prompt) + len(answer) > budget:
        truncated = True
        keep_answer = min(len(answer), max(min_answer_tokens, budget - len(prompt)))
        answer = answer[:keep_answer]
        keep_prompt = budget - len(answer)
        if keep_prompt < len(prompt):
            if keep_prompt < 1:
                raise ConfigError(
                    f"max_seq_len {max_seq_len} leaves no room for the prompt next to "
                    f"{len(answer)} answer tokens; raise max_seq_len or lower min_answer_tokens"
                )
            prompt = prompt[-keep_prompt:]
            prompt_cut = True
    input_ids = head + prompt + answer + [eos_id]
    labels = [IGNORE_INDEX] * (len(head) + len(prompt)) + answer + [eos_id]
    return input_ids, labels, truncated, prompt_cut


def build_prompt_sequence(
    prompt_ids: list[int], bos_id: int | None, max_seq_len: int
) -> tuple[list[int], bool]:
    """BOS + prompt for generation; a too-long prompt loses tokens from the left."""
    head = [bos_id] if bos_id is not None else []
    keep = max_seq_len - len(head)
    truncated = len(prompt_ids) > keep
    prompt = list(prompt_ids[-keep:]) if truncated else list(prompt_ids)
    return head + prompt, truncated


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class ScienceQASample:
    """One tokenised problem; ``labels`` is None for test/predict (prompt only)."""

    pid: str
    input_ids: list[int]
    labels: list[int] | None
    image_path: Path | None
    n_choices: int
    # The instruction alone, tokenised for a model's instruction encoder (InstructBLIP's Q-Former).
    instruction_ids: list[int] | None = None


class ScienceQADataset(Dataset):
    """Tokenised samples plus image loading; text-only samples get a zero image."""

    def __init__(self, samples: list[ScienceQASample], transform, image_size: int) -> None:
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
            "n_choices": s.n_choices,
            "instruction_ids": None if s.instruction_ids is None else torch.tensor(s.instruction_ids, dtype=torch.long),
        }


class ScienceQACollator:
    """Pad a list of dataset items to the longest sequence of the batch.

    Right padding by default (training); the pad id fills ``input_ids``, -100 fills
    ``labels``. Items without labels (test/predict) give a batch without a ``labels`` key.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(item["input_ids"]) for item in items)
        with_labels = items[0]["labels"] is not None
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            span = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[row, span] = item["input_ids"]
            attention_mask[row, span] = 1
            if with_labels:
                labels[row, span] = item["labels"]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "has_image": torch.tensor([item["has_image"] for item in items], dtype=torch.bool),
            "pids": [item["pid"] for item in items],
            "n_choices": torch.tensor([item["n_choices"] for item in items], dtype=torch.long),
        }
        if with_labels:
            batch["labels"] = labels
        if items[0].get("instruction_ids") is not None:
            batch["instruction_input_ids"], batch["instruction_attention_mask"] = _pad_right(
                [item["instruction_ids"] for item in items])
        return batch


def _pad_right(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad 0, never attended) and their attention mask."""
    ids = torch.zeros((len(rows), max(len(r) for r in rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, r in enumerate(rows):
        ids[row, : len(r)] = r
        mask[row, : len(r)] = 1
    return ids, mask


# --------------------------------------------------------------------------- data module


def read_text_instructions(path: Path) -> list[tuple[str, str]]:
    """``(prompt, output)`` per record of an Alpaca-format JSON file, all checked up front."""
    from data_modules.instruct import read_alpaca  # instruct builds on this module's dataset

    records, _ = read_alpaca(path)
    return [(instruction_prompt(r.turns[0][0], r.input_text), r.turns[0][1]) for r in records]


class ScienceQADataModule(GlobalBatchDataModule):
    """ScienceQA for LaVIN-style instruction tuning (prompt -> "The answer is X. ...").

    Batches (train/val): ``input_ids``, ``attention_mask``, ``labels`` (answer + EOS
    supervised, -100 elsewhere), ``pixel_values``, ``has_image``, ``pids``,
    ``n_choices``. Test/predict batches hold BOS + prompt only and no ``labels``.

    Args:
        data_root: ScienceQA folder with problems.json, pid_splits.json,
            images/<split>/<pid>/image.png and (for use_caption) captions.json.
        prompt_format: "<input>-<output>" prompt format for train/val, e.g. QCM-ALE
            (LaVIN), QCM-A, CQM-A, QCM-LEA.
        test_prompt_format: prompt format for test/predict; only its input part matters
            (the target is not used). Default: the same as prompt_format.
        use_caption: append the image caption from captions.json to the context
            (the text-only ablation).
        use_images: False treats every problem as text-only (no image is read; LaVIN's
            Table 2 text-only row combines it with use_caption).
        train_split: pid_splits.json split used for training.
        val_split: split used for validation (loss on answers).
        test_split: split used by ``test`` (generation and scoring).
        predict_split: split used by ``predict``.
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for val/test/predict; None = the per-device
            training batch.
        max_seq_len: maximum text tokens per sample (BOS + prompt + answer + EOS), not
            counting the modality token, "Image: " prefix and visual slots.
        min_answer_tokens: when truncating, keep at least this many answer tokens
            (cut the prompt from the left instead).
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
        limit_train: use only the first N pids of the train split (quick runs).
        limit_val: use only the first N pids of the val split.
        limit_test: use only the first N pids of the test split (predict is not limited).
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer``
            at setup.
        text_instructions: JSON file of text-only instructions in the Alpaca format (a
            list of {"instruction", "input" (optional), "output"}). Every record joins the
            training set (not val/test, not cut by limit_train) as a text-only sample with
            prompt "Instruction: ...\n[Input: ...\n]Response:" and target "output",
            shuffled with the ScienceQA problems so that batches mix modalities (LaVIN's
            mixture-of-modality training). None = ScienceQA only.
    """

    def __init__(
        self,
        data_root: str,
        prompt_format: str = "QCM-ALE",
        test_prompt_format: str | None = None,
        use_caption: bool = False,
        use_images: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_split: str = "test",
        global_batch_size: int = 32,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        max_seq_len: int = 512,
        min_answer_tokens: int = 16,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        num_workers: int = 0,
        tokenizer: Any = None,
        text_instructions: str | None = None,
    ) -> None:
        super().__init__(global_batch_size, micro_batch_size, num_workers)
        # Check formats and sizes now so that a bad config fails before any data is read.
        parse_prompt_format(prompt_format)
        self.test_prompt_format = test_prompt_format or prompt_format
        parse_prompt_format(self.test_prompt_format)
        if min_answer_tokens < 1:
            raise ConfigError(f"min_answer_tokens must be >= 1, got {min_answer_tokens}")
        if max_seq_len < min_answer_tokens + 3:
            raise ConfigError(
                f"max_seq_len {max_seq_len} must be at least min_answer_tokens "
                f"({min_answer_tokens}) + 3 (BOS, EOS and one prompt token)"
            )
        self.data_root = Path(data_root)
        self.prompt_format = prompt_format
        self.use_caption = use_caption
        self.use_images = use_images
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test, "predict": None}
        self.eval_batch_size = eval_batch_size
        self.max_seq_len = max_seq_len
        self.min_answer_tokens = min_answer_tokens
        self.image_size = image_size
        self.transform = image_transform(image_size, image_mean, image_std)
        self.tokenizer = tokenizer
        self.text_instructions = text_instructions

        self.problems: dict[str, dict] | None = None
        self.pid_splits: dict[str, list[str]] | None = None
        self.captions: dict[str, str] = {}
        self.datasets: dict[str, ScienceQADataset] = {}
        self.truncation_report: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- files

    def load(self) -> None:
        """Read problems.json, pid_splits.json (and captions.json); idempotent."""
        if self.problems is not None:
            return
        problems = read_problems(self.data_root)  # the scorer's reader: same checks, same errors
        splits_path = self.data_root / "pid_splits.json"
        splits = read_json(splits_path, f"the ScienceQA split lists; {_LAYOUT}")
        if not isinstance(splits, dict):
            raise DataError(f"{splits_path}: expected an object {{split: [pid, ...]}}; {_LAYOUT}")
        if self.use_caption:
            captions_path = self.data_root / "captions.json"
            captions = read_json(captions_path, 'image captions {"captions": {pid: text}} (use_caption=True)')
            if not isinstance(captions, dict) or not isinstance(captions.get("captions"), dict):
                raise DataError(f'{captions_path}: expected {{"captions": {{pid: text}}}}')
            self.captions = captions["captions"]
        self.problems = {str(pid): p for pid, p in problems.items()}
        self.pid_splits = {name: [str(pid) for pid in pids] for name, pids in splits.items()}

    def split_pids(self, split: str) -> list[str]:
        """The pids of a pid_splits.json split, in file order."""
        self.load()
        if split not in self.pid_splits:
            raise ConfigError(
                f"split {split!r} is not in {self.data_root / 'pid_splits.json'}; "
                f"available: {sorted(self.pid_splits)}"
            )
        return self.pid_splits[split]

    # ---------------------------------------------------------------- setup

    def _resolve_tokenizer(self):
        if self.tokenizer is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.tokenizer = getattr(module, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError(
                "ScienceQADataModule needs a tokenizer: pass tokenizer=... or attach it to a "
                "Trainer whose LightningModule has a `tokenizer` attribute"
            )
        if self.tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token_id; ScienceQA targets end with EOS")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        roles = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }.get(stage, ("train", "val", "test", "predict"))
        tokenizer = self._resolve_tokenizer()
        self.load()
        for role in roles:
            if role not in self.datasets:
                self.datasets[role] = self._build_dataset(role, tokenizer)

    def _checked_problem(self, pid: str, split: str) -> tuple[dict, Path | None]:
        """Validate one problem up front; return it and its image path (or None)."""
        problems_path = self.data_root / "problems.json"
        if pid not in self.problems:
            raise DataError(
                f"{self.data_root / 'pid_splits.json'}: split {split!r} lists pid {pid}, "
                f"which is not in {problems_path}"
            )
        problem = self.problems[pid]
        missing = [k for k in _REQUIRED_FIELDS if not isinstance(problem, dict) or k not in problem]
        if missing:
            raise DataError(f"{problems_path}: pid {pid} lacks the fields {missing}")
        image_path = None
        if problem.get("image") and self.use_images:
            # The folder is the problem's own split ("trainval"/"minitest" have none).
            folder = problem.get("split")
            if not folder:
                raise DataError(f"{problems_path}: pid {pid} has an image but no 'split' field")
            image_path = self.data_root / "images" / folder / pid / problem["image"]
            if not image_path.is_file():
                raise DataError(
                    f"image {image_path} of pid {pid} not found; {_LAYOUT}"
                )
        return problem, image_path

    def _build_dataset(self, role: str, tokenizer) -> ScienceQADataset:
        split, limit = self.splits[role], self.limits[role]
        pids = self.split_pids(split)
        pids = pids[:limit] if limit is not None else pids
        generate = role in ("test", "predict")
        prompt_format = self.test_prompt_format if generate else self.prompt_format

        inputs, targets, meta = [], [], []
        for pid in pids:
            problem, image_path = self._checked_problem(pid, split)
            try:
                text_in, target = scienceqa_prompt(
                    {**problem, "pid": pid}, prompt_format, self.use_caption, self.captions.get(pid) or ""
                )
            except DataError as e:
                raise DataError(f"{self.data_root / 'problems.json'}: {e}") from None
            inputs.append(text_in)
            targets.append(target)
            meta.append((pid, image_path, len(problem["choices"])))

        n_instructions = None
        if role == "train" and self.text_instructions is not None:
            # Text-only samples (no image, no choices), tokenised like the problems below.
            pairs = read_text_instructions(Path(self.text_instructions))
            inputs += [text_in for text_in, _ in pairs]
            targets += [target for _, target in pairs]
            meta += [(f"instruction-{index}", None, 0) for index in range(len(pairs))]
            n_instructions = len(pairs)

        # Tokenise prompt and prompt+target separately with no special tokens, as the
        # release does; BOS/EOS are added by hand below.
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        prompt_ids = tokenizer(inputs, add_special_tokens=False)["input_ids"] if inputs else []
        full_ids = []
        if not generate and inputs:
            full_ids = tokenizer([i + t for i, t in zip(inputs, targets)], add_special_tokens=False)["input_ids"]

        samples, n_truncated, n_prompt_cut = [], 0, 0
        for k, (pid, image_path, n_choices) in enumerate(meta):
            if generate:
                ids, cut = build_prompt_sequence(prompt_ids[k], bos, self.max_seq_len)
                labels, truncated = None, cut
            else:
                if len(full_ids[k]) <= len(prompt_ids[k]):
                    raise DataError(f"pid {pid}: the target {targets[k]!r} produced no answer tokens")
                ids, labels, truncated, cut = build_train_sequence(
                    prompt_ids[k], full_ids[k], bos, eos, self.max_seq_len, self.min_answer_tokens
                )
            n_truncated += truncated
            n_prompt_cut += cut
            samples.append(ScienceQASample(pid, ids, labels, image_path, n_choices))

        self.truncation_report[role] = {
            "split": split,
            "samples": len(samples),
            "truncated": n_truncated,
            "prompt_cut": n_prompt_cut,
        }
        if n_instructions is not None:
            self.truncation_report[role]["text_instructions"] = n_instructions
        if rank_zero_only.rank == 0:
            level = logging.WARNING if n_truncated else logging.INFO
            log.log(
                level,
                "ScienceQA %s (split %r): %d of %d samples exceed max_seq_len=%d and were "
                "truncated, %d of them lost prompt tokens from the left",
                role, split, n_truncated, len(samples), self.max_seq_len, n_prompt_cut,
            )
        return ScienceQADataset(samples, self.transform, self.image_size)

    # ---------------------------------------------------------------- loaders

    def _collator(self) -> ScienceQACollator:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return ScienceQACollator(pad)

    def _loader(self, role: str, batch_size: int, shuffle: bool) -> DataLoader:
        if role not in self.datasets:
            raise ConfigError(f"the {role} dataset is not set up; call setup() with the matching stage first")
        return DataLoader(
            self.datasets[role],
            batch_size=batch_size,
            # Training mixes text-only and image-text samples at random (no bucketing).
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self._collator(),
        )

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.per_device_batch_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.per_device_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch, shuffle=False)
