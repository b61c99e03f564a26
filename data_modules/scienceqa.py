"""ScienceQA: the LightningDataModule of LaVIN's training recipe.

Reads the public layout of lupantech/ScienceQA through :mod:`lavin_lightning.formats.scienceqa`::

    <data_root>/problems.json                    {pid: problem}
    <data_root>/pid_splits.json                  {split: [pid, ...]}
    <data_root>/images/<split>/<pid>/image.png   for problems whose "image" is set
    <data_root>/captions.json                    {"captions": {pid: text}} (optional)

Optionally, text-only instructions in the Alpaca format join the training set
(``text_instructions``), as in LaVIN's mixture-of-modality training.

All problems of a split are validated (every field the prompts and the scorer read, of its
type) and tokenised once in ``setup()``, and the images of the problems served are decoded
there, so a bad record fails -- or with ``on_bad_record="skip"`` is left out and counted --
before training starts, and the dataset only has to load images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader

from data_modules.base import GlobalBatchDataModule, log_rank_zero, log_skipped
from data_modules.batching import Sample, encode_segments
from data_modules.prompts import parse_prompt_format, scienceqa_prompt
from data_modules.templates import instruction_prompt
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.instructions import read_alpaca
from lavin_lightning.formats.records import ReadReport, check_on_bad_record
from lavin_lightning.formats.scienceqa import (
    PROBLEM_FORMAT,
    PROMPT_FIELDS,
    check_problem,
    problem_image,
    read_captions,
    read_pid_splits,
    read_problems,
    require_problems,
    split_pids,
)

# Ids of the instruction given to a model's instruction encoder (InstructBLIP's Q-Former), at most.
_INSTRUCTION_MAX_LEN = 128
# How test answers: generated, or the likeliest option's answer sentence.
EVALUATIONS = ("generate", "option_likelihood")
# Output formats whose target starts with the answer sentence.
ANSWER_FIRST = ("A", "AL", "AE", "ALE", "AEL")


def read_text_instructions(path: Path, report: ReadReport | None = None) -> list[tuple[str, str]]:
    """``(prompt, output)`` per record of an Alpaca-format JSON file, all checked up front; with a
    ``report``, as its ``on_bad_record`` says (bad records left out are counted in it)."""
    records, read = read_alpaca(path, report.on_bad_record if report is not None else "error")
    if report is not None:
        report.skipped.update(read.skipped)
        report.first_skipped = report.first_skipped or read.first_skipped
    return [(instruction_prompt(r.turns[0][0], r.input_text), r.turns[0][1]) for r in records]


class ScienceQADataModule(GlobalBatchDataModule):
    """ScienceQA for LaVIN-style instruction tuning (prompt -> "The answer is X. ...").

    Batches (train/val): ``input_ids``, ``attention_mask``, ``labels`` (answer + EOS
    supervised, -100 elsewhere), ``pixel_values``, ``has_image``, ``pids``. Test/predict
    batches hold BOS + prompt only and no ``labels``; the scoring callback reads each
    problem's options from ``problems``.

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
        max_seq_len: maximum text tokens per sample (BOS + prompt + answer + EOS), not
            counting the modality token, "Image: " prefix and visual slots.
        min_answer_tokens: when truncating, keep at least this many answer tokens
            (cut the prompt from the left instead).
        limit_train: use only the first N usable pids of the train split (quick runs).
        limit_val: use only the first N usable pids of the val split.
        limit_test: use only the first N usable pids of the test split (predict is not limited).
        text_instructions: JSON file of text-only instructions in the Alpaca format (a
            list of {"instruction", "input" (optional), "output"}). Every record joins the
            training set (not val/test, not cut by limit_train) as a text-only sample with
            prompt "Instruction: ...\n[Input: ...\n]Response:" and target "output",
            shuffled with the ScienceQA problems so that batches mix modalities (LaVIN's
            mixture-of-modality training). None = ScienceQA only.
        on_bad_record: "error" stops at the first bad problem -- a field of the wrong type (e.g.
            ``choices`` not a list of strings, ``question`` null or empty), an answer that is no
            index into the choices, an image that is missing or does not decode --; "skip" leaves
            such problems (and bad text_instructions records) out, counts them per reason in
            ``truncation_report[role]["skipped"]`` (there in "skip" mode only) and logs them. A
            pid of a split list that is not in problems.json is always an error (the files do
            not belong together).
        evaluation: how ``test`` answers. "generate": the model writes its answer (read by the
            release's pattern); "option_likelihood": every option's answer sentence ("The answer
            is A." ..., the answer form of the QCM-A family) is scored by its log-likelihood
            after the prompt and the likeliest is the answer (each test sample carries the
            sentences as ``candidates``; the model scores them in one forward). With an output
            format that explains before it answers (LA, EA, ...), the sentence is scored right
            after the prompt, where such a model was trained to explain: a different question.
        **kwargs: the batch, worker, tokenizer and image options of
            :class:`~data_modules.base.GlobalBatchDataModule` (``global_batch_size``,
            ``micro_batch_size``, ``eval_batch_size``, ``num_workers``, ``tokenizer``,
            ``instruction_tokenizer`` -- which then gets each prompt --, ``image_size``,
            ``image_mean``, ``image_std``).
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
        max_seq_len: int = 512,
        min_answer_tokens: int = 16,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        text_instructions: str | None = None,
        on_bad_record: str = "error",
        evaluation: Literal["generate", "option_likelihood"] = "generate",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if evaluation not in EVALUATIONS:
            raise ConfigError(f"evaluation must be one of {list(EVALUATIONS)}, got {evaluation!r}")
        self.evaluation = evaluation
        self.on_bad_record = check_on_bad_record(on_bad_record)
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
        self.max_seq_len = max_seq_len
        self.min_answer_tokens = min_answer_tokens
        self.text_instructions = text_instructions

        self.problems: dict[str, dict] | None = None
        self.pid_splits: dict | None = None
        self.captions: dict[str, str] = {}
        self.truncation_report: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- files

    def load(self) -> None:
        """Read problems.json, pid_splits.json (and captions.json); idempotent."""
        if self.problems is not None:
            return
        problems = read_problems(self.data_root)
        pid_splits = read_pid_splits(self.data_root)
        if self.use_caption:
            self.captions = read_captions(self.data_root, problems)
        self.problems, self.pid_splits = problems, pid_splits

    def split_pids(self, split: str) -> list[str]:
        """The pids of a pid_splits.json split, in file order."""
        self.load()
        if split not in self.pid_splits:
            raise ConfigError(
                f"split {split!r} is not in {self.data_root / 'pid_splits.json'}; "
                f"available: {sorted(self.pid_splits)}"
            )
        return split_pids(self.pid_splits, split, self.data_root)

    # ---------------------------------------------------------------- setup

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        roles = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }.get(stage, ("train", "val", "test", "predict"))
        tokenizer = self.require_tokenizer()
        self.load()
        for role in roles:
            if role not in self.datasets:
                self._serve(role, self._samples(role, tokenizer))

    def _checked(self, pid: str, required: tuple[str, ...], prompt_format: str) -> tuple[str, Path | None, str, str]:
        """(pid, image file, prompt, target) of a problem whose fields are checked (BadRecord otherwise)."""
        problem = check_problem(self.problems[pid], required)
        image_path = problem_image(self.data_root, pid, problem) if self.use_images else None
        text_in, target = scienceqa_prompt({**problem, "pid": pid}, prompt_format, self.use_caption,
                                           self.captions.get(pid) or "")
        return pid, image_path, text_in, target

    def _samples(self, role: str, tokenizer) -> list[Sample]:
        split, limit = self.splits[role], self.limits[role]
        pids = self.split_pids(split)
        if not pids and role == "train":
            raise DataError(f"{self.data_root / 'pid_splits.json'}: the train split {split!r} is empty; expected the "
                            "pids to train on")
        require_problems(pids, split, self.data_root, self.problems)
        generate = role in ("test", "predict")
        prompt_format = self.test_prompt_format if generate else self.prompt_format
        # Every field the prompts or the scorer read is checked when present; the prompts' are required.
        required = PROMPT_FIELDS

        # Every problem of the split is checked; of those, the first `limit` whose image decodes are served.
        report, problems_path = ReadReport(self.on_bad_record), self.data_root / "problems.json"
        checked = [report.screen(f"{problems_path}: pid {pid}", PROBLEM_FORMAT, self._checked, pid, required,
                                 prompt_format) for pid in pids]
        checked = self._usable([c for c in checked if c is not None], lambda c: c[1],
                               lambda c: f"{problems_path}: pid {c[0]}", report, limit)
        inputs = [text_in for _, _, text_in, _ in checked]
        targets = [target for _, _, _, target in checked]
        meta = [(pid, image_path) for pid, image_path, _, _ in checked]

        n_instructions = None
        if role == "train" and self.text_instructions is not None:
            # Text-only samples (no image, no choices), tokenised like the problems below.
            pairs = read_text_instructions(Path(self.text_instructions), report)
            inputs += [text_in for text_in, _ in pairs]
            targets += [target for _, target in pairs]
            meta += [(f"instruction-{index}", None) for index in range(len(pairs))]
            n_instructions = len(pairs)
        log_skipped(f"ScienceQA {role} (split {split!r})", f"{len(checked)} problems", report)
        if not inputs and report.skipped:
            raise DataError(f"{problems_path}: no usable problems in split {split!r} ({dict(report.skipped)} "
                            "skipped); expected " + PROBLEM_FORMAT)

        # Tokenise prompt and prompt+target separately with no special tokens, as the
        # release does; BOS/EOS are added by the encoder.
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        prompt_ids = tokenizer(inputs, add_special_tokens=False)["input_ids"] if inputs else []
        full_ids = []
        if not generate and inputs:
            full_ids = tokenizer([i + t for i, t in zip(inputs, targets)], add_special_tokens=False)["input_ids"]
        instruction_ids = [None] * len(inputs)
        if self.instruction_tokenizer is not None and inputs:
            instruction_ids = self.instruction_tokenizer(inputs, truncation=True,
                                                         max_length=_INSTRUCTION_MAX_LEN)["input_ids"]

        candidates = [None] * len(inputs)
        if role == "test" and self.evaluation == "option_likelihood":
            candidates = self._option_candidates([pid for pid, _ in meta], inputs, prompt_ids, tokenizer)

        samples, n_truncated, n_prompt_cut = [], 0, 0
        for k, (pid, image_path) in enumerate(meta):
            if generate:
                segments = [(prompt_ids[k], False)]
            else:
                n_prompt = len(prompt_ids[k])
                if len(full_ids[k]) <= n_prompt:
                    raise DataError(f"pid {pid}: the target {targets[k]!r} produced no answer tokens")
                # As in the release, the first len(prompt) tokens of prompt + target are the prompt.
                segments = [(full_ids[k][:n_prompt], False), (full_ids[k][n_prompt:], True)]
            # Too long: the answer's tail goes down to min_answer_tokens, then the prompt loses
            # tokens from the left, so that it keeps its end ("Options: ... Response:").
            ids, labels, truncated, cut = encode_segments(segments, bos, eos, self.max_seq_len, "cut_prompt",
                                                          self.min_answer_tokens, where=f"pid {pid}")
            n_truncated += truncated
            n_prompt_cut += cut
            samples.append(Sample(pid, ids, labels, image_path, instruction_ids[k], candidates[k]))

        self.truncation_report[role] = {
            "split": split,
            "samples": len(samples),
            "truncated": n_truncated,
            "prompt_cut": n_prompt_cut,
        }
        if self.on_bad_record == "skip":
            self.truncation_report[role]["skipped"] = dict(report.skipped)
        if n_instructions is not None:
            self.truncation_report[role]["text_instructions"] = n_instructions
        log_rank_zero(
            logging.WARNING if n_truncated else logging.INFO,
            "ScienceQA %s (split %r): %d of %d samples exceed max_seq_len=%d and were "
            "truncated, %d of them lost prompt tokens from the left",
            role, split, n_truncated, len(samples), self.max_seq_len, n_prompt_cut,
        )
        return samples

    def _option_candidates(self, pids: list[str], inputs: list[str], prompt_ids: list[list[int]],
                           tokenizer) -> list[tuple[tuple[int, ...], ...]]:
        """Per problem, the token ids of each option's answer sentence after its prompt: prompt +
        sentence tokenised together and the prompt's length cut off, as training rows are built."""
        input_format, output_format = parse_prompt_format(self.test_prompt_format)
        if output_format not in ANSWER_FIRST:
            log_rank_zero(logging.WARNING, "ScienceQA option_likelihood with the output format %r (explanation first): "
                          "each answer sentence is scored right after the prompt", output_format)
        sentences = []
        for pid in pids:
            problem = self.problems[pid]
            sentences.append([scienceqa_prompt({**problem, "pid": pid, "answer": i}, f"{input_format}-A")[1]
                              for i in range(len(problem["choices"]))])
        joined = [text_in + sentence for text_in, options in zip(inputs, sentences) for sentence in options]
        full = iter(tokenizer(joined, add_special_tokens=False)["input_ids"] if joined else [])
        candidates, shifted = [], 0
        for prompt, options in zip(prompt_ids, sentences):
            ids = [next(full) for _ in options]
            shifted += any(row[: len(prompt)] != prompt for row in ids)
            candidates.append(tuple(tuple(row[len(prompt):]) for row in ids))
        if shifted:
            log_rank_zero(logging.WARNING, "ScienceQA option_likelihood: for %d problems the tokens of prompt + answer "
                          "sentence start other than the prompt's; the sentence's tokens after the prompt's length "
                          "are scored after the prompt", shifted)
        return candidates

    # ---------------------------------------------------------------- loaders

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")
