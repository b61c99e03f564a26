"""Score ScienceQA test generations with the official metric, once, on rank 0.

Collects what `test_step` returns (pids and generated texts), gathers it across processes,
reads the chosen option out of every text as the LaVIN release does (`extract_answer`),
scores the choices with `metrics.scienceqa.score_scienceqa`, writes `predictions.json`
(the format `lavin-lightning score scienceqa` reads) and `metrics.json` next to each other,
and logs the accuracies, a per-category bar chart and a predictions table with image
thumbnails (W&B).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import weakref

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


# ANSWER_PATTERN without its spaces, up to the letter; the letter is any of A-Z.
_SPACELESS = "Theansweris"
_SPACELESS_MATCH = re.compile(_SPACELESS + "[A-Z]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# AnswerStop's bounds per tokenizer (the vocabulary is decoded once per process).
_BOUNDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fits(piece: str, at: int) -> bool:
    """Whether `piece` continues the spaceless pattern from its character `at` (as far as it reaches)."""
    for offset, char in enumerate(piece[: len(_SPACELESS) + 1 - at]):
        i = at + offset
        if (i < len(_SPACELESS) and char != _SPACELESS[i]) or (i == len(_SPACELESS) and not "A" <= char <= "Z"):
            return False
    return True


class AnswerStop:
    """ScienceQA's stop rule for generation (a `StopRule`): a row stops once its answer is decided.

    Decided means: its text so far holds a match of :data:`ANSWER_PATTERN` -- the first match
    is what :func:`extract_answer` reads, and the tokens after it cannot change it -- or no match
    can be completed in the tokens the budget leaves. For the latter, every token of the
    vocabulary is decoded once and a lower bound is kept of the tokens needed to complete the
    pattern from each partial match. The bound works on the text without spaces: decoding only
    adds or removes spaces depending on the neighbours (SentencePiece's leading space, clean-up
    of " ." and the like), and a multi-byte character split over tokens never holds an ASCII
    letter, so the space-free text is the concatenation of the tokens' space-free texts and the
    space-free pattern ("Theansweris" + a capital letter) must occur in it. Dropping the spaces
    and the character after the letter only lowers the bound: no row is stopped that could
    still write an answer. If a tokenizer breaks that premise (checked on a few strings), only
    decided rows are stopped.

    Args:
        tokenizer: the model's tokenizer; texts are decoded as the test step decodes them
            (``skip_special_tokens=True``).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        try:
            known = _BOUNDS.get(tokenizer)
        except TypeError:  # a tokenizer that cannot be weakly referenced: computed again
            known = None
        if known is None:
            known = self._bounds(tokenizer)
            with contextlib.suppress(TypeError):
                _BOUNDS[tokenizer] = known
        self.bounded, self.cover, self.anywhere = known
        if not self.bounded:
            log.warning("ScienceQA early stopping: this tokenizer's texts are not the concatenation of its tokens' "
                        "texts (spaces aside); rows are stopped only once their answer is written")

    @classmethod
    def _bounds(cls, tokenizer) -> tuple[bool, list[int], int]:
        """(premise holds, cover[i], anywhere) of a tokenizer: its vocabulary decoded once."""
        pieces = [tokenizer.decode([i], skip_special_tokens=True).replace(" ", "") for i in range(len(tokenizer))]
        bounded = cls._concatenates(tokenizer, pieces)
        size = len(_SPACELESS) + 1
        infinite = 10**9
        # cover[i]: fewest tokens whose texts, concatenated, start with the pattern's characters i:.
        cover = [infinite] * size + [0]
        unique = {piece for piece in pieces if piece}
        for i in range(size - 1, -1, -1):
            for piece in unique:
                if _fits(piece, i):
                    reach = i + len(piece)
                    cover[i] = min(cover[i], 1 if reach >= size else 1 + cover[reach])
        # The fewest tokens whose texts hold the whole pattern, starting anywhere in the first.
        anywhere = infinite
        for piece in unique:
            if _SPACELESS_MATCH.search(piece):
                anywhere = 1
                break
            for j in range(1, min(len(piece), len(_SPACELESS)) + 1):
                if piece.endswith(_SPACELESS[:j]):
                    anywhere = min(anywhere, 1 + cover[j])
        return bounded, cover, anywhere

    @staticmethod
    def _concatenates(tokenizer, pieces: list[str]) -> bool:
        """Whether decoded texts are their tokens' texts concatenated, spaces aside and with every
        run of non-ASCII characters as one (a character split over tokens decodes as several)."""
        def plain(text: str) -> str:
            return _NON_ASCII.sub("\x00", text.replace(" ", ""))

        samples = ["The answer is A.", "Thus, the answer is (B). The answer is C.\n", "Réponse: é\tThe answer is D"]
        for text in samples:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            whole = tokenizer.decode(ids, skip_special_tokens=True)
            if plain(whole) != plain("".join(pieces[i] for i in ids)):
                return False
        return True

    def tokens_needed(self, text: str) -> int:
        """A lower bound of the tokens that must follow `text` before it holds a match (0 when
        nothing can be ruled out)."""
        if not self.bounded:
            return 0
        spaceless = text.replace(" ", "")
        if _SPACELESS_MATCH.search(spaceless):
            return 0
        needed = self.anywhere
        for k in range(1, len(_SPACELESS) + 1):
            if spaceless.endswith(_SPACELESS[:k]):
                needed = min(needed, self.cover[k])
        return needed

    def decided(self, text: str, remaining: int) -> bool:
        return ANSWER_PATTERN.search(text) is not None or self.tokens_needed(text) > remaining

    def __call__(self, generated, remaining: int) -> list[bool]:
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [self.decided(text, remaining) for text in texts]


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
        stop_when_decided: stop each generation once its answer is decided (:class:`AnswerStop`):
            the answers are those of the full budget; a text ends where its answer was decided.
            Applied by models that take a stop rule (`set_stop_rule`), where stopping changes
            no answer (greedy decoding, or sampling with per-sample streams).
    """

    datamodule_attribute = "problems"

    def __init__(self, output_dir: str | None = None, unparsed_answers: str = "unparsed", seed: int = 0,
                 table_rows: int = 200, stop_when_decided: bool = True):
        if unparsed_answers not in UNPARSED_ANSWERS:
            raise ConfigError(f"unparsed_answers must be one of {UNPARSED_ANSWERS}, got {unparsed_answers!r}")
        super().__init__(output_dir, table_rows)
        self.unparsed_answers = unparsed_answers
        self.seed = seed
        self.stop_when_decided = stop_when_decided
        self._stop: AnswerStop | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        super().on_test_epoch_start(trainer, pl_module)
        if self.stop_when_decided and self.applies(trainer) and hasattr(pl_module, "set_stop_rule"):
            if self._stop is None or self._stop.tokenizer is not pl_module.tokenizer:
                self._stop = AnswerStop(pl_module.tokenizer)
            pl_module.set_stop_rule(self._stop)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        try:
            super().on_test_epoch_end(trainer, pl_module)
        finally:
            if self.stop_when_decided and hasattr(pl_module, "set_stop_rule"):
                pl_module.set_stop_rule(None)

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
