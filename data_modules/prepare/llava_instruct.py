"""easy-VQA pictures as LLaVA-Instruct image conversations (the image half of LaVIN's chatbot data).

``build_llava_instruct_from_easy_vqa`` writes ``llava_instruct.json`` in the format of
``llava_instruct_150k.json`` -- [{"id", "image", "conversations": [{"from": "human"|"gpt",
"value"}, ...]}], "<image>" before or after the first question -- and the images it names,
``images/<id>.png`` (easy-VQA's PNG bytes). One record per picture, of one of LLaVA-Instruct's
kinds:

* conversation: two or three of the picture's own easy-VQA questions, answered in sentences
  ("It is a triangle.", "No. The image shows a red shape.");
* detailed description: a request to describe the picture, answered with its facts.

Only easy-VQA's train pictures whose shape and colour are known are used. The chatbot's text
half, Alpaca-format instructions, is ``lavin-lightning prepare instructions``
(:mod:`data_modules.prepare.instructions`). Builds are idempotent and atomic, as
:func:`data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`'s.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

from data_modules.prepare.easy_vqa import (
    _build_once,
    _copy_image,
    _draw,
    _layout_params,
    _load_sources,
    _pictures,
    _presence_phrase,
    _Question,
    _write_json,
    _write_layout_manifest,
)
from lavin_lightning.formats.instructions import IMAGE_MARKER

__all__ = ["build_llava_instruct_from_easy_vqa", "LLAVA_FILE"]

LLAVA_FILE = "llava_instruct.json"
_MAX_QUESTIONS = 3  # per conversation
_DETAIL_REQUESTS = (
    "Describe the image in detail.",
    "What do you see in this picture?",
    "Describe this picture for someone who cannot see it.",
    "Tell me everything the image shows.",
)
_DETAIL_ANSWERS = (
    "The image shows a single {color} {shape} on a light, plain background. Nothing else is drawn.",
    "It is a simple picture of one {color} {shape}. The background is light and plain, and there is no other shape.",
    "The picture holds one shape, a {color} {shape}, drawn on a light background.",
)


def _answer(q: _Question) -> str:
    """An easy-VQA answer as a sentence."""
    if q.family == "shape":
        return f"It is a {q.answer}."
    if q.family == "color":
        return f"It is {q.answer}."
    thing, present = _presence_phrase(q.text, q.answer)
    return f"{q.answer.capitalize()}. The image {'shows' if present else 'does not show'} a {thing}."


def _with_marker(question: str, rng: random.Random) -> str:
    # LLaVA-Instruct puts the marker on its own line before or after the first question.
    return f"{IMAGE_MARKER}\n{question}" if rng.random() < 0.5 else f"{question}\n{IMAGE_MARKER}"


def _write_llava_build(tmp: Path, easy_vqa, params: dict, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    loaded = _load_sources(easy_vqa)
    questions = defaultdict(dict)  # image id -> {question text: question}, one per text
    for q in loaded["train"].questions:
        questions[q.image_id].setdefault(q.text, q)
    pictures = _draw(_pictures(loaded, loaded["train"].questions, "train"), n, rng,
                     "train images with a known shape and color")
    records, kinds = [], {"conversation": 0, "detail": 0}
    for picture in sorted(pictures, key=lambda p: p.image_id):
        asked = list(questions[picture.image_id].values())
        if len(asked) >= 2 and rng.random() < 0.5:
            kinds["conversation"] += 1
            chosen = rng.sample(asked, min(_MAX_QUESTIONS, len(asked)))
            turns = [(q.text[:1].upper() + q.text[1:], _answer(q)) for q in chosen]
        else:
            kinds["detail"] += 1
            turns = [(rng.choice(_DETAIL_REQUESTS),
                      rng.choice(_DETAIL_ANSWERS).format(color=picture.color, shape=picture.shape))]
        turns[0] = (_with_marker(turns[0][0], rng), turns[0][1])
        record_id = f"{picture.image_id:012d}"  # LLaVA-Instruct's ids: the zero-padded image id
        image = f"{record_id}.png"
        _copy_image(picture.path, tmp / "images" / image)
        records.append({"id": record_id, "image": image, "conversations": [
            {"from": role, "value": value} for turn in turns for role, value in zip(("human", "gpt"), turn)]})
    _write_json(tmp / LLAVA_FILE, records)
    return _write_layout_manifest(tmp, params, {"conversations": len(records), **kinds})


def build_llava_instruct_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 300, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write ``n_train`` LLaVA-Instruct records (one per easy-VQA picture) in ``out_dir`` and
    return its path: ``llava_instruct.json`` and ``images/<id>.png`` (see the module docstring).
    Idempotent and atomic; the errors of
    :func:`~data_modules.prepare.easy_vqa.build_scienceqa_from_easy_vqa`.
    """
    params = _layout_params("llava-instruct", {"train": n_train}, seed)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_llava_build(tmp, easy_vqa, params, n_train, seed),
                       files=(LLAVA_FILE,))
