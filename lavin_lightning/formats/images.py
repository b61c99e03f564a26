"""The image files that records name: checked to exist and to decode before the first training step.

A data module checks the images of the records it serves while it sets up, so that a corrupt
file -- garbage bytes, a half-downloaded JPEG -- stops the run (or, with
``on_bad_record="skip"``, is left out and counted) before training starts instead of after
some steps. A file that still fails when a batch loads it (changed or lost since) is a
DataError naming the file and the record (:func:`load_image`).

The check decodes the whole file: PIL's ``verify()`` walks a PNG's chunks but leaves a JPEG's
data unread, so it passes a truncated JPEG. JPEGs are decoded at reduced scale (draft mode),
which still reads all of their entropy-coded data. Measured on the embedded easy-VQA ScienceQA
images (1,300 PNGs of 64x64): existence 2 us, verify() 25 us, this decode 73 us per image
(0.1 s for all); a 640x480 JPEG takes about 2 ms (COCO's 82,783 train images about 3 min on
one core, less on several: :class:`ImageCheck` decodes on a few threads). Each file is
decoded once however many records name it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from lavin_lightning.formats.records import BadRecord, ReadReport

Item = TypeVar("Item")

IMAGE_FILE = "an image file that decodes (JPEG, PNG, ...)"
IMAGE_EXPECTED = f"{IMAGE_FILE}; replace the file, or set on_bad_record='skip' to leave its records out"
_NOT_FOUND = "not found"
# Images decoded at once when a limit does not say fewer.
_BLOCK = 256


def load_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` with all of its pixels decoded (whatever PIL raises otherwise)."""
    with Image.open(path) as image:
        image.load()
        return image


def file_problem(path: Path) -> str | None:
    """"not found" (or why the name cannot be looked up: too long, ...) when ``path`` is no file; None otherwise."""
    try:
        return None if path.is_file() else _NOT_FOUND
    except OSError as e:  # is_file() lets some through, e.g. ENAMETOOLONG
        return f"cannot be looked up ({e.strerror})"


def image_problem(path: Path) -> str | None:
    """Why ``path`` is no usable image ("not found", "cannot be decoded (...)"), or None."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, reading all of the data; others: no-op
            image.load()
            image.convert("RGB")  # what the image transform does first
    except Exception as e:  # whatever PIL raises on a file it cannot decode (OSError, ValueError, SyntaxError, ...)
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


class ImageCheck:
    """Decodes each image file once (:func:`image_problem`), a few at a time on threads.

    Calling it with a path returns the path, or raises BadRecord "missing_image" / "bad_image".
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._problems: dict[Path, str | None] = {}

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Decode the files of ``paths`` not decoded yet, on up to ``workers`` threads (PIL
        releases the GIL while it decodes)."""
        todo = list(dict.fromkeys(p for p in paths if p not in self._problems))
        if len(todo) > 1 and self.workers > 1:
            with ThreadPoolExecutor(min(self.workers, len(todo))) as pool:
                self._problems.update(zip(todo, pool.map(image_problem, todo)))
        else:
            self._problems.update((p, image_problem(p)) for p in todo)

    def __call__(self, path: Path) -> Path:
        if path not in self._problems:
            self._problems[path] = image_problem(path)
        problem = self._problems[path]
        if problem is not None:
            raise BadRecord("bad_image" if problem.startswith("cannot be decoded") else "missing_image",
                            f"image {path} {problem}")
        return path


def screen_images(
    items: Sequence[Item], image_of: Callable[[Item], Path | None], where_of: Callable[[Item], str],
    report: ReadReport, check: ImageCheck, limit: int | None = None,
    then: tuple[Callable[[Item], Any], str] | None = None,
) -> list[Item]:
    """The first ``limit`` of ``items`` (all when None), in order, whose image decodes; an item
    without an image (``image_of`` None) always passes. A bad image is a DataError naming
    ``where_of(item)`` and the file, or (``report`` in "skip" mode) the item is left out and
    counted. Only the images of the items looked at are decoded. ``then``: a further check of
    an item whose image decodes (raising BadRecord) and what it expects."""
    kept: list[Item] = []
    start = 0
    while start < len(items) and (limit is None or len(kept) < limit):
        block = items[start:start + (_BLOCK if limit is None else min(_BLOCK, limit - len(kept)))]
        start += len(block)
        check.prefetch(p for p in map(image_of, block) if p is not None)
        for item in block:
            path = image_of(item)
            if path is not None and report.screen(where_of(item), IMAGE_EXPECTED, check, path) is None:
                continue
            if then is not None and report.screen(where_of(item), then[1], then[0], item) is None:
                continue
            kept.append(item)
    return kept


def image_error_message(path: Any, record: str, error: Exception) -> str:
    """What a batch says when an image that decoded at setup fails to load now."""
    return (f"image {path} of record {record} cannot be decoded ({type(error).__name__}: {error}); it decoded when "
            f"the data module was set up, so the file changed or became unreadable since; expected {IMAGE_FILE}")
