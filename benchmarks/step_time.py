"""Step time of every method vs the frozen backbone alone on the same batch, and decoding speed.

    python benchmarks/step_time.py [--llm smollm2|smollm2-mha|llama-1b|tiny] [--batch 8] [--steps 6]
                                   [--section all|lavin,lavin-decode,text,decode,petal]
                                   [--device cpu|cuda] [--dtype float32|bfloat16]
                                   [--profile] [--json PATH]

Every method is the one of `experiments/tiny/<method>_tiny.yaml` (the demos' settings) on the
embedded default's architecture with random weights (timing does not depend on the values).

* lavin: the MMA-adapted LaVIN pipeline (frozen ViT -> visual neck -> modality token +
  "Image: " prefix -> frozen LLM -> loss on answer tokens, backward, AdamW step) against the
  same pipeline with the MM-Adapters removed from the LLM and the ViT.
* lavin-decode: LaVIN's cached decoding (batch 1, greedy) of an image prompt and a text-only
  prompt, in tokens per second: the frozen backbone (the same pipeline without MM-Adapters),
  MMA unfolded, and MMA folded into the frozen weights as test / predict / chat run it.
* text: every causal-LM method with an Alpaca tiny config against the frozen LLM on one
  Alpaca-style batch; the baseline back-propagates to its input embeddings (as any adapter in
  the first layers makes the real run do) but has no weights to update. LoRA also with peft's
  nn.Dropout for its recipe's dropout (0.05 on the input of every adapted layer: a Bernoulli
  mask as wide as the hidden states, which on a CPU costs more than LoRA's own matmuls; LoRA
  itself draws only the dropped positions, `SparseDropout`) and without dropout. Each method
  is also timed on its own model with its adapters disabled, back-propagating to the same
  embeddings (`disabled_step`): the headline's overhead is against that (same weights, same
  memory), the one against the frozen backbone is reported beside it.
* decode: chat-style generation (batch 1, greedy, a fixed number of new tokens) in tokens
  per second, with and without the KV cache, for every text method (as `predict` runs it:
  LoRA merged).
* petal: every method on InstructBLIP (PETAL also without its IB term and in the release's
  form) against the frozen InstructBLIP back-propagating to its query tokens (what any
  Q-Former adapter makes the real run do).
Steps alternate between variants to share machine noise. The lavin, text and decode sections
also time a second copy of the frozen baseline ("frozen backbone, second copy"): the same
computation, so its distance from the baseline is the measurement's own spread; decode also
times each method with its adapters disabled (the same weights in the same memory). Each
variant's time is the best of its repeats by default (`--statistic min`): on a shared machine
noise mostly adds time, so the fastest repeat is the closest to a variant's own cost
(`--statistic median` reports medians). Ratios still move by a few points between runs on a
shared 2-core machine. `--threads 1 --clock cpu` times each step in this process's CPU seconds
on one thread: the steadiest comparison on a shared machine (time other processes take is not
counted; cache contention still is).

`--device cuda` runs the same on a GPU (synchronised around every timing), `--dtype bfloat16`
stores the frozen weights in bf16 (adapters stay fp32), `--llm llama-1b` is a ~1.1B LLaMA shape
(TinyLlama's, SmolLM2's vocabulary) with random weights, big enough for GPU numbers to mean
something; `--llm smollm2-mha` is SmolLM2's shape with one key/value head per query head
(multi-head attention, as LLaMA-7B, the papers' backbone, has) instead of its 3 shared ones:
what a method costs where its keys need not be one per query head (LLaMA-Excitor).
`--profile` adds, per training variant, torch.profiler's self-CPU time per step and the
operators that add the most to it over the baseline (robust to a shared machine's load).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py, also when imported as benchmarks.step_time

from report import alternated, entry, write_json  # noqa: E402

from data_modules.batching import Collator, encode_segments  # noqa: E402
from data_modules.templates import encode_conversation, encode_records, instruction_suffix  # noqa: E402
from lavin_lightning.adapters.core import NormThenAdapter, adapters_disabled  # noqa: E402
from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_tokenizer  # noqa: E402
from lavin_lightning.commands.demo import EMBEDDED, MINILM, embedded_module, tiny_methods  # noqa: E402
from lavin_lightning.formats.instructions import InstructRecord  # noqa: E402
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig  # noqa: E402
from lavin_lightning.models.instructblip import InstructBLIPModule  # noqa: E402

# A ~1.1B LLaMA shape (TinyLlama-1.1B's widths and depth) with SmolLM2's vocabulary, so that
# SmolLM2's tokenizer reads it: GPU timings of a model that keeps a GPU busy.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048}
DEVICE = torch.device("cpu")
# The baseline again, built the same way into its own memory: its "overhead" is the
# measurement's own spread (machine state, where the weights landed), read beside the methods'.
TWIN = "frozen backbone, second copy"
DISABLED = ", adapters disabled"  # a method's own model with its adapters disabled (same weights, same memory)
TWIN_NOTE = "the baseline's computation on a second copy of its weights: the measurement's own spread"
SECTIONS = ("lavin", "lavin-decode", "text", "decode", "petal")


def sync() -> None:
    if DEVICE.type == "cuda":  # GPU work is asynchronous: wait for it before reading the clock
        torch.cuda.synchronize(DEVICE)


def on_device(batch: dict) -> dict:
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}


def backbones(llm: str, dtype: str = "float32") -> dict:
    """The backbone arguments of the benchmarked modules: the embedded default's architectures
    (or a ~1B LLaMA shape) with random weights (no GGUF de-quantisation), or the tiny test backbones."""
    if llm == "tiny":
        return {"llm": {"config": "tiny", "dtype": dtype}, "vision": {"kind": "clip", "config": "tiny", "cls_every": 1},
                "backbone": {"config": "tiny-llama"}}
    saved = Path(TOKENIZER or "") / "llm_config.json"
    # SmolLM2's architecture, read from the embedded GGUF, or saved beside --tokenizer.
    config = json.loads(saved.read_text()) if TOKENIZER and saved.is_file() else \
        llama_config(LLMSpec(**EMBEDDED["llm"])).to_dict()
    if llm == "llama-1b":
        config.update(LLAMA_1B)
    elif llm == "smollm2-mha":
        config["num_key_value_heads"] = config["num_attention_heads"]
    language = {"config": config, "dtype": dtype}
    return {"llm": language, "vision": EMBEDDED["vision"],
            "backbone": {"config": "small", "language_model": language, "qformer_tokenizer": MINILM}}


def module(method: str, backbone_args: dict, **settings):
    torch.manual_seed(0)
    built = embedded_module(method, backbones=backbone_args, **settings)
    if backbone_args["llm"].get("config") != "tiny":
        # Random weights of SmolLM2's architecture, read by SmolLM2's own tokenizer (the
        # sequence lengths of the real runs).
        tokenizer = smollm2_tokenizer()
        if isinstance(built, CausalLMModule):
            built._tokenizer = tokenizer
        else:
            built._tokenizers = (tokenizer, built.instruction_tokenizer)
    built.configure_model()
    return built.to(DEVICE)


TOKENIZER: str | None = None  # --tokenizer: a saved copy of SmolLM2's tokenizer (machines without the GGUF)


@functools.cache
def smollm2_tokenizer():
    if TOKENIZER:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    return load_tokenizer(LLMSpec(**EMBEDDED["llm"]))


class Step(torch.nn.Module):
    """A variant as the timing loop sees it: its trainable parameters and `loss(batch)`."""

    def __init__(self, model: torch.nn.Module, loss):
        super().__init__()
        self.model, self.loss = model, loss


def of(lightning_module) -> Step:
    return Step(lightning_module.model, lambda batch: lightning_module.training_losses(batch)["loss"])


def strip_adapters(model: torch.nn.Module) -> None:
    for name, child in list(model.named_modules()):
        if isinstance(child, NormThenAdapter):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, child.norm)


def lavin_batch(tokenizer, batch_size: int, image_size: int) -> dict:
    prompt = "Question: What color is the shape?\nContext: N/A\nOptions: (A) red (B) blue (C) teal (D) gray\nResponse:"
    answer = "The answer is C."
    # Prompt and prompt + answer tokenised as the ScienceQA data module does.
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    full = tokenizer(prompt + answer, add_special_tokens=False).input_ids
    ids, labels, _, _ = encode_segments([(full[:n_prompt], False), (full[n_prompt:], True)], tokenizer.bos_token_id,
                                        tokenizer.eos_token_id)
    return {
        "input_ids": torch.tensor([ids] * batch_size),
        "attention_mask": torch.ones(batch_size, len(ids), dtype=torch.long),
        "labels": torch.tensor([labels] * batch_size),
        "has_image": torch.arange(batch_size) % 2 == 0,  # mixed modalities, as in training
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size),
        "pids": [str(i) for i in range(batch_size)],
    }


def text_batch(tokenizer, batch_size: int) -> dict:
    ids, labels, _ = encode_conversation(tokenizer, "alpaca", [("Sort these numbers from smallest to largest.",
                                                                 "34, 52, 63, 66")], input_text="34, 66, 63, 52")
    return {"input_ids": torch.tensor([ids] * batch_size), "attention_mask": torch.ones(batch_size, len(ids),
            dtype=torch.long), "labels": torch.tensor([labels] * batch_size),
            "has_image": torch.zeros(batch_size, dtype=torch.bool), "pids": [str(i) for i in range(batch_size)]}


def petal_batch(module, batch_size: int) -> dict:
    records = [InstructRecord(str(i), (("Question: What color is the shape? Short answer:", "teal"),), "", None)
               for i in range(batch_size)]
    samples, _ = encode_records(records, module.tokenizer, "plain", 64, module.instruction_tokenizer,
                                instruction_suffix("vqa"))
    size = module.model.backbone.config.vision_config.image_size
    items = [{"pid": s.pid, "input_ids": torch.tensor(s.input_ids), "labels": torch.tensor(s.labels),
              "pixel_values": torch.randn(3, size, size), "has_image": True,
              "instruction_ids": torch.tensor(s.instruction_ids)} for s in samples]
    return Collator(module.tokenizer.pad_token_id)(items)


def time_steps(variants: dict[str, Step], batch: dict, steps: int) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW) of each variant."""
    # Multi-tensor AdamW (PyTorch's default on GPUs; on CPUs the default loops over the
    # parameters, ~10 small operators each: hundreds per step for adapters in every layer).
    optimizers = {k: torch.optim.AdamW(ps, lr=1e-4, foreach=FOREACH) if (ps := [p for p in v.parameters()
                                                                             if p.requires_grad])
                  else None for k, v in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    def step(name: str) -> None:
        variant, optimizer = variants[name], optimizers[name]
        variant.train()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        variant.loss(batch).backward()
        if optimizer is not None:
            optimizer.step()

    for step_index in range(steps + 1):  # step 0 warms up
        for name in alternated(variants, step_index):
            sync()
            start = CLOCK()
            step(name)
            sync()
            if step_index:
                times[name].append(CLOCK() - start)
    seconds = {k: STATISTIC(v) for k, v in times.items()}
    if PROFILE:
        profile_steps(functools.partial(step, next(iter(variants))), steps=1)  # the profiler's own start-up cost
        PROFILES[id(variants)] = {name: profile_steps(functools.partial(step, name)) for name in variants}
    return seconds


PROFILE = False
FOREACH = True
STATISTIC = min  # of a variant's repeated timings (--statistic)
CLOCK = time.perf_counter  # --clock: wall time, or this process's CPU time (time.process_time)
PROFILES: dict[int, dict[str, dict[str, tuple[float, int]]]] = {}


def profile_steps(step, steps: int = 3) -> dict[str, tuple[float, int]]:
    """Self-CPU milliseconds and calls per step of every operator over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync()
    ops: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        ops[event.key][0] += event.self_cpu_time_total / 1000 / steps
        ops[event.key][1] += event.count / steps
    return {k: (v[0], v[1]) for k, v in ops.items()}


def profile_report(profiles: dict[str, dict[str, tuple[float, int]]], base_name: str, top: int = 8) -> dict:
    """Print each variant's self-CPU ms per step against the baseline's and the operators that add most."""
    base = profiles[base_name]
    base_total = sum(ms for ms, _ in base.values())
    print(f"  profiler, self-CPU ms per step (3 steps; {base_name}: {base_total:.1f} ms, "
          f"{sum(n for _, n in base.values()):.0f} operator calls):")
    summary = {}
    for name, ops in profiles.items():
        if name == base_name:
            continue
        total = sum(ms for ms, _ in ops.values())
        calls = sum(n for _, n in ops.values()) - sum(n for _, n in base.values())
        extra = sorted(((ms - base.get(op, (0.0, 0))[0], n - base.get(op, (0.0, 0))[1], op)
                        for op, (ms, n) in ops.items()), reverse=True)[:top]
        print(f"    {name:<28} {total:8.1f} ms  ({(total / base_total - 1) * 100:+5.1f}%, {calls:+.0f} calls); "
              "most added: "
              + ", ".join(f"{op} {ms:+.1f} ms/{n:+.0f}" for ms, n, op in extra if ms > 0.05))
        summary[name] = {"self_cpu_ms": round(total, 2), "overhead_pct": round((total / base_total - 1) * 100, 2),
                         "extra_calls": round(calls), "top_added": {op: round(ms, 2) for ms, _, op in extra}}
    return summary


def report(title: str, variants: dict[str, Step], seconds: dict[str, float], base_name: str) -> dict:
    base = seconds[base_name]
    print(title)
    rows = {}
    for name, value in seconds.items():
        trainable = sum(p.numel() for p in variants[name].parameters() if p.requires_grad)
        print(f"  {name:<28} {value * 1000:8.1f} ms/step  x{value / base:.3f}  ({(value / base - 1) * 100:+5.1f}%)"
              f"   trainable {trainable:,}")
        rows[name] = {"ms_per_step": round(value * 1000, 2), "ratio": round(value / base, 4),
                      "trainable": trainable}
    section = {"title": title, "baseline": base_name, "variants": rows}
    if id(variants) in PROFILES:
        section["profile"] = profile_report(PROFILES.pop(id(variants)), base_name)
    return section


class FrozenLLM(AdaptedCausalLM):
    """The frozen backbone alone; gradients flow back to the input embeddings."""

    def prepare(self, batch):
        embeds, valid, labels = super().prepare(batch)
        return embeds.detach().requires_grad_(), valid, labels


def frozen_llm(method: CausalLMModule, tokenizer) -> FrozenLLM:
    torch.manual_seed(0)  # the same weights on every call
    return FrozenLLM(method.build_model().llm, tokenizer).to(DEVICE)


def disabled_step(method: CausalLMModule) -> Step:
    """The method's own model with its adapters disabled, back-propagating to its input
    embeddings as the frozen backbone does: the same frozen weights in the same memory, so that
    where a separately built copy's weights landed does not enter the comparison."""
    embeddings = method.model.llm.get_input_embeddings()

    def loss(batch: dict) -> torch.Tensor:
        handle = embeddings.register_forward_hook(lambda _module, _inputs, out: out.detach().requires_grad_())
        try:
            with adapters_disabled(method.model):
                return method.training_losses(batch)["loss"]
        finally:
            handle.remove()

    return Step(method.model, loss)


def with_ratio_to_disabled(section: dict) -> dict:
    """Each method's step time over its own adapters-disabled step's (`disabled_step`), printed."""
    for name, row in section["variants"].items():
        own = section["variants"].get(name + DISABLED)
        if own:
            row["ratio_to_disabled"] = round(row["ms_per_step"] / own["ms_per_step"], 4)
            print(f"  {name:<28} x{row['ratio_to_disabled']:.3f} of its own adapters disabled "
                  f"({(row['ratio_to_disabled'] - 1) * 100:+.1f}%)")
    return section


def text_variants(backbone_args: dict) -> dict[str, CausalLMModule]:
    return {method: module(method, backbone_args) for method in tiny_methods(CausalLMModule, "AlpacaDataModule")}


@contextlib.contextmanager
def disabled_inference(method: CausalLMModule) -> Iterator[None]:
    """The method's model as its backbone: adapters disabled, frozen weights where they are."""
    with adapters_disabled(method.model), method.inference():
        yield


def decode_speed(methods: dict[str, CausalLMModule], frozen: AdaptedCausalLM, twin: AdaptedCausalLM, tokenizer,
                 new_tokens: int, repeats: int) -> dict:
    """Tokens/s of every method as `predict` decodes (LoRA merged), against the frozen backbone
    and, cached, against the method's own model with its adapters disabled: the same frozen
    weights in the same memory (batch-1 decoding streams every weight per token, so where a copy
    of the weights landed moves its speed by several percent: see the second copy's row)."""
    batch = on_device(text_batch(tokenizer, 1))
    batch.pop("labels")
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    runs: dict[str, tuple] = {}  # name -> (model, use_cache, context)
    for suffix, cache in ((" cached", True), (" uncached", False)):
        runs["frozen backbone" + suffix] = (frozen, cache, contextlib.nullcontext)
        runs[TWIN + suffix] = (twin, cache, contextlib.nullcontext)
        for name, method in methods.items():
            runs[name + suffix] = (method.model, cache, method.inference)
            if cache:
                runs[f"{name}{DISABLED}{suffix}"] = (method.model, cache, functools.partial(disabled_inference, method))
    for model, _, _ in runs.values():
        model.eos_id = -1  # random weights: decode the full budget every time
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for repeat in range(repeats + 1):
            for name in alternated(runs, repeat):
                model, cache, context = runs[name]
                model.eval()
                with context():
                    sync()
                    start = CLOCK()
                    model.generate(batch, config, use_cache=cache)
                    sync()
                if repeat:
                    times[name].append(CLOCK() - start)
    print(f"decoding, batch 1, prompt {batch['input_ids'].shape[1]} tokens, {new_tokens} new tokens "
          f"({STATISTIC.__name__} of {repeats}; as predict runs each method):")
    speeds = {name: new_tokens / STATISTIC(values) for name, values in times.items()}
    rows = {}
    for name, speed in speeds.items():
        cache = " cached" if name.endswith(" cached") else " uncached"
        ratio = speed / speeds["frozen backbone" + cache]
        own = speeds.get(f"{name.removesuffix(cache)}{DISABLED}{cache}")
        print(f"  {name:<37} {speed:8.1f} tokens/s  x{ratio:.3f} of the frozen backbone{cache}"
              + (f", x{speed / own:.3f} of its own adapters disabled" if own else ""))
        rows[name] = {"tokens_per_s": round(speed, 2), "ratio": round(ratio, 4)}
        if own:
            rows[name]["ratio_to_disabled"] = round(speed / own, 4)
    return {"prompt_tokens": batch["input_ids"].shape[1], "new_tokens": new_tokens, "variants": rows}


def lavin_decode_speed(backbone_args: dict, new_tokens: int, repeats: int) -> dict:
    adapted, stripped = module("lavin", backbone_args), module("lavin", backbone_args)
    strip_adapters(stripped.model)
    adapted.fold_for_inference = False
    folded = module("lavin", backbone_args)
    variants = {"frozen backbone": stripped, "MMA unfolded": adapted, "MMA folded": folded}
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    print(f"LaVIN cached decoding, batch 1, {new_tokens} new tokens ({STATISTIC.__name__} of {repeats}):")
    rows = {}
    for modality, has_image in (("image prompt", True), ("text-only prompt", False)):
        batch = lavin_batch(adapted.tokenizer, 1, adapted.model.vision.image_size)
        batch.pop("labels")
        batch = on_device(batch)
        batch["has_image"] = torch.tensor([has_image], device=DEVICE)
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.no_grad():
            for m in variants.values():
                m.eval()
                m.model.eos_id = -1  # random weights: decode the full budget every time
            with folded.inference():
                for repeat in range(repeats + 1):
                    for name in alternated(variants, repeat):
                        m = variants[name]
                        sync()
                        start = CLOCK()
                        m.model.generate(batch, config)
                        sync()
                        if repeat:
                            times[name].append(CLOCK() - start)
        base = new_tokens / STATISTIC(times["frozen backbone"])
        for name, values in times.items():
            speed = new_tokens / STATISTIC(values)
            print(f"  {modality:<17} {name:<16} {speed:8.1f} tokens/s  x{speed / base:.3f} of the frozen backbone")
            rows[f"{modality}, {name}"] = {"tokens_per_s": round(speed, 2), "ratio": round(speed / base, 4)}
    return {"new_tokens": new_tokens, "variants": rows}


def petal_variants(backbone_args: dict) -> dict[str, Step]:
    frozen = module("qformer_head", backbone_args)  # no weights to update; gradients reach the query tokens
    frozen.model.requires_grad_(False)
    frozen.model.backbone.query_tokens.requires_grad_(True)
    variants = {"frozen InstructBLIP": Step(frozen.model, lambda batch: frozen.model.loss(batch))}
    for method in tiny_methods(InstructBLIPModule):
        variants[method] = of(module(method, backbone_args))
    # PETAL's own ablations: without the information bottleneck, and in the release's form.
    variants["petal without IB"] = of(module("petal", backbone_args, adapter={"ib_weight": 0.0}))
    variants["petal (release form)"] = of(module("petal", backbone_args,
                                                 adapter={"experts": "release", "ssf": True, "ib_weight": 0.0}))
    return variants


def headline(results: dict) -> tuple[list[dict], list[dict]]:
    """The report's ratios (overhead per method vs its frozen baseline, decode ratios) and absolute times."""
    ratios, absolute = [], []
    for key, label in (("lavin", "LaVIN"), ("text", "text"), ("petal", "InstructBLIP")):
        section = results.get(key)
        if section is None:
            continue
        for name, row in section["variants"].items():
            absolute.append(entry(f"{label} step: {name}", row["ms_per_step"], "ms"))
            if "ratio_to_disabled" in row:
                ratios.append(entry(f"{label} training overhead: {name}", (row["ratio_to_disabled"] - 1) * 100, "%",
                                    "vs its own model with adapters disabled (same weights); budget <= 5%"))
                ratios.append(entry(f"{label} training overhead vs {section['baseline']}: {name}",
                                    (row["ratio"] - 1) * 100, "%"))
            elif name != section["baseline"] and not name.endswith(DISABLED):
                note = TWIN_NOTE if name == TWIN else f"vs {section['baseline']}; budget <= 5%"
                ratios.append(entry(f"{label} training overhead: {name}", (row["ratio"] - 1) * 100, "%", note))
        for name, prof in section.get("profile", {}).items():
            ratios.append(entry(f"{label} self-CPU overhead (profiler): {name}", prof["overhead_pct"], "%"))
    for key, label in (("decode", "decode"), ("lavin-decode", "LaVIN decode")):
        section = results.get(key)
        if section is None:
            continue
        for name, row in section["variants"].items():
            absolute.append(entry(f"{label}: {name}", row["tokens_per_s"], "tokens/s"))
            if name.startswith(TWIN):
                ratios.append(entry(f"{label} speed: {name}", row["ratio"], "x", TWIN_NOTE))
            elif "ratio_to_disabled" in row:
                ratios.append(entry(f"{label} speed: {name}", row["ratio_to_disabled"], "x",
                                    "of its own model with adapters disabled (same weights); target >= 0.95x"))
            elif not name.startswith("frozen backbone") and not name.endswith(DISABLED + " cached"):
                ratios.append(entry(f"{label} speed: {name}", row["ratio"], "x", "of the frozen backbone; "
                                    "target >= 0.95x"))
    return ratios, absolute


def main(argv: list[str] | None = None) -> dict:
    global DEVICE, PROFILE, TOKENIZER, FOREACH, STATISTIC, CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "smollm2-mha", "llama-1b", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--decode-repeats", type=int, default=5)
    ap.add_argument("--section", default="all", help="all, or comma-separated: " + ", ".join(SECTIONS))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of the frozen weights")
    ap.add_argument("--optimizer", choices=["foreach", "loop"], default="foreach",
                    help="AdamW's multi-tensor implementation, or its per-parameter loop (CPU default of torch)")
    ap.add_argument("--statistic", choices=["min", "median"], default="min",
                    help="of each variant's repeated timings (default: the best repeat)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall seconds, or this process's CPU seconds (all its threads): with --threads 1 on a "
                         "shared machine, the time other processes take from it is left out")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler self-CPU breakdown of the training steps")
    ap.add_argument("--tokenizer", default=None, help="SmolLM2's tokenizer saved with save_pretrained (default: "
                    "read from the embedded GGUF file)")
    ap.add_argument("--json", default=None, help="also write the results here (for benchmarks/report.py)")
    args = ap.parse_args(argv)
    TOKENIZER, FOREACH = args.tokenizer, args.optimizer == "foreach"
    STATISTIC = {"min": min, "median": statistics.median}[args.statistic]
    CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = set(SECTIONS) if args.section == "all" else set(args.section.split(","))
    if chosen - set(SECTIONS):
        ap.error(f"unknown sections {sorted(chosen - set(SECTIONS))}; choose from {SECTIONS}")
    DEVICE, PROFILE = torch.device(args.device), args.profile
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if DEVICE.type == "cuda" and args.clock == "cpu":
        ap.error("--clock cpu times CPU work; GPU steps need --clock wall")
    backbone_args = backbones(args.llm, args.dtype)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"LLM {args.llm} architecture ({args.dtype} frozen weights), {where}, {args.clock} clock, "
          f"load average {os.getloadavg()[0]:.2f}")
    results: dict = {}
    if "lavin" in chosen:
        adapted, stripped, twin = (module("lavin", backbone_args) for _ in range(3))
        strip_adapters(stripped.model)
        strip_adapters(twin.model)
        variants = {"frozen backbone": of(stripped), TWIN: of(twin), "MMA-adapted": of(adapted)}
        batch = on_device(lavin_batch(adapted.tokenizer, args.batch, adapted.model.vision.image_size))
        seconds = time_steps(variants, batch, args.steps)
        results["lavin"] = report(f"LaVIN training step, batch {args.batch}, {batch['input_ids'].shape[1]} text "
                                  "tokens:", variants, seconds, "frozen backbone")
        print(f"  MMA overhead: {(seconds['MMA-adapted'] / seconds['frozen backbone'] - 1) * 100:+.1f}% "
              "(budget: <= 5%)")
        del adapted, stripped, twin, variants
    if "lavin-decode" in chosen:
        results["lavin-decode"] = lavin_decode_speed(backbone_args, args.new_tokens, repeats=args.decode_repeats)
    if chosen & {"text", "decode"}:
        methods = text_variants(backbone_args)
        tokenizer = next(iter(methods.values())).tokenizer
        frozen, twin = (frozen_llm(next(iter(methods.values())), tokenizer) for _ in range(2))
    if "text" in chosen:
        batch = on_device(text_batch(tokenizer, args.batch))
        variants = {"frozen backbone": Step(frozen, frozen.loss), TWIN: Step(twin, twin.loss),
                    **{k: of(m) for k, m in methods.items()},
                    **{k + DISABLED: disabled_step(m) for k, m in methods.items()}}
        if "lora" in methods:  # its recipe's dropout: peft's nn.Dropout, and none
            variants["lora, nn.Dropout"] = of(module("lora", backbone_args, adapter={"dropout_sampler": "torch"}))
            variants["lora without dropout"] = of(module("lora", backbone_args, adapter={"dropout": 0.0}))
        results["text"] = with_ratio_to_disabled(report(
            f"text training step, batch {args.batch}, {batch['input_ids'].shape[1]} tokens:", variants,
            time_steps(variants, batch, args.steps), "frozen backbone"))
    if "decode" in chosen:
        results["decode"] = decode_speed(methods, frozen, twin, tokenizer, args.new_tokens, repeats=args.decode_repeats)
    if "petal" in chosen:
        variants = petal_variants(backbone_args)
        petal = variants["petal"].model
        batch = on_device(petal_batch(module("petal", backbone_args), args.batch))
        results["petal"] = report(f"InstructBLIP training step, batch {args.batch}, {batch['input_ids'].shape[1]} LM "
                                  f"tokens + {petal.num_queries} queries:", variants,
                                  time_steps(variants, batch, args.steps), "frozen InstructBLIP")
    ratios, absolute = headline(results)
    write_json(args.json, ratios, absolute, settings=vars(args), device=where, sections=results)
    return results


if __name__ == "__main__":
    main()
