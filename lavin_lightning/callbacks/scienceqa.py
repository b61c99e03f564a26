"""Score ScienceQA test generations with the official metric, once, on rank 0.

Collects what `test_step` returns (pids and generated texts), gathers it across processes,
reads the chosen option out of every text as the LaVIN release does (`extract_answer`),
scores the choices with `metrics.scienceqa.score_scienceqa`, writes `predictions.json`
(the format `lavin-lightning score scienceqa` reads) and `metrics.json` next to each other,
and logs the accuracies, a per-category bar chart and a predictions table with image
thumbnails (W&B).
"""

from __future__ import annotations

import logging
import random
import re

from data_modules.prompts import OPTION_LETTERS, answer_letter, options_text
from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.scienceqa import PAPER_LABELS, score_scienceqa

log = logging.getLogger(__name__)

# The LaVIN release's pattern, kept verbatim: the trailing '.' is unescaped, so it matches
# any character except a newline ("The answer is Bx" extracts B, "The answer is B" at the
# end of the text extracts nothing).
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")
_LETTERS = "ABCDE"
UNPARSED_ANSWERS = ("unparsed", "random")


def extract_answer(text: str, n_choices: int) -> int | None:
    """The choice index in a generated ``text``, as the LaVIN release extracts it.

    The FIRST match of :data:`ANSWER_PATTERN` anywhere in the text wins (the release decodes
    prompt + continuation, so an answer echoed in the prompt would win too). The letter maps
    to ``"ABCDE".index(letter)`` only if it is among the first ``n_choices`` letters.
    Returns None when nothing valid matched ("unparsed"); the release would pick a random
    choice instead -- see :func:`extract_answer_or_random`.
    """
    matches = ANSWER_PATTERN.findall(text)
    if not matches:
        return None
    letter = matches[0]
    if letter not in _LETTERS[:n_choices]:
        return None
    return _LETTERS.index(letter)


def extract_answer_or_random(text: str, n_choices: int, rng: random.Random) -> tuple[int, bool]:
    """The release's behaviour: :func:`extract_answer`, else a random choice from ``rng``.

    Returns ``(index, was_random)`` so that callers can still count the guesses.
    """
    if n_choices < 1:
        raise ValueError(f"n_choices must be >= 1, got {n_choices}")
    index = extract_answer(text, n_choices)
    if index is not None:
        return index, False
    return rng.choice(range(n_choices)), True


class ScienceQAEvaluation(TestScoring):
    """Official ScienceQA accuracy for every test run.

    Args:
        output_dir: where predictions.json and metrics.json go (default: the
            trainer's default_root_dir).
        unparsed_answers: "unparsed" scores a generation without a valid "The answer is X."
            as wrong and counts it; "random" picks a random option instead, as LaVIN's
            release does (counted as `random_fallback`).
        seed: seed of the random fallback (the picks follow the sorted pids, so they do not
            depend on the number of processes).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "problems"

    def __init__(self, output_dir: str | None = None, unparsed_answers: str = "unparsed", seed: int = 0,
                 table_rows: int = 200):
        if unparsed_answers not in UNPARSED_ANSWERS:
            raise ConfigError(f"unparsed_answers must be one of {UNPARSED_ANSWERS}, got {unparsed_answers!r}")
        super().__init__(output_dir, table_rows)
        self.unparsed_answers = unparsed_answers
        self.seed = seed

    def score(self, trainer, records: list[dict]) -> None:
        problems = trainer.datamodule.problems
        records.sort(key=lambda r: int(r["pid"]) if r["pid"].isdigit() else r["pid"])
        rng = random.Random(self.seed)
        guessed = 0
        for r in records:
            n_choices = len(problems[r["pid"]]["choices"])
            if self.unparsed_answers == "random":
                r["pred"], was_random = extract_answer_or_random(r["text"], n_choices, rng)
                guessed += was_random
            else:
                r["pred"] = extract_answer(r["text"], n_choices)
        predictions = {r["pid"]: r["pred"] for r in records}
        metrics = score_scienceqa(problems, predictions, [r["pid"] for r in records])
        metrics["counts"]["random_fallback"] = guessed
        self.metrics = metrics
        out = self.output_path(trainer)
        results = {"results": predictions, "outputs": {r["pid"]: r["text"] for r in records}}
        write_json(out / "predictions.json", results, indent=1)
        write_json(out / "metrics.json", metrics)
        log.info("ScienceQA: average %s%% over %d problems (%d unparsed); wrote %s and %s",
                 metrics["acc_average"], len(records), metrics["counts"]["unparsed"], out / "metrics.json",
                 out / "predictions.json")
        self.log_scores(trainer, {"test/accuracy": float(metrics["acc_average"]),
                                  **{f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, str)}})
        # Per category, as the papers' tables print them; categories without a problem are left out.
        per_category = metrics["counts"]["per_category"]
        self.log_bar_chart(trainer, "test/scienceqa_categories", "ScienceQA test accuracy per category (%)",
                           ["category", "accuracy", "correct", "total"],
                           [[label, float(metrics[key]), *per_category[key]] for key, label in PAPER_LABELS.items()
                            if metrics[key] is not None])
        rows = []
        for r in records[: self.table_rows]:
            problem = problems[r["pid"]]
            prediction = None if r["pred"] is None else OPTION_LETTERS[r["pred"]]
            rows.append((r["pid"], [r["pid"], problem["question"], options_text(problem), r["text"], prediction,
                                    answer_letter(problem), r["pred"] == problem["answer"]]))
        self.log_table(trainer, "test/predictions",
                       ["pid", "question", "choices", "generated", "prediction", "answer", "correct"], rows)
