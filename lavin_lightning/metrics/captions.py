"""Image-caption metrics exactly as COCO / LAVIS compute them, plus PETAL's ROUGE-1/ROUGE-L table.

The COCO protocol (pycocoevalcap, as ``COCOEvalCap.evaluate`` and LAVIS run it):

* References and candidates are tokenised by the Stanford PTB tokenizer (CoreNLP 3.4.1 jar,
  ``-preserveLines -lowerCase``, a Java subprocess); punctuation tokens are dropped, except
  brackets: they come out as ``-lrb-``/``-rrb-`` while the list names ``-LRB-`` (kept as is).
* ``Bleu_1``..``Bleu_4``: corpus BLEU (clipped n-gram counts summed over images, brevity
  penalty from the closest reference length, ties to the shorter one).
* ``METEOR``: METEOR 1.5 (``-l en -norm``, another Java subprocess, ~5 s to start); the
  corpus score the jar aggregates, not a mean of per-image scores.
* ``ROUGE_L``: per image, LCS precision and recall are each maximised over the references,
  combined with beta = 1.2, then averaged over images.
* ``CIDEr``: CIDEr-D (n = 4, sigma = 6, clipped counts, x10), document frequencies taken over
  the evaluated images only.

SPICE is not computed: it needs a download of Stanford models and cannot run offline, and
``COCOEvalCap.evaluate`` always runs it, so the scorers are called one by one here.
The evaluated set is the results' image ids (``imgIds = cocoRes.getImgIds()``), in the order
of the references file, as ``COCO.loadRes`` orders them. Scores are unrounded fractions.

PETAL's table (``ROUGE_1_F``, ``ROUGE_1_R``, ``ROUGE_L_F``, ``ROUGE_L_R``): PETAL's release ran
the ``rouge`` package on untokenised strings and labelled ROUGE-1 as ROUGE-L. Here both are
computed on the PTB-tokenised text: per image, each candidate is scored against every
reference and the reference with the best F1 is kept (rouge-score's multi-reference rule,
chosen separately for ROUGE-1 and ROUGE-L; the first reference wins a tie); its F1 and
recall are averaged over images. F1 is the plain harmonic mean of precision and recall.

Deviation from pycocoevalcap, on purpose: line breaks that Java's tokenizer splits on but
pycocoevalcap does not replace (``\\r``, ``\\v``, ``\\f``, U+2028, U+2029) become spaces first;
pycocoevalcap would otherwise shift every later caption onto the wrong image.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.captions import read_coco_references, read_coco_results
from lavin_lightning.io import write_json

__all__ = [
    "ALL_METRICS",
    "OUTPUT_KEYS",
    "ptb_tokenize",
    "rouge_l_scores",
    "rouge_n_scores",
    "score_caption_files",
    "score_captions",
    "score_tokenized",
]

# Selectable metric groups, in output order, and the keys each one produces.
_GROUP_KEYS = {
    "Bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE_L",),
    "CIDEr": ("CIDEr",),
    "ROUGE_1": ("ROUGE_1_F", "ROUGE_1_R", "ROUGE_L_F", "ROUGE_L_R"),  # PETAL's table
}
ALL_METRICS = tuple(_GROUP_KEYS)
OUTPUT_KEYS = tuple(key for keys in _GROUP_KEYS.values() for key in keys)

_JAVA_HELP = (
    "the caption metrics (PTB tokenizer, METEOR) run Java jars and need Java 11+ on PATH; "
    "install a JRE, e.g. `sudo apt install default-jre` (Debian/Ubuntu), `brew install openjdk` "
    "(macOS) or `conda install -c conda-forge openjdk`, then check that `java -version` works"
)

# Characters Java's PTBLexer ends a line on, beyond the "\n" pycocoevalcap already replaces.
_JAVA_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\v\f\u2028\u2029"})


# --------------------------------------------------------------------------- ROUGE (pure)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n_scores(candidate_tokens: Sequence[str], reference_tokens: Sequence[str], n: int = 1) -> tuple:
    """ROUGE-N ``(precision, recall, f1)`` of one candidate against one reference.

    Overlap = n-grams in common with clipped counts (an n-gram counts at most as often as it
    occurs in the other text); precision = overlap / candidate n-grams, recall = overlap /
    reference n-grams, F1 their harmonic mean. Empty sides score 0 instead of dividing by 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cand, ref = _ngrams(candidate_tokens, n), _ngrams(reference_tokens, n)
    overlap = sum((cand & ref).values())
    precision = overlap / sum(cand.values()) if cand else 0.0
    recall = overlap / sum(ref.values()) if ref else 0.0
    return precision, recall, _f1(precision, recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a  # the row holds the shorter sequence
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous pass
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l_scores(candidate_tokens: Sequence[str], reference_tokens: Sequence[str]) -> tuple:
    """ROUGE-L ``(precision, recall, f1)``: LCS length over candidate / reference length.

    F1 is the plain harmonic mean (beta = 1); pycocoevalcap's ``ROUGE_L`` weights recall with
    beta = 1.2 and is reported separately.
    """
    lcs = _lcs_length(candidate_tokens, reference_tokens)
    precision = lcs / len(candidate_tokens) if candidate_tokens else 0.0
    recall = lcs / len(reference_tokens) if reference_tokens else 0.0
    return precision, recall, _f1(precision, recall)


def _petal_rouge(gts: dict, res: dict) -> dict:
    sums = {key: [] for key in _GROUP_KEYS["ROUGE_1"]}
    for image_id, refs in gts.items():
        cand = res[image_id].split()
        tokenized_refs = [ref.split() for ref in refs]
        # max() keeps the first reference among equal F1s.
        _, r1, f1 = max((rouge_n_scores(cand, ref, 1) for ref in tokenized_refs), key=lambda s: s[2])
        _, rl, fl = max((rouge_l_scores(cand, ref) for ref in tokenized_refs), key=lambda s: s[2])
        for key, value in zip(sums, (f1, r1, fl, rl)):
            sums[key].append(value)
    return {key: math.fsum(values) / len(values) for key, values in sums.items()}


# --------------------------------------------------------------------------- Java


@functools.cache
def _java_starts(java: str) -> str | None:
    """None if ``java -version`` runs, else why not (cached: a JVM start costs ~0.1 s)."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if proc.returncode != 0:
        return f"`{java} -version` exited with status {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return None


def _require_java() -> None:
    java = shutil.which("java")
    if java is None:
        raise ConfigError(f"`java` was not found: {_JAVA_HELP}")
    problem = _java_starts(java)
    if problem is not None:
        raise ConfigError(f"`java` ({java}) does not start ({problem}): {_JAVA_HELP}")


# --------------------------------------------------------------------------- tokenisation


def ptb_tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise ``{image_id: [caption, ...]}`` as COCO does (lower case, punctuation dropped).

    Wraps pycocoevalcap's ``PTBTokenizer`` (one Java run for all captions); the tokens of
    each caption come back joined by single spaces, in the input order.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not captions:
        return {}
    _require_java()
    wrapped = {
        image_id: [{"caption": caption.translate(_JAVA_LINE_BREAKS)} for caption in caps]
        for image_id, caps in captions.items()
    }
    try:
        tokenized = PTBTokenizer().tokenize(wrapped)
    except OSError as e:
        # Also raised when the package directory is read-only: PTBTokenizer writes its input there.
        raise ConfigError(
            f"could not run the PTB tokenizer ({e}); it needs `java` and a writable pycocoevalcap/tokenizer "
            f"directory; {_JAVA_HELP}"
        ) from None
    # PTBTokenizer zips its output lines with the input: a crashed JVM would silently drop images.
    for image_id, caps in captions.items():
        got = len(tokenized.get(image_id, ()))
        if got != len(caps):
            raise ConfigError(
                f"the PTB tokenizer returned {got} line(s) for the {len(caps)} caption(s) of image id "
                f"{image_id!r} (Java's error output, if any, is above); {_JAVA_HELP}"
            )
    return tokenized


# --------------------------------------------------------------------------- scoring


def _select(metrics: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    wanted = list(metrics)
    unknown = [m for m in wanted if m not in _GROUP_KEYS]
    if unknown or not wanted:
        raise ConfigError(
            f"metrics must be a non-empty subset of {', '.join(ALL_METRICS)}; got {wanted!r}"
            + (f" (unknown: {', '.join(map(repr, unknown))})" if unknown else "")
        )
    return tuple(m for m in ALL_METRICS if m in wanted)


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()
    except OSError as e:
        raise ConfigError(f"could not start METEOR ({e}); {_JAVA_HELP}") from None
    proc = meteor.meteor_p
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (OSError, ValueError):
        # The jar died (e.g. the JVM could not reserve its -Xmx2G heap): its stderr says why.
        proc.kill()
        detail = proc.stderr.read().decode(errors="replace").strip()[-1000:]
        raise ConfigError(
            f"METEOR (java -jar meteor-1.5.jar) failed: {detail or 'no output'}; {_JAVA_HELP}"
        ) from None
    finally:
        # compute_score keeps its lock on error, and Meteor.__del__ would then block on it.
        if meteor.lock.locked():
            meteor.lock.release()
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):  # stdin may still hold bytes for the dead process
                stream.close()


def score_tokenized(
    references: dict[Hashable, list[str]],
    results: dict[Hashable, str],
    metrics: str | Iterable[str] = ALL_METRICS,
) -> dict[str, float]:
    """The selected metrics over already PTB-tokenised captions (see :func:`ptb_tokenize`).

    ``references`` decides the evaluated images and their order; ``results`` must have the
    same ids. METEOR needs Java; the other metrics are pure Python.
    """
    selected = _select(metrics)
    differ = set(references) ^ set(results)
    if differ:
        image_id = next(iter(differ))
        side = "references" if image_id in references else "results"
        raise DataError(f"image id {image_id!r} is only in the {side}; expected the same image ids in both")
    if "METEOR" in selected:
        _require_java()
    gts = {image_id: list(refs) for image_id, refs in references.items()}
    res = {image_id: [results[image_id]] for image_id in gts}
    scores: dict[str, float] = {}
    for group in selected:
        if group == "Bleu":
            from pycocoevalcap.bleu.bleu import Bleu

            bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
            scores.update(zip(_GROUP_KEYS["Bleu"], map(float, bleus)))
        elif group == "METEOR":
            scores["METEOR"] = _meteor(gts, res)
        elif group == "ROUGE_L":
            from pycocoevalcap.rouge.rouge import Rouge

            scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
        elif group == "CIDEr":
            from pycocoevalcap.cider.cider import Cider

            scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        else:
            scores.update(_petal_rouge(gts, {image_id: caps[0] for image_id, caps in res.items()}))
    return scores


def _id_hint(image_id: object, references: dict) -> str:
    # A common slip: ids written as strings in one file and as numbers in the other.
    other = str(image_id) if isinstance(image_id, int) else image_id
    if isinstance(other, str) and other.isdigit() and int(other) in references:
        return " (the references use numeric ids: write image_id as a number)"
    if isinstance(image_id, int) and other in references:
        return " (the references use string ids)"
    return ""


def score_captions(
    references: dict[Hashable, list[str]],
    results: dict[Hashable, str],
    metrics: str | Iterable[str] = ALL_METRICS,
    *,
    references_source: str = "references",
    results_source: str = "results",
) -> dict[str, float]:
    """COCO caption metrics of ``results`` (``{image_id: caption}``) against ``references``.

    The evaluated images are the results' ids, ordered as in ``references``; each needs at
    least one reference. ``metrics`` is a subset of ``("Bleu", "METEOR", "ROUGE_L", "CIDEr",
    "ROUGE_1")`` -- "ROUGE_1" is PETAL's table (ROUGE_1_F/R and ROUGE_L_F/R) -- so that callers
    can skip METEOR's JVM start. Returns unrounded fractions under the keys of
    :data:`OUTPUT_KEYS` that the selection produces, in that order.

    ``references_source``/``results_source`` name the inputs in error messages.
    """
    selected = _select(metrics)
    _require_java()  # the tokenizer always runs: fail before any work
    if not results:
        raise DataError(f"{results_source}: no captions to score; expected at least one result")
    for image_id, caption in results.items():
        if not isinstance(caption, str):
            kind = type(caption).__name__
            raise DataError(f"{results_source}: image id {image_id!r} has a {kind} caption; expected a string")
        if image_id not in references:
            raise DataError(
                f"{results_source}: image id {image_id!r} has no reference captions in {references_source}"
                + _id_hint(image_id, references)
            )
    ids = [image_id for image_id in references if image_id in results]
    for image_id in ids:
        refs = references[image_id]
        if not isinstance(refs, list | tuple) or not refs:
            raise DataError(f"{references_source}: image id {image_id!r} has no reference captions")
        for caption in refs:
            if not isinstance(caption, str):
                kind = type(caption).__name__
                raise DataError(
                    f"{references_source}: image id {image_id!r} has a {kind} reference caption; expected a string"
                )
    gts = ptb_tokenize({image_id: list(references[image_id]) for image_id in ids})
    res = ptb_tokenize({image_id: [results[image_id]] for image_id in ids})
    return score_tokenized(gts, {image_id: caps[0] for image_id, caps in res.items()}, selected)


# --------------------------------------------------------------------------- files


def score_caption_files(
    references_path: str | os.PathLike,
    results_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    metrics: str | Iterable[str] = ALL_METRICS,
) -> dict[str, float]:
    """Score a COCO results file against a COCO annotation file (see :func:`score_captions`), both
    read by :mod:`lavin_lightning.formats.captions`.

    With ``output``, the scores are also written there as JSON (indent 2), atomically.
    """
    _select(metrics)
    _require_java()
    references = read_coco_references(references_path)
    results = read_coco_results(results_path)
    scores = score_captions(
        references,
        results,
        metrics,
        references_source=str(references_path),
        results_source=str(results_path),
    )
    if output is not None:
        write_json(Path(output), scores)
    return scores
