"""VQAv2 / OK-VQA accuracy as the official evaluator scores it, and the VQA answer normalisation.

Pure functions, written anew; the rules, their quirks and the data tables (number words,
articles, punctuation marks, contractions) follow the reference evaluators. TextVQA and
A-OKVQA are scored by :mod:`lavin_lightning.metrics.textvqa` and :mod:`lavin_lightning.metrics.aokvqa`;
the files are read by :mod:`lavin_lightning.formats.vqa`.

**VQAv2 / OK-VQA** -- GT-Vision-Lab/VQA ``vqaEval.py``. Per question, the prediction is compared
with each of the human answers left out in turn: ``min(1, matches among the others / 3)``,
averaged over the answers. Reported as ``round(100 * mean, 2)`` overall, per question type, per
answer type and per question (``evalQA``), in the official ``accuracy`` layout.

``mode="official"`` (the 2021 evaluator, the default):
  * ``\\n``/``\\t`` become spaces and both sides are stripped;
  * only when the ground-truth answers are *not all identical* are both sides normalised
    (:func:`process_punctuation`, then :func:`process_digit_article`); with unanimous ground
    truth nothing is normalised, not even the case ("Yes" against 10 x "yes" scores 0).

``mode="legacy"`` (the pre-2021 evaluator that LAVIS and PETAL vendor):
  * the prediction is always cleaned and fully normalised;
  * the ground-truth answers are used as stored -- not stripped, never lower-cased, never
    through the digit/article step -- and only when they are not all identical (compared
    raw) do they go through :func:`process_punctuation`. So "Yes." against 10 x "yes" scores
    1 here and 0 officially, while a mixed ground truth of "Yes"/"no" can never match.

Official quirks kept: whether a punctuation mark is deleted or turned into a space is decided
on the *input* text, for every occurrence at once; the period pattern removes at most 32
periods (the evaluator passes ``re.UNICODE``, 32, where ``sub`` takes its count); contractions
are looked up after lower-casing, so the table's capitalised keys ("Im", "Ive", ...) never
apply; "leaving one answer out" excludes every answer record *equal* to it (the evaluator
compares the answer dicts), which only differs from index-wise leave-one-out when records
repeat, e.g. files without ``answer_id``.

**Answer normalisation** -- :func:`normalize_vqa_answer`, and for TextVQA the EvalAI / mmf
``EvalAIAnswerProcessor`` (:func:`normalize_textvqa_answer`: lower-case, ``,`` and ``?``
removed, ``'s`` -> `` 's``, then the VQA punctuation and digit/article steps), which
:mod:`lavin_lightning.metrics.textvqa` applies to both sides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.records import records_at, require_known
from lavin_lightning.formats.vqa import (
    ANNOTATIONS_FORMAT,
    QUESTIONS_FORMAT,
    index_by_question_id,
    read_vqa_annotations,
    read_vqa_questions,
    read_vqa_results,
    result_answers,
)
from lavin_lightning.io import write_json

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "MODES",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "leave_one_out",
    "normalize_textvqa_answer",
    "normalize_vqa_answer",
    "process_digit_article",
    "process_punctuation",
    "score_vqa",
    "score_vqa_files",
    "vqa_accuracy",
]

MODES = ("official", "legacy")

# The official tables. Order of PUNCTUATION matters (each mark is handled in turn).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# English contractions written without (some of) their apostrophes -> the apostrophe form,
# entry for entry as in the official evaluators' table, oddities included: "somebody'd" maps
# to "somebodyd", "let's"/"she's" map to themselves, and the capitalised keys never match
# because words are lower-cased first.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# A digit-comma-digit anywhere makes every punctuation mark be deleted rather than spaced.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its "(?!<=\d)" is a mistyped lookbehind that
# can never fail in front of a ".", so it is simply a period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
# The evaluator calls sub("", text, re.UNICODE): the flag's value, 32, lands in `count`.
_PERIOD_LIMIT = 32


# --------------------------------------------------------------------------- normalisation


def process_punctuation(text: str) -> str:
    """The official punctuation step (see the module docstring for its quirks)."""
    # Decided once on the input text, as the evaluator tests its unmodified argument.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """Lower-case, split on whitespace, number words -> digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    # Articles are tested after the number mapping and contractions after both, as officially.
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_textvqa_answer(text: str) -> str:
    """The EvalAI answer processor that TextVQA scoring applies to every answer."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    # EvalAI's own comma pattern never fires: the commas are gone by now.
    return process_digit_article(process_punctuation(_clean(text)))


def normalize_vqa_answer(text: str, mode: str = "official") -> str:
    """An answer fully normalised as the named evaluator normalises it.

    ``"official"`` and ``"legacy"`` apply the same steps (newlines/tabs to spaces, strip,
    :func:`process_punctuation`, :func:`process_digit_article`); they differ in *when* the
    VQA scorer applies them (see the module docstring), not in what they do. ``"textvqa"``
    is :func:`normalize_textvqa_answer`.
    """
    if mode == "textvqa":
        return normalize_textvqa_answer(text)
    _check_mode(mode, allowed=(*MODES, "textvqa"))
    return process_digit_article(process_punctuation(_clean(text)))


def _check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> None:
    if mode not in allowed:
        raise ConfigError(f"unknown VQA scoring mode {mode!r}; expected one of {', '.join(allowed)}")


# --------------------------------------------------------------------------- per-question scores


def leave_one_out(prediction: str, answers: list[str], keys: list | None = None) -> float:
    """Mean over the answers of min(1, matches among the *other* answers / 3).

    ``keys`` (one per answer) say which answers count as "the same one" when one is left out;
    by default each answer is only itself.
    """
    hits = [answer == prediction for answer in answers]
    if keys is None:
        total = sum(hits)
        # min(1, float(k) / 3) keeps the official list's element types (int 1 or a float),
        # so that sum() rounds exactly as it does there.
        accs = [min(1, float(total - hit) / 3) for hit in hits]
    else:
        accs = [min(1, float(sum(hit for key, hit in zip(keys, hits) if key != left_out)) / 3) for left_out in keys]
    return float(sum(accs)) / len(accs)


def _vqa_sides(prediction: str, answers: list[str], mode: str) -> tuple[str, list[str]]:
    """The prediction and ground-truth answers as the evaluator of ``mode`` compares them."""
    if mode == "legacy":
        prediction = process_digit_article(process_punctuation(_clean(prediction)))
        if len(set(answers)) > 1:
            answers = [process_punctuation(answer) for answer in answers]
        return prediction, answers
    prediction = _clean(prediction)
    answers = [_clean(answer) for answer in answers]
    if len(set(answers)) > 1:
        prediction = process_digit_article(process_punctuation(prediction))
        answers = [process_digit_article(process_punctuation(answer)) for answer in answers]
    return prediction, answers


def vqa_accuracy(prediction: str, gt_answers: list[str], mode: str = "official") -> float:
    """VQA accuracy of one prediction against its human answers, unrounded (0..1).

    Leave-one-out over however many answers are given, each answer left out on its own (what
    the evaluator does when the answer records differ, as they do via ``answer_id``).
    """
    _check_mode(mode)
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    prediction, answers = _vqa_sides(prediction, list(gt_answers), mode)
    return leave_one_out(prediction, answers)


# --------------------------------------------------------------------------- VQAv2 / OK-VQA


def _percent(values: list) -> float:
    # The official operation order: 100 * sum first, then the division, then round to 2.
    return round(100 * float(sum(values)) / len(values), 2)


def _answer_keys(answers: list[dict], processed: list[str]) -> list | None:
    """What the evaluator's ``item != left_out`` compares, or None when all records differ."""
    ids = [a.get("answer_id") for a in answers]
    if all("answer_id" in a and isinstance(i, Hashable) for a, i in zip(answers, ids)) and len(set(ids)) == len(ids):
        return None  # distinct answer ids: plain index-wise leave-one-out
    # The evaluator compares the records after overwriting their "answer" with the processed text.
    return [{**a, "answer": p} for a, p in zip(answers, processed)]


def score_vqa(
    questions: dict,
    annotations: dict,
    results: list,
    mode: str = "official",
    *,
    questions_source: str = "questions",
    annotations_source: str = "annotations",
    results_source: str = "results",
) -> dict:
    """Official VQA accuracy of ``results`` (VQAv2 / OK-VQA layouts; see the module docstring).

    Returns ``{"overall": float, "perQuestionType": {type: float}, "perAnswerType": {type:
    float}, "evalQA": {question_id: float}}``, every value ``round(100 * accuracy, 2)`` as the
    official ``accuracy`` and ``evalQA`` attributes hold them, types in order of first
    appearance in the annotations. The questions and the annotations must describe the same
    question ids, and the results must hold exactly one string answer for each.

    The ``*_source`` arguments name the inputs in error messages (file paths when called by
    :func:`score_vqa_files`).
    """
    _check_mode(mode)
    question_index = index_by_question_id(
        records_at(questions, "questions", questions_source, QUESTIONS_FORMAT), questions_source, "question"
    )
    annotation_index = index_by_question_id(
        records_at(annotations, "annotations", annotations_source, ANNOTATIONS_FORMAT),
        annotations_source,
        "annotation",
        ("question_type", "answer_type", "answers"),
    )
    require_known(annotation_index, question_index, lambda n, first: (
        f"{annotations_source}: {n} annotation(s) for question ids absent from {questions_source}, first: {first}"),
        repr)
    require_known(question_index, annotation_index, lambda n, first: (
        f"{questions_source}: {n} question(s) without an annotation in {annotations_source}, first: {first}"), repr)
    predictions = result_answers(results, results_source, annotation_index)

    per_question: dict = {}
    per_qtype: dict[str, list] = {}
    per_atype: dict[str, list] = {}
    # Annotation order, as the evaluator iterates: sum() over floats depends on the order.
    for qid, annotation in annotation_index.items():
        records = annotation["answers"]
        if not isinstance(records, list) or not records:
            raise DataError(f"{annotations_source}: question_id {qid!r} has no answers; expected a list of objects")
        if not all(isinstance(r, dict) and isinstance(r.get("answer"), str) for r in records):
            raise DataError(
                f'{annotations_source}: question_id {qid!r}: every answer must be an object with a string "answer"'
            )
        prediction, answers = _vqa_sides(predictions[qid], [r["answer"] for r in records], mode)
        acc = leave_one_out(prediction, answers, _answer_keys(records, answers))
        per_question[qid] = acc
        per_qtype.setdefault(annotation["question_type"], []).append(acc)
        per_atype.setdefault(annotation["answer_type"], []).append(acc)

    return {
        "overall": _percent(list(per_question.values())),
        "perQuestionType": {qtype: _percent(accs) for qtype, accs in per_qtype.items()},
        "perAnswerType": {atype: _percent(accs) for atype, accs in per_atype.items()},
        "evalQA": {qid: round(100 * acc, 2) for qid, acc in per_question.items()},
    }


def score_vqa_files(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    results_path: str | os.PathLike,
    mode: str = "official",
    output: str | os.PathLike | None = None,
) -> dict:
    """:func:`score_vqa` on the official files; with ``output``, also written there atomically."""
    _check_mode(mode)
    questions = read_vqa_questions(questions_path)
    annotations = read_vqa_annotations(annotations_path)
    results = read_vqa_results(results_path)
    scores = score_vqa(
        questions,
        annotations,
        results,
        mode,
        questions_source=str(questions_path),
        annotations_source=str(annotations_path),
        results_source=str(results_path),
    )
    if output is not None:
        write_json(Path(output), scores)
    return scores
