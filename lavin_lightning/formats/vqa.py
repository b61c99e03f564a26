"""The VQA family's public files: VQAv2 / OK-VQA questions and annotations, TextVQA, A-OKVQA, results.

    VQA questions      {"questions": [{"question_id": int|str, "image_id": int|str, "question": str}, ...], ...}
    VQA annotations    {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                        "multiple_choice_answer" (optional), "answers": [{"answer": str, ...}, ...]}, ...], ...}
    VQA results        [{"question_id": int|str, "answer": str}, ...]   (TextVQA results too)
    TextVQA 0.5.1      {"dataset_type": split, ..., "data": [{"question_id": int, "image_id": str,
                        "question": str, "answers": [10 str] (absent in test), ...}, ...]}
    A-OKVQA v1.0       [{"question_id": str, "image_id": int, "question": str, "choices": [4 str],
                        "correct_choice_idx": int, "direct_answers": [10 str] (both absent in test),
                        "difficult_direct_answer": bool, ...}, ...]
    A-OKVQA predictions {question_id: {"multiple_choice": str, "direct_answer": str}}

Two kinds of checks: the strict ones the scorers apply to a whole file (the first problem is a
DataError), and the per-question ones the data modules screen with
:class:`~lavin_lightning.formats.records.ReadReport` (``on_bad_record``: stop, or skip and count).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any

from lavin_lightning.errors import DataError
from lavin_lightning.formats.records import (
    BadRecord,
    ReadReport,
    bool_field,
    describe,
    id_field,
    is_id,
    is_int,
    read_json_list,
    records_at,
    require_known,
    text_field,
    text_list_field,
)
from lavin_lightning.io import read_json

QUESTIONS_FORMAT = '{"questions": [{"question_id": int|str, "image_id": int|str, "question": str}, ...]}'
ANNOTATIONS_FORMAT = (
    '{"annotations": [{"question_id", "image_id", "question_type", "answer_type", '
    '"multiple_choice_answer" (optional, str), "answers": [{"answer": str}, ...]}, ...]}'
)
RESULTS_FORMAT = 'VQA results [{"question_id": int|str, "answer": str}, ...]'
TEXTVQA_FORMAT = (
    'TextVQA\'s format {"data": [{"question_id": int, "image_id": str, "question": str, '
    '"answers": [str, ...] (not in test)}, ...]}'
)
AOKVQA_FORMAT = (
    'A-OKVQA\'s format [{"question_id": str, "image_id": int, "question": str, "choices": [str, ...], '
    '"correct_choice_idx": int (not in test), "direct_answers": [str, ...] (not in test), ...}, ...]'
)
AOKVQA_PREDICTIONS_FORMAT = 'A-OKVQA predictions {question_id: {"multiple_choice": str, "direct_answer": str}}'


# --------------------------------------------------------------------------- files


def read_vqa_questions(path: str | os.PathLike) -> dict:
    """A VQA questions file; its ``"questions"`` list is checked to be there."""
    document = read_json(path, f"the VQA questions {QUESTIONS_FORMAT}")
    records_at(document, "questions", path, QUESTIONS_FORMAT)
    return document


def read_vqa_annotations(path: str | os.PathLike) -> dict:
    """A VQA annotations file; its ``"annotations"`` list is checked to be there."""
    document = read_json(path, f"the VQA annotations {ANNOTATIONS_FORMAT}")
    records_at(document, "annotations", path, ANNOTATIONS_FORMAT)
    return document


def read_vqa_results(path: str | os.PathLike) -> list:
    """A VQA / TextVQA results file: a list of ``{"question_id", "answer"}`` records."""
    return read_json_list(path, RESULTS_FORMAT)


def read_textvqa(path: str | os.PathLike) -> dict:
    """A TextVQA json; its ``"data"`` list of questions is checked to be there."""
    document = read_json(path, TEXTVQA_FORMAT)
    records_at(document, "data", path, TEXTVQA_FORMAT)
    return document


def read_aokvqa(path: str | os.PathLike) -> list:
    """An A-OKVQA split: the list of its question records."""
    return read_json_list(path, AOKVQA_FORMAT)


def read_aokvqa_predictions(path: str | os.PathLike) -> object:
    """An A-OKVQA predictions file (its layout is checked by the scorer, which also takes it in memory)."""
    return read_json(path, AOKVQA_PREDICTIONS_FORMAT)


# --------------------------------------------------------------------------- strict checks (scorers)


def index_by_question_id(records: list, source: str, what: str, fields: Iterable[str] = ()) -> dict:
    """``{question_id: record}`` in file order; DataError on a bad record or a repeated id."""
    index: dict = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: {what} #{position} is a {type(record).__name__}; expected an object")
        qid = record.get("question_id")
        if not is_id(qid):
            raise DataError(f"{source}: {what} #{position} has no usable question_id (got {qid!r})")
        if qid in index:
            raise DataError(f"{source}: question_id {qid!r} appears more than once")
        absent = [field for field in fields if field not in record]
        if absent:
            raise DataError(f"{source}: question_id {qid!r} lacks the field(s) {', '.join(absent)}")
        index[qid] = record
    return index


def result_answers(results: object, source: str, wanted: dict) -> dict:
    """``{question_id: answer}`` from a VQA/TextVQA results list, covering exactly ``wanted``."""
    records = records_at(results, None, source, RESULTS_FORMAT)
    answers = {qid: r["answer"] for qid, r in index_by_question_id(records, source, "result", ("answer",)).items()}
    for qid, answer in answers.items():
        if not isinstance(answer, str):
            raise DataError(f"{source}: question_id {qid!r} has a {type(answer).__name__} answer; expected a string")
    require_known(answers, wanted, lambda n, first: (
        f"{source}: {n} result(s) for question ids that are not in the ground truth, first: {first}"), repr)
    require_known(wanted, answers, lambda n, first: (
        f"{source}: {n} of {len(wanted)} question(s) have no result, first: {first}; the official evaluator "
        "requires one result per question"), repr)
    return answers


def string_list(value: object, source: str, qid: Hashable, field: str, length: int | None = None) -> list[str]:
    """A record's list of strings (non-empty; exactly ``length`` long when given)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{source}: question_id {qid!r}: {field} must be a list of strings")
    if not value or (length is not None and len(value) != length):
        expected = f"exactly {length}" if length is not None else "at least one"
        raise DataError(f"{source}: question_id {qid!r} has {len(value)} {field}; expected {expected}")
    return value


# --------------------------------------------------------------------------- per-question screening (data modules)


def question_where(path: str | os.PathLike, raw: Any) -> str:
    """Where a question record is, as bad-record messages name it."""
    return f"{path}: question_id {raw.get('question_id') if isinstance(raw, dict) else None!r}"


def check_question(raw: Any, position: int, seen: set[str]) -> dict:
    """A question record with an id not in ``seen`` (which it joins), a question text and an image id."""
    if not isinstance(raw, dict) or not is_id(raw.get("question_id")):
        raise BadRecord("bad_question", f"question #{position} is not an object with a question_id (an integer or "
                        "a non-empty string)")
    qid = raw["question_id"]
    if str(qid) in seen:
        raise BadRecord("duplicate_question_id", f"question_id {qid!r} appears more than once")
    seen.add(str(qid))
    text_field(raw, "question")
    id_field(raw, "image_id")
    return raw


def screen_annotations(
    raw_annotations: list, path: str | os.PathLike, questions: dict[str, dict], questions_path: str | os.PathLike,
    report: ReadReport,
) -> tuple[dict[str, dict], set[str]]:
    """``({str(question_id): annotation}, ids annotated more than once)`` of an annotations file's
    records (at ``path``) for the ``questions`` (of ``questions_path``)."""
    annotations: dict[str, dict] = {}
    repeated: set[str] = set()

    def annotation(raw: Any, position: int) -> dict:
        if not isinstance(raw, dict) or not is_id(raw.get("question_id")):
            raise BadRecord("bad_annotation", f"annotation #{position} is not an object with a question_id")
        qid = raw["question_id"]
        if str(qid) not in questions:
            raise BadRecord("unknown_question_id", f"annotation for question_id {qid!r}, absent from {questions_path}")
        if str(qid) in annotations:
            repeated.add(str(qid))
            raise BadRecord("duplicate_annotation", f"question_id {qid!r} has more than one annotation")
        return raw

    for position, raw in enumerate(raw_annotations):
        kept = report.screen(question_where(path, raw), ANNOTATIONS_FORMAT, annotation, raw, position)
        if kept is not None:
            annotations[str(kept["question_id"])] = kept
    return annotations, repeated


def annotation_of(
    pid: str, annotations: dict[str, dict], repeated: set[str], questions_path: str | os.PathLike
) -> dict:
    """The one annotation of a question (of ``questions_path``)."""
    if pid not in annotations or pid in repeated:
        what = "no annotation" if pid not in annotations else "more than one annotation"
        raise BadRecord("annotation_count", f"the question of {questions_path} has {what}")
    return annotations[pid]


def most_frequent(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one seen first."""
    # most_common is stable, so equal counts keep their first-seen order.
    return Counter(answers).most_common(1)[0][0]


def target_answer(annotation: dict) -> str:
    """``multiple_choice_answer`` when present, else the most frequent answer (ties: the first)."""
    if annotation.get("multiple_choice_answer") is not None:
        return annotation["multiple_choice_answer"]
    return most_frequent([a["answer"] for a in annotation["answers"]])


def _non_empty(target: str) -> str:
    if not target.strip():
        raise BadRecord("empty_answer", "the target answer is empty")
    return target


def checked_target(annotation: dict, scored: bool = False) -> str:
    """The training target of a VQA annotation (:func:`target_answer`), its answers checked, and its
    question and answer types (strings; required when ``scored``: the scorer breaks accuracy down by them)."""
    for key in ("question_type", "answer_type"):
        text_field(annotation, key, required=scored, blank=True)
    answers = annotation.get("answers")
    if not isinstance(answers, list) or not answers:
        raise BadRecord("no_answers", "field 'answers' is missing, empty or not a list")
    for i, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
            got = type(a.get("answer")).__name__ if isinstance(a, dict) else type(a).__name__
            raise BadRecord("non_string_answer", f"answers[{i}].answer is a {got}, expected a string")
    mc = annotation.get("multiple_choice_answer")
    if mc is not None and not isinstance(mc, str):
        raise BadRecord("non_string_answer", f"multiple_choice_answer is a {type(mc).__name__}, expected a string")
    return _non_empty(target_answer(annotation))


def answers_target(raw: dict, field: str, labelled: bool, length: int | None = None) -> str | None:
    """The most frequent of a question's own answers (``raw[field]``, a list of strings: TextVQA's
    ``answers``, A-OKVQA's ``direct_answers``; exactly ``length`` of them when given, as a scorer
    needs); None for a question without answers outside train/val (the published test splits
    have none)."""
    answers = raw.get(field)
    if answers is None:
        if labelled:
            raise BadRecord("no_answers", f"field {field!r} is missing (train and val questions need answers)")
        return None
    if not isinstance(answers, list) or not answers:
        raise BadRecord("no_answers", f"field {field!r} is {describe(answers)}, expected a non-empty list of strings")
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise BadRecord("non_string_answer", f"{field}[{i}] is a {type(answer).__name__}, expected a string")
    if length is not None and len(answers) != length:
        raise BadRecord("answer_count", f"field {field!r} has {len(answers)} answers; the scorer needs exactly "
                        f"{length}")
    return _non_empty(most_frequent(answers))


def check_aokvqa_choices(raw: dict, scored: bool = False) -> None:
    """A-OKVQA's choices, correct index and difficulty flag, when present (only scored, but a bad one
    would stop the scoring after a whole test run). ``scored``: a question with answers also needs
    all the fields the scorer reads (choices, correct_choice_idx, direct_answers, difficult_direct_answer)."""
    if scored and any(key in raw for key in ("correct_choice_idx", "direct_answers")):
        absent = [key for key in ("choices", "correct_choice_idx", "direct_answers", "difficult_direct_answer")
                  if raw.get(key) is None]
        if absent:
            raise BadRecord("missing_field", f"field(s) {', '.join(absent)} missing; a scored question needs them")
    choices = text_list_field(raw, "choices", required=False) or []
    correct = raw.get("correct_choice_idx")
    if correct is not None and (not is_int(correct) or not 0 <= correct < len(choices)):
        raise BadRecord("bad_choice_idx", f"correct_choice_idx {correct!r} is not the index of a choice (0 to "
                        f"{len(choices) - 1} for its {len(choices)} choices)")
    bool_field(raw, "difficult_direct_answer", required=False)
