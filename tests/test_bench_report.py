"""`make bench`'s runner writes one JSON and one Markdown report from the benchmarks' JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CANNED = '''
import argparse, sys
sys.path.insert(0, {bench!r})
from report import entry, write_json
ap = argparse.ArgumentParser()
ap.add_argument("--json")
args = ap.parse_args()
print("a printed table")
write_json(args.json, [entry("training overhead: lora", 4.2, "%"), entry("decode speed: lora", 0.97, "x")],
           [entry("step: frozen backbone", 812.5, "ms")], settings={{}})
'''


def load_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


def test_runner_writes_json_and_markdown(tmp_path):
    report = load_report()
    canned = tmp_path / "canned.py"
    canned.write_text(CANNED.format(bench=str(REPO / "benchmarks")))
    failing = tmp_path / "failing.py"
    failing.write_text("import sys\nif '--json' in sys.argv: sys.exit(3)\n")
    no_json = tmp_path / "no_json.py"
    no_json.write_text("print('no options')\n")
    benchmarks = [report.Benchmark("canned", script=canned), report.Benchmark("failing", script=failing),
                  report.Benchmark("no_json", script=no_json), report.Benchmark("absent", script=tmp_path / "x.py")]
    out = tmp_path / "bench"
    report.main(["--out", str(out), "--quick"], benchmarks=benchmarks)

    data = json.loads((out / "report.json").read_text())
    machine = data["machine"]
    for key in ("cpu", "cpu_capability", "bf16_units", "cores", "torch_threads", "ram_gib", "gpus", "versions",
                "date", "commit", "load_average"):
        assert key in machine
    assert {"torch", "transformers", "lightning"} <= set(machine["versions"])
    status = {s["name"]: s["status"] for s in data["sections"]}
    assert status["canned"] == "ok"
    assert status["failing"].startswith("failed")
    assert status["no_json"].startswith("skipped") and status["absent"].startswith("skipped")
    canned_section = data["sections"][0]
    assert len(canned_section["load_before"]) == 3 and len(canned_section["load_after"]) == 3
    assert canned_section["results"]["headline"][0]["value"] == 4.2

    md = (out / "report.md").read_text()
    assert "training overhead: lora | +4.2%" in md
    assert "0.970x" in md and "812.5 ms" in md
    assert "## failing" in md and "failed (exit 3)" in md


def test_every_benchmark_writes_json():
    # The runner picks up a benchmark by its `--json` option: every listed one that exists has it.
    report = load_report()
    for bench in report.BENCHMARKS:
        if bench.path().is_file():
            assert report.takes_json(bench.path()), bench.name


# -- optimisations measured by the benchmarks keep the adapters' values ------------------------
def test_token_routed_mm_adapter_equals_weighing_the_expert_outputs():
    # One matmul on [w0 a, w1 a, w0, w1] (benchmarks/step_time.py's ViT speed-up) against the
    # definition w0 (U0 a + u0) + w1 (U1 a + u1), values and gradients.
    import torch

    from lavin_lightning.adapters.mma import RepAdapterRouter

    torch.manual_seed(0)
    for routing in ("token", "release"):
        adapter = RepAdapterRouter(16, adapter_dim=8, scale=0.5, dropout=0.0, routing=routing)
        with torch.no_grad():
            for p in adapter.parameters():
                p.normal_()
        x = torch.randn(3, 7, 16, requires_grad=True)
        got = adapter(x)
        w = adapter.routing_weights(x)
        hidden = adapter.down(x)
        first, second = adapter.up_experts
        expected = x + 0.5 * (w[..., :1] * first(hidden) + w[..., 1:] * second(hidden))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(got.square().sum(), [x, *adapter.parameters()])
        reference = torch.autograd.grad(expected.square().sum(), [x, *adapter.parameters()])
        for a, b in zip(grads, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
