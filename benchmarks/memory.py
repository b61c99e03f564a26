"""Peak memory of training steps: every causal-LM method against full fine-tuning of the same model,
with and without activation checkpointing (`PEFTModule(activation_checkpointing=True)`).

    python benchmarks/memory.py [--device cpu|cuda] [--llm smollm2|llama-1b|tiny] [--batch B] [--seq T]
                                [--steps 2] [--methods ...] [--jobs N] [--json PATH]

Variants (the methods of `experiments/tiny/<method>_tiny.yaml` on the chosen architecture with random
weights, as benchmarks/step_time.py builds them; memory does not depend on the values):

* lavin: MMA on the LaVIN pipeline (frozen ViT -> neck -> modality token + prefix -> frozen LLM,
  half the samples with an image); lavin-full: the same pipeline without MM-Adapters, every
  parameter (LLM, ViT, neck, modality token) trained.
* excitor, llama_adapter, lora: the text methods; head: the LM head only (tied to the input
  embeddings in SmolLM2); full: every parameter of the LLM. All on T text tokens per sample,
  the second half supervised.

Each variant runs in a fresh child process: build, then `--steps` training steps (forward, backward,
AdamW step; the second step is the first that holds AdamW's moments and the activations at once).
CPU: peak RSS (VmHWM, reset after the build where the kernel allows it). CUDA: max_memory_allocated,
reset after the build. "step" is the peak above what the process held once the model was built
(frozen weights, which every variant holds alike, excluded); "peak" is all of it. On CUDA the
frozen weights are held in `--dtype` (bf16) under autocast; trained parameters stay fp32, which is
what mixed-precision full fine-tuning holds too (fp32 weights, gradients and two AdamW moments).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py, also when imported as benchmarks.memory
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub

from report import entry, write_json  # noqa: E402

from lavin_lightning.adapters.core import NormThenAdapter  # noqa: E402
from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_causal_lm, load_tokenizer  # noqa: E402
from lavin_lightning.commands.demo import EMBEDDED, embedded_module  # noqa: E402
from lavin_lightning.models.base import set_activation_checkpointing  # noqa: E402
from lavin_lightning.models.causal_lm import AdaptedCausalLM  # noqa: E402

ADAPTERS = ("lavin", "excitor", "llama_adapter", "lora", "head")
FULL = {"lavin": "lavin-full"}  # the full fine-tuning each variant is compared with (default: "full")
VARIANTS = (*ADAPTERS, "lavin-full", "full")
# LLaMA shapes beyond the embedded default (LLaMA's vocabulary of 32000): TinyLlama-1.1B's, LLaMA-7B's.
SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def backbones(llm: str) -> dict:
    if llm == "tiny":
        return {"llm": {"config": "tiny"}, "vision": {"kind": "clip", "config": "tiny", "cls_every": 1}}
    if llm in SHAPES:  # LLaMA's vocabulary; the byte tokenizer of config-built models writes the prompts
        return {"llm": {"config": {**SHAPES[llm], "vocab_size": 32000}}, "vision": EMBEDDED["vision"]}
    return {"llm": {"config": llama_config(LLMSpec(**EMBEDDED["llm"])).to_dict()}, "vision": EMBEDDED["vision"]}


def text_batch(vocab: int, bos: int, batch: int, seq: int, generator: torch.Generator) -> dict:
    ids = torch.randint(3, vocab, (batch, seq), generator=generator)
    ids[:, 0] = bos
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half is not supervised
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "has_image": torch.zeros(batch, dtype=torch.bool), "pids": [str(i) for i in range(batch)]}


def strip_adapters(model: torch.nn.Module) -> None:
    for name, child in list(model.named_modules()):
        if isinstance(child, NormThenAdapter):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, child.norm)


def build(variant: str, llm: str, checkpointing: bool):
    """(model, loss function of a batch, trainable parameters, tokenizer)."""
    args = backbones(llm)
    # SmolLM2's own tokenizer for its architecture (the real runs' token ids), else the byte tokenizer.
    tokenizer = load_tokenizer(LLMSpec(**(EMBEDDED["llm"] if llm == "smollm2" else args["llm"])))
    if variant in ("lavin", "lavin-full", "excitor", "llama_adapter", "lora"):
        method = "lavin" if variant == "lavin-full" else variant
        # The model option as users set it; full fine-tuning gets the same helper below.
        module = embedded_module(method, backbones=args, activation_checkpointing=checkpointing
                                 and variant != "lavin-full")
        module._tokenizer = tokenizer
        module.configure_model()
        model, trainable = module.model, list(module._trainable.values())
        if variant == "lavin-full":
            strip_adapters(model)
            trainable = list(model.parameters())
        loss = (lambda batch: module.training_losses(batch)["loss"]) if variant != "lavin-full" else model.loss
    else:
        model = AdaptedCausalLM(load_causal_lm(LLMSpec(**args["llm"])), tokenizer)
        trainable = [model.llm.lm_head.weight] if variant == "head" else list(model.parameters())
        loss = model.loss
    model.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    if checkpointing and variant in ("lavin-full", "head", "full"):
        set_activation_checkpointing(model)
    return model, loss, trainable, tokenizer


def measure(variant: str, llm: str = "smollm2", device: str = "cpu", batch: int = 8, seq: int = 256, steps: int = 2,
            checkpointing: bool = False, dtype: str = "float32", seed: int = 0) -> dict:
    """One variant's training steps in this process: peak memory (MiB), in all and above the built
    model; run it in a fresh process for a clean peak."""
    torch.manual_seed(seed)
    with torch.device(device):
        model, loss_of, trainable, tokenizer = build(variant, llm, checkpointing)
    frozen_dtype = DTYPES[dtype]
    for param in model.parameters():  # as AdapterFSDPStrategy's frozen_dtype: trained ones stay fp32
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(frozen_dtype)
    generator = torch.Generator().manual_seed(seed)
    data = text_batch(model.llm.config.vocab_size, tokenizer.bos_token_id, batch, seq, generator)
    if variant.startswith("lavin"):
        data["has_image"] = torch.arange(batch) % 2 == 0  # mixed modalities, as in training
        size = model.vision.image_size
        data["pixel_values"] = torch.randn(batch, 3, size, size, generator=generator)
    data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    autocast = torch.autocast(device, dtype=frozen_dtype, enabled=frozen_dtype != torch.float32)
    gc.collect()
    baseline, reset = _start(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(data)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = _peak(device)
    mib = 2**20
    return {"variant": variant, "activation_checkpointing": checkpointing, "llm": llm, "device": device,
            "batch": batch, "seq": seq, "tokens": int(data["attention_mask"].sum()), "steps": steps,
            "frozen_dtype": dtype, "trainable": sum(p.numel() for p in trainable),
            "params": sum(p.numel() for p in model.parameters()), "loss": loss.detach().item(),
            "built_mib": round(baseline / mib, 1), "peak_mib": round(peak / mib, 1),
            "step_peak_mib": round((peak - baseline) / mib, 1), "peak_reset_after_build": reset,
            "step_s": round(statistics.median(times[1:] or times), 3)}


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _start(device: str) -> tuple[int, bool]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), True
    try:  # Linux: "5" resets VmHWM to the current RSS, so building's own peak is not counted
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    return _proc_status("VmRSS"), reset


def _peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else _proc_status("VmHWM")


# -- the parent: one child process per variant ---------------------------------------------------------
def _child(spec: dict, threads: int, conn) -> None:
    torch.set_num_threads(threads)
    try:
        conn.send(measure(**spec))
    except BaseException as err:  # noqa: BLE001 -- reported by the parent, with the variant
        conn.send({"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"})
    finally:
        conn.close()


def run_children(specs: list[dict], jobs: int, threads: int, start_method: str) -> list[dict]:
    """`measure(**spec)` of every spec, each in a new process, `jobs` at a time. CPU children are
    forked from this process, which has imported everything and built nothing (no import cost per
    child); CUDA children are spawned (a CUDA context does not survive a fork)."""
    context = multiprocessing.get_context(start_method)
    results: list[dict | None] = [None] * len(specs)
    pending, running = list(enumerate(specs)), {}
    while pending or running:
        while pending and len(running) < jobs:
            index, spec = pending.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(spec, threads, send), daemon=True)
            process.start()
            send.close()
            running[receive] = (index, process)
        for receive in multiprocessing.connection.wait(list(running)):
            index, process = running.pop(receive)
            try:
                result = receive.recv()
            except EOFError:
                result = None
            process.join()
            if result is None:
                result = {"error": f"the child process died (exit code {process.exitcode}); out of memory?"}
            if "error" in result:
                raise RuntimeError(f"{specs[index]}: {result['error']}")
            results[index] = result
    return results


def report(runs: list[dict]) -> dict:
    by = {(r["variant"], r["activation_checkpointing"]): r for r in runs}
    first = runs[0]
    print(f"\n{first['llm']} on {first['device']}, batch {first['batch']} x {first['seq']} text tokens, frozen "
          f"weights {first['frozen_dtype']}, {first['steps']} steps; MiB (peak = all the process held; step = "
          f"above the built model)")
    print(f"  {'variant':<14} {'trainable':>12} {'built':>8} | {'peak':>8} {'step':>8} | {'peak AC':>8} "
          f"{'step AC':>8} | {'peak/full':>9} {'AC/AC':>6} {'AC/noAC':>7} | {'step/full':>9} {'AC/AC':>6} | s/step, AC")
    summary = {}
    for variant in VARIANTS:
        off, on = by.get((variant, False)), by.get((variant, True))
        if off is None and on is None:
            continue
        ref = FULL.get(variant, "full")
        full_off, full_on = by.get((ref, False)), by.get((ref, True))
        any_run = off or on

        def cell(run, key):
            return f"{run[key]:8.0f}" if run else f"{'-':>8}"

        ratios = {}
        if variant not in ("full", "lavin-full"):
            pairs = {"peak": (off, full_off, "peak_mib"), "peak_ac": (on, full_on, "peak_mib"),
                     "peak_ac_vs_full": (on, full_off, "peak_mib"), "step": (off, full_off, "step_peak_mib"),
                     "step_ac": (on, full_on, "step_peak_mib")}
            ratios = {k: a[key] / b[key] for k, (a, b, key) in pairs.items() if a and b and b[key] > 0}
            summary[variant] = {"compared_with": ref, **{k: round(v, 3) for k, v in ratios.items()}}
        r = {k: f"{v:.2f}x" for k, v in ratios.items()}
        times = "/".join(f"{run['step_s']:.2f}" if run else "-" for run in (off, on))
        print(f"  {variant:<14} {any_run['trainable']:>12,} {any_run['built_mib']:8.0f} | {cell(off, 'peak_mib')} "
              f"{cell(off, 'step_peak_mib')} | {cell(on, 'peak_mib')} {cell(on, 'step_peak_mib')} | "
              f"{r.get('peak', ''):>9} {r.get('peak_ac', ''):>6} {r.get('peak_ac_vs_full', ''):>7} | "
              f"{r.get('step', ''):>9} {r.get('step_ac', ''):>6} | {times}")
    print("  ratios: the variant over the full fine-tuning of its pipeline (lavin-full for lavin, full for the "
          "rest); AC/AC both with activation checkpointing, AC/noAC the variant with it over full FT without it")
    met = {v: s.get("peak", 9) <= 0.5 and s.get("peak_ac", 9) <= 0.5 for v, s in summary.items()
           if "peak" in s or "peak_ac" in s}
    print("  goal adapter peak <= 0.5x full FT (with and without AC): "
          + ", ".join(f"{v} {'met' if ok else 'NOT met'}" for v, ok in met.items()))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--llm", choices=["smollm2", "tiny", *SHAPES], default="smollm2",
                    help="the LLM's architecture (random weights): the embedded SmolLM2-135M, or a bigger "
                         "LLaMA shape (for a GPU; needs no model files)")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 on cuda, 4 on cpu")
    ap.add_argument("--seq", type=int, default=None, help="text tokens per sample; default: 256 on cuda, 128 on cpu")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="frozen weights (and autocast); default bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--methods", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--ac", choices=["both", "off", "on"], default="both", help="activation checkpointing")
    ap.add_argument("--jobs", type=int, default=None,
                    help="child processes at once (each is measured alone); default 2 on cpu, 4 on cuda")
    ap.add_argument("--json", type=Path, default=None, help="write every run and the ratios here")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"  # no CUDA call here: the children would inherit it
    batch, seq = args.batch or (8 if cuda else 4), args.seq or (256 if cuda else 128)
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    jobs = args.jobs or (4 if cuda else 2)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.ac]
    specs = [{"variant": v, "llm": args.llm, "device": args.device, "batch": batch, "seq": seq, "steps": args.steps,
              "checkpointing": ac, "dtype": dtype} for v in args.methods for ac in settings]
    needed = {FULL.get(v, "full") for v in args.methods} - set(args.methods)
    if needed:
        print(f"(ratios need {sorted(needed)}: add it to --methods)")
    start = time.perf_counter()
    runs = run_children(specs, jobs, threads, "spawn" if cuda else "fork")
    summary = report(runs)
    print(f"  {len(runs)} child processes, {time.perf_counter() - start:.0f} s")
    if args.json:
        names = {"peak": "peak / full FT", "peak_ac": "peak / full FT, both with AC",
                 "peak_ac_vs_full": "peak with AC / full FT without"}
        headline = [entry(f"{variant}: {label}", ratios[key], "x", note=f"vs {ratios['compared_with']}")
                    for variant, ratios in summary.items() for key, label in names.items() if key in ratios]
        absolute = [entry(f"{r['variant']}{' (AC)' if r['activation_checkpointing'] else ''}: peak", r["peak_mib"],
                          "MiB", note=f"{r['step_s']:.2f} s/step") for r in runs]
        write_json(args.json, headline, absolute, runs=runs, ratios=summary)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
