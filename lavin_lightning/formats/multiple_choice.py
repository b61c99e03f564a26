"""Multiple-choice benchmark files: MMLU's CSVs and TruthfulQA's mc_task.json, read into questions.

    MMLU (Hendrycks et al., the public data.tar)
        <root>/{dev,val,test}/<subject>_<split>.csv     header-less CSV: question, A, B, C, D, answer letter
    TruthfulQA (Lin et al.)
        mc_task.json    [{"question": str, "mc1_targets": {answer: 0|1, ...}, "mc2_targets": {...}}, ...]

The readers stop at the first problem, a DataError naming the file, the row or record and
what was expected. Prompts and scoring live with ``lavin-lightning evaluate mc``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.records import describe, is_int, read_json_unique, records_at

MMLU = "mmlu"
TRUTHFULQA_MC1 = "truthfulqa_mc1"

MMLU_LETTERS = ("A", "B", "C", "D")
_MMLU_SPLITS = ("dev", "val", "test")
_MMLU_COLUMNS = "question, A, B, C, D, answer letter"
_MMLU_LAYOUT = (
    "an MMLU root holds dev/<subject>_dev.csv, val/<subject>_val.csv and test/<subject>_test.csv "
    f"(header-less CSV: {_MMLU_COLUMNS}), as in the public Hendrycks data.tar"
)
_TQA_EXPECTED = (
    'TruthfulQA mc_task.json: a list of {"question": str, "mc1_targets": {answer: 0|1, ...}, '
    '"mc2_targets": {...}} with exactly one true (1) answer in mc1_targets'
)


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question, without any prompt around it.

    ``subject`` is the MMLU subject (file name stem, e.g. ``"high_school_physics"``); a
    benchmark without subjects uses its own name (TruthfulQA: ``"truthfulqa_mc1"``).
    """

    id: str
    benchmark: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int


def subject_display_name(subject: str) -> str:
    """``"high_school_physics"`` -> ``"high school physics"`` (as the MMLU prompt names it)."""
    return subject.replace("_", " ")


def _read_mmlu_csv(path: Path, subject: str, split: str) -> list[MCQuestion]:
    if not path.is_file():
        raise DataError(f"{path} not found: expected the {split} questions of subject {subject!r}; {_MMLU_LAYOUT}")
    questions: list[MCQuestion] = []
    try:
        # newline="" lets the csv module see quoted newlines inside fields.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            row_number, line = 0, 1
            for fields in reader:
                row_number += 1
                where = f"{path}: row {row_number} (line {line})"
                line = reader.line_num + 1
                if not fields:  # a blank line, as pandas' read_csv skips it
                    continue
                if len(fields) != 6:
                    raise DataError(f"{where} has {len(fields)} columns; expected 6 ({_MMLU_COLUMNS})")
                question, *choices, letter = fields
                if not question.strip():
                    raise DataError(f"{where}: the question (column 1) is empty")
                empty = [i for i, choice in enumerate(choices) if not choice.strip()]
                if empty:
                    i = empty[0]
                    raise DataError(f"{where}: choice {MMLU_LETTERS[i]} (column {i + 2}) is empty; expected the "
                                    "text of every option")
                letter = letter.strip()
                if letter not in MMLU_LETTERS:
                    raise DataError(f"{where}: answer {fields[5]!r} (column 6) is not one of A, B, C, D")
                questions.append(MCQuestion(
                    id=f"{subject}/{split}/{len(questions)}", benchmark=MMLU, subject=subject,
                    question=question, choices=tuple(choices), answer=MMLU_LETTERS.index(letter),
                ))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); expected header-less CSV: {_MMLU_COLUMNS}") from None
    except csv.Error as e:
        raise DataError(f"{path}: not readable as CSV ({e}); expected header-less CSV: {_MMLU_COLUMNS}") from None
    if not questions:
        raise DataError(f"{path} holds no questions; expected header-less CSV rows: {_MMLU_COLUMNS}")
    return questions


def read_mmlu(
    root: str | os.PathLike, split: str = "test", subjects: Iterable[str] | None = None
) -> dict[str, list[MCQuestion]]:
    """``{subject: questions}`` of one split of an MMLU root, in file order.

    Without ``subjects``, every ``<root>/<split>/<subject>_<split>.csv`` is read (subjects
    sorted by name); with it, exactly those subjects, in the given order. Row numbers in error
    messages count CSV records from 1; question ids are ``"<subject>/<split>/<index>"``.
    """
    if split not in _MMLU_SPLITS:
        raise ConfigError(f"MMLU split must be one of {', '.join(_MMLU_SPLITS)}, got {split!r}")
    root = Path(root)
    folder = root / split
    suffix = f"_{split}.csv"
    if subjects is None:
        files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        names = [p.name[: -len(suffix)] for p in files]
        if not names:
            raise DataError(f"no MMLU subjects found under {root}: expected {folder}/<subject>{suffix}; {_MMLU_LAYOUT}")
    else:
        names = list(dict.fromkeys(subjects))
        if not names:
            raise ConfigError("subjects is empty; give at least one MMLU subject, or None for all")
    return {name: _read_mmlu_csv(folder / f"{name}{suffix}", name, split) for name in names}


def read_mmlu_dev(root: str | os.PathLike, subjects: Iterable[str]) -> dict[str, list[MCQuestion]]:
    """The dev (few-shot) examples of ``subjects``: ``<root>/dev/<subject>_dev.csv``."""
    return read_mmlu(root, "dev", list(subjects))


def read_truthfulqa_mc1(path: str | os.PathLike) -> list[MCQuestion]:
    """The MC1 questions of TruthfulQA's ``mc_task.json``; choices in the file's key order.

    Record indices in error messages count from 0 (the position in the JSON list); question
    ids are ``"truthfulqa_mc1/<index>"``.
    """
    path = Path(path)
    # Repeated answers in mc1_targets would silently merge: refused (read_json_unique).
    data = records_at(read_json_unique(path, _TQA_EXPECTED), None, path, _TQA_EXPECTED)
    if not data:
        raise DataError(f"{path}: the list is empty; expected {_TQA_EXPECTED}")
    questions = []
    for i, record in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(record, dict):
            raise DataError(f"{where} is a {type(record).__name__}; expected an object with question and mc1_targets")
        question = record.get("question")
        if question is not None and not isinstance(question, str):
            raise DataError(f'{where}: "question" is {describe(question)}; expected a non-empty string')
        if question is None or not question.strip():
            raise DataError(f'{where}: "question" is missing or empty; expected a non-empty string')
        targets = record.get("mc1_targets")
        if targets is not None and not isinstance(targets, dict):
            raise DataError(f'{where}: "mc1_targets" is {describe(targets)}; expected an object {{answer: 0|1, ...}}')
        if not targets:
            raise DataError(f'{where}: "mc1_targets" is missing or empty; expected an object {{answer: 0|1, ...}}')
        for answer, value in targets.items():
            if not answer.strip():
                raise DataError(f'{where}: "mc1_targets" has an empty answer text')
            if not is_int(value) or value not in (0, 1):
                raise DataError(f'{where}: "mc1_targets"[{answer!r}] is {value!r}; expected 0 or 1')
        true = [j for j, value in enumerate(targets.values()) if value == 1]
        if len(true) != 1:
            raise DataError(f'{where}: "mc1_targets" has {len(true)} true answers (value 1); MC1 needs exactly one')
        questions.append(MCQuestion(
            id=f"{TRUTHFULQA_MC1}/{i}", benchmark=TRUTHFULQA_MC1, subject=TRUTHFULQA_MC1,
            question=question, choices=tuple(targets), answer=true[0],
        ))
    return questions
