"""Malformed inputs, generated: every reader and data module answers with a named error or a counted skip.

For each public format a small valid layout is written to a temporary folder, then one record of
it is changed at random -- a field removed, given a value of another type, an empty or a huge
string, an unknown or a repeated id, the whole record replaced -- or one of its image files is
corrupted. An independent statement of what the format allows (the ``*_ok`` functions here)
says whether the change left the input valid. Then:

* valid input loads, and nothing is reported skipped;
* invalid input is a DataError / ConfigError that names the file and the record or the field,
  or -- where the user opted in with ``on_bad_record="skip"`` -- it loads with the bad record
  left out and counted;
* nothing else: any other exception fails the test, and so does invalid input that loads
  without a skip being counted (a silent wrong result).

Runs are derandomised (the same examples every time, no example database), 30-50 per reader;
``LAVIN_EXPLORE=<n>`` draws n fresh random examples per test instead, to look for new failures.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError, DataError

EXPLORE = int(os.environ.get("LAVIN_EXPLORE", "0"))
MODULES = settings(max_examples=EXPLORE or 30, deadline=None, derandomize=not EXPLORE, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
READERS = settings(MODULES, max_examples=EXPLORE or 50)

TOKENIZER = byte_tokenizer()
COMMON = {"tokenizer": TOKENIZER, "image_size": 8, "max_seq_len": 96}
MODES = st.sampled_from(["error", "skip"])


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # a drawn "value" that removes the field

# --------------------------------------------------------------------------- values

BLANKS = st.sampled_from(["", " ", "\n\t "])
HUGE = st.integers(2_000, 30_000).map(lambda n: "huge " * (n // 5))
TEXTS = st.one_of(BLANKS, st.text(max_size=12), HUGE)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False), TEXTS)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)


def changes(*near: st.SearchStrategy) -> st.SearchStrategy:
    """A replacement value: removal, any JSON value, or one of the near misses of the field."""
    return st.one_of(st.just(MISSING), VALUES, *near)


def changed(record: dict, key: str | None, value: Any) -> Any:
    """``record`` with the field ``key`` changed (removed: MISSING); the key None replaces the whole record."""
    if key is None:
        return None if value is MISSING else value
    record = dict(record)
    if value is MISSING:
        record.pop(key, None)
    else:
        record[key] = value
    return record


# What the formats allow, stated independently of the readers.


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def is_id(v: Any) -> bool:
    return is_int(v) or is_text(v)


def optional_text(record: dict, key: str) -> bool:
    return record.get(key) is None or isinstance(record[key], str)


def most_frequent(answers: list[str]) -> str:
    counts = Counter(answers)
    return next(a for a in answers if counts[a] == max(counts.values()))  # ties: the first seen


def answers_ok(answers: Any) -> bool:
    return (isinstance(answers, list) and bool(answers) and all(isinstance(a, str) for a in answers)
            and is_text(most_frequent(answers)))


def png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def expect(run: Callable[[], Any], valid: bool, mode: str, file: Path | tuple[Path, ...], names: list[str],
           skipped: Callable[[Any], int] = lambda _: 0) -> None:
    """``run()``: valid input loads with nothing skipped; invalid input is a named error, or (skip) counted.

    ``file``: the file the error must name (one of them, for a layout of several files whose
    records refer to each other).
    """
    files = file if isinstance(file, tuple) else (file,)
    try:
        result = run()
    except (DataError, ConfigError) as error:
        message = str(error)
        assert not valid, f"valid input refused: {message}"
        assert any(f.name in message for f in files), f"the message names none of {[f.name for f in files]}: {message}"
        # In skip mode the error may be about the whole file ("no usable records"): the file is named.
        assert mode == "skip" or any(name in message for name in names), f"names none of {names}: {message}"
        return
    count = skipped(result)
    if valid:
        assert count == 0, f"valid input, yet {count} record(s) skipped"
    else:
        assert mode == "skip", "malformed input loaded without an error"
        assert count >= 1, "malformed input loaded without a counted skip"


# --------------------------------------------------------------------------- ScienceQA


def sqa_problem(question: str, choices: list[str], answer: int, image: str | None = None) -> dict:
    return {"question": question, "choices": choices, "answer": answer, "hint": "", "image": image,
            "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "colors",
            "category": "c", "skill": "s", "lecture": "Colours.", "solution": "It is red.", "split": "train"}


SQA_PROBLEMS = {
    "1": sqa_problem("What colour is the square?", ["red", "blue"], 0, "image.png"),
    "2": sqa_problem("Which animal swims?", ["cat", "fish", "bird"], 1),
    "3": sqa_problem("Which word rhymes with cat?", ["hat", "dog"], 0),
}
SQA_SPLITS = {"train": ["1", "2", "3"], "val": ["3"]}


def sqa_ok(problem: Any) -> bool:
    """Problem "2" (no image of its own): what the prompt and the scorer read, of its type."""
    if not isinstance(problem, dict) or not is_text(problem.get("question")):
        return False
    choices, answer = problem.get("choices"), problem.get("answer")
    if not (isinstance(choices, list) and 1 <= len(choices) <= 5 and all(is_text(c) for c in choices)):
        return False
    if not (is_int(answer) and 0 <= answer < len(choices)):
        return False
    if not all(optional_text(problem, key) for key in ("hint", "lecture", "solution", "split")):
        return False
    if not all(key not in problem or isinstance(problem[key], str) for key in ("subject", "grade", "topic")):
        return False
    return problem.get("image") in (None, "")  # any other name is a file that is not there


def write_sqa(root: Path, problems=SQA_PROBLEMS, splits=SQA_SPLITS, captions=None, raw_problems: str | None = None):
    png(root / "images" / "train" / "1" / "image.png")
    if raw_problems is None:
        write_json(root / "problems.json", problems)
    else:
        (root / "problems.json").write_text(raw_problems, encoding="utf-8")
    write_json(root / "pid_splits.json", splits)
    if captions is not None:
        write_json(root / "captions.json", {"captions": captions})
    return root


def sqa_module(root: Path, mode: str, **kwargs):
    from data_modules.scienceqa import ScienceQADataModule

    dm = ScienceQADataModule(str(root), global_batch_size=1, on_bad_record=mode, **{**COMMON, **kwargs})
    dm.setup("fit")
    return dm


def sqa_skipped(dm) -> int:
    return sum(sum(report.get("skipped", {}).values()) for report in dm.truncation_report.values())


SQA_FIELDS = ("question", "choices", "answer", "hint", "image", "split", "lecture", "solution", "subject", "grade",
              "topic", "task")


@MODULES
@given(field=st.sampled_from((*SQA_FIELDS, None)), mode=MODES,
       value=changes(st.integers(-1, 5), st.lists(st.sampled_from(["a", "b", "", 3]), max_size=6)))
def test_scienceqa_problem_fields(field, value, mode):
    problem = changed(SQA_PROBLEMS["2"], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_sqa(Path(tmp), {**SQA_PROBLEMS, "2": problem})
        expect(lambda: sqa_module(root, mode), sqa_ok(problem), mode, root / "problems.json", ["pid 2"],
               sqa_skipped)


@MODULES
@given(pids=st.one_of(VALUES, st.lists(st.sampled_from(["1", "2", "3", 2, "99", " ", None, True, 1.0]), max_size=5)),
       mode=MODES)
def test_scienceqa_split_lists(pids, mode):
    def ok(pids):
        return (isinstance(pids, list) and bool(pids) and all(is_id(p) and str(p) in SQA_PROBLEMS for p in pids)
                and len({str(p) for p in pids}) == len(pids))

    with tempfile.TemporaryDirectory() as tmp:
        root = write_sqa(Path(tmp), splits={**SQA_SPLITS, "train": pids})
        expect(lambda: sqa_module(root, mode), ok(pids), mode, root / "pid_splits.json", ["'train'"], sqa_skipped)


@MODULES
@given(caption=changes(), extra=st.sampled_from([None, "2", "99", ""]), mode=MODES)
def test_scienceqa_captions(caption, extra, mode):
    captions = {} if caption is MISSING else {"1": caption}
    if extra is not None:
        captions[extra] = "A caption."
    valid = all(isinstance(c, str) for c in captions.values()) and all(pid in SQA_PROBLEMS for pid in captions)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_sqa(Path(tmp), captions=captions)
        expect(lambda: sqa_module(root, mode, use_caption=True), valid, mode, root / "captions.json", ["pid"],
               sqa_skipped)


def test_scienceqa_repeated_pid_in_problems_json(tmp_path):
    text = json.dumps(SQA_PROBLEMS)[:-1] + ', "2": ' + json.dumps(SQA_PROBLEMS["3"]) + "}"
    root = write_sqa(tmp_path, raw_problems=text)
    for mode in ("error", "skip"):
        with pytest.raises(DataError, match=r"problems\.json: the key '2' appears more than once"):
            sqa_module(root, mode)


# --------------------------------------------------------------------------- VQA (official layout)


VQA_QUESTIONS = [{"question_id": 10, "image_id": 1, "question": "What colour is it?"},
                 {"question_id": 20, "image_id": 2, "question": "How many?"}]
VQA_ANNOTATIONS = [
    {"question_id": qid, "image_id": image, "question_type": "what", "answer_type": "other",
     "answers": [{"answer": answer, "answer_id": i + 1} for i in range(10)]}
    for qid, image, answer in ((10, 1, "red"), (20, 2, "two"))
]


def vqa_question_ok(q: Any) -> bool:
    # Its id must stay 20 (the annotation's) and its image 2 (the only other file there).
    return (isinstance(q, dict) and is_id(q.get("question_id")) and str(q["question_id"]) == "20"
            and is_text(q.get("question")) and is_id(q.get("image_id")) and str(q["image_id"]) == "2")


def vqa_annotation_ok(a: Any) -> bool:
    if not isinstance(a, dict) or not is_id(a.get("question_id")) or str(a["question_id"]) != "20":
        return False
    answers = a.get("answers")
    if not (isinstance(answers, list) and answers
            and all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers)):
        return False
    if not (optional_text(a, "question_type") and optional_text(a, "answer_type")):
        return False
    mc = a.get("multiple_choice_answer")
    if mc is not None and not isinstance(mc, str):
        return False
    return is_text(mc if mc is not None else most_frequent([x["answer"] for x in answers]))


@MODULES
@given(which=st.sampled_from(["question", "annotation"]),
       field=st.sampled_from(["question_id", "image_id", "question", "answers", "multiple_choice_answer",
                              "question_type", "answer_type", None]),
       value=changes(st.sampled_from([10, "10", 20, "20", 2, "2", 3]),
                     st.lists(st.fixed_dictionaries({"answer": st.sampled_from(["yes", "", " ", 4])}), max_size=3)),
       mode=MODES)
def test_vqa_questions_and_annotations(which, field, value, mode):
    from data_modules.vqa import VQADataModule

    records = {"question": VQA_QUESTIONS, "annotation": VQA_ANNOTATIONS}
    record = changed(records[which][1], field, value)
    questions = [VQA_QUESTIONS[0], record] if which == "question" else VQA_QUESTIONS
    annotations = [VQA_ANNOTATIONS[0], record] if which == "annotation" else VQA_ANNOTATIONS
    valid = vqa_question_ok(questions[1]) and vqa_annotation_ok(annotations[1])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        png(root / "images" / "train" / "1.png")
        png(root / "images" / "train" / "2.png")
        write_json(root / "questions_train.json", {"questions": questions})
        write_json(root / "annotations_train.json", {"annotations": annotations})

        def run():
            dm = VQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode,
                               **COMMON)
            dm.setup("fit")
            return dm

        # A question and its annotation refer to each other: an error may name either file.
        files = (root / "questions_train.json", root / "annotations_train.json")
        expect(run, valid, mode, files, ["question_id", "#1"], lambda dm: sum(dm.report["train"]["skipped"].values()))


# --------------------------------------------------------------------------- TextVQA and A-OKVQA


TEXTVQA = [{"question_id": 1, "image_id": "a1", "question": "What brand?", "answers": ["coke"] * 10},
           {"question_id": 2, "image_id": "a2", "question": "What does it say?", "answers": ["stop"] * 10}]


def textvqa_ok(q: Any) -> bool:
    return (isinstance(q, dict) and is_id(q.get("question_id")) and str(q["question_id"]) != "1"
            and is_id(q.get("image_id")) and str(q["image_id"]) in ("a1", "a2") and is_text(q.get("question"))
            and answers_ok(q.get("answers")))


@MODULES
@given(field=st.sampled_from(["question_id", "image_id", "question", "answers", None]), mode=MODES,
       value=changes(st.sampled_from([1, "1", 3, "a1", "a3"]), st.lists(st.sampled_from(["x", "", 1]), max_size=4)))
def test_textvqa_questions(field, value, mode):
    from data_modules.textvqa import TextVQADataModule

    record = changed(TEXTVQA[1], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for q in TEXTVQA:
            png(root / "train_images" / f"{q['image_id']}.jpg")
        write_json(root / "TextVQA_0.5.1_train.json", {"dataset_type": "train", "data": [TEXTVQA[0], record]})

        def run():
            dm = TextVQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode,
                                   **COMMON)
            dm.setup("fit")
            return dm

        expect(run, textvqa_ok(record), mode, root / "TextVQA_0.5.1_train.json", ["question_id", "#1"],
               lambda dm: sum(dm.report["train"]["skipped"].values()))


def aokvqa_question(qid: str, image_id: int) -> dict:
    return {"split": "train", "image_id": image_id, "question_id": qid, "question": "What is it?",
            "choices": ["a cat", "a dog", "a bus", "a cup"], "correct_choice_idx": 1, "direct_answers": ["dog"] * 10,
            "difficult_direct_answer": False, "rationales": ["It barks."]}


AOKVQA = [aokvqa_question("t1", 1), aokvqa_question("t2", 2)]


def aokvqa_ok(q: Any) -> bool:
    if not isinstance(q, dict) or not is_id(q.get("question_id")) or str(q["question_id"]) == "t1":
        return False
    if not (is_int(q.get("image_id")) and q["image_id"] in (1, 2) and is_text(q.get("question"))):
        return False
    choices = q.get("choices")
    if choices is not None and not (isinstance(choices, list) and choices and all(is_text(c) for c in choices)):
        return False
    correct = q.get("correct_choice_idx")
    if correct is not None and not (is_int(correct) and 0 <= correct < len(choices or [])):
        return False
    difficult = q.get("difficult_direct_answer")
    return (difficult is None or isinstance(difficult, bool)) and answers_ok(q.get("direct_answers"))


@MODULES
@given(field=st.sampled_from(["question_id", "image_id", "question", "choices", "correct_choice_idx",
                              "direct_answers", "difficult_direct_answer", "rationales", None]),
       value=changes(st.sampled_from(["t1", "t3", 1, 2, 3, -1, 4]), st.lists(st.sampled_from(["x", "", 0]),
                                                                            max_size=5)),
       mode=MODES)
def test_aokvqa_questions(field, value, mode):
    from data_modules.aokvqa import AOKVQADataModule

    record = changed(AOKVQA[1], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for q in AOKVQA:
            png(root / "train2017" / f"{q['image_id']:012d}.jpg")
        write_json(root / "aokvqa_v1p0_train.json", [AOKVQA[0], record])

        def run():
            dm = AOKVQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode,
                                  **COMMON)
            dm.setup("fit")
            return dm

        expect(run, aokvqa_ok(record), mode, root / "aokvqa_v1p0_train.json", ["question_id", "#1"],
               lambda dm: sum(dm.report["train"]["skipped"].values()))


# --------------------------------------------------------------------------- captions: Karpathy, TextCaps


def karpathy_image(imgid: int, split: str, cocoid: int) -> dict:
    return {"filepath": "val2014", "filename": f"{cocoid}.jpg", "imgid": imgid, "split": split, "cocoid": cocoid,
            "sentences": [{"raw": f"Picture {imgid}.", "tokens": ["picture"]}]}


KARPATHY = [karpathy_image(0, "train", 100), karpathy_image(1, "train", 101), karpathy_image(2, "test", 102)]


def karpathy_ok(im: Any) -> bool:
    if not isinstance(im, dict) or not is_int(im.get("imgid")) or im["imgid"] in (0, 2):
        return False
    cocoid = im.get("cocoid")
    if cocoid is not None and not (is_int(cocoid) and cocoid not in (100, 102)):
        return False
    if cocoid is None and im["imgid"] in (100, 102):
        return False
    if im.get("split") not in ("train", "restval", "val", "test"):
        return False
    if im.get("filepath") != "val2014" or im.get("filename") != "101.jpg":
        return False  # another name is a file that is not there
    sentences = im.get("sentences")
    return isinstance(sentences, list) and bool(sentences) and all(
        is_text(s.get("raw") if isinstance(s, dict) else s) for s in sentences)


@MODULES
@given(field=st.sampled_from(["imgid", "split", "cocoid", "filename", "filepath", "sentences", None]), mode=MODES,
       value=changes(st.sampled_from([0, 2, 3, 100, 102, "restval", "val", "extra", "101.jpg"]),
                     st.lists(st.one_of(st.fixed_dictionaries({"raw": TEXTS}), TEXTS), max_size=3)))
def test_karpathy_images(field, value, mode):
    from data_modules.captions import CaptionDataModule

    record = changed(KARPATHY[1], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for im in KARPATHY:
            png(root / "images" / "val2014" / im["filename"])
        file = write_json(root / "dataset_coco.json", {"images": [KARPATHY[0], record, KARPATHY[2]]})

        def run():
            dm = CaptionDataModule(str(file), str(root / "images"), global_batch_size=1, on_bad_record=mode, **COMMON)
            dm.setup("fit")
            return dm

        expect(run, karpathy_ok(record), mode, file, ["imgid"],
               lambda dm: sum(sum(report.get("skipped", {}).values()) for report in dm.report.values()))


def textcaps_entry(image_id: str, caption_id: int, caption: str) -> dict:
    return {"image_id": image_id, "image_path": f"train/{image_id}.jpg", "caption_id": caption_id,
            "caption_str": caption, "reference_strs": [caption], "image_classes": ["Sign"]}


TEXTCAPS = [textcaps_entry("aa", 1, "A red can."), textcaps_entry("aa", 2, "A can of coke."),
            textcaps_entry("bb", 3, "A stop sign.")]


def textcaps_ok(entry: Any) -> bool:
    if not isinstance(entry, dict) or not is_text(entry.get("image_id")):
        return False
    # The file of an image is the same in all its entries ("bb" has another), and there.
    if entry.get("image_path") != "train/aa.jpg" or entry["image_id"] == "bb":
        return False
    caption_id = entry.get("caption_id")
    if caption_id is not None and not (is_int(caption_id) and caption_id not in (1, 3)):
        return False
    references = entry.get("reference_strs")
    if references is not None and not (isinstance(references, list) and all(isinstance(r, str) for r in references)):
        return False
    return is_text(entry.get("caption_str"))  # train entries need their caption


@MODULES
@given(field=st.sampled_from(["image_id", "image_path", "caption_str", "caption_id", "reference_strs", None]),
       value=changes(st.sampled_from(["aa", "bb", "cc", " ", 1, 3, 4, "train/bb.jpg", "train/cc.jpg"])),
       mode=MODES)
def test_textcaps_entries(field, value, mode):
    from data_modules.textcaps import TextCapsDataModule

    record = changed(TEXTCAPS[1], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("aa", "bb"):
            png(root / "train_images" / "train" / f"{name}.jpg")
        file = write_json(root / "TextCaps_0.1_train.json", {"data": [TEXTCAPS[0], record, TEXTCAPS[2]]})

        def run():
            dm = TextCapsDataModule(str(root), val_split=None, global_batch_size=1, on_bad_record=mode, **COMMON)
            dm.setup("fit")
            return dm

        expect(run, textcaps_ok(record), mode, file, ["image_id", "#1"],
               lambda dm: sum(sum(report.get("skipped", {}).values()) for report in dm.report.values()))


# --------------------------------------------------------------------------- MME


LINE_TEXT = st.text(alphabet=st.characters(blacklist_characters="\t\n\r\ufeff", blacklist_categories=("Cs",)),
                    max_size=12)
ANSWERS = st.one_of(st.sampled_from(["Yes", "No", "yes", " no ", "Maybe", ""]), LINE_TEXT)


@MODULES
@given(lines=st.lists(st.tuples(st.one_of(st.just("Is it red?"), LINE_TEXT), ANSWERS), min_size=1, max_size=3),
       mode=MODES)
def test_mme_question_files(lines, mode):
    from data_modules.mme import MMEDataModule

    asked = [(q, a) for q, a in lines if q.strip() or a.strip()]  # a blank line is passed over
    valid = len(asked) == 2 and all(q.strip() and a.strip().lower() in ("yes", "no") for q, a in asked)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "b"):
            png(root / "existence" / f"{name}.png")
        (root / "existence" / "a.txt").write_text("Is it red?\tYes\nIs it blue?\tNo\n", encoding="utf-8")
        file = root / "existence" / "b.txt"
        file.write_text("".join(f"{q}\t{a}\n" for q, a in lines), encoding="utf-8")

        def run():
            dm = MMEDataModule(str(root), eval_batch_size=1, on_bad_record=mode, **COMMON)
            dm.setup("test")
            return dm

        expect(run, valid, mode, file, ["line", "question"], lambda dm: sum(dm.report["test"]["skipped"].values()))


# --------------------------------------------------------------------------- instruction data


ALPACA = [{"instruction": "Name a colour.", "input": "", "output": "Red."},
          {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "Say hi.", "output": "Hi."}]


def alpaca_ok(record: Any) -> bool:
    return (isinstance(record, dict) and is_text(record.get("instruction")) and optional_text(record, "input")
            and is_text(record.get("output")))


@MODULES
@given(field=st.sampled_from(["instruction", "input", "output", None]), value=changes(), mode=MODES)
def test_alpaca_records(field, value, mode):
    from data_modules.instruct import AlpacaDataModule

    record = changed(ALPACA[1], field, value)
    with tempfile.TemporaryDirectory() as tmp:
        file = write_json(Path(tmp) / "alpaca.json", [ALPACA[0], record, ALPACA[2]])

        def run():
            dm = AlpacaDataModule(str(file), global_batch_size=1, on_bad_record=mode, tokenizer=TOKENIZER,
                                  max_seq_len=512)  # the Alpaca template alone is 140 bytes
            dm.setup("fit")
            return dm

        expect(run, alpaca_ok(record), mode, file, ["record 1"],
               lambda dm: sum(dm.report["alpaca"]["skipped"].values()))


def turn(role: str, value: str) -> dict:
    return {"from": role, "value": value}


LLAVA = [{"id": "a", "conversations": [turn("human", "Hello?"), turn("gpt", "Hi.")]},
         {"id": "b", "image": "red.png",
          "conversations": [turn("human", "<image>\nWhat colour?"), turn("gpt", "Red.")]}]


def llava_ok(record: dict) -> bool:
    if record.get("image") != "red.png" or not isinstance(record.get("conversations"), list):
        return False  # no image with an "<image>" question, or one that is not there
    turns = record["conversations"]
    if len(turns) != 2 or not all(isinstance(t, dict) for t in turns):
        return False
    (question, answer) = turns
    q, a = question.get("value"), answer.get("value")
    return (question.get("from") == "human" and answer.get("from") == "gpt" and isinstance(q, str)
            and "<image>" in q and bool(q.replace("<image>", "").strip()) and is_text(a) and "<image>" not in a)


@MODULES
@given(field=st.sampled_from(["image", "conversations", "0.value", "1.value", "0.from", "1.from"]),
       value=changes(st.sampled_from(["red.png", "blue.png", "<image>", "<image>\nHi?", "Hi <image>", "gpt", "human"])),
       mode=MODES)
def test_llava_records(field, value, mode):
    from data_modules.instruct import LLaVAInstructDataModule

    record = json.loads(json.dumps(LLAVA[1]))
    if "." in field:
        position, key = field.split(".")
        record["conversations"][int(position)] = changed(record["conversations"][int(position)], key, value)
    else:
        record = changed(record, field, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        png(root / "images" / "red.png")
        file = write_json(root / "llava.json", [LLAVA[0], record])

        def run():
            dm = LLaVAInstructDataModule(str(file), str(root / "images"), global_batch_size=1, on_bad_record=mode,
                                         **COMMON)
            dm.setup("fit")
            return dm

        expect(run, llava_ok(record), mode, file, ["record 1"], lambda dm: sum(dm.report["llava"]["skipped"].values()))


PROMPT = {"instruction": "What is shown?", "image": "red.png"}


def prompt_ok(record: dict) -> bool:
    instruction, pid = record.get("instruction"), record.get("id", "2")
    return (isinstance(instruction, str) and bool(instruction.replace("<image>", "").strip())
            and optional_text(record, "input") and record.get("image") in (None, "", "red.png")
            and is_id(pid) and str(pid) != "x")


@MODULES
@given(field=st.sampled_from(["instruction", "input", "image", "id", "line"]), mode=MODES,
       value=changes(st.sampled_from(["x", "y", 2, "<image>", "red.png", "blue.png"])),
       line=st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=20))
def test_prompt_lines(field, value, line, mode):
    from data_modules.instruct import PromptsDataModule

    if field == "line":  # the line is not a JSON object (or blank, which is passed over)
        text, valid = line, not line.strip()
        if line.strip().startswith("{"):
            return
    else:
        record = changed(PROMPT, field, value)
        text, valid = json.dumps(record), prompt_ok(record)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        png(root / "red.png")
        file = root / "prompts.jsonl"
        file.write_text(json.dumps({"instruction": "Say hi.", "id": "x"}) + "\n" + text + "\n", encoding="utf-8")

        def run():
            dm = PromptsDataModule(str(file), on_bad_record=mode, tokenizer=TOKENIZER, image_size=8)
            dm.setup("predict")
            return dm

        expect(run, valid, mode, file, [f"{file.name}:2", "id"],
               lambda dm: sum(dm.report["prompts"]["skipped"].values()))


# --------------------------------------------------------------------------- multiple choice, references


@READERS
@given(row=st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                            max_size=8) | st.sampled_from(["A", "D", " b ", ""]), min_size=1, max_size=7))
def test_mmlu_rows(row):
    from lavin_lightning.formats.multiple_choice import read_mmlu

    valid = (len(row) == 6 and bool(row[0].strip()) and all(c.strip() for c in row[1:5])
             and row[5].strip() in ("A", "B", "C", "D"))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "test" / "physics_test.csv"
        file.parent.mkdir()
        with open(file, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([["Which is fastest?", "a", "b", "c", "d", "B"], row])
        expect(lambda: read_mmlu(tmp, "test"), valid, "error", file, ["row 2"])


@READERS
@given(field=st.sampled_from(["question", "mc1_targets", None]),
       value=changes(st.dictionaries(st.sampled_from(["Yes.", "No.", " ", "Maybe."]),
                                     st.sampled_from([0, 1, 2, True, 1.0, "1"]), max_size=3)))
def test_truthfulqa_records(field, value):
    from lavin_lightning.formats.multiple_choice import read_truthfulqa_mc1

    good = {"question": "Is the Earth flat?", "mc1_targets": {"No.": 1, "Yes.": 0}}
    record = changed(good, field, value)

    def ok(r):
        targets = r.get("mc1_targets") if isinstance(r, dict) else None
        return (is_text(r.get("question")) and isinstance(targets, dict) and bool(targets)
                and all(is_text(k) for k in targets) and all(is_int(v) and v in (0, 1) for v in targets.values())
                and list(targets.values()).count(1) == 1)

    with tempfile.TemporaryDirectory() as tmp:
        file = write_json(Path(tmp) / "mc_task.json", [good, record])
        expect(lambda: read_truthfulqa_mc1(file), isinstance(record, dict) and ok(record), "error", file,
               ["record 1"])


@READERS
@given(field=st.sampled_from(["image_id", "caption", None]), value=changes())
def test_coco_reference_annotations(field, value):
    from lavin_lightning.formats.captions import read_coco_references

    good = {"image_id": 7, "id": 2, "caption": "a dog"}
    record = changed(good, field, value)
    valid = isinstance(record, dict) and is_id(record.get("image_id")) and is_text(record.get("caption"))
    with tempfile.TemporaryDirectory() as tmp:
        file = write_json(Path(tmp) / "refs.json", {"annotations": [{"image_id": 3, "id": 1, "caption": "a cat"},
                                                                    record]})
        expect(lambda: read_coco_references(file), valid, "error", file, ["annotation 1"])


# --------------------------------------------------------------------------- bad images, every data module


@dataclass
class Layout:
    """A valid tiny layout: how to set its data module up, an image a served record names, and the record."""

    setup: Callable[[str], Any]  # on_bad_record -> the data module, set up
    image: Path
    records: list[str]  # how messages may name that record
    skipped: Callable[[Any], int]


def scienceqa_layout(root: Path) -> Layout:
    write_sqa(root)
    return Layout(lambda mode: sqa_module(root, mode), root / "images" / "train" / "1" / "image.png", ["pid 1"],
                  sqa_skipped)


def vqa_layout(root: Path) -> Layout:
    from data_modules.vqa import VQADataModule

    png(root / "images" / "train" / "1.png")
    png(root / "images" / "train" / "2.png")
    write_json(root / "questions_train.json", {"questions": VQA_QUESTIONS})
    write_json(root / "annotations_train.json", {"annotations": VQA_ANNOTATIONS})

    def setup(mode):
        dm = VQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode, **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "images" / "train" / "2.png", ["question_id 20"],
                  lambda dm: sum(dm.report["train"]["skipped"].values()))


def textvqa_layout(root: Path) -> Layout:
    from data_modules.textvqa import TextVQADataModule

    for q in TEXTVQA:
        png(root / "train_images" / f"{q['image_id']}.jpg")
    write_json(root / "TextVQA_0.5.1_train.json", {"data": TEXTVQA})

    def setup(mode):
        dm = TextVQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode,
                               **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "train_images" / "a2.jpg", ["question_id 2"],
                  lambda dm: sum(dm.report["train"]["skipped"].values()))


def aokvqa_layout(root: Path) -> Layout:
    from data_modules.aokvqa import AOKVQADataModule

    for q in AOKVQA:
        png(root / "train2017" / f"{q['image_id']:012d}.jpg")
    write_json(root / "aokvqa_v1p0_train.json", AOKVQA)

    def setup(mode):
        dm = AOKVQADataModule(str(root), splits={"train": "train"}, global_batch_size=1, on_bad_record=mode, **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "train2017" / "000000000002.jpg", ["question_id 't2'"],
                  lambda dm: sum(dm.report["train"]["skipped"].values()))


def karpathy_layout(root: Path) -> Layout:
    from data_modules.captions import CaptionDataModule

    for im in KARPATHY:
        png(root / "images" / "val2014" / im["filename"])
    file = write_json(root / "dataset_coco.json", {"images": KARPATHY})

    def setup(mode):
        dm = CaptionDataModule(str(file), str(root / "images"), global_batch_size=1, on_bad_record=mode, **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "images" / "val2014" / "101.jpg", ["imgid 1"],
                  lambda dm: sum(sum(report.get("skipped", {}).values()) for report in dm.report.values()))


def textcaps_layout(root: Path) -> Layout:
    from data_modules.textcaps import TextCapsDataModule

    for name in ("aa", "bb"):
        png(root / "train_images" / "train" / f"{name}.jpg")
    write_json(root / "TextCaps_0.1_train.json", {"data": TEXTCAPS})

    def setup(mode):
        dm = TextCapsDataModule(str(root), val_split=None, global_batch_size=1, on_bad_record=mode, **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "train_images" / "train" / "bb.jpg", ["image_id 'bb'"],
                  lambda dm: sum(sum(report.get("skipped", {}).values()) for report in dm.report.values()))


def mme_layout(root: Path) -> Layout:
    from data_modules.mme import MMEDataModule

    for name in ("a", "b"):
        png(root / "existence" / f"{name}.png")
        (root / "existence" / f"{name}.txt").write_text("Is it red?\tYes\nIs it blue?\tNo\n", encoding="utf-8")

    def setup(mode):
        dm = MMEDataModule(str(root), eval_batch_size=1, on_bad_record=mode, **COMMON)
        dm.setup("test")
        return dm

    return Layout(setup, root / "existence" / "b.png", ["b.png"],
                  lambda dm: sum(dm.report["test"]["skipped"].values()))


def llava_layout(root: Path) -> Layout:
    from data_modules.instruct import LLaVAInstructDataModule

    png(root / "images" / "red.png")
    file = write_json(root / "llava.json", LLAVA)

    def setup(mode):
        dm = LLaVAInstructDataModule(str(file), str(root / "images"), global_batch_size=1, on_bad_record=mode,
                                     **COMMON)
        dm.setup("fit")
        return dm

    return Layout(setup, root / "images" / "red.png", ["record 1"],
                  lambda dm: sum(dm.report["llava"]["skipped"].values()))


def prompts_layout(root: Path) -> Layout:
    from data_modules.instruct import PromptsDataModule

    png(root / "red.png")
    file = root / "prompts.jsonl"
    file.write_text(json.dumps({"instruction": "Say hi."}) + "\n" + json.dumps({**PROMPT, "id": "p2"}) + "\n",
                    encoding="utf-8")

    def setup(mode):
        dm = PromptsDataModule(str(file), on_bad_record=mode, tokenizer=TOKENIZER, image_size=8)
        dm.setup("predict")
        return dm

    return Layout(setup, root / "red.png", ["prompts.jsonl:2", "id 'p2'"],
                  lambda dm: sum(dm.report["prompts"]["skipped"].values()))


LAYOUTS = {"scienceqa": scienceqa_layout, "vqa": vqa_layout, "textvqa": textvqa_layout, "aokvqa": aokvqa_layout,
           "karpathy": karpathy_layout, "textcaps": textcaps_layout, "mme": mme_layout, "llava": llava_layout,
           "prompts": prompts_layout}

CORRUPTIONS = st.one_of(
    st.binary(max_size=64).map(lambda data: ("bytes", data)),
    st.floats(0.0, 0.95).map(lambda kept: ("truncate", kept)),
    st.sampled_from([("bytes", b""), ("bytes", b"Hello, I am not an image."), ("missing", None)]),
)


def corrupt(path: Path, how: tuple[str, Any]) -> bool:
    """Damage the image file; whether PIL can still decode it all."""
    kind, arg = how
    if kind == "missing":
        path.unlink()
        return False
    data = path.read_bytes()
    path.write_bytes(arg if kind == "bytes" else data[: int(len(data) * arg)])
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


@MODULES
@given(name=st.sampled_from(sorted(LAYOUTS)), how=CORRUPTIONS, mode=MODES)
def test_bad_images_are_caught_at_setup(name, how, mode):
    with tempfile.TemporaryDirectory() as tmp:
        layout = LAYOUTS[name](Path(tmp))
        decodes = corrupt(layout.image, how)
        expect(lambda: layout.setup(mode), decodes, mode, layout.image, layout.records, layout.skipped)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_an_image_that_breaks_after_setup_is_a_named_error_in_the_batch(tmp_path, name):
    """Never PIL's bare error mid-epoch: the sample's file and pid are named."""
    layout = LAYOUTS[name](tmp_path)
    dm = layout.setup("error")
    dataset = next(iter(dm.datasets.values()))
    index = next(i for i, s in enumerate(dataset.samples) if s.image_path == layout.image)
    assert dataset[index]["has_image"]
    layout.image.write_bytes(layout.image.read_bytes()[:40])  # truncated since setup
    with pytest.raises(DataError) as error:
        dataset[index]
    message = str(error.value)
    assert f"image {layout.image} of record {dataset.samples[index].pid} cannot be decoded" in message, message
    assert "changed or became unreadable since" in message
