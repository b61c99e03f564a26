"""`make bench`: run every benchmark and write one report, runs/bench/report.{json,md}.

    python benchmarks/report.py [--quick] [--out runs/bench] [--only step_time,length_buckets]

Every benchmark of `BENCHMARKS` that exists and takes `--json PATH` runs in its own process
(its printed tables pass through); its JSON holds `headline` (ratios: the project's headline
numbers) and `absolute` (times and rates, as context) beside its own details. The report puts
each section's ratios side by side, with its absolute numbers, its wall time, the load
average before and after it (the machine may be shared), and the machine: CPU, cores, torch
threads, RAM, GPU, library versions, date, commit.

A benchmark writes its JSON with `write_json(path, headline=..., absolute=..., **details)`.
Adding one is one line in `BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Benchmark:
    """A benchmark script and its arguments (full run, and `--quick`)."""

    name: str
    args: list[str] = field(default_factory=list)
    quick: list[str] | None = None  # None: the same as `args`
    script: Path | None = None  # default: benchmarks/<name>.py

    def path(self) -> Path:
        return self.script or REPO / "benchmarks" / f"{self.name}.py"


BENCHMARKS = [
    Benchmark("step_time", [], ["--steps", "4", "--section", "lavin,text,decode"]),
    # The text methods where every query head has its own key (multi-head attention, as LLaMA-7B).
    Benchmark("step_time_mha", ["--llm", "smollm2-mha", "--section", "text,decode"],
              ["--llm", "smollm2-mha", "--steps", "4", "--section", "text,decode"],
              script=REPO / "benchmarks" / "step_time.py"),
    Benchmark("caption_scoring", ["--source", "synthetic"], ["--source", "synthetic", "--images", "500"]),
    Benchmark("distributed_scaling", [], ["--steps", "2", "--section", "cpu"]),
    Benchmark("scienceqa_eval", [], ["--n-test", "32", "--modes", "release,stop/compact,options"]),
    Benchmark("length_buckets", [], ["--steps", "1"]),
    Benchmark("memory", [], []),
    Benchmark("quantization", [], []),
]


# -- what benchmarks call ---------------------------------------------------------------------
def entry(name: str, value: float, unit: str = "", note: str = "") -> dict:
    """One reported number: `unit` "x" for a ratio, "%" for an overhead, "ms", "s", "tokens/s", ..."""
    item = {"name": name, "value": round(float(value), 4), "unit": unit}
    if note:
        item["note"] = note
    return item


def alternated(names, repeat: int) -> list:
    """The order of the variants in repeat `repeat`: forward on even repeats, reversed on odd ones.
    Variants timed in turn share the machine's moods; alternating the direction also gives each
    one both neighbours as predecessors (a fixed or merely rotated order keeps each variant's
    predecessor, whose state of the caches and memory it inherits) and evens out drift within a
    repeat."""
    names = list(names)
    return names if repeat % 2 == 0 else names[::-1]


def write_json(path: str | os.PathLike | None, headline: list[dict], absolute: list[dict], **details) -> None:
    """A benchmark's results for the report (nothing when `path` is None)."""
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"headline": headline, "absolute": absolute, **details}, indent=1))


# -- the machine --------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def git_commit(root: Path = REPO) -> str | None:
    """HEAD's commit, read from the repository's files (no git process); None outside a checkout."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        bases = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for base in bases:
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        pass
    return None


def machine() -> dict:
    import torch

    from lavin_lightning.commands.demo import native_bf16

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "lightning", "peft"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        # bf16 without hardware units is emulated, several times slower than fp32: say which kind ran
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_units": native_bf16()[0],
        "ram_gib": round(ram, 1) if ram else None, "gpus": gpus, "platform": platform.platform(),
        "versions": versions, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# -- running --------------------------------------------------------------------------------
def takes_json(script: Path) -> bool:
    return script.is_file() and "--json" in script.read_text()


def run_section(bench: Benchmark, out: Path, quick: bool) -> dict:
    """Run one benchmark in its own process; its JSON, timing and load, or why it did not run."""
    script = bench.path()
    section: dict = {"name": bench.name, "script": script.name}
    if not takes_json(script):
        section["status"] = "skipped: " + ("no such script" if not script.is_file() else "it takes no --json")
        return section
    args = bench.quick if quick and bench.quick is not None else bench.args
    target = out / "sections" / f"{bench.name}.json"
    target.unlink(missing_ok=True)
    command = [sys.executable, str(script), *args, "--json", str(target)]
    section.update(command=" ".join(["python", f"benchmarks/{script.name}", *args]),
                   load_before=[round(x, 2) for x in os.getloadavg()])
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, stdout=sys.stdout, stderr=sys.stderr)
    section.update(wall_seconds=round(time.perf_counter() - start, 1),
                   load_after=[round(x, 2) for x in os.getloadavg()])
    if result.returncode != 0 or not target.is_file():
        section["status"] = f"failed (exit {result.returncode})"
        return section
    section["status"] = "ok"
    section["results"] = json.loads(target.read_text())
    return section


def _value(item: dict) -> str:
    value, unit = item["value"], item.get("unit", "")
    if unit == "%":
        return f"{value:+.1f}%"
    if unit == "x":
        return f"{value:.3f}x"
    text = f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _table(items: list[dict]) -> list[str]:
    lines = ["| | value | note |", "|---|---:|---|"]
    lines += [f"| {i['name']} | {_value(i)} | {i.get('note', '')} |" for i in items]
    return lines


def markdown(report: dict) -> str:
    m = report["machine"]
    gpus = ", ".join(m["gpus"]) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines = [
        "# Benchmark report", "",
        f"{m['date']}, commit {m['commit'] or 'unknown'}{' (quick run)' if report.get('quick') else ''}", "",
        f"Machine: {m['cpu']} ({m['cpu_capability']}, bf16 units: {'yes' if m['bf16_units'] else 'no'}), "
        f"{m['cores']} cores, {m['torch_threads']} torch threads, "
        f"{m['ram_gib']} GiB RAM, GPU: {gpus}; {m['platform']}; {versions}.", "",
        "Load averages (1/5/15 min) are given before and after each section: a shared machine inflates "
        "absolute times; ratios are measured on alternating steps and share the noise.", "",
        "## Headline ratios", "",
        "| section | ratio | value |", "|---|---|---:|",
    ]
    for s in report["sections"]:
        for item in s.get("results", {}).get("headline", []):
            lines.append(f"| {s['name']} | {item['name']} | {_value(item)} |")
    for s in report["sections"]:
        lines += ["", f"## {s['name']}", ""]
        if s["status"] != "ok":
            lines.append(f"{s['status']}.")
            if "command" in s:
                lines.append(f"Command: `{s['command']}`")
            continue
        lines += [f"`{s['command']}`: {s['wall_seconds']} s, load average {s['load_before']} before, "
                  f"{s['load_after']} after.", ""]
        results = s["results"]
        if results.get("headline"):
            lines += ["Ratios:", ""] + _table(results["headline"]) + [""]
        if results.get("absolute"):
            lines += ["Absolute (context):", ""] + _table(results["absolute"])
    return "\n".join(lines) + "\n"


def write_report(sections: list[dict], out: Path, quick: bool = False, machine_info: dict | None = None) -> dict:
    report = {"quick": quick, "machine": machine_info or machine(), "sections": sections}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None, benchmarks: list[Benchmark] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--quick", action="store_true", help="fewer steps and samples (a few minutes)")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    args = ap.parse_args(argv)
    chosen = benchmarks if benchmarks is not None else BENCHMARKS
    if args.only:
        names = set(args.only.split(","))
        chosen = [b for b in chosen if b.name in names]
    out = Path(args.out)
    info = machine()
    sections = []
    for bench in chosen:
        print(f"\n===== {bench.name} =====", flush=True)
        sections.append(run_section(bench, out, args.quick))
        print(f"----- {bench.name}: {sections[-1]['status']}", flush=True)
    report = write_report(sections, out, args.quick, info)
    print(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    return report


if __name__ == "__main__":
    main()
