"""Multiple-choice reports: per-subject and averaged accuracies, base vs adapted comparisons."""

from __future__ import annotations

import pytest

from lavin_lightning.errors import DataError
from lavin_lightning.metrics.multiple_choice import MCResult, compare_reports, format_comparison, mc_report


def result(subject, correct, benchmark="mmlu"):
    return MCResult("id", benchmark, subject, 0, 0 if correct else 1, correct, (0.0, -1.0))


def test_comparison_deltas_and_relative_change():
    # The outcome of the hand-computed evaluation (tests/commands/test_evaluate.py): alpha right,
    # wrong, right; beta right; TruthfulQA wrong, right.
    adapted = mc_report([result("alpha", True), result("alpha", False), result("alpha", True), result("beta", True),
                         result("truthfulqa_mc1", False, "truthfulqa_mc1"),
                         result("truthfulqa_mc1", True, "truthfulqa_mc1")])
    base = mc_report([result("alpha", True), result("alpha", False), result("alpha", False),
                      result("beta", False),
                      result("truthfulqa_mc1", True, "truthfulqa_mc1"),
                      result("truthfulqa_mc1", True, "truthfulqa_mc1")])
    assert base["mmlu"]["micro_average"]["accuracy"] == 25.0 and base["mmlu"]["macro_average"]["accuracy"] == 16.67
    rows = compare_reports(base, adapted)
    assert list(rows) == ["mmlu/alpha", "mmlu/beta", "mmlu/micro_average", "mmlu/macro_average", "truthfulqa_mc1"]
    assert rows["mmlu/alpha"]["delta"] == pytest.approx(33.34)  # 66.67 - 33.33
    assert rows["mmlu/alpha"]["relative"] == pytest.approx(100.03)  # 33.34 / 33.33
    assert rows["mmlu/beta"] == {"label": "MMLU beta", "base": 0.0, "adapted": 100.0, "delta": 100.0, "relative": None}
    assert rows["mmlu/micro_average"] == {"label": "MMLU average (micro)", "base": 25.0, "adapted": 75.0,
                                          "delta": 50.0, "relative": 200.0}
    assert rows["mmlu/macro_average"]["delta"] == pytest.approx(66.66)  # 83.33 - 16.67
    assert rows["mmlu/macro_average"]["relative"] == pytest.approx(399.88)
    assert rows["truthfulqa_mc1"] == {"label": "TruthfulQA MC1", "base": 100.0, "adapted": 50.0,
                                      "delta": -50.0, "relative": -50.0}

    table = format_comparison(rows, "LLaMA", "LLaMA + adapter").splitlines()
    assert table[0] == "| benchmark | LLaMA | LLaMA + adapter | delta (points) | relative change (%) |"
    assert "| MMLU average (micro) | 25.00 | 75.00 | +50.00 | +200.00 |" in table
    assert "| MMLU beta | 0.00 | 100.00 | +100.00 | - |" in table
    assert table[-1] == "| TruthfulQA MC1 | 100.00 | 50.00 | -50.00 | -50.00 |"

    with pytest.raises(DataError, match="different benchmarks"):
        compare_reports(base, {"mmlu": adapted["mmlu"]})
    fewer = mc_report([result("alpha", True), result("beta", True), result("truthfulqa_mc1", True, "truthfulqa_mc1"),
                       result("truthfulqa_mc1", True, "truthfulqa_mc1")])
    with pytest.raises(DataError, match="mmlu/alpha: base has 3 questions, adapted 1"):
        compare_reports(base, fewer)
