"""Paper tables: every row of our methods has a config whose header holds the paper's values,
every row config builds, and runs render as paper | measured | delta."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from lavin_lightning.commands.tables import TABLES, expected_values, paper_number, render
from lavin_lightning.errors import ConfigError

PAPER_TABLES = REPO.parent / "shared" / "specs" / "paper_tables.md"
# paper_tables.md section -> our table.
SECTIONS = {"1.1": "lavin-1", "1.2": "lavin-2", "1.3": "lavin-3", "1.4": "lavin-4", "1.5": "lavin-5", "1.6": "lavin-6",
            "2.2": "excitor-3", "2.3": "excitor-4", "2.4": "excitor-5", "2.5": "excitor-mmlu",
            "3.1": "petal-1", "3.2": "petal-2", "3.3": "petal-3", "3.4": "petal-4", "3.5": "petal-5"}
# Rows of other methods that our harness runs (our baselines), by the paper's method label.
PETAL_BASELINES = {"Fine-tune", "Fine-tuning", "Head", "MAPLE", "LLaMA-Adapter", "LoRA"}
BASELINES = {"excitor-mmlu": {"Alpaca-LoRA", "LLaMA-Adapter", "Full fine-tuning"},
             **{f"petal-{n}": PETAL_BASELINES for n in range(1, 6)}}
ROWS = [(table.id, row) for table in TABLES.values() for row in table.rows]


def paper_rows() -> list[tuple[str, str, dict]]:
    """(our table, the paper's row label, {column: printed cell}) for every row of our methods
    and our baselines in the first Markdown table of each mapped section."""
    out = []
    for number, body in re.findall(r"^### (\d\.\d) [^\n]*\n(.*?)(?=^### |\Z)", PAPER_TABLES.read_text(), re.M | re.S):
        if number not in SECTIONS:
            continue
        first_table = next(b for b in body.split("\n\n") if b.lstrip().startswith("|")).strip().splitlines()
        header = [c.strip() for c in first_table[0].strip("|").split("|")]
        for line in first_table[2:]:
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            label = next(cells[k] for k in ("Method", "Methods", "Settings", "Variant", "Model") if k in cells)
            method = re.sub(r" \(.*", "", label)
            own = cells.get("Own") == "yes"
            if own or method in BASELINES.get(SECTIONS[number], ()):
                out.append((SECTIONS[number], label, cells))
    return out


@pytest.mark.skipif(not PAPER_TABLES.is_file(), reason="the paper tables spec is not next to the checkout")
def test_every_paper_row_of_our_methods_has_a_config_with_the_printed_values(monkeypatch):
    monkeypatch.chdir(REPO)
    rows = paper_rows()
    assert len(rows) >= 60
    uncovered = []
    for table_id, label, cells in rows:
        table = TABLES[table_id]
        wanted = {c.label: cells[c.label] for c in table.columns if c.label in cells}
        assert wanted, f"{table_id}: no column of ours in the paper's row {label!r}"
        configs = [expected_values(table, row)[1] for row in table.rows]
        if any(all(e.get(k) == v for k, v in wanted.items()) for e in configs):
            continue
        if any(name.startswith(label) for name in table.not_run):
            continue
        uncovered.append(f"{table_id}: {label} {wanted}")
    assert not uncovered, "paper rows without a config (or a stated reason):\n" + "\n".join(uncovered)


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_row_files_are_exactly_the_tables_rows(table_id, monkeypatch):
    monkeypatch.chdir(REPO)
    table = TABLES[table_id]
    on_disk = sorted(p.stem for p in table.directory.glob("*.yaml"))
    assert on_disk == sorted(table.rows)
    for row in table.rows:
        name, expected = expected_values(table, row)
        assert name and expected
        assert any(paper_number(v) is not None for v in expected.values()) or table.id == "excitor-mmlu"


BUILT: dict[str, int] = {}  # model section -> trainable parameters (rows repeat models across tables)


@pytest.mark.parametrize("table_id, row", ROWS, ids=[f"{t}/{r}" for t, r in ROWS])
def test_row_config_builds_on_the_meta_device(table_id, row, monkeypatch):
    import torch

    from lavin_lightning.commands.reproduce import plan_table
    from lavin_lightning.config import build_module, load_configs

    monkeypatch.chdir(REPO)
    table = TABLES[table_id]
    for unit in plan_table(table, [row], Path("runs/never-written"), smoke=False):
        config = load_configs(unit.configs)
        assert config["trainer"]["max_epochs"] >= 1 and "data" in config
        key = json.dumps(config["model"], sort_keys=True)
        if key not in BUILT:
            module = build_module(config)
            with torch.device("meta"):
                module.configure_model()
            BUILT[key] = module.parameter_counts()["trainable"]
        assert BUILT[key] > 0


def write_run(run: Path, metrics: dict, cost: dict | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    if cost is not None:
        (run / "cost.json").write_text(json.dumps(cost))


def test_render_puts_measured_values_next_to_the_paper(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    table = TABLES["lavin-1"]
    write_run(tmp_path / "lavin_7b", {"acc_natural": 90.0, "acc_social": 94.94, "acc_average": 88.41},
              {"trainable_params": 3_781_296})
    text, report = render(table, {"lavin_7b": tmp_path / "lavin_7b", "lavin_13b": tmp_path / "absent"})
    lines = text.splitlines()
    assert lines[2].startswith("| row | | #T-Param | NAT | SOC |")
    seven = lines.index(next(ln for ln in lines if ln.startswith("| LaVIN-7B (ours) | paper |")))
    assert lines[seven].startswith("| LaVIN-7B (ours) | paper | 3.8M | 89.25 | 94.94 |")
    assert lines[seven + 1].startswith("| | measured | 3.8 | 90.00 | 94.94 | - |")
    assert lines[seven + 2].startswith("| | delta | -0.0 | +0.75 | +0.00 | - |")
    assert lines[seven + 2].endswith("| -1.00 |")
    thirteen = lines.index(next(ln for ln in lines if ln.startswith("| LaVIN-13B (ours) | paper |")))
    assert set(lines[thirteen + 1].split("|")[3:-1]) == {" - "}  # not run: nothing measured
    assert report["rows"]["LaVIN-7B (ours)"]["values"]["NAT"] == {"paper": "89.25", "measured": 90.0, "delta": 0.75}
    assert "Smoke run" not in text and "Smoke run" in render(table, {}, smoke=True)[0]


def test_derived_columns_average_and_relative_time(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    four = TABLES["petal-4"]
    write_run(tmp_path / "petal" / "aokvqa", {"direct_answer": 50.0})
    write_run(tmp_path / "petal" / "flickr30k", {"CIDEr": 0.6, "ROUGE_L_F": 0.3, "ROUGE_L_R": 0.2})
    report = render(four, {"petal": tmp_path / "petal"})[1]
    values = report["rows"]["PETAL"]["values"]
    assert values["F30K CIDEr"]["measured"] == pytest.approx(60.0)
    assert values["Avg."]["measured"] == pytest.approx((50 + 60 + 30 + 20) / 4)
    five = TABLES["petal-5"]
    for row, hours in (("fine_tune", 2.0), ("petal", 1.5)):
        write_run(tmp_path / row / "flickr30k", {}, {"wall_hours": hours, "trainable_params": 1_000})
    report = render(five, {r: tmp_path / r for r in ("fine_tune", "petal")})[1]
    assert report["rows"]["PETAL"]["values"]["Flickr30K"]["measured"] == pytest.approx(0.75)
    assert report["rows"]["Fine-tune"]["values"]["Flickr30K"]["measured"] == pytest.approx(1.0)
    assert report["rows"]["PETAL"]["values"]["TextCaps"]["measured"] is None


def test_printed_cells_parse_and_bad_headers_are_named(tmp_path, monkeypatch):
    assert [paper_number(v) for v in ("3.8M", "+3.12%", "-3.02%", "1.4 hours", "-", "n/p", ">200 hours", "OOM")] \
        == [3.8, 3.12, -3.02, 1.4, None, None, None, None]
    monkeypatch.chdir(tmp_path)
    table = TABLES["lavin-3"]
    table.directory.mkdir(parents=True)
    table.row_file("lavin_7b").write_text('# row: x\n# expected: {"Acc": "1.0"}\ntrainer: {}\n')
    with pytest.raises(ConfigError, match=r"names columns \['Acc'\]"):
        expected_values(table, "lavin_7b")
    with pytest.raises(ConfigError, match="lavin_13b.yaml is missing"):
        expected_values(table, "lavin_13b")


PARSED: set[str] = set()


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_every_step_of_a_table_parses_and_instantiates_with_lightning_cli(table_id, monkeypatch):
    """What `fit` / `test` parse: the row with its task or zero-shot benchmark, data module included
    (the trainer is swapped for one CPU process; the GPU configs need a GPU to instantiate)."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    from lavin_lightning.commands.reproduce import plan_table
    from lavin_lightning.models.base import PEFTModule

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    table = TABLES[table_id]
    for unit in plan_table(table, list(table.rows), Path("runs/never-written"), smoke=False):
        for step in unit.steps:
            if step.command == "evaluate" or " ".join(step.configs) in PARSED:
                continue
            PARSED.add(" ".join(step.configs))
            args = [a for c in step.configs for a in ("--config", c)]
            args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                     "--trainer.precision=32-true", "--trainer.logger=false"]
            cli = LightningCLI(PEFTModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                               run=False, args=args, save_config_callback=None)
            assert isinstance(cli.model, PEFTModule) and isinstance(cli.datamodule, LightningDataModule)


def test_a_row_that_does_not_train_reads_the_frozen_models_report(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    report = {"base": {"truthfulqa_mc1": {"accuracy": 30.0}}, "adapted": {"truthfulqa_mc1": {"accuracy": 40.0}}}
    for row in ("llama_base", "lavin"):
        (tmp_path / row / "truthfulqa").mkdir(parents=True)
        (tmp_path / row / "truthfulqa" / "mc_report.json").write_text(json.dumps(report))
    rows = render(TABLES["lavin-5"], {r: tmp_path / r for r in ("llama_base", "lavin")})[1]["rows"]
    assert rows["LLaMA-Base"]["values"]["TruthfulQA"]["measured"] == 30.0
    assert rows["LaVIN (ours)"]["values"]["TruthfulQA"]["measured"] == 40.0
    assert rows["LaVIN (ours)"]["values"]["MME-C"]["measured"] is None
