"""Multiple-choice reports: accuracies per benchmark and subject, and base vs adapted comparisons.

What ``lavin-lightning evaluate mc`` reports for MMLU and TruthfulQA MC1 (LLaMA-Excitor gives
MMLU as the relative change against the base model). Accuracies are percentages,
``round(correct / total * 100, 2)``. MMLU reports the micro average (all questions pooled, as
the MMLU paper does) and the macro average (the mean of the unrounded per-subject accuracies).
Pure functions over :class:`MCResult` s; the questions are read by
:mod:`lavin_lightning.formats.multiple_choice`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lavin_lightning.errors import DataError
from lavin_lightning.formats.multiple_choice import MMLU, TRUTHFULQA_MC1, subject_display_name

__all__ = ["MCResult", "compare_reports", "format_comparison", "mc_report"]

_BENCHMARK_LABELS = {MMLU: "MMLU", TRUTHFULQA_MC1: "TruthfulQA MC1"}


@dataclass(frozen=True)
class MCResult:
    """The outcome for one question: log-likelihood per choice, the argmax, and whether it is right."""

    id: str
    benchmark: str
    subject: str
    answer: int
    chosen: int
    correct: bool
    logliks: tuple[float, ...]


# --------------------------------------------------------------------------- reports


def _accuracy(correct: int, total: int) -> float:
    return round(correct / total * 100, 2)


def _entry(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total, "accuracy": _accuracy(correct, total)}


def mc_report(results: Iterable[MCResult]) -> dict:
    """Accuracies per benchmark, JSON-ready; percentages rounded to 2 decimals.

    A benchmark with subjects (MMLU) gives ``{"subjects": {subject: {"correct", "total",
    "accuracy"}}, "micro_average": {"correct", "total", "accuracy"}, "macro_average":
    {"accuracy", "subjects"}}``; one without (TruthfulQA MC1) gives a single
    ``{"correct", "total", "accuracy"}`` under its name (``"truthfulqa_mc1"``).
    """
    tallies: dict[str, dict[str, list[int]]] = {}
    for r in results:
        tally = tallies.setdefault(r.benchmark, {}).setdefault(r.subject, [0, 0])
        tally[0] += bool(r.correct)
        tally[1] += 1
    if not tallies:
        raise DataError("no results to report")
    report: dict = {}
    for benchmark, subjects in tallies.items():
        if list(subjects) == [benchmark]:
            report[benchmark] = _entry(*subjects[benchmark])
            continue
        correct = sum(c for c, _ in subjects.values())
        total = sum(t for _, t in subjects.values())
        macro = sum(c / t * 100 for c, t in subjects.values()) / len(subjects)
        report[benchmark] = {
            "subjects": {s: _entry(*subjects[s]) for s in sorted(subjects)},
            "micro_average": _entry(correct, total),
            "macro_average": {"accuracy": round(macro, 2), "subjects": len(subjects)},
        }
    return report


def _comparison_row(label: str, base: float, adapted: float) -> dict:
    delta = adapted - base
    return {
        "label": label,
        "base": base,
        "adapted": adapted,
        "delta": round(delta, 2),
        # Relative change in % of the base accuracy; undefined for a base of 0.
        "relative": round(delta / base * 100, 2) if base else None,
    }


def _same_total(key: str, base: dict, adapted: dict) -> None:
    if base.get("total") != adapted.get("total"):
        raise DataError(f"{key}: base has {base.get('total')} questions, adapted {adapted.get('total')}; "
                        "the reports must cover the same questions")


def compare_reports(base: dict, adapted: dict) -> dict:
    """``{key: {"label", "base", "adapted", "delta", "relative"}}`` for two :func:`mc_report` s.

    Keys are ``"mmlu/<subject>"`` (subjects sorted), ``"mmlu/micro_average"``,
    ``"mmlu/macro_average"`` and ``"truthfulqa_mc1"``. ``delta`` is adapted - base in absolute
    points, ``relative`` the change in % of the base (None when the base is 0), both from the
    reported (rounded) accuracies, so that the table adds up as printed. Both reports must
    hold the same benchmarks, subjects and question counts.
    """
    benchmarks = [b for b in base if isinstance(base[b], dict)]
    other = [b for b in adapted if isinstance(adapted[b], dict)]
    if sorted(benchmarks) != sorted(other):
        raise DataError(f"the reports hold different benchmarks: base {benchmarks}, adapted {other}")
    rows: dict[str, dict] = {}
    for bench in benchmarks:
        name = _BENCHMARK_LABELS.get(bench, bench)
        b, a = base[bench], adapted[bench]
        if "subjects" not in b:
            _same_total(bench, b, a)
            rows[bench] = _comparison_row(name, b["accuracy"], a["accuracy"])
            continue
        if "subjects" not in a or sorted(b["subjects"]) != sorted(a["subjects"]):
            raise DataError(f"{bench}: the reports hold different subjects")
        for subject in sorted(b["subjects"]):
            key = f"{bench}/{subject}"
            _same_total(key, b["subjects"][subject], a["subjects"][subject])
            rows[key] = _comparison_row(f"{name} {subject_display_name(subject)}",
                                        b["subjects"][subject]["accuracy"], a["subjects"][subject]["accuracy"])
        rows[f"{bench}/micro_average"] = _comparison_row(f"{name} average (micro)", b["micro_average"]["accuracy"],
                                                         a["micro_average"]["accuracy"])
        rows[f"{bench}/macro_average"] = _comparison_row(f"{name} average (macro)", b["macro_average"]["accuracy"],
                                                         a["macro_average"]["accuracy"])
    return rows


def format_comparison(comparison: dict, base_name: str = "base", adapted_name: str = "adapted") -> str:
    """A markdown table of :func:`compare_reports`: accuracy (%), delta (points), relative change (%)."""
    lines = [f"| benchmark | {base_name} | {adapted_name} | delta (points) | relative change (%) |",
             "|---|---:|---:|---:|---:|"]
    for row in comparison.values():
        relative = "-" if row["relative"] is None else f"{row['relative']:+.2f}"
        lines.append(f"| {row['label']} | {row['base']:.2f} | {row['adapted']:.2f} | {row['delta']:+.2f} | "
                     f"{relative} |")
    return "\n".join(lines)
