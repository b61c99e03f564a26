"""DDP and FSDP scaling on 2 CPU processes, and (on a GPU) LaVIN-7B's ScienceQA training time.

    python benchmarks/distributed_scaling.py [--batch 4] [--steps 5] [--llm smollm2|tiny] [--section all|cpu|gpu]
                                             [--json PATH]

* cpu: `lavin-lightning fit` of LaVIN (experiments/tiny/lavin_tiny.yaml's settings on the embedded
  default's architecture, random weights, byte-level tokens) on the embedded easy-VQA data, run
  three times through the shipped trainer configs: one process (trainer_cpu.yaml), DDP on 2
  processes (trainer_ddp.yaml on CPU) and FSDP on 2 processes (trainer_fsdp.yaml +
  trainer_fsdp_cpu.yaml). Every process has one thread and `--batch` samples per step (the global
  batch grows with the processes), so the efficiency, samples/s per process over one process's,
  is what the strategy's communication costs when the machine has a core per process (the load
  average printed beside it says whether others shared them). Median step time after 2 warm-up
  steps.
* gpu (needs CUDA): one training step of LaVIN-7B at the paper's dimensions (LLaMA-7B + CLIP
  ViT-L/14, random weights, fp16 frozen weights under fp16 autocast as the release), 4 samples
  of 512 tokens per GPU (ScienceQA's global batch 32 on 8 GPUs, the release's max_seq_len),
  projected to 20 epochs of ScienceQA's 12,726 training problems on 8 GPUs, assuming perfect
  data-parallel scaling (see the cpu section for what DDP costs), next to the paper's 1.4 hours
  (8 A100s). Skipped, saying so, without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import entry, write_json  # noqa: E402

BASE = REPO / "experiments" / "base"
STRATEGIES = {  # name -> (processes, trainer configs and overrides)
    "one process": (1, ["--config", str(BASE / "trainer_cpu.yaml")]),
    "DDP": (2, ["--config", str(BASE / "trainer_ddp.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=2",
                "--trainer.precision=32-true"]),
    "FSDP": (2, ["--config", str(BASE / "trainer_fsdp.yaml"), "--config", str(BASE / "trainer_fsdp_cpu.yaml")]),
}
WARMUP_STEPS = 2
# LaVIN (NeurIPS 2023), ScienceQA: 12,726 training problems, global batch 32, 20 epochs; LaVIN-7B
# trains in 1.4 hours on 8 A100s (Table 6).
SQA_TRAIN, SQA_BATCH, SQA_EPOCHS, PAPER_HOURS, GPUS = 12_726, 32, 20, 1.4, 8


class StepTimes(L.Callback):
    """Wall time of every training step (forward, backward, optimizer step) and the bytes of frozen
    weights this process holds, written by rank 0 to <default_root_dir>/step_times.json."""

    def __init__(self):
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module):
        from torch.distributed.tensor import DTensor

        local = [p.to_local() if isinstance(p, DTensor) else p for p in pl_module.parameters() if not p.requires_grad]
        frozen_bytes = sum(t.numel() * t.element_size() for t in local)
        if trainer.is_global_zero:
            record = {"times": self.times, "frozen_bytes": frozen_bytes}
            (Path(trainer.default_root_dir) / "step_times.json").write_text(json.dumps(record))


def model_overlay(llm: str, folder: Path) -> Path:
    """The LLM and ViT of the run: the embedded default's architectures with random weights, or the
    tiny test backbones (lavin_tiny.yaml's own)."""
    overlay: dict = {"model": {"init_args": {"adapter": {"dropout": 0.0}}}}
    if llm == "smollm2":
        from lavin_lightning.backbones.llama import LLMSpec, llama_config
        from lavin_lightning.backbones.vision import NAMED_CLIP_CONFIGS
        from lavin_lightning.commands.demo import EMBEDDED

        overlay["model"]["init_args"]["llm"] = {"config": llama_config(LLMSpec(**EMBEDDED["llm"])).to_dict()}
        overlay["model"]["init_args"]["vision"] = EMBEDDED["vision"]
        overlay["data"] = {"init_args": {"image_size": NAMED_CLIP_CONFIGS[EMBEDDED["vision"]["config"]]["image_size"]}}
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def fit(name: str, args: argparse.Namespace, data: Path, overlay: Path, folder: Path) -> dict:
    processes, trainer = STRATEGIES[name]
    run = folder / name.replace(" ", "-")
    steps = WARMUP_STEPS + args.steps
    command = [
        str(Path(sys.executable).with_name("lavin-lightning")), "fit", *trainer,
        "--config", str(REPO / "experiments" / "tiny" / "lavin_tiny.yaml"), "--config", str(overlay),
        f"--data.init_args.data_root={data}", "--data.init_args.limit_train=null",
        f"--data.init_args.global_batch_size={args.batch * processes}", f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={run}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={run}", "--trainer.enable_checkpointing=false",
        "--trainer.callbacks+=distributed_scaling.StepTimes",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name}: lavin-lightning fit failed ({result.returncode}):\n{result.stderr[-4000:]}")
    record = json.loads((run / "step_times.json").read_text())
    times = record["times"][WARMUP_STEPS:]
    if len(times) < args.steps:
        raise SystemExit(f"{name}: {len(record['times'])} steps ran, {steps} were asked for (too little data?)")
    return {"processes": processes, "step": statistics.median(times), "frozen_bytes": record["frozen_bytes"]}


def cpu_section(args: argparse.Namespace) -> dict:
    from data_modules.prepare.easy_vqa import build_scienceqa_from_easy_vqa

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_train = 2 * args.batch * (WARMUP_STEPS + args.steps)
        data = build_scienceqa_from_easy_vqa(folder / "data", n_train=n_train, n_val=8, n_test=8)
        overlay = model_overlay(args.llm, folder)
        load = os.getloadavg()[0]
        results = {name: fit(name, args, data, overlay, folder) for name in STRATEGIES}
    base = args.batch / results["one process"]["step"]
    print(f"LaVIN fit on CPU processes (gloo, 1 thread each; {os.cpu_count()} cores, load average {load:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after), {args.llm} architecture (random weights), {args.batch} samples "
          f"per process per step, median of {args.steps} steps after {WARMUP_STEPS}:")
    print(f"  {'strategy':<12} {'processes':>9} {'s/step':>8} {'samples/s/process':>18} {'efficiency':>11} "
          f"{'frozen MB/process':>18}")
    for name, r in results.items():
        per_process = args.batch / r["step"]
        print(f"  {name:<12} {r['processes']:>9} {r['step']:>8.3f} {per_process:>18.2f} {per_process / base:>11.2f} "
              f"{r['frozen_bytes'] / 1e6:>18.1f}")
        r["efficiency"] = per_process / base
    return results


def lavin_7b_batch(module, batch_size: int, tokens: int, device: torch.device) -> dict:
    """`batch_size` ScienceQA-like rows of `tokens` tokens (the last quarter supervised), each with an image."""
    ids = torch.randint(3, module.model.llm.config.vocab_size, (batch_size, tokens), device=device)
    ids[:, 0] = module.tokenizer.bos_token_id
    labels = ids.clone()
    labels[:, : tokens * 3 // 4] = -100
    size = module.model.vision.image_size
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(batch_size, 3, size, size, device=device),
            "has_image": torch.ones(batch_size, dtype=torch.bool, device=device),
            "pids": [str(i) for i in range(batch_size)]}


def median_step_time(module, batch: dict, steps: int, autocast_dtype: torch.dtype) -> float:
    """Median seconds of a training step (forward and backward under autocast, AdamW) after the warm-up."""
    device = batch["input_ids"].device
    # GPU work is asynchronous: wait for it before reading the clock.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for step in range(WARMUP_STEPS + steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype):
            loss = module.training_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_section(args: argparse.Namespace) -> dict | None:
    if not torch.cuda.is_available():
        print("LaVIN-7B on ScienceQA: skipped (no CUDA device; the projection times a real-size step on a GPU)")
        return None
    from lavin_lightning.config import build_module, load_configs

    device = torch.device("cuda")
    config = load_configs([str(REPO / "experiments" / "lavin" / "sqa_lavin_7b.yaml")])
    module = build_module(config)
    module.llm_spec.path = module.vision_spec.path = None  # random weights of the named architectures
    with device:  # built on the GPU: random init of 7B parameters on a CPU takes minutes
        module.configure_model()
    module.model.train()
    data = config["data"]["init_args"]
    micro, tokens = SQA_BATCH // GPUS, data["max_seq_len"]
    batch = lavin_7b_batch(module, micro, tokens, device)
    step_s = median_step_time(module, batch, args.steps, torch.float16)
    steps = math.ceil(SQA_TRAIN / SQA_BATCH) * SQA_EPOCHS
    print(f"LaVIN-7B training step on {torch.cuda.get_device_name(device)}: {micro} x {tokens} tokens per GPU, "
          f"{step_s:.3f} s (median of {args.steps}; peak {torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB)")
    print(f"  20 epochs of ScienceQA ({SQA_TRAIN:,} problems, batch {SQA_BATCH}: {steps:,} steps) on {GPUS} GPUs: "
          f"{steps * step_s / 3600:.2f} hours projected (perfect scaling) vs the paper's {PAPER_HOURS} hours "
          f"(8 A100s)")
    return {"device": torch.cuda.get_device_name(device), "step_seconds": step_s,
            "projected_hours": steps * step_s / 3600}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="samples per process per step (cpu section)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2", help="architecture of the cpu section")
    ap.add_argument("--section", choices=["all", "cpu", "gpu"], default="all")
    ap.add_argument("--json", default=None, help="also write the results here (for benchmarks/report.py)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    ratios, absolute, details = [], [], {}
    if args.section in ("all", "cpu"):
        details["cpu"] = cpu = cpu_section(args)
        for name, r in cpu.items():
            absolute.append(entry(f"LaVIN fit, {name}", r["step"], "s/step", f"{r['processes']} process(es)"))
            if name != "one process":
                ratios.append(entry(f"scaling efficiency: {name}", r["efficiency"], "x",
                                    "samples/s per process vs one process"))
    if args.section in ("all", "gpu"):
        details["gpu"] = gpu = gpu_section(args)
        if gpu is not None:
            absolute.append(entry(f"LaVIN-7B step on {gpu['device']}", gpu["step_seconds"], "s"))
            ratios.append(entry("LaVIN-7B ScienceQA training time vs paper", gpu["projected_hours"] / PAPER_HOURS,
                                "x", f"{gpu['projected_hours']:.2f} h projected, paper {PAPER_HOURS} h"))
    write_json(args.json, ratios, absolute, settings=vars(args), results=details)


if __name__ == "__main__":
    main()
