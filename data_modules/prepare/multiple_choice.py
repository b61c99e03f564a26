"""Text-only multiple-choice benchmarks built from easy-VQA's vocabulary: MMLU's CSVs, TruthfulQA's mc_task.json.

What ``lavin-lightning evaluate mc`` reads (:mod:`lavin_lightning.formats.multiple_choice`):

* ``build_mmlu_from_easy_vqa``: ``{dev,val,test}/<subject>_<split>.csv`` (header-less: question,
  A, B, C, D, answer letter), five dev questions per subject (MMLU's k-shot examples) and
  ``n_val`` / ``n_test`` more, for the subjects ``shapes``, ``colors`` and
  ``picture_descriptions`` ("A picture shows a red circle. What color is the shape?"). No
  question occurs twice in a subject (same text and same choices), so the dev examples are
  never test questions.
* ``build_truthfulqa_from_easy_vqa``: ``mc_task.json``, a list of {"question", "mc1_targets":
  {answer: 0|1} (one true answer, listed first, and three false ones, as in the published
  file), "mc2_targets" (two true answers, then every false one)}: ``n_test`` distinct
  questions (at most 110) whose false answers are common-sounding mistakes about the words
  ("Yes, teal is another word for circle.").

The questions use easy-VQA's three shapes and eight colours (and a few shapes it never
draws, as wrong choices only). Builds are idempotent and atomic, as
:func:`data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`'s.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
from collections.abc import Callable
from pathlib import Path

from data_modules.prepare.easy_vqa import (
    COLORS,
    SHAPES,
    UNDRAWN_SHAPES,
    _build_once,
    _layout_params,
    _shuffled_choices,
    _write_json,
    _write_layout_manifest,
)
from lavin_lightning.errors import DataError

__all__ = ["build_mmlu_from_easy_vqa", "build_truthfulqa_from_easy_vqa", "MMLU_SUBJECTS", "MMLU_DEV_QUESTIONS",
           "TRUTHFULQA_QUESTIONS"]

MMLU_SUBJECTS = ("shapes", "colors", "picture_descriptions")
MMLU_DEV_QUESTIONS = 5  # per subject, as in MMLU: the k-shot examples
_LETTERS = "ABCD"
_NOT_COLORS = SHAPES + UNDRAWN_SHAPES
_CORNERED_SHAPES = ("pentagon", "hexagon")  # wrong choices of the questions about corners
_STRAIGHT_SIDES = {"circle": "none", "triangle": "three", "rectangle": "four"}

_MCQuestion = tuple[str, list[str], int]  # question, four choices, index of the correct one


# --------------------------------------------------------------------------- MMLU


def _shapes_question(rng: random.Random) -> _MCQuestion:
    template = rng.randrange(4)
    if template == 0:
        question, correct, distractors = "Which of these is a shape?", rng.choice(SHAPES), rng.sample(COLORS, 3)
    elif template == 1:
        question, correct, distractors = "Which of these is not a shape?", rng.choice(COLORS), list(SHAPES)
    elif template == 2:
        shape = rng.choice(SHAPES)
        question, correct = f"How many straight sides does a {shape} have?", _STRAIGHT_SIDES[shape]
        distractors = [n for n in ("none", "three", "four", "five") if n != correct]
    else:
        corners, correct = rng.choice([("no", "circle"), ("exactly three", "triangle")])
        question = f"Which of these shapes has {corners} corners?"
        distractors = [s for s in SHAPES if s != correct] + [rng.choice(_CORNERED_SHAPES)]
    return question, *_shuffled_choices(correct, distractors, rng)


def _colors_question(rng: random.Random) -> _MCQuestion:
    template = rng.randrange(3)
    if template == 0:
        question, correct, distractors = "Which of these is a color?", rng.choice(COLORS), rng.sample(_NOT_COLORS, 3)
    elif template == 1:
        question, correct, distractors = "Which of these is not a color?", rng.choice(SHAPES), rng.sample(COLORS, 3)
    else:
        color, correct = rng.sample(COLORS, 2)
        question, distractors = f"Which word names the same kind of thing as {color}?", rng.sample(_NOT_COLORS, 3)
    return question, *_shuffled_choices(correct, distractors, rng)


def _picture_question(rng: random.Random) -> _MCQuestion:
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    lead = f"A picture shows a {color} {shape}."
    other_colors = [c for c in COLORS if c != color]
    other_shapes = [s for s in SHAPES if s != shape]
    template = rng.randrange(3)
    if template == 0:
        question, correct, distractors = f"{lead} What color is the shape?", color, rng.sample(other_colors, 3)
    elif template == 1:
        question, correct = f"{lead} What shape is in the picture?", shape
        distractors = other_shapes + [rng.choice(UNDRAWN_SHAPES)]
    else:
        question, correct = f"{lead} Which of these is in the picture?", f"a {color} {shape}"
        distractors = [f"a {rng.choice(other_colors)} {shape}", f"a {color} {rng.choice(other_shapes)}",
                       f"a {rng.choice(other_colors)} {rng.choice(other_shapes)}"]
    return question, *_shuffled_choices(correct, distractors, rng)


_MMLU_QUESTIONS: dict[str, Callable[[random.Random], _MCQuestion]] = {
    "shapes": _shapes_question, "colors": _colors_question, "picture_descriptions": _picture_question,
}


def _distinct_questions(make, n: int, rng: random.Random, seen: set, what: str) -> list[_MCQuestion]:
    """``n`` questions from ``make(rng)`` that are not in ``seen`` (same text, same choices), which they join."""
    questions, misses = [], 0
    # A subject has a few hundred distinct questions: many draws in a row that bring nothing
    # new mean that it has run out.
    while len(questions) < n and misses < 1000:
        question = make(rng)
        key = (question[0], frozenset(question[1]))
        if key in seen:
            misses += 1
            continue
        seen.add(key)
        questions.append(question)
        misses = 0
    if len(questions) < n:
        raise DataError(f"could make only {len(seen)} distinct {what}, {n - len(questions)} more requested; "
                        "ask for fewer")
    return questions


def _write_mmlu_csv(path: Path, questions: list[_MCQuestion]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for question, choices, answer in questions:
            writer.writerow([question, *choices, _LETTERS[answer]])


def _write_mmlu_build(tmp: Path, params: dict, sizes: dict[str, int], seed: int) -> dict:
    rng = random.Random(seed)
    counts = {}
    for subject in MMLU_SUBJECTS:
        seen: set = set()
        counts[subject] = {}
        for split, n in sizes.items():
            questions = _distinct_questions(_MMLU_QUESTIONS[subject], n, rng, seen, f"MMLU {subject} questions")
            _write_mmlu_csv(tmp / split / f"{subject}_{split}.csv", questions)
            counts[subject][split] = len(questions)
    return _write_layout_manifest(tmp, params, counts)


def build_mmlu_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_val: int = 10, n_test: int = 50, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write MMLU-layout CSVs of easy-VQA vocabulary questions in ``out_dir`` and return its path.

    ``dev/<subject>_dev.csv`` (5 questions), ``val/<subject>_val.csv`` (``n_val``) and
    ``test/<subject>_test.csv`` (``n_test``) for each of ``MMLU_SUBJECTS``. Idempotent and
    atomic; the errors of :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    sizes = {"dev": MMLU_DEV_QUESTIONS, "val": n_val, "test": n_test}
    params = _layout_params("mmlu", sizes, seed)
    return _build_once(out_dir, params, overwrite, lambda tmp, easy_vqa: _write_mmlu_build(tmp, params, sizes, seed),
                       files=tuple(f"test/{subject}_test.csv" for subject in MMLU_SUBJECTS))


# --------------------------------------------------------------------------- TruthfulQA


def _has_sides(shape: str, n: str) -> str:
    return f"A {shape} has {'no' if n == 'none' else n} straight sides."


def _truthfulqa_candidates() -> list[tuple[str, list[str], list[str]]]:
    """Every question this builder can ask: (question, two true answers, the false answers)."""
    candidates = []
    for color in COLORS:
        candidates.append((f"Is {color} the name of a shape?",
                           [f"No, {color} is the name of a color.", f"No, {color} is a color, not a shape."],
                           [f"Yes, {color} is the name of a shape."]
                           + [f"Yes, {color} is another word for {shape}." for shape in SHAPES]))
    for shape in SHAPES:
        candidates.append((f"Is {shape} the name of a color?",
                           [f"No, {shape} is the name of a shape.", f"No, a {shape} is a shape, not a color."],
                           [f"Yes, {shape} is the name of a color."]
                           + [f"Yes, {shape} is another word for {color}." for color in COLORS]))
        sides = _STRAIGHT_SIDES[shape]
        candidates.append((f"How many straight sides does a {shape} have?",
                           [_has_sides(shape, sides), "It has none: a circle is round." if shape == "circle"
                            else f"It has {sides} straight sides."],
                           [_has_sides(shape, n) for n in ("none", "three", "four", "five") if n != sides]))
    for shape, color in itertools.product(SHAPES, COLORS):
        other_shapes = [s for s in SHAPES if s != shape]
        candidates.append((f"What color is a {color} {shape}?",
                           [f"It is {color}.", f"A {color} {shape} is {color}."],
                           [f"It is {c}." for c in COLORS if c != color]))
        candidates.append((f"Can a {shape} be {color}?",
                           [f"Yes, a {shape} can be {color}.", f"Yes, a {shape} can be any color, including {color}."],
                           [f"No, a {shape} is never {color}.", "No, shapes have no color."]
                           + [f"No, only a {other} can be {color}." for other in other_shapes]))
        for other in other_shapes:
            candidates.append((f"A picture shows only a {color} {shape}. Is there a {other} in the picture?",
                               [f"No, the picture shows only a {shape}.", f"No, there is no {other} in the picture."],
                               [f"Yes, there is a {other} in the picture.", f"Yes, every picture has a {other}.",
                                f"Yes, a {shape} is a kind of {other}.", f"Yes, the {shape} is also a {other}."]))
    return candidates


TRUTHFULQA_QUESTIONS = len(_truthfulqa_candidates())  # the most a build can hold


def _write_truthfulqa_build(tmp: Path, params: dict, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    candidates = _truthfulqa_candidates()
    if n > len(candidates):
        raise DataError(f"the TruthfulQA build has {len(candidates)} distinct questions, {n} requested; "
                        "ask for fewer")
    records = []
    for question, true, false in rng.sample(candidates, n):
        mc1 = {true[0]: 1, **{answer: 0 for answer in rng.sample(false, 3)}}
        mc2 = {**{answer: 1 for answer in true}, **{answer: 0 for answer in false}}
        records.append({"question": question, "mc1_targets": mc1, "mc2_targets": mc2})
    _write_json(tmp / "mc_task.json", records)
    return _write_layout_manifest(tmp, params, {"questions": len(records)})


def build_truthfulqa_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_test: int = 100, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write a TruthfulQA ``mc_task.json`` of ``n_test`` easy-VQA vocabulary questions in ``out_dir``
    and return its path (see the module docstring). Idempotent and atomic; the errors of
    :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    params = _layout_params("truthfulqa", {"test": n_test}, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_truthfulqa_build(tmp, params, n_test, seed),
                       files=("mc_task.json",))
