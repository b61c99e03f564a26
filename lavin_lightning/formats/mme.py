"""MME's public files: the benchmark folder (MME_Benchmark_release_version) and the eval tool's results layout.

    benchmark   <root>/<subtask>/ for each of the 14 subtasks, in one of two layouts:
                  images/<name>.jpg|.png  +  questions_answers_YN/<name>.txt
                  <name>.jpg|.png beside <name>.txt
                each .txt holds the image's two questions, one a line: ``question<TAB>Yes|No``
    results     <dir>/<subtask>.txt, one line per question:
                  ``image<TAB>question<TAB>ground truth<TAB>prediction``
                the two questions of an image on consecutive lines (the eval tool pairs lines 1-2, 3-4, ...)

The benchmark reader screens every image with a
:class:`~lavin_lightning.formats.records.ReadReport` (``on_bad_record``: stop, or skip the
image and count it); the results reader is strict, as the scorer needs every line. A problem
is a DataError naming the file, the line and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.records import BadRecord, ReadReport
from lavin_lightning.io import atomic_write

# The eval tool's two groups, in its order (the totals add the subtasks in this order).
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGES_FOLDER = "images"
QUESTIONS_FOLDER = "questions_answers_YN"
ANSWERS = ("yes", "no")

QUESTIONS_FORMAT = "two lines 'question<TAB>Yes|No', one per question of the image"
RESULTS_FORMAT = ("one line per question 'image<TAB>question<TAB>ground truth (Yes|No)<TAB>prediction', "
                  "the two questions of an image on consecutive lines")
BENCHMARK_FORMAT = (f"MME's benchmark folder: one folder per subtask ({', '.join(SUBTASKS)}), each holding "
                    f"{IMAGES_FOLDER}/ + {QUESTIONS_FOLDER}/ or image files beside same-named .txt files")


@dataclass(frozen=True)
class MMEQuestion:
    """One question of the benchmark; ``answer`` is the ground truth as written ("Yes" or "No")."""

    subtask: str
    image: str  # the image's file name: the first column of the results layout
    index: int  # 0 or 1: the line of the image's question file it comes from
    question: str
    answer: str

    @property
    def pid(self) -> str:
        """The question's id in batches and prediction files: ``<subtask>/<image>/<index>``."""
        return f"{self.subtask}/{self.image}/{self.index}"


@dataclass(frozen=True)
class MMEImage:
    """One image of a subtask and its two questions."""

    subtask: str
    name: str
    path: Path
    questions: tuple[MMEQuestion, MMEQuestion]


@dataclass(frozen=True)
class MMEResult:
    """One line of the results layout."""

    image: str
    question: str
    ground_truth: str
    prediction: str


# --------------------------------------------------------------------------- text files


def _read_text(path: Path, expected: str) -> str:
    """A UTF-8 text file (a byte-order mark is dropped), its line ends as ``\\n``."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # universal newlines: \r\n and \r become \n
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); expected {expected}") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); expected {expected}") from None


def _lines(text: str) -> list[str]:
    """The lines of a text, without their line ends; a final line end starts no new line."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# --------------------------------------------------------------------------- benchmark


def _questions_of(path: Path, subtask: str, image: str) -> tuple[MMEQuestion, MMEQuestion]:
    """The two questions of an image's question file; BadRecord (naming the line) otherwise.

    Blank lines are passed over; every other line is stripped, as the community's converters
    read it, and must be ``question<TAB>Yes|No``.
    """
    found = []
    for number, line in enumerate(_lines(_read_text(path, QUESTIONS_FORMAT)), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2:
            raise BadRecord("bad_line", f"line {number} has {len(fields)} tab-separated field(s), not 2")
        question, answer = fields[0].strip(), fields[1].strip()
        if not question:
            raise BadRecord("bad_line", f"line {number} has an empty question")
        if answer.lower() not in ANSWERS:
            raise BadRecord("bad_answer", f"line {number} answers {answer!r}, not Yes or No")
        found.append((question, answer))
    if len(found) != 2:
        raise BadRecord("question_count", f"{len(found)} question(s), not 2")
    return tuple(MMEQuestion(subtask, image, index, question, answer)  # type: ignore[return-value]
                 for index, (question, answer) in enumerate(found))


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: file}`` of the files of ``folder`` with one of ``suffixes`` (any case)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in files:
                raise DataError(f"{folder}: {files[path.stem].name} and {path.name} share a name, so neither can be "
                                f"matched to its question file; expected one image per name")
            files[path.stem] = path
    return files


def read_mme_subtask(folder: str | os.PathLike, subtask: str, report: ReadReport | None = None) -> list[MMEImage]:
    """The images of one subtask folder, sorted by file name, with their two questions each.

    Either layout of the release: ``images/`` + ``questions_answers_YN/`` (then both must be
    there), or image files beside their ``.txt`` files. An image without a question file, a
    question file without an image or a malformed question file is a DataError, or with a
    ``report`` in "skip" mode left out and counted.
    """
    folder = Path(folder)
    report = report or ReadReport()
    images_dir, questions_dir = folder / IMAGES_FOLDER, folder / QUESTIONS_FOLDER
    if images_dir.is_dir() != questions_dir.is_dir():
        present, absent = (images_dir, questions_dir) if images_dir.is_dir() else (questions_dir, images_dir)
        raise DataError(f"{folder} has {present.name}/ but no {absent.name}/; expected both, or image files "
                        "beside same-named .txt question files")
    if not images_dir.is_dir():
        images_dir = questions_dir = folder
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    question_files = _files_by_stem(questions_dir, (".txt",))

    def image_record(stem: str) -> MMEImage:
        if stem not in question_files:
            raise BadRecord("missing_questions", f"no question file {stem}.txt in {questions_dir}")
        if stem not in images:
            raise BadRecord("missing_image", f"no image {stem}.jpg or {stem}.png in {images_dir}")
        image = images[stem]
        return MMEImage(subtask, image.name, image, _questions_of(question_files[stem], subtask, image.name))

    read = []
    for stem in sorted(images.keys() | question_files.keys()):
        where = str(question_files.get(stem) or images[stem])
        kept = report.screen(where, QUESTIONS_FORMAT, image_record, stem)
        if kept is not None:
            read.append(kept)
    if not images and not question_files:
        raise DataError(f"{folder} holds no images (.jpg, .png) and no question files; expected {BENCHMARK_FORMAT}")
    return read


def check_subtasks(subtasks: list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``subtasks`` if every name is one of MME's 14 (None: all that are there); ConfigError otherwise."""
    if subtasks is None:
        return None
    unknown = [name for name in subtasks if name not in SUBTASKS]
    if unknown or not subtasks:
        raise ConfigError(f"unknown MME subtask(s) {unknown or '(none given)'}; expected some of {list(SUBTASKS)}")
    return tuple(subtasks)


def read_mme_benchmark(
    root: str | os.PathLike, subtasks: list[str] | tuple[str, ...] | None = None, report: ReadReport | None = None,
) -> dict[str, list[MMEImage]]:
    """``{subtask: images}`` of MME's benchmark folder, subtasks in the eval tool's order.

    ``subtasks`` None reads every subtask folder that is there (other folders, e.g. an
    ``eval_tool``, are not MME subtasks and are passed over); named subtasks must all be there.
    """
    root = Path(root)
    wanted = check_subtasks(subtasks)
    if not root.is_dir():
        raise DataError(f"{root} not found: expected {BENCHMARK_FORMAT}")
    if wanted is None:
        wanted = tuple(name for name in SUBTASKS if (root / name).is_dir())
        if not wanted:
            raise DataError(f"{root} holds none of MME's subtask folders; expected {BENCHMARK_FORMAT}")
    absent = [name for name in wanted if not (root / name).is_dir()]
    if absent:
        raise DataError(f"{root} has no folder for the subtask(s) {absent}; expected {BENCHMARK_FORMAT}")
    ordered = [name for name in SUBTASKS if name in wanted]
    return {name: read_mme_subtask(root / name, name, report) for name in ordered}


# --------------------------------------------------------------------------- results


def _result(line: str, number: int, path: Path) -> MMEResult:
    fields = line.split("\t")
    if len(fields) != 4:
        raise DataError(f"{path}: line {number} has {len(fields)} tab-separated field(s), not 4; "
                        f"expected {RESULTS_FORMAT}")
    image, question, truth, prediction = fields
    # As the eval tool: the ground truth is lower-cased, never stripped.
    if truth.lower() not in ANSWERS:
        raise DataError(f"{path}: line {number} has the ground truth {truth!r}, not Yes or No; "
                        f"expected {RESULTS_FORMAT}")
    return MMEResult(image, question, truth, prediction)


def read_mme_results_file(path: str | os.PathLike) -> list[MMEResult]:
    """The lines of one ``<subtask>.txt``, checked: four fields, a Yes/No ground truth, an even
    number of lines, the two lines of each pair about the same image."""
    path = Path(path)
    results = []
    for number, line in enumerate(_lines(_read_text(path, RESULTS_FORMAT)), start=1):
        results.append(_result(line, number, path))
    if not results:
        raise DataError(f"{path} is empty; expected {RESULTS_FORMAT}")
    if len(results) % 2:
        raise DataError(f"{path} has {len(results)} lines, an odd number; expected {RESULTS_FORMAT}")
    for first in range(0, len(results), 2):
        a, b = results[first], results[first + 1]
        if a.image != b.image:
            raise DataError(f"{path}: lines {first + 1} and {first + 2} are about the images {a.image!r} and "
                            f"{b.image!r}; expected {RESULTS_FORMAT}")
    return results


def read_mme_results(results_dir: str | os.PathLike) -> dict[str, list[MMEResult]]:
    """``{subtask: lines}`` of a results folder, in the eval tool's order; subtasks without a
    file are left out. A ``.txt`` file named after no subtask is an error (a misspelt
    subtask would otherwise be left out of the totals unnoticed)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise DataError(f"{results_dir} not found: expected a folder with one <subtask>.txt per MME subtask "
                        f"({RESULTS_FORMAT})")
    strays = sorted(p.name for p in results_dir.glob("*.txt") if p.stem not in SUBTASKS)
    if strays:
        raise DataError(f"{results_dir}: {', '.join(strays)} named after no MME subtask; expected <subtask>.txt "
                        f"with subtask one of {list(SUBTASKS)}")
    results = {name: read_mme_results_file(results_dir / f"{name}.txt") for name in SUBTASKS
               if (results_dir / f"{name}.txt").is_file()}
    if not results:
        raise DataError(f"{results_dir} holds no <subtask>.txt result file; expected one per MME subtask "
                        f"({', '.join(SUBTASKS)})")
    return results


def one_line(text: str) -> str:
    """A generation as the prediction column holds it: stripped (as the community's answer files
    are), tabs and line breaks each replaced by a space so that the line keeps its four fields."""
    return text.strip().replace("\t", " ").replace("\r", " ").replace("\n", " ")


def results_line(result: MMEResult) -> str:
    """One line of the results layout (without its line end); the prediction is made one line."""
    for name in ("image", "question", "ground_truth"):
        value = getattr(result, name)
        if any(c in value for c in "\t\r\n"):
            raise DataError(f"the {name} {value!r} holds a tab or a line break, which the results layout cannot hold")
    return "\t".join((result.image, result.question, result.ground_truth, one_line(result.prediction)))


def write_mme_results(results_dir: str | os.PathLike, results: dict[str, list[MMEResult]]) -> list[Path]:
    """Write ``<results_dir>/<subtask>.txt`` for each subtask (atomically) and return the files.

    Result files of other subtasks left in ``results_dir`` by an earlier run are removed, so
    that the folder scores as exactly these subtasks.
    """
    results_dir = Path(results_dir)
    check_subtasks(list(results))
    written = []
    for subtask in (name for name in SUBTASKS if name in results):
        text = "".join(results_line(result) + "\n" for result in results[subtask])
        written.append(atomic_write(results_dir / f"{subtask}.txt",
                                    lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8")))
    for stale in SUBTASKS:
        if stale not in results:
            (results_dir / f"{stale}.txt").unlink(missing_ok=True)
    return written
