"""Paper-vs-measured tables."""

from __future__ import annotations

import json

import pytest

from lavin_lightning.commands.tables import render
from lavin_lightning.errors import ConfigError


def test_render_puts_measured_values_next_to_the_paper(tmp_path):
    run = tmp_path / "sqa_lavin_7b"
    run.mkdir()
    metrics = {"acc_natural": "90.00", "acc_social": "94.94", "acc_average": "88.41"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = render("lavin-table1", tmp_path).splitlines()
    assert lines[0].startswith("| row | NAT | SOC |") and len(lines) == 2 + 3
    assert "| LaVIN-7B | 90.00 (89.25, +0.75) | 94.94 (94.94, +0.00) |" in lines[2]
    assert lines[2].endswith("| 88.41 (89.41, -1.00) |")
    assert "- (90.50)" in lines[3]  # the 13B row has not been run
    with pytest.raises(ConfigError, match="unknown table"):
        render("table9", tmp_path)
