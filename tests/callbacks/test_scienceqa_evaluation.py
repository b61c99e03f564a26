"""ScienceQAEvaluation reads the answers out of generated texts (the models return text only)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation
from lavin_lightning.errors import ConfigError

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
