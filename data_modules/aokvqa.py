"""A-OKVQA v1.0 (allenai/aokvqa), trained and scored on its direct answers.

Reads per split ``aokvqa_v1p0_{split}.json``::

    [{"split": "train"|"val"|"test", "image_id": int, "question_id": str, "question": str,
      "choices": [4 str], "correct_choice_idx": int (not in test),
      "direct_answers": [10 str] (not in test), "difficult_direct_answer": bool,
      "rationales": [3 str] (not in test)}, ...]
    images  <root>/<image_pattern formatted with split and image_id>; by default COCO 2017's
            {split}2017/{image_id:012d}.jpg (train2017, val2017, test2017)

Every question is validated once in ``setup()`` (a bad one fails, or with ``on_bad_record="skip"``
is left out and counted in ``report``); batching, tokenising, limits and the k-shot draw are
:class:`~data_modules.vqa.VQADataModule`'s. ``aokvqa_dataset(role)`` is the list of the
questions served, for :func:`lavin_lightning.metrics.aokvqa.score_aokvqa`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.textvqa import SingleFileVQADataModule
from lavin_lightning.formats.vqa import AOKVQA_FORMAT, check_aokvqa_choices, read_aokvqa


class AOKVQADataModule(SingleFileVQADataModule):
    """A-OKVQA (``aokvqa_v1p0_{split}.json``) as open-ended VQA.

    Each question becomes the user turn ``prompt.format(question=...)`` (the choices are not
    shown); train/val rows supervise the most frequent of the 10 direct answers (ties: the
    first) and EOS, test/predict rows are generation prompts. Batches as
    :class:`~data_modules.vqa.VQADataModule`'s, ``pids`` being the question_id. The test
    split has no answers (its leaderboard scores it): to score a test run, test on the val
    split (``splits={"train": "train", "val": "val", "test": "val"}``).

    Args:
        root: folder holding the A-OKVQA json files and the COCO 2017 image folders.
        data_pattern: the json file name under ``root``, formatted with ``split``.
        image_pattern: image path under ``root``, formatted with ``split`` and ``image_id``.
        **kwargs: the other arguments of :class:`~data_modules.vqa.VQADataModule` (``splits``,
            ``prompt`` -- the user turn, formatted with ``question`` --, ``template``, batch sizes,
            ``limit_*``, ``k_shot``, ``seed``, ``on_bad_record``, ``original_instructions``,
            ``tokenizer``, ...). on_bad_record="error" stops at the first bad
            question: duplicate question_id, missing or non-string direct answers in train/val,
            non-string choices, a correct_choice_idx that is no choice, missing image, ...
    """

    answers_field = "direct_answers"
    expected = AOKVQA_FORMAT

    def __init__(self, root: str, data_pattern: str = "aokvqa_v1p0_{split}.json",
                 image_pattern: str = "{split}2017/{image_id:012d}.jpg", **kwargs: Any) -> None:
        super().__init__(root, data_pattern, image_pattern=image_pattern, **kwargs)

    def _entries(self, path: Path) -> tuple[dict, list]:
        return {}, read_aokvqa(path)

    def _check(self, raw: dict, role: str) -> None:
        check_aokvqa_choices(raw, scored=role == "test")

    def aokvqa_dataset(self, role: str) -> list[dict]:
        """The question records served in ``role``, for :func:`~lavin_lightning.metrics.aokvqa.score_aokvqa`."""
        return list(self.served_questions(role))
