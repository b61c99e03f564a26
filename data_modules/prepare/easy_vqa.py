"""The embedded default data set: easy-VQA written in the public ScienceQA layout.

easy-VQA (PyPI ``easy-vqa==1.0``) holds 64x64 pictures of one coloured shape with short
questions whose answers come from 13 words (3 shapes, 8 colours, yes/no). This module turns
them into ``problems.json`` / ``pid_splits.json`` / ``images/<split>/<pid>/image.png`` so
that the ScienceQA pipeline (data module, prompts, official scoring) runs offline on real
images. Three kinds of problem make every ScienceQA context category occur:

* IMG (~50%): an easy-VQA question about its picture; ``image="image.png"``, no hint.
* TXT (~25%): the same kind of question without the picture; the hint states its facts
  ("The image shows a blue rectangle."), so the text alone answers it.
* NO  (~25%): no picture, no hint; a vocabulary question ("Which of these is a color?").

Question families fix subject/topic/category/skill/lecture (shape -> natural science,
colour -> language science, "is there a ..." and vocabulary -> social science); the grade
cycles with the pid so both grade bands occur in every split. Train and val come from
easy-VQA's train questions on disjoint images, test from its test questions.

Usage: ``build_scienceqa_from_easy_vqa(out_dir)`` or
``lavin-lightning prepare easy-vqa --out DIR`` (= ``python -m data_modules.prepare.easy_vqa``).

This module also writes the official VQA layout (``build_vqa_from_easy_vqa``, ``--layout vqa``)
and holds what every layout's builder shares: the parsed easy-VQA source, the train/val/test
split on disjoint images, and building once into a temporary sibling that is renamed into
place with its manifest. The other layouts (``--layout coco-captions|flickr30k|textcaps|aokvqa|
textvqa|mmlu|truthfulqa|llava-instruct``) are in the sibling modules named in ``_LAYOUTS``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

from lavin_lightning.errors import ConfigError, DataError

__all__ = ["build_scienceqa_from_easy_vqa", "build_vqa_from_easy_vqa", "main", "MANIFEST_NAME"]

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
YES_NO = ("yes", "no")
# Shapes that easy-VQA never draws and that name none of its pictures: wrong answer choices only.
UNDRAWN_SHAPES = ("star", "pentagon", "hexagon", "heart")

MANIFEST_NAME = "easy_vqa_build.json"
# Added to easy-VQA's test image ids wherever a layout keeps its image ids, so that they never
# collide with its train image ids.
TEST_IMAGE_OFFSET = 1_000_000
# Bump when the generated content changes, so that older builds are rebuilt, not reused.
FORMAT_VERSION = 1

_INSTALL_HINT = (
    "the easy-vqa package is not installed; install it with "
    "`pip install --no-deps easy-vqa==1.0` (the project's `make install` does it)"
)

# Fixed ScienceQA metadata per question family. "presence" = easy-VQA's yes/no questions
# ("is there a red shape?"); "vocabulary" = the text-only NO questions.
_FAMILIES = {
    "shape": {
        "subject": "natural science",
        "topic": "shapes",
        "category": "Identify two-dimensional shapes",
        "skill": "Name the shape of an object",
        "lecture": "A shape is described by its outline: a circle is round, a rectangle has "
        "four straight sides and four right angles, and a triangle has three straight sides.",
    },
    "color": {
        "subject": "language science",
        "topic": "colors",
        "category": "Color words",
        "skill": "Name the color of an object",
        "lecture": "A color word names how an object looks in light, such as red, green, "
        "blue, black, gray, teal, brown or yellow.",
    },
    "presence": {
        "subject": "social science",
        "topic": "vocabulary",
        "category": "Describe a picture",
        "skill": "Tell whether a picture shows a thing",
        "lecture": "A picture shows some things and not others. To answer a yes-or-no "
        "question about it, check whether the thing asked about is there, and mind the word not.",
    },
    "vocabulary": {
        "subject": "social science",
        "topic": "vocabulary",
        "category": "Word groups",
        "skill": "Sort words into shapes and colors",
        "lecture": "Words can be sorted into groups: circle, rectangle and triangle name "
        "shapes, while red, green, blue, black, gray, teal, brown and yellow name colors.",
    },
}
# Image questions cycle through these so that every split holds all three subjects.
_IMAGE_FAMILIES = ("shape", "color", "presence")
_N_VOCABULARY_TEMPLATES = 4


class _Question(NamedTuple):
    """One easy-VQA question (its index keeps draws distinct)."""

    index: int
    text: str
    answer: str
    image_id: int
    family: str


# --------------------------------------------------------------------------- easy-VQA


def _import_easy_vqa():
    try:
        import easy_vqa
    except ImportError:
        raise DataError(_INSTALL_HINT) from None
    # Running this file as a script would make `import easy_vqa` find the file itself.
    if not hasattr(easy_vqa, "get_train_questions"):
        raise DataError(f"{_INSTALL_HINT} (found {getattr(easy_vqa, '__file__', easy_vqa)!r} instead)")
    return easy_vqa


def _easy_vqa_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easy-vqa")
    except PackageNotFoundError:
        return "unknown"


_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _family(answer: str) -> str:
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    if answer in YES_NO:
        return "presence"
    raise DataError(f"easy-vqa answer {answer!r} is none of {SHAPES + COLORS + YES_NO}")


def _presence(text: str, answer: str) -> tuple[str, bool]:
    """For a yes/no question: the shape or colour it names and whether the image has it.

    easy-VQA negates with "not" ("is there not a red shape?") or "no" ("is no circle
    present?"); the thing is present iff the answer is "yes" xor the question is negated.
    """
    words = _words(text)
    named = [w for w in words if w in SHAPES or w in COLORS]
    if len(named) != 1:
        raise DataError(f"easy-vqa yes/no question {text!r} names {len(named)} shapes/colors, expected 1")
    negated = "not" in words or "no" in words
    return named[0], (answer == "yes") != negated


def _presence_phrase(text: str, answer: str) -> tuple[str, bool]:
    """For a yes/no question: what it asks about as a noun phrase ("circle", "red shape") and
    whether the image has it."""
    thing, present = _presence(text, answer)
    return (f"{thing} shape" if thing in COLORS else thing), present


def _image_facts(questions: list[_Question]) -> dict[int, tuple[str, str]]:
    """``{image_id: (shape, colour)}`` for the images whose facts the questions settle.

    Evidence per image: a shape/colour answer; a colour/shape named in a "what" question
    ("what color is the circle?" presupposes a circle); a yes/no question saying that a
    thing is present. An image with no evidence or contradicting evidence is left out.
    """
    seen: dict[int, dict[str, set[str]]] = defaultdict(lambda: {"shape": set(), "color": set()})
    for q in questions:
        if q.family == "presence":
            thing, present = _presence(q.text, q.answer)
            named = [thing] if present else []
        else:
            named = [q.answer] + [w for w in _words(q.text) if w in SHAPES or w in COLORS]
        for word in named:
            seen[q.image_id]["shape" if word in SHAPES else "color"].add(word)
    return {
        image_id: (next(iter(s["shape"])), next(iter(s["color"])))
        for image_id, s in seen.items()
        if len(s["shape"]) == 1 and len(s["color"]) == 1
    }


def _questions(raw: tuple[list, list, list]) -> list[_Question]:
    texts, answers, image_ids = raw
    return [
        _Question(i, text, answer, int(image_id), _family(answer))
        for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids))
    ]


class _Source(NamedTuple):
    """One easy-VQA split, parsed: questions, image facts and PNG paths by image id."""

    questions: list[_Question]
    facts: dict[int, tuple[str, str]]
    image_paths: dict[int, str]


@functools.lru_cache(maxsize=1)
def _load_sources(easy_vqa) -> dict[str, _Source]:
    # Parsing the 48k questions dominates a small build; the package data never changes,
    # so repeated builds in one process (tests, sweeps) parse it once.
    sources = {}
    for name, get_questions, get_paths in (
        ("train", easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        ("test", easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    ):
        questions = _questions(get_questions())
        paths = {int(k): v for k, v in get_paths().items()}
        sources[name] = _Source(questions, _image_facts(questions), paths)
    return sources


# --------------------------------------------------------------------------- problems


def _shuffled_choices(correct: str, distractors: list[str], rng: random.Random) -> tuple[list[str], int]:
    choices = [correct, *distractors]
    rng.shuffle(choices)
    return choices, choices.index(correct)


def _answer_choices(answer: str, rng: random.Random) -> tuple[list[str], int]:
    """Correct answer + distractors of its own group: 3 shapes, 4 colours or yes/no."""
    if answer in YES_NO:
        return list(YES_NO), YES_NO.index(answer)
    group, n_distractors = (SHAPES, 2) if answer in SHAPES else (COLORS, 3)
    others = [w for w in group if w != answer]
    return _shuffled_choices(answer, rng.sample(others, n_distractors), rng)


def _question_problem(q: _Question, kind: str, facts: tuple[str, str] | None, rng: random.Random) -> dict:
    """An IMG or TXT problem from one easy-VQA question."""
    choices, answer = _answer_choices(q.answer, rng)
    if q.family == "shape":
        solution = f"The shape in the image is a {q.answer}."
    elif q.family == "color":
        solution = f"The shape in the image is {q.answer}."
    else:
        thing, present = _presence_phrase(q.text, q.answer)
        shows = "shows" if present else "does not show"
        solution = f"The image {shows} a {thing}, so the answer is {q.answer}."
    hint = ""
    if kind == "TXT":
        shape, color = facts
        hint = f"The image shows a {color} {shape}."
    return {
        "question": q.text[:1].upper() + q.text[1:],
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": "image.png" if kind == "IMG" else None,
        "family": q.family,
        "solution": solution,
    }


def _vocabulary_problem(template: int, rng: random.Random) -> dict:
    """A NO problem: a question about the 11 shape/colour words that needs no context."""
    if template in (0, 1):  # "Which of these is a color/shape?" against the other group
        kind, group, other, other_kind = (
            ("color", COLORS, SHAPES, "shapes") if template == 0 else ("shape", SHAPES, COLORS, "colors")
        )
        correct = rng.choice(group)
        choices, answer = _shuffled_choices(correct, rng.sample(other, 3), rng)
        question = f"Which of these is a {kind}?"
        solution = f"{correct.capitalize()} is a {kind}, and the other words name {other_kind}."
    else:  # "Does the word ... name a color/shape?", yes and no equally often
        kind, group, other = ("color", COLORS, SHAPES) if template == 2 else ("shape", SHAPES, COLORS)
        yes = rng.random() < 0.5
        word = rng.choice(group if yes else other)
        actual = kind if yes else ("shape" if kind == "color" else "color")
        choices, answer = list(YES_NO), 0 if yes else 1
        question = f"Does the word {word} name a {kind}?"
        solution = f"The word {word} names a {actual}, so the answer is {YES_NO[answer]}."
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": "",
        "image": None,
        "family": "vocabulary",
        "solution": solution,
    }


def _draw(pool: list[_Question], k: int, rng: random.Random, what: str) -> list[_Question]:
    if k > len(pool):
        raise DataError(
            f"easy-vqa has only {len(pool)} {what}, {k} requested; ask for fewer problems"
        )
    return rng.sample(pool, k)


def _split_problems(
    split: str,
    n: int,
    questions: list[_Question],
    facts: dict[int, tuple[str, str]],
    rng: random.Random,
) -> list[tuple[dict, _Question | None]]:
    """``n`` problems of one split (without pid-dependent fields), with their question."""
    n_img, n_txt = (n + 1) // 2, n // 4
    n_no = n - n_img - n_txt
    # Round-robin families, so that every subject occurs as soon as a split has 3 problems
    # of a kind (easy-VQA itself is 74% yes/no questions).
    img_families = Counter(_IMAGE_FAMILIES[i % 3] for i in range(n_img))
    txt_families = Counter(_IMAGE_FAMILIES[i % 3] for i in range(n_txt))
    specs: list[tuple[str, _Question | int]] = []
    for family in _IMAGE_FAMILIES:
        pool = [q for q in questions if q.family == family]
        # TXT first, from the images whose facts are known; IMG from the remaining questions.
        txt = _draw([q for q in pool if q.image_id in facts], txt_families[family], rng,
                    f"{split} {family} questions with known image facts")
        used = {q.index for q in txt}
        img = _draw([q for q in pool if q.index not in used], img_families[family], rng,
                    f"{split} {family} questions")
        specs += [("TXT", q) for q in txt] + [("IMG", q) for q in img]
    specs += [("NO", i % _N_VOCABULARY_TEMPLATES) for i in range(n_no)]
    rng.shuffle(specs)

    problems = []
    for kind, item in specs:
        if kind == "NO":
            problems.append((_vocabulary_problem(item, rng), None))
        else:
            problems.append((_question_problem(item, kind, facts.get(item.image_id), rng), item))
    return problems


def _full_problem(partial: dict, pid: int, split: str) -> dict:
    """All official ScienceQA fields, in the order of the public problems.json."""
    meta = _FAMILIES[partial["family"]]
    return {
        "question": partial["question"],
        "choices": partial["choices"],
        "answer": partial["answer"],
        "hint": partial["hint"],
        "image": partial["image"],
        "task": "closed choice",
        # Cycling with the pid puts both grade bands (1-6, 7-12) in every split of >= 7.
        "grade": f"grade{(pid - 1) % 12 + 1}",
        "subject": meta["subject"],
        "topic": meta["topic"],
        "category": meta["category"],
        "skill": meta["skill"],
        "lecture": meta["lecture"],
        "solution": partial["solution"],
        "split": split,
    }


def _kind(problem: dict) -> str:
    return "IMG" if problem["image"] else ("TXT" if problem["hint"] else "NO")


# --------------------------------------------------------------------------- files


def _copy_image(src: str | os.PathLike, dst: Path) -> None:
    # Byte copy: the data set keeps easy-VQA's own PNG files, never re-encoded.
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write_json(path: Path, data: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _read_manifest(out: Path) -> dict | None:
    try:
        with open(out / MANIFEST_NAME, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(out: Path, params: dict, files: tuple[str, ...]) -> bool:
    """True if ``out`` holds a finished build with these parameters (and the layout's ``files``).

    The manifest is written last inside the temporary directory, which is renamed into
    place only when complete, so a manifest with the right parameters means a full build.
    """
    manifest = _read_manifest(out)
    return manifest is not None and manifest.get("params") == params and all((out / f).is_file() for f in files)


def _sibling(out: Path, purpose: str) -> Path:
    return out.with_name(f".{out.name}.{purpose}-{uuid.uuid4().hex[:8]}")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing a previous build of ours."""
    old = None
    if out.exists():
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        old = _sibling(out, "old")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None and not out.exists():
            os.rename(old, out)  # keep the previous build rather than nothing
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _split_sources(loaded: dict[str, _Source], n_train: int, n_val: int,
                  rng: random.Random) -> dict[str, tuple[list[_Question], str]]:
    """``{split: (questions, easy-VQA source split)}`` for train, val and test.

    Train and val take easy-VQA's train questions on disjoint images (val's share of the
    images proportional to its size), test its test questions. Every layout splits this way.
    """
    train_qs = loaded["train"].questions
    train_images = sorted({q.image_id for q in train_qs})
    rng.shuffle(train_images)
    n_val_images = max(1, round(len(train_images) * n_val / (n_train + n_val)))
    val_images = set(train_images[:n_val_images])
    return {
        "train": ([q for q in train_qs if q.image_id not in val_images], "train"),
        "val": ([q for q in train_qs if q.image_id in val_images], "train"),
        "test": (loaded["test"].questions, "test"),
    }


def _layout_image_id(image_id: int, source: str) -> int:
    """The image id a layout writes: easy-VQA's own, offset for its test images, so that
    the train and test sources never share one."""
    return image_id + (0 if source == "train" else TEST_IMAGE_OFFSET)


class _Picture(NamedTuple):
    """One easy-VQA image whose shape and colour are known, under the id a layout writes."""

    image_id: int
    source: str  # the easy-VQA split it comes from
    path: str  # its PNG file in the easy-vqa package
    shape: str
    color: str


def _pictures(loaded: dict[str, _Source], questions: list[_Question], source: str) -> list[_Picture]:
    """The images of ``questions`` (of easy-VQA's ``source`` split) whose facts are known, by id."""
    facts = loaded[source].facts
    return [_Picture(_layout_image_id(i, source), source, loaded[source].image_paths[i], *facts[i])
            for i in sorted({q.image_id for q in questions} & facts.keys())]


def _write_build(
    tmp: Path, easy_vqa, params: dict, n_train: int, n_val: int, n_test: int, seed: int
) -> dict:
    """Write the whole data set into ``tmp``; return the manifest (written last)."""
    rng = random.Random(seed)
    loaded = _load_sources(easy_vqa)
    sources = _split_sources(loaded, n_train, n_val, rng)
    sizes = {"train": n_train, "val": n_val, "test": n_test}

    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {}
    counts: dict[str, dict[str, int]] = {}
    captions: dict[str, str] = {}  # pid -> caption, with params["captions"]
    pid = 0
    for split, n in sizes.items():
        questions, source = sources[split]
        # Facts are per image, so the whole easy-VQA split's facts serve train and val alike.
        facts = loaded[source].facts
        splits[split] = []
        for partial, q in _split_problems(split, n, questions, facts, rng):
            pid += 1
            problem = _full_problem(partial, pid, split)
            problems[str(pid)] = problem
            splits[split].append(str(pid))
            if problem["image"]:
                dst = tmp / "images" / split / str(pid) / "image.png"
                _copy_image(loaded[source].image_paths[q.image_id], dst)
                if params.get("captions") and q.image_id in facts:
                    shape, color = facts[q.image_id]
                    captions[str(pid)] = f"A {color} {shape} on a light background."
        kinds = Counter(_kind(problems[p]) for p in splits[split])
        counts[split] = {kind: kinds[kind] for kind in ("IMG", "TXT", "NO")}

    splits["trainval"] = splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        splits[f"mini{split}"] = splits[split][: max(1, len(splits[split]) // 10)]

    _write_json(tmp / "problems.json", problems)
    _write_json(tmp / "pid_splits.json", splits)
    manifest = {
        "source": f"easy-vqa {_easy_vqa_version()}",
        "params": params,
        "counts": counts,
        "images": sum(1 for p in problems.values() if p["image"]),
    }
    if params.get("captions"):
        _write_json(tmp / "captions.json", {"captions": captions})
        manifest["captions"] = len(captions)
    _write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


# --------------------------------------------------------------------------- VQA layout

_ANSWER_TYPES = {"shape": "other", "color": "other", "presence": "yes/no"}


def _question_type(text: str) -> str:
    """VQA-style question type: the question's opening words (VQAv2 uses fixed prefixes)."""
    return " ".join(_words(text)[:3])


def _write_vqa_build(tmp: Path, easy_vqa, params: dict, sizes: dict[str, int], seed: int) -> dict:
    rng = random.Random(seed)
    loaded = _load_sources(easy_vqa)
    pools = _split_sources(loaded, sizes["train"], sizes["val"], rng)
    counts = {}
    for split, n in sizes.items():
        pool, source = pools[split]
        chosen = sorted(_draw(pool, n, rng, f"{split} questions"), key=lambda q: q.index)
        questions, annotations = [], []
        # Question ids are offset so that no two splits share one.
        qid_offset = {"train": 0, "val": 2_000_000, "test": 4_000_000}[split]
        for q in chosen:
            qid, image_id = qid_offset + len(questions) + 1, _layout_image_id(q.image_id, source)
            questions.append({"question_id": qid, "image_id": image_id, "question": q.text})
            # easy-VQA has one answer per question: ten identical human answers, as the VQA layout asks.
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": _question_type(q.text),
                                "answer_type": _ANSWER_TYPES[q.family], "multiple_choice_answer": q.answer,
                                "answers": [{"answer": q.answer, "answer_confidence": "yes", "answer_id": i + 1}
                                            for i in range(10)]})
            dst = tmp / "images" / split / f"{image_id}.png"
            if not dst.exists():
                _copy_image(loaded[source].image_paths[q.image_id], dst)
        _write_json(tmp / f"questions_{split}.json", {"questions": questions, "data_subtype": split})
        _write_json(tmp / f"annotations_{split}.json", {"annotations": annotations, "data_subtype": split})
        counts[split] = {"questions": len(questions), "images": len({q["image_id"] for q in questions})}
    return _write_layout_manifest(tmp, params, counts)


def _layout_params(layout: str, sizes: dict[str, int], seed: int) -> dict:
    """The parameters of a build in a layout other than ScienceQA, as its manifest records them."""
    return {"format": FORMAT_VERSION, "layout": layout, **{f"n_{k}": v for k, v in sizes.items()}, "seed": seed}


def _write_layout_manifest(tmp: Path, params: dict, counts: dict) -> dict:
    """Write (last) and return the manifest of a build in a layout other than ScienceQA."""
    manifest = {"source": f"easy-vqa {_easy_vqa_version()}", "layout": params["layout"], "params": params,
                "counts": counts}
    _write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def build_vqa_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_train: int = 2000, n_val: int = 200, n_test: int = 400, seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write easy-VQA in the official VQA layout in ``out_dir`` and return its path.

    ``questions_<split>.json`` ({"questions": [{question_id, image_id, question}]}),
    ``annotations_<split>.json`` ({"annotations": [{question_id, image_id, question_type,
    answer_type, multiple_choice_answer, answers: 10 x {answer, answer_confidence,
    answer_id}]}) and ``images/<split>/<image_id>.png`` for train, val (easy-VQA train
    questions on disjoint images) and test. easy-VQA has one answer per question, written as
    ten identical human answers; answer types are "yes/no" and "other". Idempotent and
    atomic like ``build_scienceqa_from_easy_vqa``.
    """
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = _layout_params("vqa", sizes, seed)
    return _build_once(out_dir, params, overwrite, lambda tmp, easy_vqa: _write_vqa_build(tmp, easy_vqa, params,
                                                                                           sizes, seed),
                       files=("annotations_test.json",))


# --------------------------------------------------------------------------- entry points


def build_scienceqa_from_easy_vqa(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 400,
    seed: int = 0,
    overwrite: bool = False,
    captions: bool = False,
) -> Path:
    """Write easy-VQA as a ScienceQA data set in ``out_dir`` and return its path.

    Layout (as lupantech/ScienceQA): ``problems.json`` ({pid: problem} with all official
    fields), ``pid_splits.json`` (train/val/test, trainval, minitrain/minival/minitest =
    the first 10% of each) and ``images/<split>/<pid>/image.png`` (easy-VQA's PNG bytes)
    for the IMG problems, plus the manifest ``easy_vqa_build.json``. With ``captions``, also
    ``captions.json`` ({"captions": {pid: caption}}, what ``use_caption`` reads: "A red circle
    on a light background." for every IMG problem whose picture's shape and colour are known);
    the other files are the same as without.

    Returns the absolute path of ``out_dir``. Idempotent: returns at once when ``out_dir``
    already holds a build with the same parameters (``overwrite=True`` rebuilds). The build
    goes to a temporary sibling that is renamed into place when finished, so a failure
    never leaves a partial data set.

    Raises:
        ConfigError: a size below 1.
        DataError: easy-vqa is not installed; ``out_dir`` is a file or a non-empty
            directory without a build manifest (never deleted, even with overwrite);
            easy-vqa has too few questions for the sizes asked.
    """
    params = {"format": FORMAT_VERSION, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed}
    if captions:  # only then, so that the parameters (and manifest) of a build without are as before
        params["captions"] = True
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_build(tmp, easy_vqa, params, n_train, n_val, n_test, seed),
                       files=("problems.json", "pid_splits.json") + (("captions.json",) if captions else ()))


def _build_once(out_dir, params: dict, overwrite: bool, write, files: tuple[str, ...]) -> Path:
    """Run ``write(tmp, easy_vqa)`` into a temporary sibling of ``out_dir`` and rename it
    into place; return at once when ``out_dir`` already holds a build with ``params`` and
    ``files`` (the layout's main files, checked besides the manifest).

    Every ``n_*`` parameter is a size and must be an integer >= 1.
    """
    for name, n in params.items():
        if name.startswith("n_") and (not isinstance(n, int) or n < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {n!r}")
    out = Path(os.path.abspath(out_dir))  # absolute: "." has no name to build a sibling from
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a directory; choose another output path")
        if _read_manifest(out) is None and any(out.iterdir()):
            raise DataError(
                f"{out} exists, is not empty and holds no {MANIFEST_NAME} build manifest, so it "
                "is not an easy-VQA build; refusing to replace it: choose another output path "
                "or remove it yourself"
            )
        if not overwrite and _is_complete(out, params, files):
            return out

    easy_vqa = _import_easy_vqa()
    out.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same file system, so that the final rename is atomic.
    tmp = _sibling(out, "building")
    tmp.mkdir()
    try:
        write(tmp, easy_vqa)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _move_into_place(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not overwrite and _is_complete(out, params, files):
            return out  # a concurrent process (e.g. another rank) finished the same build first
        raise
    return out


_SPLIT_SIZES = ("n_train", "n_val", "n_test")
# --layout -> (its name in the printout, "module:builder" in this package, the sizes the builder
# takes). The other layouts' modules import this one, so they are imported when the command runs.
_LAYOUTS = {
    "scienceqa": ("ScienceQA", "easy_vqa:build_scienceqa_from_easy_vqa", _SPLIT_SIZES),
    "vqa": ("VQA", "easy_vqa:build_vqa_from_easy_vqa", _SPLIT_SIZES),
    "coco-captions": ("COCO Karpathy captions", "captions:build_coco_captions_from_easy_vqa", _SPLIT_SIZES),
    "flickr30k": ("Flickr30k Karpathy captions", "captions:build_flickr30k_from_easy_vqa", _SPLIT_SIZES),
    "textcaps": ("TextCaps", "captions:build_textcaps_from_easy_vqa", _SPLIT_SIZES),
    "aokvqa": ("A-OKVQA", "textvqa_aokvqa:build_aokvqa_from_easy_vqa", _SPLIT_SIZES),
    "textvqa": ("TextVQA", "textvqa_aokvqa:build_textvqa_from_easy_vqa", _SPLIT_SIZES),
    "mmlu": ("MMLU", "multiple_choice:build_mmlu_from_easy_vqa", ("n_val", "n_test")),
    "truthfulqa": ("TruthfulQA", "multiple_choice:build_truthfulqa_from_easy_vqa", ("n_test",)),
    "llava-instruct": ("LLaVA-Instruct", "llava_instruct:build_llava_instruct_from_easy_vqa", ("n_train",)),
}


def _builder(layout: str):
    import importlib

    module, name = _LAYOUTS[layout][1].split(":")
    return getattr(importlib.import_module(f"data_modules.prepare.{module}"), name)


def _flags(sizes) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in sizes)


def main(argv: list[str] | None = None) -> int:
    """``lavin-lightning prepare easy-vqa --out DIR [--layout L]``: build and print the counts."""
    ap = argparse.ArgumentParser(
        prog="lavin-lightning prepare easy-vqa",
        description="Write the easy-VQA data set in the ScienceQA layout or another public layout (offline).",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-train", type=int, help="train size: problems, questions, images or conversations "
                    "(default: the layout's own, 2000 for scienceqa and vqa)")
    ap.add_argument("--n-val", type=int, help="val size (default: the layout's own, 200 for scienceqa and vqa; "
                    "mmlu: per subject)")
    ap.add_argument("--n-test", type=int, help="test size (default: the layout's own, 400 for scienceqa and vqa; "
                    "mmlu: per subject)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="rebuild even if already built")
    ap.add_argument("--captions", action="store_true",
                    help="scienceqa: also write captions.json (image captions, for use_caption)")
    ap.add_argument("--layout", choices=list(_LAYOUTS), default="scienceqa",
                    help="ScienceQA problems (default), the official VQA questions/annotations files, or the "
                    "public files of COCO/Flickr30k Karpathy captions, TextCaps, A-OKVQA, TextVQA, MMLU, "
                    "TruthfulQA (mc_task.json) or LLaVA-Instruct")
    args = ap.parse_args(argv)
    title, _, takes = _LAYOUTS[args.layout]
    sizes = {name: getattr(args, name) for name in _SPLIT_SIZES if getattr(args, name) is not None}
    unused = [name for name in sizes if name not in takes]
    if unused:
        raise SystemExit(f"error: --layout {args.layout} takes {_flags(takes)}, not {_flags(unused)}")
    options = {"captions": True} if args.captions else {}
    if options and args.layout != "scienceqa":
        raise SystemExit(f"error: --captions is for --layout scienceqa, not {args.layout}")
    try:
        out = _builder(args.layout)(args.out, **sizes, **options, seed=args.seed, overwrite=args.overwrite)
    except (DataError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    manifest = _read_manifest(out) or {}
    if args.layout != "scienceqa":
        print(f"easy-VQA in the {title} layout: {out} {json.dumps(manifest.get('counts'))}")
        return 0
    captioned = f", {manifest['captions']} captions" if "captions" in manifest else ""
    print(f"easy-VQA in the ScienceQA layout: {out} ({manifest.get('images', 0)} images{captioned})")
    for split, counts in manifest.get("counts", {}).items():
        kinds = ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in ("IMG", "TXT", "NO"))
        print(f"  {split}: {sum(counts.values())} problems ({kinds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
