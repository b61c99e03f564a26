"""`lavin-lightning reproduce TABLE`: run every row of a paper table, then render paper | measured | delta.

    lavin-lightning reproduce lavin-1 [--rows lavin_7b,...] [--runs runs/tables] [--smoke] [--dry-run]

Each row is `experiments/tables/<table>/<row>.yaml` (its header names the trainer to stack it
on); each run is `lavin-lightning fit` then `test` (or `evaluate mc` for multiple-choice
benchmarks), in a fresh process, exactly as one would type them. A row whose header names an
authors' release (`# release: lavin-release`, `# checkpoint: FILE`) imports that file in place
of the fit (`lavin-lightning import`). Before any work, every row's
weights, data and accelerator are checked and everything missing is named at once.

Runs live under `<runs>/by-config/<key>`, where the key is a hash of the merged config: a row that
another table already ran with the same settings (LaVIN Tables 3 and 6 repeat Table 1's rows) is
reused, and a table that stopped halfway resumes at the first step that has not finished.
`<runs>/<table>/<row>` links to the row's runs.

`--smoke` runs the same rows through the same commands with tiny random backbones and the
embedded easy-VQA data on CPU (the row's own settings are kept where a tiny model allows; FSDP
rows shard over 2 processes), into `runs/tables-smoke`; the rendered table says it is a smoke run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lavin_lightning.commands.tables import TABLES, Table, Task, expected_values, paper_number, render, row_dirs_of
from lavin_lightning.config import config_header, expand_config_paths, load_configs
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json

WANDB_CONFIG = "experiments/base/wandb.yaml"
# Smoke runs keep the row's strategy where a CPU can run it: FSDP rows shard over 2 CPU processes
# (the same strategy class as on GPUs); every other row runs in one CPU process.
SMOKE_TRAINERS = {"experiments/base/trainer_fsdp.yaml": ["experiments/base/trainer_fsdp.yaml",
                                                         "experiments/base/trainer_fsdp_cpu.yaml"]}
SMOKE_TRAINER = ["experiments/base/trainer_cpu.yaml"]
SMOKE_DIR = Path("experiments/smoke")
# Data-module arguments that name files or directories (checked before any work).
DATA_PATH_KEYS = ("data_root", "root", "path", "alpaca_path", "llava_path", "image_root", "karpathy_file",
                  "annotation_file", "captions_file", "dataset_file")
# Smoke runs: each data module's overlay in experiments/smoke/ and the embedded layouts it reads
# (data/smoke/<layout>, built by `prepare_smoke_data`).
SMOKE_DATA = {
    "ScienceQADataModule": ("scienceqa.yaml", ("scienceqa",)),
    "VQADataModule": ("vqa.yaml", ("vqa",)),
    "AOKVQADataModule": ("aokvqa.yaml", ("aokvqa",)),
    "TextVQADataModule": ("textvqa.yaml", ("textvqa",)),
    "TextCapsDataModule": ("textcaps.yaml", ("textcaps",)),
    "CaptionDataModule": ("coco_captions.yaml", ("coco-captions",)),
    "AlpacaDataModule": ("alpaca.yaml", ("instructions",)),
    "InstructionMixtureDataModule": ("instruction_mixture.yaml", ("instructions", "llava-instruct")),
    "MMEDataModule": ("mme.yaml", ("mme",)),
}
# Named backbones -> the tiny architecture of the same family (smoke runs).
TINY_INSTRUCTBLIP = {"t5": "tiny-t5", "vicuna": "tiny-llama", "llama": "tiny-llama"}


@dataclass
class Step:
    command: str                # "fit", "import", "test" or "evaluate"
    argv: list[str]             # the arguments after `lavin-lightning`
    run_dir: Path               # what the step writes into
    marker: Path                # written when the step finished
    env: dict[str, str] = field(default_factory=dict)
    configs: list[str] = field(default_factory=list)   # its --config files
    needs: tuple[str, ...] = ()  # other files or directories it reads (checked before any work)
    layouts: tuple[str, ...] = ()  # smoke runs: the embedded data sets it reads


@dataclass
class Unit:
    """One fit (or none, for a zero-shot row) and the evaluations on its adapter."""

    row: str
    task: Task
    configs: list[str]          # --config files, in order
    run_dir: Path
    steps: list[Step] = field(default_factory=list)


# --------------------------------------------------------------------------- planning


def _row_header(table: Table, row: str) -> dict[str, str]:
    path = table.row_file(row)
    if not path.is_file():
        raise ConfigError(f"table {table.id}: row config {path} is missing")
    header = config_header(path)
    if "trainer" not in header:
        raise ConfigError(f"{path}: the header has no '# trainer:' line (the base trainer config to stack it on)")
    return header


def _tasks_of_row(table: Table, expected: dict) -> list[Task]:
    """The tasks that hold at least one column the paper printed a value for in this row."""
    printed = {label for label, value in expected.items() if paper_number(value) is not None}
    wanted = [t for t in table.tasks
              if not t.name or any(c.task == t.name and c.label in printed for c in table.columns)]
    return wanted or list(table.tasks[:1])


def _config_key(config: dict, task: Task, fits: bool, smoke: bool, release: str = "") -> str:
    """What makes two runs the same run: the merged config (not where it is written), the task,
    whether it trains (or imports which released file), and whether it is a smoke run."""
    config = json.loads(json.dumps(config))
    config.get("trainer", {}).pop("default_root_dir", None)
    blob = json.dumps({"config": config, "task": task.name, "evaluate": task.evaluate, "fits": fits,
                       "smoke": smoke, **({"release": release} if release else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan_table(table: Table, rows: list[str], runs: Path, smoke: bool) -> list[Unit]:
    """Every row's runs: its fit(s), the evaluations of each, in order."""
    units: list[Unit] = []
    for row in rows:
        header = _row_header(table, row)
        row_file = str(table.row_file(row))
        _, expected = expected_values(table, row)
        release = _release_import(header, table.row_file(row), smoke)
        fits = header.get("fit", "yes") != "no" and release is None
        trainers = SMOKE_TRAINERS.get(header["trainer"], SMOKE_TRAINER) if smoke else [header["trainer"]]
        stack = expand_config_paths([row_file])  # the row's `# extends:` chain, then the row
        tasks = _tasks_of_row(table, expected)
        zero_shot = [t for t in tasks if not t.train]
        # A row fits once per trained task; a zero-shot table's row fits once (on its own data),
        # or not at all (`# fit: no`), and is evaluated on each zero-shot task.
        trained = [t for t in tasks if t.train] or [Task(train=False)]
        for task in trained:
            configs = [*trainers, WANDB_CONFIG] + stack[:-1] + ([task.overlay] if task.overlay else []) + stack[-1:]
            configs += smoke_overlays(configs, runs, f"{row}-{task.name or 'main'}") if smoke else []
            key = _config_key(load_configs(configs), task, fits, smoke, " ".join(release or []))
            run_dir = runs / "by-config" / key
            unit = Unit(row, task, configs, run_dir)
            env = wandb_env(table, row, task.name, smoke)
            config_args = [a for c in configs for a in ("--config", c)]
            args = config_args + _run_dir_args(run_dir)
            if fits:
                unit.steps.append(Step("fit", ["fit", *args], run_dir, run_dir / ".done-fit",
                                       {**env, "WANDB_JOB_TYPE": "fit"}, configs))
            if release is not None:
                importer, checkpoint, *options = release
                argv = ["import", importer, "--checkpoint", checkpoint, *config_args, "--out",
                        str(run_dir / "adapter"), "--overwrite", *options]
                unit.steps.append(Step("import", argv, run_dir, run_dir / ".done-import", env, configs,
                                       (checkpoint,)))
            trained = fits or release is not None
            adapter = ["--model.init_args.adapter_path", str(run_dir / "adapter")] if trained else []
            if task.train and task.evaluate == "test":
                unit.steps.append(Step("test", ["test", *args, *adapter], run_dir, run_dir / ".done-test",
                                       {**env, "WANDB_JOB_TYPE": "test"}, configs, task.needs))
            for zs in zero_shot:
                unit.steps.append(_zero_shot_step(zs, configs, run_dir, trained, env, runs, row, smoke))
            units.append(unit)
    return units


def _release_import(header: dict[str, str], path: Path, smoke: bool) -> list[str] | None:
    """[importer, checkpoint, options...] of a row that imports an authors' released file; None otherwise."""
    if "release" not in header:
        return None
    if "checkpoint" not in header:
        raise ConfigError(f"{path}: '# release: {header['release']}' needs a '# checkpoint: FILE' line")
    if smoke:
        raise ConfigError(f"{path} imports an authors' released checkpoint, which a smoke run cannot have; the "
                          "import is tested on tiny models by the test suite")
    return [header["release"], header["checkpoint"]] + (["--gate", header["gate"]] if "gate" in header else [])


def _run_dir_args(run_dir: Path) -> list[str]:
    """Everything a run writes, its W&B files included, goes into its own directory."""
    return ["--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir)]


def _zero_shot_step(task: Task, configs: list[str], run_dir: Path, fitted: bool, env: dict, runs: Path, row: str,
                    smoke: bool) -> Step:
    out = run_dir / task.name
    if task.evaluate == "mc":
        mc_args = smoke_mc_args(task) if smoke else list(task.mc_args)
        argv = ["evaluate", "mc", *[a for c in configs for a in ("--config", c)], *mc_args,
                "--output", str(out / "mc_report.json")]
        if fitted:
            argv += ["--adapter", str(run_dir / "adapter")]
        if smoke:
            argv += ["--k-shot", "1", "--limit", "8"]
        needs = () if smoke else tuple(task.needs)
        return Step("evaluate", argv, out, out / ".done", env, configs, needs,
                    (SMOKE_MC[task.mc_args[0]][1],) if smoke else ())
    overlays = [task.overlay] if task.overlay else []
    overlays += smoke_overlays(configs + overlays, runs, f"{row}-{task.name}") if smoke else []
    args = [a for c in configs + overlays for a in ("--config", c)] + _run_dir_args(out)
    if fitted:
        args += ["--model.init_args.adapter_path", str(run_dir / "adapter")]
    return Step("test", ["test", *args], out, out / ".done", {**env, "WANDB_JOB_TYPE": "test"}, configs + overlays,
                task.needs)


def wandb_env(table: Table, row: str, task: str, smoke: bool) -> dict[str, str]:
    """W&B groups a table's runs (one project shows a paper table); the row names the run."""
    paper, number = table.id.split("-", 1)
    name = f"table{number}" if number[:1].isdigit() else number  # lavin-1 -> table1; lavin-release
    tags = [paper, name] + (["smoke"] if smoke else [])
    return {"WANDB_RUN_GROUP": f"{paper}-{name}", "WANDB_NAME": f"{row}-{task}" if task else row,
            "WANDB_TAGS": ",".join(tags), "LAVIN_TABLE_ROW": f"{table.id}/{row}"}


# --------------------------------------------------------------------------- smoke runs


def smoke_data(config: dict) -> tuple[Path, tuple[str, ...]]:
    """The smoke overlay of the config's data module and the embedded layouts it reads."""
    data = config.get("data") or {}
    name = str(data.get("class_path", "")).rsplit(".", 1)[-1]
    if name not in SMOKE_DATA:
        raise ConfigError(f"no embedded smoke data for the data module {data.get('class_path')!r}; "
                          f"known: {sorted(SMOKE_DATA)}")
    overlay, layouts = SMOKE_DATA[name]
    if name == "CaptionDataModule" and "flickr" in str((data.get("init_args") or {}).get("karpathy_file", "")):
        overlay, layouts = "flickr30k.yaml", ("flickr30k",)
    return SMOKE_DIR / overlay, layouts


def smoke_overlays(configs: list[str], runs: Path, name: str) -> list[str]:
    """The embedded data of the config's data module, then tiny backbones of the same families."""
    config = load_configs(configs)
    data_overlay, _ = smoke_data(config)
    path = runs / "smoke-overlays" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Tiny backbones for a smoke run (written by `lavin-lightning reproduce --smoke`).\n"
                    + yaml.safe_dump(tiny_backbones(config), sort_keys=False))
    return [str(data_overlay), str(path)]


def tiny_backbones(config: dict) -> dict:
    """Every named backbone of the model replaced by the tiny one of its family, random and in
    fp32; adapter depths that count layers of the real model become "all layers"."""
    init = (config.get("model") or {}).get("init_args") or {}
    out: dict = {}
    if init.get("llm"):
        out["llm"] = {"path": None, "config": "tiny", "dtype": "float32"}
    if init.get("vision"):
        out["vision"] = {"kind": "clip", "path": None, "config": "tiny", "cls_every": 1}
    if init.get("backbone"):
        name = str(init["backbone"].get("config", ""))
        tiny = next((t for family, t in TINY_INSTRUCTBLIP.items() if family in name), "tiny-t5")
        out["backbone"] = {"path": None, "config": tiny, "dtype": "float32"}
    adapter = init.get("adapter") or {}
    depth = {key: None for key in ("layers", "depth") if isinstance(adapter.get(key), int)}
    if depth:
        out["adapter"] = depth
    return {"model": {"init_args": out}}


SMOKE_MC = {"--truthfulqa": ("data/smoke/truthfulqa/mc_task.json", "truthfulqa"), "--mmlu": ("data/smoke/mmlu", "mmlu")}


def smoke_mc_args(task: Task) -> list[str]:
    flag = task.mc_args[0]
    return [flag, SMOKE_MC[flag][0]]


def prepare_smoke_data(layouts: set[str]) -> None:
    """Build the embedded data sets the smoke overlays read (once; a complete build is reused)."""
    from data_modules.prepare import captions, easy_vqa, llava_instruct, mme, multiple_choice, textvqa_aokvqa
    from data_modules.prepare.instructions import write_instruction_set

    small = {"n_train": 64, "n_val": 16, "n_test": 32, "seed": 0}
    builders = {
        "scienceqa": lambda out: easy_vqa.build_scienceqa_from_easy_vqa(out, captions=True, **small),
        "vqa": lambda out: easy_vqa.build_vqa_from_easy_vqa(out, **small),
        "aokvqa": lambda out: textvqa_aokvqa.build_aokvqa_from_easy_vqa(out, **small),
        "textvqa": lambda out: textvqa_aokvqa.build_textvqa_from_easy_vqa(out, **small),
        "textcaps": lambda out: captions.build_textcaps_from_easy_vqa(out, **small),
        "coco-captions": lambda out: captions.build_coco_captions_from_easy_vqa(out, **small),
        "flickr30k": lambda out: captions.build_flickr30k_from_easy_vqa(out, **small),
        "llava-instruct": lambda out: llava_instruct.build_llava_instruct_from_easy_vqa(out, n_train=64, seed=0),
        "mme": lambda out: mme.build_mme_from_easy_vqa(out, n_images=4, seed=0),
        "mmlu": lambda out: multiple_choice.build_mmlu_from_easy_vqa(out, n_val=5, n_test=8, seed=0),
        "truthfulqa": lambda out: multiple_choice.build_truthfulqa_from_easy_vqa(out, n_test=16, seed=0),
        "instructions": lambda out: None if (Path(out) / "train.json").is_file() else
        write_instruction_set(out, n_per_family=12, n_held_out=8, seed=0),
    }
    for layout in sorted(layouts):
        builders[layout](Path("data/smoke") / layout)


def smoke_layouts(units: list[Unit]) -> set[str]:
    layouts: set[str] = set()
    for step in (step for unit in units for step in unit.steps):
        layouts.update(step.layouts or smoke_data(load_configs(step.configs))[1])
    return layouts


# --------------------------------------------------------------------------- checks before any work


def missing_inputs(units: list[Unit]) -> list[str]:
    """Every weight/data path the runs read and do not find, and a GPU they need and do not have."""
    import torch

    problems: dict[str, list[str]] = {}
    for unit in units:
        for step in unit.steps:
            config = load_configs(step.configs)
            missing = [f"{need}" for need in step.needs if not Path(need).exists()]
            init = (config.get("model") or {}).get("init_args") or {}
            for part in ("llm", "vision", "backbone"):
                spec = init.get(part) or {}
                if isinstance(spec, dict) and spec.get("path") and not Path(spec["path"]).exists():
                    missing.append(f"model.init_args.{part}.path = {spec['path']}")
            data = (config.get("data") or {}).get("init_args") or {}
            if step.command != "evaluate":  # `evaluate mc` reads its benchmark files, not the data module's
                missing += [f"data.init_args.{key} = {data[key]}" for key in DATA_PATH_KEYS
                            if isinstance(data.get(key), str) and not Path(data[key]).exists()]
            accelerator = str((config.get("trainer") or {}).get("accelerator", "auto"))
            if accelerator in ("gpu", "cuda") and step.command != "evaluate" and not torch.cuda.is_available():
                missing.append("a CUDA GPU (trainer.accelerator: gpu)")
            for what in missing:
                problems.setdefault(what, []).append(unit.row)
    return [f"{what}  (rows: {', '.join(dict.fromkeys(rows))})" for what, rows in problems.items()]


# --------------------------------------------------------------------------- running


def link_rows(table: Table, units: list[Unit], runs: Path) -> None:
    """`<runs>/<table>/<row>` -> the row's run; `<row>/<task>` for rows trained per task."""
    for row, row_dir in row_dirs_of(table, runs).items():
        mine = [u for u in units if u.row == row]
        if not mine:
            continue
        if row_dir.is_symlink():
            row_dir.unlink()
        per_task = [u for u in mine if u.task.name]
        if not per_task:
            row_dir.parent.mkdir(parents=True, exist_ok=True)
            row_dir.symlink_to(os.path.relpath(mine[0].run_dir, row_dir.parent), target_is_directory=True)
            continue
        row_dir.mkdir(parents=True, exist_ok=True)
        for unit in per_task:
            link = row_dir / unit.task.name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.relpath(unit.run_dir, row_dir), target_is_directory=True)


def run_step(step: Step, title: str) -> None:
    # The run directory is keyed by the merged config, so a finished step there is this step.
    if step.marker.is_file():
        print(f"  {title}: {step.command} already done in {step.run_dir}")
        return
    step.run_dir.mkdir(parents=True, exist_ok=True)
    log = step.run_dir / f"{step.command}.log"
    started = time.time()
    print(f"  {title}: {step.command} ...", flush=True)
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "lavin_lightning.cli", *step.argv], stdout=out,
                               stderr=subprocess.STDOUT, env={**os.environ, **step.env})
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit("\n".join([f"error: {title}: `lavin-lightning {step.command}` failed (exit {code}); "
                                    f"last lines of {log}:", *tail]))
    write_json(step.marker, {"argv": step.argv, "seconds": round(time.time() - started, 1)})
    print(f"  {title}: {step.command} done in {time.time() - started:.0f} s (log: {log})", flush=True)


def reproduce(table: Table, rows: list[str], runs: Path, smoke: bool, dry_run: bool = False) -> str:
    units = plan_table(table, rows, runs, smoke)
    if smoke and not dry_run:
        prepare_smoke_data(smoke_layouts(units))
    if dry_run:
        for unit in units:
            for step in unit.steps:
                env = " ".join(f"{k}={v}" for k, v in step.env.items())
                print(f"{env} lavin-lightning {' '.join(step.argv)}")
        return ""
    problems = missing_inputs(units)
    imports = any(step.command == "import" for unit in units for step in unit.steps)
    if problems:
        raise ConfigError(f"table {table.id} cannot run here; nothing was started. Missing:\n  - "
                          + "\n  - ".join(problems)
                          + "\nPut the weights and data at these paths (README: 'Weights and data'"
                          + (", 'Released checkpoints')." if imports else "), or run `make reproduce-table-"
                             + table.id + " SMOKE=1` for the tiny smoke run."))
    print(f"{table.paper}, {table.title}: {len(rows)} rows, {sum(len(u.steps) for u in units)} steps"
          + (" (smoke run)" if smoke else ""))
    for unit in units:
        for step in unit.steps:
            run_step(step, f"{table.id}/{unit.row}" + (f" [{unit.task.name}]" if unit.task.name else ""))
    link_rows(table, units, runs)
    text, report = render(table, {r: d for r, d in row_dirs_of(table, runs).items() if r in rows}, smoke=smoke)
    out = runs / f"{table.id}.md"
    out.write_text(text + "\n")
    write_json(out.with_suffix(".json"), report)
    return text + f"\n\nwrote {out} and {out.with_suffix('.json')}"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning reproduce",
                                 description="Run every row of a paper table, then print paper | measured | delta.")
    ap.add_argument("table", nargs="?", choices=sorted(TABLES), help="e.g. lavin-1 (--list shows them all)")
    ap.add_argument("--list", action="store_true", help="list the tables")
    ap.add_argument("--rows", help="comma-separated row names (default: every row)")
    ap.add_argument("--runs", help="where the runs go (default runs/tables, smoke runs runs/tables-smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny backbones, embedded data, CPU")
    ap.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = ap.parse_args(argv)
    if args.list or args.table is None:
        for table in TABLES.values():
            print(f"  {table.id:<14}{table.paper}, {table.title} ({len(table.rows)} rows)")
        return
    table = TABLES[args.table]
    rows = list(table.rows) if not args.rows else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(table.rows))
    if unknown:
        raise ConfigError(f"table {table.id} has no rows {unknown}; its rows: {list(table.rows)}")
    runs = Path(args.runs or ("runs/tables-smoke" if args.smoke else "runs/tables"))
    print(reproduce(table, rows, runs, args.smoke, args.dry_run))
