"""The papers' tables: which rows we run, where each measured value comes from, and the
rendering of paper value | measured | delta.

A table's rows are the config files `experiments/tables/<table>/<row>.yaml`; each one's header
holds the paper's printed values for that row (`# expected: {label: value}`), so that every
published number lives in exactly one file. `lavin-lightning reproduce` runs the rows;

    lavin-lightning table <table> [--runs runs/tables] [--smoke]

renders what the runs measured next to the paper.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lavin_lightning.config import config_header
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json

EXPERIMENTS = Path("experiments")


@dataclass(frozen=True)
class Column:
    """One printed column.

    Args:
        label: as the paper prints it (the rows' `# expected:` keys).
        source: `<file>:<key>[.<key>...]` of the measured value inside the run's directory, e.g.
            `metrics.json:acc_natural`, `cost.json:trainable_params`; `{model}` stands for the
            report of `evaluate mc` that holds the row: "adapted", or "base" for a row that does
            not train (`# fit: no`).
        task: the task whose run holds it (tables whose columns span data sets).
        scale: measured x scale is on the paper's scale (caption fractions -> x100, counts -> M).
        relative_to: divide by this row's value of the same column (fractions of full tuning).
        mean_of: a printed average: the mean of these columns' measured values.
    """

    label: str
    source: str = ""
    task: str = ""
    scale: float = 1.0
    relative_to: str | None = None
    mean_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """A data set a row runs on.

    Args:
        name: "" for a table of one data set; else the task's name (the run's sub-directory).
        overlay: a config stacked on the row for this task (a PETAL task, a zero-shot benchmark).
        train: fit on this task (PETAL's tasks), or evaluate the row's own fit (zero-shot).
        evaluate: "test" (`lavin-lightning test`, scored by the test callbacks) or "mc"
            (`lavin-lightning evaluate mc` with `mc_args`).
        mc_args: the benchmark arguments of `evaluate mc`, e.g. ("--truthfulqa", "data/...").
        needs: files or directories the task reads beyond the configs (checked before any work).
    """

    name: str = ""
    overlay: str | None = None
    train: bool = True
    evaluate: str = "test"
    mc_args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    id: str
    paper: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[str, ...]
    tasks: tuple[Task, ...] = (Task(),)
    # Rows of our methods that the harness cannot run: printed label -> why.
    not_run: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def directory(self) -> Path:
        return EXPERIMENTS / "tables" / self.id

    def row_file(self, row: str) -> Path:
        return self.directory / f"{row}.yaml"

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)


# --------------------------------------------------------------------------- the tables

_SQA_KEYS = ("acc_natural", "acc_social", "acc_language", "acc_has_text", "acc_has_image", "acc_no_context",
             "acc_grade_1_6", "acc_grade_7_12", "acc_average")
_SQA_LABELS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")


def _scienceqa(average: str, average_first: bool = False) -> tuple[Column, ...]:
    columns = [Column(label, f"metrics.json:{key}") for label, key in zip(_SQA_LABELS, _SQA_KEYS)]
    mean = Column(average, "metrics.json:acc_average")
    return tuple([mean] + columns if average_first else columns + [mean])


def _params(label: str) -> Column:
    return Column(label, "cost.json:trainable_params", scale=1e-6)


def _caption(label: str, key: str, task: str = "") -> Column:
    return Column(label, f"metrics.json:{key}", task=task, scale=100.0)


_PETAL_TASKS = {name: Task(name, f"experiments/petal/tasks/{name}.yaml")
                for name in ("flickr30k", "textcaps", "aokvqa", "okvqa", "textvqa")}
_PETAL_ACCURACY = {"aokvqa": "metrics.json:direct_answer", "okvqa": "metrics.json:overall",
                   "textvqa": "metrics.json:accuracy"}
_PETAL_ROWS = ("fine_tune", "head", "maple", "llama_adapter", "lora", "petal")
_PETAL_BOTH_BACKBONES = tuple(f"{row}_{backbone}" for backbone in ("flant5xxl", "vicuna7b") for row in _PETAL_ROWS)


def _petal_captions(task: str, prefix: str) -> tuple[Column, ...]:
    return (_caption(f"{prefix} CIDEr", "CIDEr", task), _caption(f"{prefix} R-1 F1", "ROUGE_1_F", task),
            _caption(f"{prefix} R-1 Recall", "ROUGE_1_R", task), _caption(f"{prefix} R-L F1", "ROUGE_L_F", task),
            _caption(f"{prefix} R-L Recall", "ROUGE_L_R", task))


_MC_TRUTHFULQA = Task("truthfulqa", train=False, evaluate="mc",
                      mc_args=("--truthfulqa", "data/truthfulqa/mc_task.json"), needs=("data/truthfulqa/mc_task.json",))
_MC_MMLU = Task("mmlu", train=False, evaluate="mc", mc_args=("--mmlu", "data/mmlu"), needs=("data/mmlu",))

TABLES: dict[str, Table] = {t.id: t for t in (
    Table("lavin-1", "LaVIN (NeurIPS 2023)", "Table 1: ScienceQA test accuracy (%)",
          (_params("#T-Param"), *_scienceqa("Average")),
          ("lavin_7b", "lavin_13b", "lavin_13b_40ep")),
    Table("lavin-2", "LaVIN (NeurIPS 2023)", "Table 2: ablations on ScienceQA test (ViT-B/16 + LLaMA-7B, cumulative)",
          (_params("#T-Params"), *_scienceqa("Avg.")),
          ("text_only", "vision_modality", "joint_opt", "stronger_image_encoder", "mm_adapter", "larger_llm")),
    Table("lavin-3", "LaVIN (NeurIPS 2023)", "Table 3: ScienceQA test without pre-training (average accuracy %)",
          (_params("#T-Params"), Column("Accuracy", "metrics.json:acc_average")),
          ("lavin_7b", "lavin_13b")),
    Table("lavin-4", "LaVIN (NeurIPS 2023)", "Table 4: COCO captioning, Karpathy test",
          (_params("#T-Params"), _caption("BLEU-4", "Bleu_4"), _caption("CIDEr", "CIDEr")),
          ("lavin_13b",),
          not_run={"LaVIN (ours), PT data 0.6M": "the paper does not say what its 0.6M pre-training data and schedule "
                                                   "are"}),
    Table("lavin-5", "LaVIN (NeurIPS 2023)", "Table 5: zero-shot TruthfulQA (MC1 accuracy %) and MME",
          (Column("TruthfulQA", "mc_report.json:{model}.truthfulqa_mc1.accuracy", task="truthfulqa"),
           Column("MME-C", "metrics.json:perception", task="mme"),
           Column("MME-P", "metrics.json:cognition", task="mme")),
          ("llama_base", "lavin"),
          tasks=(_MC_TRUTHFULQA, Task("mme", "experiments/lavin/tasks/mme.yaml", train=False)),
          note="The printed MME-C / MME-P labels look swapped (MME-C exceeds cognition's maximum of 800): the "
               "measured perception total is compared with the printed MME-C column, cognition with MME-P."),
    Table("lavin-6", "LaVIN (NeurIPS 2023)", "Table 6: training cost on ScienceQA (8 A100 in the paper)",
          (_params("#T-Params"), Column("Memory", "cost.json:peak_memory_gb"),
           Column("Time", "cost.json:wall_hours"), Column("#Storage", "cost.json:adapter_bytes", scale=1e-6)),
          ("lavin_7b", "lavin_13b"),
          note="Memory is the peak over the processes (CUDA max_memory_allocated; on CPU the peak resident set)."),
    Table("lavin-release", "LaVIN (NeurIPS 2023), released checkpoints",
          "ScienceQA test accuracy (%) of the authors' released adapters, imported and evaluated release-exact",
          _scienceqa("Acc"),
          ("sqa_7b", "sqa_7b_vicuna", "sqa_13b"),
          tasks=(Task(overlay="experiments/releases/lavin_release_exact.yaml"),),
          note="The printed values are the release's Model Zoo (average accuracy only). Each row imports the "
               "released .pth (`lavin-lightning import lavin-release`) and tests it with the release's evaluation "
               "choices (experiments/releases/lavin_release_exact.yaml; docs/faithfulness.md)."),
    Table("excitor-3", "LLaMA-Excitor (CVPR 2024)", "Table 3: COCO captioning",
          (_caption("BLEU@4", "Bleu_4"), _caption("CIDEr", "CIDEr")),
          ("excitor",)),
    Table("excitor-4", "LLaMA-Excitor (CVPR 2024)", "Table 4: ScienceQA test accuracy (%)",
          _scienceqa("Average", average_first=True),
          ("excitor",),
          not_run={"LLaMA-Excitor@336px +LoRA": "Excitor combined with LoRA blocks on the LLM is not implemented"}),
    Table("excitor-5", "LLaMA-Excitor (CVPR 2024)", "Table 5: module ablation on ScienceQA (ACC %)",
          (Column("ACC", "metrics.json:acc_average"),),
          ("clip_b16", "clip_l14", "clip_l14_336"),
          not_run={"(d) CLIP-14/L@336px + Full-Finetuning": "full fine-tuning of the LLM under Excitor is not "
                                                            "implemented",
                   "(e) CLIP-14/L@336px + LoRA": "Excitor combined with LoRA blocks on the LLM is not implemented"}),
    Table("excitor-mmlu", "LLaMA-Excitor (CVPR 2024)",
          "Figure 5: MMLU, relative change (%) of the average accuracy vs the frozen LLaMA-7B",
          (Column("Relative avg change vs LLaMA-7B", "mc_report.json:comparison.mmlu/macro_average.relative",
                  task="mmlu"),),
          ("alpaca_lora", "llama_adapter", "excitor"),
          tasks=(_MC_MMLU,),
          not_run={"Full fine-tuning": "full fine-tuning of a 7B causal LM is not a method of this suite",
                   "LLaMA-Excitor + LoRA (from §4.3 text)": "Excitor combined with LoRA blocks on the LLM is not "
                                                            "implemented"},
          note="The average is MMLU's macro average over subjects, 5-shot (the paper gives neither)."),
    Table("petal-1", "PETAL", "Table 1: captioning on Flickr30K and TextCaps (x100)",
          (_params("Tunable"), *_petal_captions("flickr30k", "F30K"), *_petal_captions("textcaps", "TC")),
          _PETAL_BOTH_BACKBONES,
          tasks=(_PETAL_TASKS["flickr30k"], _PETAL_TASKS["textcaps"])),
    Table("petal-2", "PETAL", "Table 2: VQA accuracy (%)",
          (_params("Tunable"), *(Column(label, _PETAL_ACCURACY[task], task=task) for label, task in
                                 (("A-OKVQA", "aokvqa"), ("TextVQA", "textvqa"), ("OKVQA", "okvqa")))),
          _PETAL_BOTH_BACKBONES,
          tasks=(_PETAL_TASKS["aokvqa"], _PETAL_TASKS["textvqa"], _PETAL_TASKS["okvqa"])),
    Table("petal-3", "PETAL", "Table 3: few-shot instruction tuning (50 / 150 training items; FlanT5-XXL)",
          (_params("Parameter"),
           Column("A-OKVQA Acc", _PETAL_ACCURACY["aokvqa"], task="aokvqa"),
           Column("OKVQA Acc", _PETAL_ACCURACY["okvqa"], task="okvqa"),
           Column("Avg (VQA)", mean_of=("A-OKVQA Acc", "OKVQA Acc")),
           _caption("Flickr30K CIDEr", "CIDEr", "flickr30k"),
           _caption("Flickr30K ROUGE-1 F1", "ROUGE_1_F", "flickr30k"),
           _caption("TextCaps CIDEr", "CIDEr", "textcaps"),
           _caption("TextCaps ROUGE-1 F1", "ROUGE_1_F", "textcaps"),
           Column("Avg (caption)", mean_of=("Flickr30K CIDEr", "Flickr30K ROUGE-1 F1", "TextCaps CIDEr",
                                            "TextCaps ROUGE-1 F1"))),
          ("fine_tuning_50", "lora_50", "petal_50", "fine_tuning_150", "lora_150", "petal_150"),
          tasks=tuple(_PETAL_TASKS[t] for t in ("aokvqa", "okvqa", "flickr30k", "textcaps"))),
    Table("petal-4", "PETAL", "Table 4: ablations (A-OKVQA + Flickr30K; FlanT5-XXL)",
          (Column("A-OKVQA Acc", _PETAL_ACCURACY["aokvqa"], task="aokvqa"),
           _caption("F30K CIDEr", "CIDEr", "flickr30k"), _caption("F30K ROUGE-L F1", "ROUGE_L_F", "flickr30k"),
           _caption("F30K ROUGE-L Recall", "ROUGE_L_R", "flickr30k"),
           Column("Avg.", mean_of=("A-OKVQA Acc", "F30K CIDEr", "F30K ROUGE-L F1", "F30K ROUGE-L Recall"))),
          ("v1", "v2", "v3", "v4", "petal"),
          tasks=(_PETAL_TASKS["aokvqa"], _PETAL_TASKS["flickr30k"]),
          not_run={"PETAL w. random instruction": "a random learnable vector in place of the enhanced instruction "
                                                  "is not implemented"}),
    Table("petal-5", "PETAL", "Table 5: training time relative to full fine-tuning (FlanT5-XXL)",
          (_params("#Tunable"),
           *(Column(label, "cost.json:wall_hours", task=task, relative_to="fine_tune") for label, task in
             (("Flickr30K", "flickr30k"), ("TextCaps", "textcaps"), ("AOKVQA", "aokvqa"), ("OKVQA", "okvqa"),
              ("TextVQA", "textvqa")))),
          ("fine_tune", "maple", "lora", "petal"),
          tasks=tuple(_PETAL_TASKS[t] for t in ("flickr30k", "textcaps", "aokvqa", "okvqa", "textvqa"))),
)}


# --------------------------------------------------------------------------- values

_NUMBER = re.compile(r"^([+-]?\d+(?:\.\d+)?)")


def paper_number(printed: object) -> float | None:
    """The number a printed cell starts with ("3.8M" -> 3.8, "+3.12%" -> 3.12, "1.4 hours" -> 1.4);
    None for "-", "n/p", "OOM", ">200 hours" and the like."""
    if isinstance(printed, (int, float)):
        return float(printed)
    match = _NUMBER.match(str(printed).strip())
    return float(match.group(1)) if match else None


def _decimals(printed: object) -> int:
    """The printed precision, kept for the measured value and the delta (2 when nothing is printed)."""
    match = _NUMBER.match(str(printed).strip())
    if match is None:
        return 2
    return len(match.group(1).split(".")[1]) if "." in match.group(1) else 0


def expected_values(table: Table, row: str) -> tuple[str, dict]:
    """(the row's printed label, {column label: printed value}) from the row config's header."""
    path = table.row_file(row)
    if not path.is_file():
        raise ConfigError(f"table {table.id}: row config {path} is missing")
    header = config_header(path)
    for key in ("row", "expected"):
        if key not in header:
            raise ConfigError(f"{path}: the header has no '# {key}:' line")
    try:
        expected = yaml.safe_load(header["expected"])
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: '# expected:' is not a YAML mapping: {err}") from None
    if not isinstance(expected, dict):
        raise ConfigError(f"{path}: '# expected:' must be a mapping {{column: printed value}}")
    labels = {c.label for c in table.columns}
    unknown = sorted(set(expected) - labels)
    if unknown:
        raise ConfigError(f"{path}: '# expected:' names columns {unknown} that table {table.id} does not have "
                          f"(columns: {[c.label for c in table.columns]})")
    return header["row"], expected


def _lookup(data: object, keys: list[str]) -> object:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def measured_values(table: Table, row_dirs: dict[str, Path]) -> dict[str, dict[str, float | None]]:
    """{row: {column label: measured value on the paper's scale, or None when not measured}}."""
    raw: dict[str, dict[str, float | None]] = {}
    for row, run_dir in row_dirs.items():
        values: dict[str, float | None] = {}
        trains = config_header(table.row_file(row)).get("fit", "yes") != "no"
        for column in table.columns:
            if not column.source:
                continue
            file, _, key = column.source.format(model="adapted" if trains else "base").partition(":")
            # A column of no task (the parameter count) reads the row's fit, or its first task's.
            candidates = [run_dir / column.task / file] if column.task else \
                [run_dir / file] + [run_dir / t.name / file for t in table.tasks if t.train and t.name]
            path = next((c for c in candidates if c.is_file()), None)
            value = None if path is None else _lookup(json.loads(path.read_text()), key.split("."))
            values[column.label] = None if value is None else float(value) * column.scale
        raw[row] = values
    out: dict[str, dict[str, float | None]] = {}
    for row, values in raw.items():
        row_out = dict(values)
        for column in table.columns:
            if column.relative_to is not None:
                reference = raw.get(column.relative_to, {}).get(column.label)
                value = values.get(column.label)
                row_out[column.label] = value / reference if value is not None and reference else None
            if column.mean_of:
                parts = [row_out.get(label) for label in column.mean_of]
                row_out[column.label] = math.fsum(parts) / len(parts) if None not in parts else None
        out[row] = row_out
    return out


# --------------------------------------------------------------------------- rendering


def _cell(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def render(table: Table, row_dirs: dict[str, Path], smoke: bool = False) -> tuple[str, dict]:
    """Markdown (three lines per row: paper, measured, delta) and the same numbers as a dict."""
    measured = measured_values(table, row_dirs)
    labels = [c.label for c in table.columns]
    lines = [f"## {table.paper}, {table.title}", ""]
    if smoke:
        lines += ["**Smoke run**: tiny random backbones on the embedded easy-VQA data, a few steps on CPU. It "
                  "proves that every row runs end to end through the cluster's code path; its numbers are not "
                  "comparable with the paper's.", ""]
    lines += ["| row | | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    report: dict = {"table": table.id, "paper": table.paper, "title": table.title, "smoke": smoke, "rows": {}}
    for row in table.rows:
        name, expected = expected_values(table, row)
        paper_cells, measured_cells, delta_cells = [], [], []
        entry = {}
        for label in labels:
            printed = expected.get(label, "n/p")
            paper = paper_number(printed)
            value = measured.get(row, {}).get(label)
            decimals = _decimals(printed)
            delta = None if paper is None or value is None else value - paper
            paper_cells.append(str(printed))
            measured_cells.append(_cell(value, decimals))
            delta_cells.append("-" if delta is None else f"{delta:+.{decimals}f}")
            entry[label] = {"paper": printed, "measured": value, "delta": delta}
        report["rows"][name] = {"config": str(table.row_file(row)), "run": str(row_dirs.get(row, "")),
                                "values": entry}
        lines.append(f"| {name} | paper | " + " | ".join(paper_cells) + " |")
        lines.append("| | measured | " + " | ".join(measured_cells) + " |")
        lines.append("| | delta | " + " | ".join(delta_cells) + " |")
    for name, reason in table.not_run.items():
        lines.append(f"| {name} | not run: {reason} |" + " |" * len(labels))
        report["rows"][name] = {"not_run": reason}
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines), report


def row_dirs_of(table: Table, runs: Path) -> dict[str, Path]:
    """Where `reproduce` keeps each row's run: `<runs>/<table>/<row>` (a link to the run itself)."""
    return {row: runs / table.id / row for row in table.rows}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning table",
                                 description="A paper table: the published values next to the measured ones.")
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--runs", default="runs/tables", help="where `lavin-lightning reproduce` put the runs")
    ap.add_argument("--smoke", action="store_true", help="label the numbers as a smoke run's")
    ap.add_argument("--output", help="also write the Markdown here (and the numbers beside it as JSON)")
    args = ap.parse_args(argv)
    table = TABLES[args.table]
    text, report = render(table, row_dirs_of(table, Path(args.runs)), smoke=args.smoke)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
        write_json(Path(args.output).with_suffix(".json"), report)
