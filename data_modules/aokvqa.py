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
questions served, for :func:`lavin_lightning.metrics.vqa.score_aokvqa`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.instruct import _BadRecord
from data_modules.textvqa import SingleFileVQADataModule
from data_modules.vqa import DEFAULT_PROMPT
from lavin_lightning.errors import DataError
from lavin_lightning.io import read_json

_AOKVQA = (
    'expected A-OKVQA\'s format [{"question_id": str, "image_id": int, "question": str, "choices": [str, ...], '
    '"correct_choice_idx": int (not in test), "direct_answers": [str, ...] (not in test), ...}, ...]'
)


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
        prompt: the user turn, formatted with ``question``.
        **kwargs: the other arguments of :class:`~data_modules.vqa.VQADataModule` (``splits``,
            ``template``, batch sizes, ``limit_*``, ``k_shot``, ``seed``, ``on_bad_record``,
            ``original_instructions``, ...). on_bad_record="error" stops at the first bad
            question: duplicate question_id, missing or non-string direct answers in train/val,
            non-string choices, a correct_choice_idx that is no choice, missing image, ...
    """

    answers_field = "direct_answers"
    expected = _AOKVQA

    def __init__(
        self,
        root: str,
        data_pattern: str = "aokvqa_v1p0_{split}.json",
        image_pattern: str = "{split}2017/{image_id:012d}.jpg",
        prompt: str = DEFAULT_PROMPT,
        **kwargs: Any,
    ) -> None:
        # The answers are in the questions file, so it is the annotations file as well.
        super().__init__(root, questions_pattern=data_pattern, annotations_pattern=data_pattern,
                         image_pattern=image_pattern, prompt=prompt, **kwargs)

    def _entries(self, path: Path) -> tuple[dict, list]:
        data = read_json(path, self.expected)
        if not isinstance(data, list):
            raise DataError(f"{path}: the top level is a {type(data).__name__}, not a list; {self.expected}")
        return {}, data

    def _check(self, raw: dict) -> None:
        # The choices are only scored, but a bad one would stop the scoring after the whole test run.
        choices = raw.get("choices")
        if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
            raise _BadRecord("non_string_choice", "choices must be a list of strings")
        correct = raw.get("correct_choice_idx")
        if correct is not None and (isinstance(correct, bool) or not isinstance(correct, int)
                                    or not 0 <= correct < len(choices or [])):
            raise _BadRecord("bad_choice_idx", f"correct_choice_idx {correct!r} is not the index of a choice")

    def aokvqa_dataset(self, role: str) -> list[dict]:
        """The question records served in ``role``, for :func:`~lavin_lightning.metrics.vqa.score_aokvqa`."""
        return list(self.served_questions(role))
