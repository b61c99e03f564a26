"""A tiny MME benchmark folder built from the embedded easy-VQA pictures, for smoke runs and tests.

MME asks two yes/no questions per image, one answered Yes and one No, in 14 subtasks. This
builder asks them about easy-VQA's test pictures (one coloured shape each, so their shape
and colour are known facts) in four of MME's subtasks, in the release's file layout
(:mod:`lavin_lightning.formats.mme`):

* existence (perception): "Is there a <shape> in this image?" / another shape
* count (perception): "Is there exactly one shape in this image?" / two or three shapes
* color (perception): "Is the <shape> in this image <colour>?" / another colour
* commonsense_reasoning (cognition): what the shape is like ("Does the shape in this image
  have three corners?", "Is the shape in this image round?") / a false statement of the kind

Each question ends with MME's " Please answer yes or no.". color is written as ``images/`` +
``questions_answers_YN/``, the other subtasks as images beside same-named ``.txt`` files:
the two layouts of the release. Images are named by their zero-padded easy-VQA id; in
file-name order, the "yes" question comes first for the 1st, 3rd, ... image of a subtask and
second for the others, so that a scorer assuming yes-then-no (LaVIN's eval_mme.py) is
visibly wrong on half of them.

Usage: ``build_mme_from_easy_vqa(out_dir)`` or ``lavin-lightning prepare mme-easy-vqa --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from data_modules.prepare.easy_vqa import (
    COLORS,
    FORMAT_VERSION,
    SHAPES,
    _build_once,
    _copy_image,
    _load_sources,
    _read_manifest,
    _write_layout_manifest,
)
from lavin_lightning.errors import ConfigError, DataError

__all__ = ["SUBTASK_LAYOUTS", "build_mme_from_easy_vqa", "main"]

# The subtasks written and the layout of each folder: "folders" = images/ + questions_answers_YN/,
# "beside" = image files beside their .txt files.
SUBTASK_LAYOUTS = {"existence": "beside", "count": "beside", "color": "folders", "commonsense_reasoning": "beside"}
QUESTION_SUFFIX = " Please answer yes or no."
# (true, false) statements about each shape, for commonsense_reasoning.
_CORNERS = "Does the shape in this image have {} corners?"
SHAPE_FACTS = {
    "circle": ("Is the shape in this image round?", "Does the shape in this image have corners?"),
    "rectangle": (_CORNERS.format("four"), _CORNERS.format("three")),
    "triangle": (_CORNERS.format("three"), _CORNERS.format("four")),
}


def yes_no_questions(subtask: str, shape: str, color: str, rng: random.Random) -> tuple[str, str]:
    """The (Yes, No) questions of ``subtask`` about a picture of one ``color`` ``shape``."""
    if subtask == "existence":
        other = rng.choice([s for s in SHAPES if s != shape])
        pair = (f"Is there a {shape} in this image?", f"Is there a {other} in this image?")
    elif subtask == "count":
        pair = ("Is there exactly one shape in this image?",
                f"Are there {rng.choice(('two', 'three'))} shapes in this image?")
    elif subtask == "color":
        other = rng.choice([c for c in COLORS if c != color])
        pair = (f"Is the {shape} in this image {color}?", f"Is the {shape} in this image {other}?")
    elif subtask == "commonsense_reasoning":
        pair = SHAPE_FACTS[shape]
    else:
        raise ConfigError(f"no easy-VQA questions for the MME subtask {subtask!r}; expected one of "
                          f"{list(SUBTASK_LAYOUTS)}")
    return pair[0] + QUESTION_SUFFIX, pair[1] + QUESTION_SUFFIX


def _write_mme_build(tmp: Path, easy_vqa, params: dict, n_images: int, seed: int) -> dict:
    rng = random.Random(seed)
    test = _load_sources(easy_vqa)["test"]  # easy-VQA's test pictures: never seen in training
    needed = n_images * len(SUBTASK_LAYOUTS)
    known = sorted(test.facts)
    if needed > len(known):
        raise DataError(f"easy-vqa has only {len(known)} test images with a known shape and colour, {needed} "
                        f"requested ({n_images} for each of {len(SUBTASK_LAYOUTS)} subtasks); ask for fewer images")
    drawn = iter(rng.sample(known, needed))  # distinct pictures across the subtasks, as MME's
    counts = {}
    for subtask, layout in SUBTASK_LAYOUTS.items():
        folder = tmp / subtask
        images_dir, questions_dir = ((folder / "images", folder / "questions_answers_YN") if layout == "folders"
                                     else (folder, folder))
        questions_dir.mkdir(parents=True, exist_ok=True)
        # Sorted, and named with zero-padded ids, so that readers (file-name order) meet the
        # images in this order: the "yes" question first on even positions.
        for position, image_id in enumerate(sorted(next(drawn) for _ in range(n_images))):
            shape, color = test.facts[image_id]
            yes, no = yes_no_questions(subtask, shape, color, rng)
            lines = [f"{yes}\tYes", f"{no}\tNo"] if position % 2 == 0 else [f"{no}\tNo", f"{yes}\tYes"]
            name = f"{image_id:06d}"
            _copy_image(test.image_paths[image_id], images_dir / f"{name}.png")
            (questions_dir / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[subtask] = {"images": n_images, "questions": 2 * n_images, "layout": layout}
    return _write_layout_manifest(tmp, params, counts)


def build_mme_from_easy_vqa(
    out_dir: str | os.PathLike, *, n_images: int = 10, seed: int = 0, overwrite: bool = False,
) -> Path:
    """Write the tiny MME folder (``n_images`` pictures per subtask, two questions each) in
    ``out_dir`` and return its absolute path.

    Idempotent and atomic like the other easy-VQA builds: returns at once when ``out_dir``
    already holds a build with the same parameters (``overwrite=True`` rebuilds); the build
    goes to a temporary sibling renamed into place when finished.

    Raises:
        ConfigError: ``n_images`` below 1.
        DataError: easy-vqa is not installed; ``out_dir`` is a file or a non-empty folder
            without a build manifest; more images asked for than easy-VQA's test split has.
    """
    params = {"format": FORMAT_VERSION, "layout": "mme", "n_images": n_images, "seed": seed}
    # The manifest, written last and renamed into place with the folders, marks a finished build.
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_mme_build(tmp, easy_vqa, params, n_images, seed), files=())


def main(argv: list[str] | None = None) -> int:
    """``lavin-lightning prepare mme-easy-vqa --out DIR``: build and print the counts."""
    ap = argparse.ArgumentParser(
        prog="lavin-lightning prepare mme-easy-vqa",
        description="Write a tiny MME benchmark folder (yes/no questions) from easy-VQA's test pictures (offline).",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-images", type=int, default=10, help="images per subtask (two questions each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="rebuild even if already built")
    args = ap.parse_args(argv)
    try:
        out = build_mme_from_easy_vqa(args.out, n_images=args.n_images, seed=args.seed, overwrite=args.overwrite)
    except (DataError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"easy-VQA in MME's benchmark layout: {out}")
    for subtask, count in ((_read_manifest(out) or {}).get("counts") or {}).items():
        print(f"  {subtask}: {count['images']} images, {count['questions']} questions ({count['layout']} layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
