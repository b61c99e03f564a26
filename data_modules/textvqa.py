"""TextVQA 0.5.1, and the reader it shares with A-OKVQA (questions and answers in one file per split).

Reads per split ``TextVQA_0.5.1_{split}.json``::

    {"dataset_name": "textvqa", "dataset_type": split, "dataset_version": "0.5.1",
     "data": [{"question_id": int, "image_id": str, "question": str,
               "answers": [10 str] (absent in test), "image_classes": [...],
               "flickr_original_url": str, ...}, ...]}
    images  <root>/<image_pattern formatted with folder, split and image_id>; by default
            train_images/<image_id>.jpg for train and val, test_images/<image_id>.jpg for test
            (the folders of TextVQA's image archives)

Every question is validated once in ``setup()`` (a bad one fails, or with ``on_bad_record="skip"``
is left out and counted in ``report``); batching, tokenising, limits and the k-shot draw are
:class:`~data_modules.vqa.VQADataModule`'s. ``textvqa_data(role)`` is the TextVQA json of the
questions served, for :func:`lavin_lightning.metrics.textvqa.score_textvqa`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.base import LABELLED, check_format
from data_modules.vqa import VQADataModule
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.formats.records import ReadReport
from lavin_lightning.formats.vqa import TEXTVQA_FORMAT, answers_target, check_question, question_where, read_textvqa

# split -> image folder: TextVQA's val images ship in the train archive. TextCaps uses the same images.
DEFAULT_IMAGE_FOLDERS = {"train": "train_images", "val": "train_images", "test": "test_images"}


class SingleFileVQADataModule(VQADataModule):
    """VQADataModule for sets whose questions carry their answers, a list of strings, in one
    file per split (TextVQA, A-OKVQA). Subclasses say how the file holds its questions
    (``_entries``), where the answers are (``answers_field``) and what else to check (``_check``).

    Training target: the most frequent answer (ties: the first). train/val questions need
    answers; test/predict questions may lack them (the published test splits do). The
    question records of the served questions are kept as read (``served_questions(role)``).
    """

    # Not the VQAv2 questions/annotations layout: VQAEvaluation leaves these data modules alone.
    official = None
    answers_field = "answers"
    # How many answers the scorer needs per scored (test) question; None: at least one.
    scored_answers: int | None = None
    expected = ""  # the format, quoted in bad-record messages

    def __init__(self, root: str, data_pattern: str, **kwargs: Any) -> None:
        # The answers are in the questions file, so it is the annotations file as well.
        super().__init__(root, questions_pattern=data_pattern, annotations_pattern=data_pattern, **kwargs)

    def _entries(self, path: Path) -> tuple[dict, list]:
        """The file's other top-level fields and its list of question records."""
        raise NotImplementedError(f"{type(self).__name__} must implement _entries()")

    def _check(self, raw: dict, role: str) -> None:
        """Checks of one question record of ``role`` particular to the format; raise ``BadRecord``."""

    def _read(self, role: str) -> tuple[list[InstructRecord], list[dict], None, dict, None]:
        """Valid records of a role plus the question records behind them (VQADataModule's layout,
        with the file's other top-level fields in place of the questions document)."""
        report, path = ReadReport(self.on_bad_record), self.questions_file(role)
        header, entries = self._entries(path)
        seen: set[str] = set()  # str(question_id), the pid; the first of a repeated id is kept

        def question(raw: Any, position: int) -> tuple[InstructRecord, dict]:
            check_question(raw, position, seen)
            target = answers_target(raw, self.answers_field, role in LABELLED,
                                    self.scored_answers if role == "test" else None)
            self._check(raw, role)
            return self._record(role, raw, target), raw

        records, used = [], []
        for position, raw in enumerate(entries):
            kept = report.screen(question_where(path, raw), self.expected, question, raw, position)
            if kept is not None:
                records.append(kept[0])
                used.append(kept[1])
        self._finish_read(role, path, len(entries), len(records), report)
        return records, used, None, header, None

    def served_questions(self, role: str) -> list[dict]:
        """The question records (as read) of the questions served in ``role``, in file order."""
        if role not in self.questions:
            raise ConfigError(f"the {role} data is not set up; call setup() first")
        return self.questions[role]["questions"]


class TextVQADataModule(SingleFileVQADataModule):
    """TextVQA 0.5.1 (``TextVQA_0.5.1_{split}.json``).

    Each question becomes the user turn ``prompt.format(question=...)``; train/val rows
    supervise the most frequent of the 10 answers (ties: the first) and EOS, test/predict rows
    are generation prompts. Batches as :class:`~data_modules.vqa.VQADataModule`'s, ``pids``
    being ``str(question_id)``. The test split has no answers (EvalAI scores it): to score a
    test run, test on the val split (``splits={"train": "train", "val": "val", "test": "val"}``).

    Args:
        root: folder holding the TextVQA json files and the image folders.
        data_pattern: the json file name under ``root``, formatted with ``split``.
        image_pattern: image path under ``root``, formatted with ``folder`` (from
            ``image_folders``), ``split`` and ``image_id``.
        image_folders: split -> image folder; None = train_images for train and val,
            test_images for test. A split not listed uses "<split>_images".
        **kwargs: the other arguments of :class:`~data_modules.vqa.VQADataModule` (``splits``,
            ``prompt``, ``template``, batch sizes, ``limit_*``, ``k_shot``, ``seed``,
            ``on_bad_record``, ``original_instructions``, ...). on_bad_record="error" stops at
            the first bad question: duplicate question_id, missing or non-string answers in
            train/val, missing image, ...
    """

    expected = TEXTVQA_FORMAT
    scored_answers = 10  # the TextVQA evaluator takes exactly 10 answers per question

    def __init__(self, root: str, data_pattern: str = "TextVQA_0.5.1_{split}.json",
                 image_pattern: str = "{folder}/{image_id}.jpg", image_folders: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(root, data_pattern, **kwargs)
        # Unlike VQADataModule's, also formatted with the image folder.
        self.image_pattern = check_format("image_pattern", image_pattern, folder="x", split="x", image_id=1)
        self.image_folders = dict(DEFAULT_IMAGE_FOLDERS if image_folders is None else image_folders)

    def _entries(self, path: Path) -> tuple[dict, list]:
        doc = read_textvqa(path)
        return {k: v for k, v in doc.items() if k != "data"}, doc["data"]

    def _image_file(self, split: str, image_id: Any) -> Path:
        folder = self.image_folders.get(split, f"{split}_images")
        return self.root / self.image_pattern.format(folder=folder, split=split, image_id=image_id)

    def textvqa_data(self, role: str) -> dict:
        """The TextVQA json (``{"dataset_type", ..., "data": [...]}``) of the questions served in
        ``role``, for :func:`~lavin_lightning.metrics.textvqa.score_textvqa`."""
        served = self.served_questions(role)
        header = {k: v for k, v in self.questions[role].items() if k != "questions"}
        return {**header, "data": served}
