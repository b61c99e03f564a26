"""MME, zero-shot: the benchmark's yes/no questions as generation prompts (test and predict only).

Reads MME's benchmark folder (:mod:`lavin_lightning.formats.mme`): per subtask either
``images/`` + ``questions_answers_YN/`` or image files beside same-named ``.txt`` files, each
holding an image's two ``question<TAB>Yes|No`` lines. Every question becomes one generation
prompt with its image; how the model decodes (greedy, sampled) is the model's ``generation``
setting, not the data module's. The questions served are kept in order
(:meth:`MMEDataModule.mme_questions`) for :class:`~lavin_lightning.callbacks.mme.MMEEvaluation`,
which writes the eval tool's results layout and scores it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.base import TaskDataModule, check_format, log_skipped
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.formats.mme import MMEImage, MMEQuestion, check_subtasks, read_mme_benchmark
from lavin_lightning.formats.records import ReadReport

SERVED = ("test", "predict")


def instruction_text(question: str) -> str:
    """The question as LaVIN's eval_mme.py puts it in its prompt: stripped, with one pass of
    double-space removal (some MME questions have two spaces before "Please answer yes or no.")."""
    return question.strip().replace("  ", " ")


class MMEDataModule(TaskDataModule):
    """The MME benchmark (14 subtasks of yes/no questions, two per image), zero-shot.

    Each question becomes the user turn ``prompt.format(question=...)`` of the prompt
    ``template`` -- with the defaults LaVIN's "Instruction: <question>\\nResponse:", as its
    eval_mme.py prompts -- and the model answers it freely; test and predict serve every
    question of the chosen subtasks, the two questions of an image next to each other.
    Batches: ``input_ids`` (BOS first, right-padded), ``attention_mask``, ``pixel_values``,
    ``has_image`` (True), ``pids`` (``<subtask>/<image file>/<0|1>``). There is no training
    or validation split: fit and validate are refused.

    Args:
        root: MME's benchmark folder (MME_Benchmark_release_version), or a build of
            ``lavin-lightning prepare mme-easy-vqa``.
        subtasks: the subtasks to serve, in any order (served in the eval tool's order); None =
            every subtask folder under ``root``.
        prompt: the user turn, formatted with ``question`` (the question as LaVIN puts it:
            :func:`instruction_text`).
        limit_test: the first N images (file-name order) of each subtask, both questions of
            each; None = all. Also limits predict.
        max_seq_len: maximum tokens per prompt; a longer prompt keeps its end.
        **kwargs: the options of :class:`~data_modules.base.TaskDataModule`'s bases: ``template``
            ("lavin" by default), ``on_bad_record`` ("error" stops at the first bad image: a
            question file without an image or the reverse, or one that is not two
            ``question<TAB>Yes|No`` lines; "skip" leaves the image out, counted in ``report``),
            ``eval_batch_size``, ``num_workers``, ``tokenizer``, ``instruction_tokenizer``,
            ``image_*``, ``original_instructions``.
    """

    record_kind = "images"

    def __init__(
        self,
        root: str,
        subtasks: list[str] | None = None,
        prompt: str = "{question}",
        max_seq_len: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_seq_len=max_seq_len, **kwargs)
        training_only = {"limit_train": self.limits["train"], "limit_val": self.limits["val"], "k_shot": self.k_shot}
        given = ", ".join(name for name, value in training_only.items() if value is not None)
        if given:
            raise ConfigError(f"MME is zero-shot (test and predict only); these options do not apply: {given}")
        self.root = Path(root)
        self.subtasks = check_subtasks(subtasks)
        self.prompt = check_format("prompt", prompt, question="x")
        self.questions: dict[str, list[MMEQuestion]] = {}

    def _has_split(self, role: str) -> bool:
        return role in SERVED

    def _source(self, role: str) -> Path:
        return self.root

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate"):
            raise ConfigError(f"MMEDataModule serves the MME benchmark zero-shot: test or predict, not {stage}")
        super().setup(stage)

    def _where(self, image: MMEImage) -> str:
        return f"{self.root / image.subtask}: image {image.name}"

    def mme_questions(self, role: str = "test") -> list[MMEQuestion]:
        """The questions served in ``role``, in the order served (the two of an image together)."""
        if role not in self.questions:
            raise ConfigError(f"the MME {role} data is not set up; call setup('{role}') first")
        return self.questions[role]

    def _build(self, role: str) -> None:
        report = ReadReport(self.on_bad_record)
        benchmark = read_mme_benchmark(self.root, self.subtasks, report)
        # The first limit images of each subtask that decode (checked now, before any batch).
        images = [image for subtask in benchmark.values()
                  for image in self._usable(subtask, lambda im: im.path, self._where, report, self.limits[role])]
        questions = [question for image in images for question in image.questions]
        records = [InstructRecord(question.pid, ((self.prompt.format(question=instruction_text(question.question)),
                                                  None),), "", image.path)
                   for image in images for question in image.questions]
        self.report[role] = {"subtasks": {name: len(subtask) for name, subtask in benchmark.items()},
                             "images": len(images), "questions": len(questions), "skipped": dict(report.skipped)}
        log_skipped(f"{role} {self.root}", f"{len(images)} images", report)
        # Generation prompts are never dropped (a long one keeps its end), so every question is served.
        self._serve_records(role, records)
        self.questions[role] = questions
