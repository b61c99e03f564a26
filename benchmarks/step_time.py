"""Step time of every method vs the frozen backbone alone on the same batch, and decoding speed.

    python benchmarks/step_time.py [--llm smollm2|tiny] [--batch 8] [--steps 6]
                                   [--section all|lavin|lavin-decode|text|decode|petal]

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
  the first layers makes the real run do) but has no weights to update.
* decode: chat-style generation (batch 1, greedy, a fixed number of new tokens) in tokens
  per second, with and without the KV cache, for every text method (as `predict` runs it:
  LoRA merged).
* petal: every method on InstructBLIP (PETAL also without its IB term and in the release's
  form) against the frozen InstructBLIP back-propagating to its query tokens (what any
  Q-Former adapter makes the real run do).
Steps alternate between variants to share machine noise; medians are reported.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.batching import Collator, encode_segments  # noqa: E402
from data_modules.templates import encode_conversation, encode_records, instruction_suffix  # noqa: E402
from lavin_lightning.adapters.core import NormThenAdapter  # noqa: E402
from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_tokenizer  # noqa: E402
from lavin_lightning.commands.demo import EMBEDDED, MINILM, embedded_module, tiny_methods  # noqa: E402
from lavin_lightning.formats.instructions import InstructRecord  # noqa: E402
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig  # noqa: E402
from lavin_lightning.models.instructblip import InstructBLIPModule  # noqa: E402


def backbones(llm: str) -> dict:
    """The backbone arguments of the benchmarked modules: the embedded default's architectures
    with random weights (no GGUF de-quantisation), or the tiny test backbones."""
    if llm == "tiny":
        return {"llm": {"config": "tiny"}, "vision": {"kind": "clip", "config": "tiny", "cls_every": 1},
                "backbone": {"config": "tiny-llama"}}
    smollm2 = {"config": llama_config(LLMSpec(**EMBEDDED["llm"])).to_dict()}
    return {"llm": smollm2, "vision": EMBEDDED["vision"],
            "backbone": {"config": "small", "language_model": smollm2, "qformer_tokenizer": MINILM}}


def module(method: str, backbone_args: dict, **settings):
    torch.manual_seed(0)
    built = embedded_module(method, backbones=backbone_args, **settings)
    if backbone_args["llm"] != {"config": "tiny"}:
        # Random weights of SmolLM2's architecture, read by SmolLM2's own tokenizer (the
        # sequence lengths of the real runs).
        tokenizer = smollm2_tokenizer()
        if isinstance(built, CausalLMModule):
            built._tokenizer = tokenizer
        else:
            built._tokenizers = (tokenizer, built.instruction_tokenizer)
    built.configure_model()
    return built


@functools.cache
def smollm2_tokenizer():
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
    optimizers = {k: torch.optim.AdamW(ps, lr=1e-4) if (ps := [p for p in v.parameters() if p.requires_grad])
                  else None for k, v in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(steps + 1):  # step 0 warms up
        for name, variant in variants.items():
            variant.train()
            start = time.perf_counter()
            if optimizers[name] is not None:
                optimizers[name].zero_grad(set_to_none=True)
            variant.loss(batch).backward()
            if optimizers[name] is not None:
                optimizers[name].step()
            if step:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, variants: dict[str, Step], medians: dict[str, float], base_name: str) -> None:
    base = medians[base_name]
    print(title)
    for name, median in medians.items():
        trainable = sum(p.numel() for p in variants[name].parameters() if p.requires_grad)
        print(f"  {name:<22} {median * 1000:8.1f} ms/step  x{median / base:.3f}  ({(median / base - 1) * 100:+5.1f}%)"
              f"   trainable {trainable:,}")


class FrozenLLM(AdaptedCausalLM):
    """The frozen backbone alone; gradients flow back to the input embeddings."""

    def prepare(self, batch):
        embeds, valid, labels = super().prepare(batch)
        return embeds.detach().requires_grad_(), valid, labels


def text_variants(backbone_args: dict) -> dict[str, CausalLMModule]:
    return {method: module(method, backbone_args) for method in tiny_methods(CausalLMModule, "AlpacaDataModule")}


def decode_speed(methods: dict[str, CausalLMModule], frozen: AdaptedCausalLM, tokenizer, new_tokens: int,
                 repeats: int) -> None:
    batch = text_batch(tokenizer, 1)
    batch.pop("labels")
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    models = {"frozen backbone": frozen, **{name: m.model for name, m in methods.items()}}
    for model in models.values():
        model.eos_id = -1  # random weights: decode the full budget every time
    runs = {f"{name}{suffix}": (model, cache) for name, model in models.items()
            for suffix, cache in ((" cached", True), (" uncached", False))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        contexts = [m.inference() for m in methods.values()]  # as predict decodes (LoRA merged)
        for context in contexts:
            context.__enter__()
        for repeat in range(repeats + 1):
            for name, (model, cache) in runs.items():
                model.eval()
                start = time.perf_counter()
                model.generate(batch, config, use_cache=cache)
                if repeat:
                    times[name].append(time.perf_counter() - start)
        for context in contexts:
            context.__exit__(None, None, None)
    print(f"decoding, batch 1, prompt {batch['input_ids'].shape[1]} tokens, {new_tokens} new tokens (median of "
          f"{repeats}; as predict runs each method):")
    for name, values in times.items():
        print(f"  {name:<28} {new_tokens / statistics.median(values):8.1f} tokens/s")


def lavin_decode_speed(backbone_args: dict, new_tokens: int, repeats: int) -> None:
    adapted, stripped = module("lavin", backbone_args), module("lavin", backbone_args)
    strip_adapters(stripped.model)
    adapted.fold_for_inference = False
    folded = module("lavin", backbone_args)
    variants = {"frozen backbone": stripped, "MMA unfolded": adapted, "MMA folded": folded}
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    print(f"LaVIN cached decoding, batch 1, {new_tokens} new tokens (median of {repeats}):")
    for modality, has_image in (("image prompt", True), ("text-only prompt", False)):
        batch = lavin_batch(adapted.tokenizer, 1, adapted.model.vision.image_size)
        batch.pop("labels")
        batch["has_image"] = torch.tensor([has_image])
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.no_grad():
            for m in variants.values():
                m.eval()
                m.model.eos_id = -1  # random weights: decode the full budget every time
            with folded.inference():
                for repeat in range(repeats + 1):  # variants alternate: they share the machine's noise
                    for name, m in variants.items():
                        start = time.perf_counter()
                        m.model.generate(batch, config)
                        if repeat:
                            times[name].append(time.perf_counter() - start)
        base = new_tokens / statistics.median(times["frozen backbone"])
        for name, values in times.items():
            speed = new_tokens / statistics.median(values)
            print(f"  {modality:<17} {name:<16} {speed:8.1f} tokens/s  x{speed / base:.3f} of the frozen backbone")


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--section", choices=["all", "lavin", "lavin-decode", "text", "decode", "petal"], default="all")
    args = ap.parse_args(argv)
    backbone_args = backbones(args.llm)
    print(f"LLM {args.llm} architecture, {torch.get_num_threads()} threads")
    if args.section in ("all", "lavin"):
        adapted, stripped = module("lavin", backbone_args), module("lavin", backbone_args)
        strip_adapters(stripped.model)
        variants = {"frozen backbone": of(stripped), "MMA-adapted": of(adapted)}
        batch = lavin_batch(adapted.tokenizer, args.batch, adapted.model.vision.image_size)
        medians = time_steps(variants, batch, args.steps)
        report(f"LaVIN training step, batch {args.batch}, {batch['input_ids'].shape[1]} text tokens:", variants,
               medians, "frozen backbone")
        print(f"  MMA overhead: {(medians['MMA-adapted'] / medians['frozen backbone'] - 1) * 100:+.1f}% "
              "(budget: <= 15%)")
    if args.section in ("all", "lavin-decode"):
        lavin_decode_speed(backbone_args, args.new_tokens, repeats=5)
    if args.section in ("all", "text", "decode"):
        methods = text_variants(backbone_args)
        tokenizer = next(iter(methods.values())).tokenizer
        torch.manual_seed(0)
        frozen = FrozenLLM(next(iter(methods.values())).build_model().llm, tokenizer)
    if args.section in ("all", "text"):
        batch = text_batch(tokenizer, args.batch)
        variants = {"frozen backbone": Step(frozen, frozen.loss), **{k: of(m) for k, m in methods.items()}}
        report(f"text training step, batch {args.batch}, {batch['input_ids'].shape[1]} tokens:", variants,
               time_steps(variants, batch, args.steps), "frozen backbone")
    if args.section in ("all", "decode"):
        decode_speed(methods, frozen, tokenizer, args.new_tokens, repeats=3)
    if args.section in ("all", "petal"):
        variants = petal_variants(backbone_args)
        petal = variants["petal"].model
        batch = petal_batch(module("petal", backbone_args), args.batch)
        report(f"InstructBLIP training step, batch {args.batch}, {batch['input_ids'].shape[1]} LM tokens + "
               f"{petal.num_queries} queries:", variants, time_steps(variants, batch, args.steps),
               "frozen InstructBLIP")


if __name__ == "__main__":
    main()
