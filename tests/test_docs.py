"""The README names only files and make targets that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_paths_and_targets_exist():
    readme = (REPO / "README.md").read_text()
    paths = set(re.findall(r"((?:experiments|docs|benchmarks|lavin_lightning|data_modules)/[\w/.-]+\.(?:yaml|md|py))",
                           readme))
    assert len(paths) >= 5
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, missing
    targets = set(re.findall(r"^([a-z0-9-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]+)", readme))
    assert {"demo", "test"} <= named and named <= targets, named - targets
    first_screen = "\n".join(readme.splitlines()[:15])
    assert "make demo" in first_screen and "make test" in first_screen
