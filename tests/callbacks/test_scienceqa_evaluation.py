"""ScienceQAEvaluation reads the answers out of generated texts (the models return text only), as LaVIN does."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from conftest import REFERENCE_DATA

from lavin_lightning.callbacks.scienceqa import (
    ANSWER_PATTERN,
    ScienceQAEvaluation,
    extract_answer,
    extract_answer_or_random,
)
from lavin_lightning.errors import ConfigError

SQA_REF = REFERENCE_DATA / "scienceqa"

PROBLEMS = {
    str(pid): {"question": f"q{pid}", "choices": ["a", "b", "c"], "answer": answer, "subject": "natural science",
               "grade": "grade3", "hint": "", "image": None, "topic": "t"}
    for pid, answer in ((1, 0), (2, 1), (3, 2), (4, 0))
}
TEXTS = {"1": "The answer is A.", "2": "The answer is C.", "3": "no answer at all", "4": "The answer is D."}


def score(tmp_path, **kwargs) -> tuple[dict, dict]:
    callback = ScienceQAEvaluation(output_dir=str(tmp_path), **kwargs)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(problems=PROBLEMS), loggers=[], global_step=0)
    callback.score(trainer, [{"pid": pid, "text": text} for pid, text in TEXTS.items()])
    return callback.metrics, json.loads((tmp_path / "predictions.json").read_text())


def test_unparsed_generations_are_counted_and_scored_wrong(tmp_path):
    metrics, predictions = score(tmp_path)
    # "D" is not among 3 choices, "no answer" matches nothing: both unparsed.
    assert predictions["results"] == {"1": 0, "2": 2, "3": None, "4": None}
    assert predictions["outputs"] == TEXTS
    assert metrics["counts"] == {**metrics["counts"], "total": 4, "correct": 1, "unparsed": 2, "random_fallback": 0}
    assert metrics["acc_average"] == "25.00"


def test_release_random_fallback_is_seeded_and_counted(tmp_path):
    metrics, predictions = score(tmp_path, unparsed_answers="random", seed=3)
    again, _ = score(tmp_path / "again", unparsed_answers="random", seed=3)
    assert metrics["counts"]["random_fallback"] == 2 and metrics["counts"]["unparsed"] == 0
    assert all(predictions["results"][pid] in (0, 1, 2) for pid in ("3", "4"))
    assert again == metrics


def test_unknown_fallback_is_refused():
    with pytest.raises(ConfigError, match="unparsed_answers"):
        ScienceQAEvaluation(unparsed_answers="guess")


# --------------------------------------------------------------------------- extraction


def test_extraction_matches_release_cases():
    path = SQA_REF / "lavin_answer_extraction_cases.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    assert len(cases) > 10
    rng = random.Random(0)
    for case in cases:
        text, n = case["generated_text"], case["n_choices"]
        matches = ANSWER_PATTERN.findall(text)
        assert (matches[0] if matches else "FAILED") == case["extracted"], text
        # "RANDOM" (the release's fallback) is None for us.
        expected = None if case["pred_index"] == "RANDOM" else case["pred_index"]
        assert extract_answer(text, n) == expected, text
        index, was_random = extract_answer_or_random(text, n, rng)
        assert was_random == (expected is None), text
        assert index == expected if expected is not None else 0 <= index < n


def test_extraction_first_match_and_choice_range():
    # First match wins even when it comes from the echoed prompt.
    assert extract_answer("The answer is C. ... The answer is A.", 3) == 2
    # "D" is the 4th letter: valid for 4 choices, not for 3.
    assert extract_answer("The answer is D.", 4) == 3
    assert extract_answer("The answer is D.", 3) is None
    # The random fallback is reproducible from the rng and stays in range.
    picks = [extract_answer_or_random("no answer", 4, random.Random(7))[0] for _ in range(3)]
    assert len(set(picks)) == 1 and 0 <= picks[0] < 4
    with pytest.raises(ValueError):
        extract_answer_or_random("x", 0, random.Random(0))
