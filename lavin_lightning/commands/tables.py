"""Paper tables: the published values next to what a run measured.

    lavin-lightning table lavin-table1 [--runs runs]

reads `<runs>/<row run>/metrics.json` (written by `test`) for every row of the table and
prints a markdown table of measured values, paper values and their difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lavin_lightning.errors import ConfigError
from lavin_lightning.io import read_json
from lavin_lightning.metrics.scienceqa import PAPER_LABELS

SCIENCEQA_COLUMNS = list(PAPER_LABELS.items())

# LaVIN (Luo et al., NeurIPS 2023), Table 1: ScienceQA test accuracy (%). `run` is the
# default_root_dir name that `make reproduce-table-1` uses.
TABLES = {
    "lavin-table1": [
        {"row": "LaVIN-7B", "run": "sqa_lavin_7b",
         "paper": [89.25, 94.94, 85.24, 88.51, 87.46, 88.08, 90.16, 88.07, 89.41]},
        {"row": "LaVIN-13B", "run": "sqa_lavin_13b",
         "paper": [90.32, 94.38, 87.73, 89.44, 87.65, 90.31, 91.19, 89.26, 90.50]},
        {"row": "LaVIN-13B (40 epochs)", "run": "sqa_lavin_13b_40ep",
         "paper": [89.88, 94.49, 89.82, 88.95, 87.61, 91.85, 91.45, 89.72, 90.83]},
    ],
}


def render(table: str, runs: str | Path) -> str:
    """Markdown: one line per row, each cell `measured (paper, +delta)` or `- (paper)`."""
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; known: {sorted(TABLES)}")
    lines = ["| row | " + " | ".join(short for _, short in SCIENCEQA_COLUMNS) + " |",
             "|---" * (len(SCIENCEQA_COLUMNS) + 1) + "|"]
    for row in TABLES[table]:
        path = Path(runs) / row["run"] / "metrics.json"
        measured = read_json(path, "metrics.json written by `lavin-lightning test`") if path.is_file() else {}
        cells = []
        for (key, _), paper in zip(SCIENCEQA_COLUMNS, row["paper"]):
            value = measured.get(key)
            cells.append(f"- ({paper:.2f})" if value is None else
                         f"{float(value):.2f} ({paper:.2f}, {float(value) - paper:+.2f})")
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning table", description="Paper values next to measured ones.")
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--runs", default="runs", help="directory holding one run directory per row")
    args = ap.parse_args(argv)
    print(render(args.table, args.runs))
