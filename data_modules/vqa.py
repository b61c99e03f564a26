"""Open-ended VQA in the official layout (VQAv2, OK-VQA, the embedded easy-VQA build).

Reads per split the official files (:mod:`lavin_lightning.formats.vqa`)::

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
from pathlib import Path
from typing import Any

from data_modules.base import LABELLED, ROLES, TaskDataModule, check_format, log_rank_zero, log_skipped
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.formats.records import BadRecord, ReadReport
from lavin_lightning.formats.vqa import (
    ANNOTATIONS_FORMAT,
    QUESTIONS_FORMAT,
    annotation_of,
    check_question,
    checked_target,
    question_where,
    read_vqa_annotations,
    read_vqa_questions,
    screen_annotations,
)

DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
DEFAULT_PROMPT = "Question: {question} Short answer:"


class VQADataModule(TaskDataModule):
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
        max_seq_len: maximum tokens per row (BOS + prompt + answer + EOS); longer training rows
            keep their beginning, longer prompts their end.
        **kwargs: the options of :class:`~data_modules.base.TaskDataModule` (``limit_*``, ``k_shot``
            -- drawn over questions --, ``original_instructions``) and of its bases (``template``,
            ``on_bad_record`` -- "error" stops at the first bad question: no or several
            annotations, annotation of an unknown question, duplicate id, non-string answer,
            missing image; "skip" leaves it out and counts it per role and reason in ``report`` --,
            ``seed``, batch sizes, ``num_workers``, ``tokenizer``, ``instruction_tokenizer``, ``image_*``).
    """

    record_kind = "questions"

    def __init__(
        self,
        root: str,
        splits: dict[str, str] | None = None,
        questions_pattern: str = "questions_{split}.json",
        annotations_pattern: str = "annotations_{split}.json",
        image_pattern: str = "images/{split}/{image_id}.png",
        prompt: str = DEFAULT_PROMPT,
        max_seq_len: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_seq_len=max_seq_len, **kwargs)
        self.root = Path(root)
        splits = dict(DEFAULT_SPLITS if splits is None else splits)
        unknown = sorted(set(splits) - set(ROLES))
        if unknown:
            raise ConfigError(f"splits has unknown roles {unknown}; expected some of {list(ROLES)}")
        if "predict" not in splits and "test" in splits:
            splits["predict"] = splits["test"]
        self.splits = splits
        self.questions_pattern = check_format("questions_pattern", questions_pattern, split="x")
        self.annotations_pattern = check_format("annotations_pattern", annotations_pattern, split="x")
        self.image_pattern = check_format("image_pattern", image_pattern, split="x", image_id=1)
        self.prompt = check_format("prompt", prompt, question="x")
        self.questions: dict[str, dict] = {}
        self.annotations: dict[str, dict | None] = {}

    # ----------------------------------------------------------------- files

    def _split(self, role: str) -> str:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; expected one of {list(ROLES)}")
        if role not in self.splits:
            raise ConfigError(f"no split is configured for the {role} role (splits={self.splits})")
        return self.splits[role]

    def _has_split(self, role: str) -> bool:
        return role in self.splits

    def questions_file(self, role: str) -> Path:
        """The questions file of ``role``'s split."""
        return self.root / self.questions_pattern.format(split=self._split(role))

    def _source(self, role: str) -> Path:
        return self.questions_file(role)

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

    def _image_file(self, split: str, image_id: Any) -> Path:
        return self.root / self.image_pattern.format(split=split, image_id=image_id)

    def _image_path(self, split: str, image_id: Any) -> Path:
        """The image file of a question (whether it is there and decodes is checked in :meth:`_build`,
        for the questions served)."""
        try:
            return self._image_file(split, image_id)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise BadRecord("bad_image_id", f"image_id {image_id!r} does not fit image_pattern ({e})") from None

    def _record(self, role: str, raw: dict, answer: str | None) -> InstructRecord:
        """The conversation of a checked question: the prompt, and for train/val its answer."""
        image = self._image_path(self._split(role), raw["image_id"])
        user = self.prompt.format(question=raw["question"].strip())
        return InstructRecord(str(raw["question_id"]), ((user, answer if role in LABELLED else None),), "", image)

    def _finish_read(self, role: str, path: Path, n_read: int, n_kept: int, report: ReadReport) -> None:
        self.report[role] = {"questions": n_read, "skipped": dict(report.skipped)}
        log_skipped(f"{role} {path}", f"{n_kept} questions", report)

    def _read(self, role: str) -> tuple[list[InstructRecord], list[dict], list[dict] | None, dict, dict | None]:
        """Valid records of a role plus the raw question/annotation records behind them."""
        report = ReadReport(self.on_bad_record)
        qfile, afile = self.questions_file(role), self.annotations_file(role)
        qdoc = read_vqa_questions(qfile)
        if afile is None and role in LABELLED:
            missing = self.root / self.annotations_pattern.format(split=self._split(role))
            raise DataError(f"{missing} not found: the {role} split needs annotations; expected {ANNOTATIONS_FORMAT}")
        adoc = read_vqa_annotations(afile) if afile else None

        # Questions, keyed by str(question_id) since that is the pid; the first of a repeated id is kept.
        questions: dict[str, dict] = {}
        seen: set[str] = set()
        for position, raw in enumerate(qdoc["questions"]):
            kept = report.screen(question_where(qfile, raw), QUESTIONS_FORMAT, check_question, raw, position, seen)
            if kept is not None:
                questions[str(kept["question_id"])] = kept
        annotations, repeated = screen_annotations(adoc["annotations"] if adoc else [], afile, questions, qfile,
                                                   report)

        def annotated(pid: str) -> tuple[str | None, dict | None]:
            if afile is None:  # test/predict without annotations: nothing to check or score
                return None, None
            annotation = annotation_of(pid, annotations, repeated, qfile)
            return checked_target(annotation, scored=role == "test"), annotation

        records, used_q, used_a = [], [], []
        for pid, q in questions.items():
            checked = report.screen(question_where(afile, q), ANNOTATIONS_FORMAT, annotated, pid)
            if checked is None:
                continue
            done = report.screen(question_where(qfile, q), QUESTIONS_FORMAT, self._record, role, q, checked[0])
            if done is not None:
                records.append(done)
                used_q.append(q)
                used_a.append(checked[1])
        self._finish_read(role, qfile, len(qdoc["questions"]), len(records), report)
        return records, used_q, (used_a if afile else None), qdoc, adoc

    def _build(self, role: str) -> None:
        if role == "val" and not self.questions_file(role).is_file():
            log_rank_zero(logging.INFO, "no validation file %s; validation is skipped", self.questions_file(role))
            return
        records, used_q, used_a, qdoc, adoc = self._read(role)
        if role == "val" and not self.report["val"]["questions"]:
            log_rank_zero(logging.INFO, "%s has no questions; validation is skipped", self.questions_file(role))
            return
        # The first limit questions whose image is there and decodes (checked now, not mid-epoch).
        usable = self._usable_in(role, range(len(records)), lambda i: records[i].image,
                                 lambda i: question_where(self.questions_file(role), used_q[i]), self.limits[role])
        chosen = self._draw_k_shot(role, usable)
        samples = self._serve_records(role, [records[i] for i in chosen])
        # Official dicts cover exactly the rows served (after limits, k-shot and dropped long rows).
        kept = {s.pid for s in samples}
        chosen = [i for i in chosen if records[i].pid in kept]
        self.questions[role] = {**qdoc, "questions": [used_q[i] for i in chosen]}
        self.annotations[role] = None if adoc is None else {**adoc, "annotations": [used_a[i] for i in chosen]}
