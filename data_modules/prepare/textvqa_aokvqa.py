"""easy-VQA questions in the published files of A-OKVQA and TextVQA (answers inside the question records).

* ``build_aokvqa_from_easy_vqa``: ``aokvqa_v1p0_{train,val,test}.json``, a list of
  {split, image_id, question_id, question, choices (4), correct_choice_idx, direct_answers (10),
  difficult_direct_answer, rationales (3)}; the test records lack the answer fields, as
  published. Only easy-VQA's shape and colour questions on pictures whose facts are known:
  A-OKVQA's questions are open "what" questions, with four answer choices and rationales that
  state the facts.
* ``build_textvqa_from_easy_vqa``: ``TextVQA_0.5.1_{train,val,test}.json``, {"dataset_name",
  "dataset_type", "dataset_version", "data": [{question_id, image_id (16 hex digits), question,
  question_tokens, answers (10), image_width, image_height, set_name}]}; every kind of easy-VQA
  question; the test records lack answers, as published. (easy-VQA's pictures hold no text to
  read: this is TextVQA's file layout, not its task.)

easy-VQA has one answer per question, so the ten human answers are that answer ten times. Both
write the images as ``images/<split>/<image_id>.png`` (easy-VQA's PNG bytes; train and val from
easy-VQA's train images, disjoint, test from its test images, ids offset by 1,000,000), which
the data modules read with ``image_pattern: "images/{split}/{image_id}.png"``. Builds are
idempotent and atomic, as :func:`data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`'s.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from data_modules.prepare.easy_vqa import (
    COLORS,
    SHAPES,
    UNDRAWN_SHAPES,
    _build_once,
    _copy_image,
    _draw,
    _layout_image_id,
    _layout_params,
    _load_sources,
    _Question,
    _shuffled_choices,
    _split_sources,
    _words,
    _write_json,
    _write_layout_manifest,
)

__all__ = ["build_aokvqa_from_easy_vqa", "build_textvqa_from_easy_vqa"]

HUMAN_ANSWERS = 10
_RATIONALES = (
    "The picture shows a {color} {shape} on a light background.",
    "There is only one shape in the image, and it is a {color} {shape}.",
    "The shape in the image is {color}, and it is a {shape}.",
)


def _drawn_questions(loaded: dict, sizes: dict[str, int], rng: random.Random,
                     keep) -> dict[str, tuple[list[_Question], str]]:
    """``{split: (questions, easy-VQA source)}``: ``sizes[split]`` questions for which ``keep(q,
    the source's image facts)`` holds, in easy-VQA's order."""
    drawn = {}
    for split, (questions, source) in _split_sources(loaded, sizes["train"], sizes["val"], rng).items():
        pool = [q for q in questions if keep(q, loaded[source].facts)]
        drawn[split] = (sorted(_draw(pool, sizes[split], rng, f"{split} questions"), key=lambda q: q.index), source)
    return drawn


def _copy_split_image(tmp: Path, split: str, image_id: int | str, src: str) -> None:
    dst = tmp / "images" / split / f"{image_id}.png"
    if not dst.exists():  # several questions may share an image
        _copy_image(src, dst)


# --------------------------------------------------------------------------- A-OKVQA


def _aokvqa_choices(answer: str, rng: random.Random) -> tuple[list[str], int]:
    """Four choices: a shape answer with the two other shapes and one easy-VQA never draws, a
    colour answer with three other colours; shuffled."""
    if answer in SHAPES:
        distractors = [s for s in SHAPES if s != answer] + [rng.choice(UNDRAWN_SHAPES)]
    else:
        distractors = rng.sample([c for c in COLORS if c != answer], 3)
    return _shuffled_choices(answer, distractors, rng)


def _write_aokvqa_build(tmp: Path, easy_vqa, params: dict, sizes: dict[str, int], seed: int) -> dict:
    rng = random.Random(seed)
    loaded = _load_sources(easy_vqa)
    drawn = _drawn_questions(loaded, sizes, rng,
                             lambda q, facts: q.family in ("shape", "color") and q.image_id in facts)
    counts = {}
    for split, (questions, source) in drawn.items():
        records = []
        for q in questions:
            image_id = _layout_image_id(q.image_id, source)
            _copy_split_image(tmp, split, image_id, loaded[source].image_paths[q.image_id])
            choices, correct = _aokvqa_choices(q.answer, rng)
            record = {"split": split, "image_id": image_id, "question_id": f"{split}_{len(records) + 1:05d}",
                      "question": q.text[:1].upper() + q.text[1:], "choices": choices}
            labelled = split != "test"  # as published: the test split has no answers
            if labelled:
                record.update(correct_choice_idx=correct, direct_answers=[q.answer] * HUMAN_ANSWERS)
            record["difficult_direct_answer"] = False
            if labelled:
                shape, color = loaded[source].facts[q.image_id]
                record["rationales"] = [r.format(shape=shape, color=color) for r in _RATIONALES]
            records.append(record)
        _write_json(tmp / f"aokvqa_v1p0_{split}.json", records)
        counts[split] = {"questions": len(records), "images": len({r["image_id"] for r in records})}
    return _write_layout_manifest(tmp, params, counts)


def build_aokvqa_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, n_val: int = 50, n_test: int = 100, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA as A-OKVQA v1.0 in ``out_dir`` and return its path.

    ``aokvqa_v1p0_{train,val,test}.json`` and ``images/<split>/<image_id>.png`` (see the module
    docstring); question ids are ``"<split>_<n>"``. Idempotent and atomic; the errors of
    :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = _layout_params("aokvqa", sizes, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_aokvqa_build(tmp, easy_vqa, params, sizes, seed),
                       files=("aokvqa_v1p0_test.json",))


# --------------------------------------------------------------------------- TextVQA


def _write_textvqa_build(tmp: Path, easy_vqa, params: dict, sizes: dict[str, int], seed: int) -> dict:
    rng = random.Random(seed)
    loaded = _load_sources(easy_vqa)
    drawn = _drawn_questions(loaded, sizes, rng, lambda q, facts: True)
    counts, question_id = {}, 0
    for split, (questions, source) in drawn.items():
        records = []
        for q in questions:
            image_id = f"{_layout_image_id(q.image_id, source):016x}"  # TextVQA's ids are 16 hex digits
            _copy_split_image(tmp, split, image_id, loaded[source].image_paths[q.image_id])
            question_id += 1  # unique over the three files, as TextVQA's
            record = {"question_id": question_id, "image_id": image_id, "question": q.text,
                      "question_tokens": _words(q.text)}
            if split != "test":  # as published: the test split has no answers
                record["answers"] = [q.answer] * HUMAN_ANSWERS
            record.update(image_width=64, image_height=64, set_name=split)
            records.append(record)
        _write_json(tmp / f"TextVQA_0.5.1_{split}.json", {"dataset_name": "textvqa", "dataset_type": split,
                                                          "dataset_version": "0.5.1", "data": records})
        counts[split] = {"questions": len(records), "images": len({r["image_id"] for r in records})}
    return _write_layout_manifest(tmp, params, counts)


def build_textvqa_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, n_val: int = 50, n_test: int = 100, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA as TextVQA 0.5.1 in ``out_dir`` and return its path.

    ``TextVQA_0.5.1_{train,val,test}.json`` and ``images/<split>/<image_id>.png`` (see the module
    docstring); question ids run from 1 over train, val and test. Idempotent and atomic; the
    errors of :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = _layout_params("textvqa", sizes, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_textvqa_build(tmp, easy_vqa, params, sizes, seed),
                       files=("TextVQA_0.5.1_test.json",))
