"""Open-ended VQA in the official layout (VQAv2, OK-VQA, the embedded easy-VQA build).

Reads per split the official files::

    questions    {"questions": [{"question_id": int|str, "image_id": int|str, "question": str}, ...], ...}
    annotations  {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                   "multiple_choice_answer" (optional), "answers": [{"answer": str, ...}, ...]}, ...], ...}
    images       <root>/<image_pattern formatted with split and image_id>

Every question is validated and tokenised once in ``setup()`` (a bad one fails, or with
``on_bad_record="skip"`` is left out and counted in ``report``), and the official-format
dicts of the questions actually used are kept so that a scoring callback can call
:func:`lavin_lightning.metrics.vqa.score_vqa` on exactly the questions it predicted.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
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
DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
DEFAULT_PROMPT = "Question: {question} Short answer:"
STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
# Roles whose rows are supervised; test/predict rows are generation prompts.
LABELLED = ("train", "val")

_QUESTIONS = 'expected {"questions": [{"question_id": int|str, "image_id": int|str, "question": str}, ...]}'
_ANNOTATIONS = (
    'expected {"annotations": [{"question_id", "image_id", "question_type", "answer_type", '
    '"multiple_choice_answer" (optional, str), "answers": [{"answer": str}, ...]}, ...]}'
)


def _is_id(value: Any) -> bool:
    # bool is an int subclass; neither it nor a float identifies a question in JSON.
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _records(path: Path, key: str, expected: str) -> tuple[dict, list]:
    data = read_json(path, expected)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f'{path}: no "{key}" list; {expected}')
    return data, data[key]


def target_answer(annotation: dict) -> str:
    """``multiple_choice_answer`` when present, else the most frequent answer (ties: the first)."""
    if annotation.get("multiple_choice_answer") is not None:
        return annotation["multiple_choice_answer"]
    # most_common is stable, so equal counts keep their first-seen order.
    return Counter(a["answer"] for a in annotation["answers"]).most_common(1)[0][0]


def _check_answers(annotation: dict) -> str:
    answers = annotation.get("answers")
    if not isinstance(answers, list) or not answers:
        raise _BadRecord("no_answers", "field 'answers' is missing, empty or not a list")
    for i, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
            got = type(a.get("answer")).__name__ if isinstance(a, dict) else type(a).__name__
            raise _BadRecord("non_string_answer", f"answers[{i}].answer is a {got}, expected a string")
    mc = annotation.get("multiple_choice_answer")
    if mc is not None and not isinstance(mc, str):
        raise _BadRecord("non_string_answer", f"multiple_choice_answer is a {type(mc).__name__}, expected a string")
    answer = target_answer(annotation)
    if not answer.strip():
        raise _BadRecord("empty_answer", "the target answer is empty")
    return answer


class VQADataModule(RoleDataLoaders, GlobalBatchDataModule):
    """Open-ended VQA (VQAv2, OK-VQA, easy-VQA) in the official questions/annotations layout.

    Each question becomes the user turn ``prompt.format(question=...)`` of the prompt
    ``template``; train/val rows supervise the target answer (``multiple_choice_answer``, else
    the most frequent human answer) and EOS, test/predict rows are generation prompts.
    Batches: ``input_ids`` (BOS first, right-padded), ``attention_mask``, ``labels``
    (train/val), ``pixel_values``, ``has_image`` (True), ``pids`` (``str(question_id)``).
    ``official(role)`` gives the questions/annotations dicts of the used questions for
    :func:`~lavin_lightning.metrics.vqa.score_vqa`.

    File names are patterns formatted with ``split`` (and ``image_id`` for images). For VQAv2
    set ``questions_pattern="v2_OpenEnded_mscoco_{split}2014_questions.json"``,
    ``annotations_pattern="v2_mscoco_{split}2014_annotations.json"``,
    ``image_pattern="{split}2014/COCO_{split}2014_{image_id:012d}.jpg"`` and
    ``splits={"train": "train", "val": "val", "test": "val"}``; OK-VQA uses
    "OpenEnded_mscoco_{split}2014_questions.json" / "mscoco_{split}2014_annotations.json".

    Args:
        root: folder holding the question/annotation files and the images.
        splits: role -> split name for the roles train, val, test, predict; None = {"train": "train",
            "val": "val", "test": "test"}. predict defaults to the test split. A role left out has no
            data; val is also skipped when its questions file is missing or empty.
        questions_pattern: questions file name under ``root``, formatted with ``split``.
        annotations_pattern: annotations file name under ``root``, formatted with ``split``;
            required for train/val, optional for test/predict (without it test cannot be scored).
        image_pattern: image path under ``root``, formatted with ``split`` and ``image_id``.
        prompt: the user turn, formatted with ``question`` (default: the InstructBLIP / PETAL
            VQA instruction "Question: {question} Short answer:").
        template: prompt template, "lavin" (LaVIN) or "alpaca".
        global_batch_size: training samples per optimizer step over all devices; the
            per-device batch and gradient accumulation are derived from it.
        micro_batch_size: per-device batch for one forward pass; None = global batch /
            world size (no accumulation).
        eval_batch_size: per-device batch for val/test/predict; None = the per-device training batch.
        max_seq_len: maximum tokens per row (BOS + prompt + answer + EOS); longer training rows
            keep their beginning, longer prompts their end.
        image_size: square image side in pixels (bicubic resize).
        image_mean: per-channel normalisation mean (ImageNet, as the LaVIN release).
        image_std: per-channel normalisation std (ImageNet, as the LaVIN release).
        limit_train: use the first N training questions (file order); None = all.
        limit_val: use the first N validation questions; None = all.
        limit_test: use the first N test (and predict) questions; None = all.
        k_shot: few-shot training (e.g. 50 or 150, as PETAL): k training questions drawn at
            random with ``seed`` from the valid (and limited) training questions -- the draw is
            over questions, not images or answers; the same seed gives the same subset. None = all.
        seed: seed of the k-shot draw and of the training shuffle.
        num_workers: DataLoader worker processes.
        tokenizer: a Hugging Face tokenizer; None = ``trainer.lightning_module.tokenizer`` at setup.
        on_bad_record: "error" stops at the first bad question (no or several annotations,
            annotation of an unknown question, duplicate id, non-string answer, missing image);
            "skip" leaves bad questions out and counts them per role and reason (``report``).
        original_instructions: PETAL's "original instructions" (paper Table 7), "caption" or "vqa",
            stacked line by line after the instruction given to a model's instruction encoder
            (InstructBLIP's Q-Former); None = the instruction alone. The LLM prompt is unchanged.
    """

    def __init__(
        self,
        root: str,
        splits: dict[str, str] | None = None,
        questions_pattern: str = "questions_{split}.json",
        annotations_pattern: str = "annotations_{split}.json",
        image_pattern: str = "images/{split}/{image_id}.png",
        prompt: str = DEFAULT_PROMPT,
        template: str = "lavin",
        global_batch_size: int = 32,
        micro_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        max_seq_len: int = 128,
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
        self.root = Path(root)
        splits = dict(DEFAULT_SPLITS if splits is None else splits)
        unknown = sorted(set(splits) - set(ROLES))
        if unknown:
            raise ConfigError(f"splits has unknown roles {unknown}; expected some of {list(ROLES)}")
        if "predict" not in splits and "test" in splits:
            splits["predict"] = splits["test"]
        self.splits = splits
        try:  # fail at construction on a pattern with unknown fields
            questions_pattern.format(split="x")
            annotations_pattern.format(split="x")
            image_pattern.format(split="x", image_id=1)
            prompt.format(question="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"bad pattern or prompt ({e!r}): patterns may use {{split}} (and {{image_id}} "
                              "for images), the prompt {question}") from None
        self.questions_pattern = questions_pattern
        self.annotations_pattern = annotations_pattern
        self.image_pattern = image_pattern
        self.prompt = prompt
        self._set_encoding_options(template, max_seq_len, eval_batch_size, (limit_train, limit_val, limit_test),
                                   k_shot, seed, tokenizer, on_bad_record, original_instructions, image_size,
                                   image_mean, image_std)
        self.datasets: dict[str, ScienceQADataset] = {}
        self.questions: dict[str, dict] = {}
        self.annotations: dict[str, dict | None] = {}
        self.report: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- files

    def _split(self, role: str) -> str:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; expected one of {list(ROLES)}")
        if role not in self.splits:
            raise ConfigError(f"no split is configured for the {role} role (splits={self.splits})")
        return self.splits[role]

    def questions_file(self, role: str) -> Path:
        """The questions file of ``role``'s split."""
        return self.root / self.questions_pattern.format(split=self._split(role))

    def annotations_file(self, role: str) -> Path | None:
        """The annotations file of ``role``'s split, None when it does not exist."""
        path = self.root / self.annotations_pattern.format(split=self._split(role))
        return path if path.is_file() else None

    def official(self, role: str) -> tuple[dict, dict | None]:
        """(questions, annotations) in the official layout, restricted to the questions used."""
        if role not in self.questions:
            raise ConfigError(f"the {role} data is not set up; call setup() first")
        return self.questions[role], self.annotations[role]

    # ----------------------------------------------------------------- reading

    def _read(self, role: str) -> tuple[list[InstructRecord], list[dict], list[dict] | None, dict, dict | None]:
        """Valid records of a role plus the raw question/annotation records behind them."""
        split, report = self._split(role), ReadReport(self.on_bad_record)
        qfile, afile = self.questions_file(role), self.annotations_file(role)
        qdoc, raw_questions = _records(qfile, "questions", _QUESTIONS)
        if afile is None and role in LABELLED:
            missing = self.root / self.annotations_pattern.format(split=split)
            raise DataError(f"{missing} not found: the {role} split needs annotations; {_ANNOTATIONS}")
        adoc, raw_annotations = _records(afile, "annotations", _ANNOTATIONS) if afile else (None, None)

        # Questions, keyed by str(question_id) since that is the pid; the first of a repeated id is kept.
        questions: dict[str, dict] = {}

        def question(raw: Any, position: int) -> dict:
            if not isinstance(raw, dict) or not _is_id(raw.get("question_id")):
                raise _BadRecord("bad_question", f"question #{position} is not an object with a question_id")
            qid = raw["question_id"]
            if str(qid) in questions:
                raise _BadRecord("duplicate_question_id", f"question_id {qid!r} appears more than once")
            if not isinstance(raw.get("question"), str) or not raw["question"].strip():
                raise _BadRecord("bad_question", f"question_id {qid!r}: field 'question' is missing or empty")
            if not _is_id(raw.get("image_id")):
                raise _BadRecord("bad_image_id", f"question_id {qid!r}: image_id is {raw.get('image_id')!r}")
            return raw

        for position, raw in enumerate(raw_questions):
            qid = raw.get("question_id") if isinstance(raw, dict) else None
            kept = report.screen(f"{qfile}: question_id {qid!r}", _QUESTIONS, question, raw, position)
            if kept is not None:
                questions[str(kept["question_id"])] = kept

        # Annotations: exactly one per known question.
        annotations: dict[str, dict] = {}
        repeated: set[str] = set()

        def annotation(raw: Any, position: int) -> dict:
            if not isinstance(raw, dict) or not _is_id(raw.get("question_id")):
                raise _BadRecord("bad_annotation", f"annotation #{position} is not an object with a question_id")
            qid = raw["question_id"]
            if str(qid) not in questions:
                raise _BadRecord("unknown_question_id", f"annotation for question_id {qid!r}, absent from {qfile}")
            if str(qid) in annotations:
                repeated.add(str(qid))
                raise _BadRecord("duplicate_annotation", f"question_id {qid!r} has more than one annotation")
            return raw

        for position, raw in enumerate(raw_annotations or []):
            qid = raw.get("question_id") if isinstance(raw, dict) else None
            kept = report.screen(f"{afile}: question_id {qid!r}", _ANNOTATIONS, annotation, raw, position)
            if kept is not None:
                annotations[str(kept["question_id"])] = kept

        def annotated(pid: str, q: dict) -> tuple[str | None, dict | None]:
            if afile is None:  # test/predict without annotations: nothing to check or score
                return None, None
            if pid not in annotations or pid in repeated:
                what = "no annotation" if pid not in annotations else "more than one annotation"
                raise _BadRecord("annotation_count", f"the question of {qfile} has {what}")
            return _check_answers(annotations[pid]), annotations[pid]

        def record(pid: str, q: dict, answer: str | None) -> InstructRecord:
            image = self._existing_image(split, q["image_id"])
            user = self.prompt.format(question=q["question"].strip())
            return InstructRecord(pid, ((user, answer if role in LABELLED else None),), "", image)

        records, used_q, used_a = [], [], []
        for pid, q in questions.items():
            qid = q["question_id"]
            checked = report.screen(f"{afile}: question_id {qid!r}", _ANNOTATIONS, annotated, pid, q)
            if checked is None:
                continue
            done = report.screen(f"{qfile}: question_id {qid!r}", _QUESTIONS, record, pid, q, checked[0])
            if done is not None:
                records.append(done)
                used_q.append(q)
                used_a.append(checked[1])
        self.report[role] = {"questions": len(raw_questions), "skipped": dict(report.skipped)}
        if report.skipped:
            _log(logging.WARNING, "%s %s: kept %d questions, skipped %d bad ones (on_bad_record='skip'): %s",
                 role, qfile, len(records), sum(report.skipped.values()), dict(report.skipped))
        return records, used_q, (used_a if afile else None), qdoc, adoc

    def _image_file(self, split: str, image_id: Any) -> Path:
        return self.root / self.image_pattern.format(split=split, image_id=image_id)

    def _existing_image(self, split: str, image_id: Any) -> Path:
        """The image of a question; checked here (setup) so that a missing image cannot stop
        an epoch halfway."""
        try:
            image = self._image_file(split, image_id)
        except (ValueError, TypeError) as e:
            raise _BadRecord("bad_image_id", f"image_id {image_id!r} does not fit image_pattern ({e})") from None
        if not image.is_file():
            raise _BadRecord("missing_image", f"image {image} not found")
        return image

    def _select(self, role: str, n: int) -> list[int]:
        """Indices of the records a role uses: the first ``limit``, then for train the k-shot draw."""
        chosen = list(range(n))[: self.limits[role]]
        if role == "train" and self.k_shot is not None:
            if self.k_shot > len(chosen):
                raise ConfigError(f"k_shot {self.k_shot} exceeds the {len(chosen)} usable training questions")
            chosen = sorted(random.Random(self.seed).sample(chosen, self.k_shot))  # file order
        return chosen

    def _build(self, role: str, tokenizer) -> None:
        records, used_q, used_a, qdoc, adoc = self._read(role)
        if role == "val" and not self.report["val"]["questions"]:
            _log(logging.INFO, "%s has no questions; validation is skipped", self.questions_file(role))
            return
        chosen = self._select(role, len(records))
        samples, counts = encode_records([records[i] for i in chosen], tokenizer, self.template, self.max_seq_len,
            resolve_instruction_tokenizer(self), instruction_suffix(self.original_instructions))
        if not samples:
            raise DataError(f"{self.questions_file(role)}: no {role} samples left: {self.report[role]}")
        # Official dicts cover exactly the rows served (after limits, k-shot and dropped long rows).
        kept = {s.pid for s in samples}
        chosen = [i for i in chosen if records[i].pid in kept]
        self.questions[role] = {**qdoc, "questions": [used_q[i] for i in chosen]}
        self.annotations[role] = None if adoc is None else {**adoc, "annotations": [used_a[i] for i in chosen]}
        self.report[role].update(counts)
        _log_counts(f"{type(self).__name__} {role}", counts, self.max_seq_len)
        self.datasets[role] = ScienceQADataset(samples, self.transform, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)  # per-device batch + trainer accumulation
        roles = STAGE_ROLES.get(stage, ROLES) if stage else ROLES
        tokenizer = None
        for role in roles:
            if role in self.datasets:  # read and tokenised once, e.g. fit then test
                continue
            optional = stage is None or role == "val"
            if role not in self.splits and optional:
                continue
            if role == "val" and not self.questions_file("val").is_file():
                _log(logging.INFO, "no validation file %s; validation is skipped", self.questions_file("val"))
                continue
            tokenizer = tokenizer or resolve_tokenizer(self)
            self._build(role, tokenizer)
        if "val" in self.datasets:
            # Lightning validates only if val_dataloader is overridden; bound per instance so
            # that without val data fit simply skips validation.
            self.val_dataloader = self._val_dataloader

    # ----------------------------------------------------------------- loaders

