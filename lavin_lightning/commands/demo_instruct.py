"""Text instruction tuning on the embedded default: SmolLM2-135M-Instruct + Excitor, LLaMA-Adapter or LoRA.

    lavin-lightning demo instruct [--method excitor|llama_adapter|lora] [--steps N] [--out runs/demo-instruct-<method>]

The model and data settings are those of experiments/demo/instruct_<method>.yaml (the method of
experiments/tiny/<method>_tiny.yaml on SmolLM2); the options below override them.

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
import time
from pathlib import Path

import lightning as L

from data_modules.instruct import AlpacaDataModule, PromptsDataModule
from data_modules.prepare.instructions import score_responses, write_instruction_set
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.callbacks.predictions import WritePredictions
from lavin_lightning.checkpoint import save_adapter
from lavin_lightning.commands.demo import (
    add_device_options,
    apply_device_options,
    demo_config,
    demo_methods,
    demo_module,
    report_written,
    trainer,
    wandb_logger,
)
from lavin_lightning.io import atomic_write, read_json, write_json


def respond(module, prompts: Path, out: Path, logger, config: dict) -> dict[str, str]:
    """Greedy responses to the prompt file through `lavin-lightning predict`'s own path."""
    module.eval()
    writer = WritePredictions(output_dir=str(out))
    predicting = trainer(out, logger, callbacks=[writer], config=config, enable_progress_bar=False)
    prompts_data = PromptsDataModule(str(prompts), template=config["data"]["init_args"]["template"],
                                     eval_batch_size=25, tokenizer=module.tokenizer)
    predicting.predict(module, datamodule=prompts_data)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {row["id"]: row["response"].strip() for row in rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="lavin-lightning demo instruct", description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=demo_methods("instruct"), default="excitor",
                    help="a method with a demo config (experiments/demo/instruct_<method>.yaml)")
    ap.add_argument("--out", default=None, help="output directory (default runs/demo-instruct-<method>)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the config's)")
    ap.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: the config's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="(default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    add_device_options(ap)
    args = ap.parse_args(argv)
    config = demo_config(f"instruct_{args.method}")
    data_args = config["data"]["init_args"]
    args.steps = args.steps or config["trainer"]["max_steps"]
    args.batch_size = args.batch_size or data_args["global_batch_size"]
    config = apply_device_options(args, config)
    started = time.time()
    out = Path(args.out or f"runs/demo-instruct-{args.method}")
    L.seed_everything(args.seed, verbose=False)

    data = out / "data"
    sizes = write_instruction_set(data, seed=args.seed)
    answers = read_json(data / "held_out_answers.json", "the held-out answers")
    print(f"data: {sizes['train']} training instructions, {sizes['held_out']} held out, in {data}")

    overrides = {}
    if args.max_new_tokens is not None:
        overrides["generation"] = {"max_new_tokens": args.max_new_tokens}
    if args.lr is not None:
        overrides["optim"] = {"lr": args.lr}
    module = demo_module(config, **overrides)
    print("loading SmolLM2-135M-Instruct (GGUF, de-quantised, held in "
          f"{config['model']['init_args']['llm']['dtype']}) ...")
    module.configure_model()
    counts = module.parameter_counts()
    print(f"{args.method}: {counts['trainable']:,} trainable of {counts['total']:,} parameters")
    logger = wandb_logger(out, f"demo-instruct-{args.method}", method=args.method,
                          trainable_params=counts["trainable"], steps=args.steps, lr=module.optim.lr,
                          global_batch_size=args.batch_size, precision=args.precision)

    seconds = {"loading": round(time.time() - started, 1)}
    phase_started = time.time()
    with adapters_disabled(module.model):
        before = respond(module, data / "held_out.jsonl", out / "before", logger, config)
    seconds["before"] = round(time.time() - phase_started, 1)
    phase_started = time.time()
    fitting = trainer(out, logger, config=config, max_steps=args.steps, max_epochs=-1,
                      log_every_n_steps=10, callbacks=[L.pytorch.callbacks.LearningRateMonitor()])
    print(f"training {args.steps} steps of {args.batch_size} instructions ...")
    module.train()
    fitting.fit(module, datamodule=AlpacaDataModule(**{**data_args, "path": str(data / "train.json"),
                                                       "global_batch_size": args.batch_size},
                                                    tokenizer=module.tokenizer))
    seconds["training"] = round(time.time() - phase_started, 1)
    phase_started = time.time()
    after = respond(module, data / "held_out.jsonl", out / "after", logger, config)
    seconds["after"] = round(time.time() - phase_started, 1)
    save_adapter(module, out / "adapter")

    scores = {"before": score_responses(before, answers), "after": score_responses(after, answers)}
    logger.log_metrics({f"heldout/{phase}_exact_match": s["exact_match"] for phase, s in scores.items()})
    rows = [{"id": pid, "expected": a["output"], "family": a["family"], "before": before.get(pid),
             "after": after.get(pid)} for pid, a in answers.items()]
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(out / "responses.jsonl", lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    metrics = {"method": args.method, **scores, "trainable_params": counts["trainable"], "settings": vars(args),
               "phase_seconds": seconds, "seconds": round(time.time() - started, 1)}
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
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    report_written(out, [out / "metrics.json", out / "responses.jsonl", out / "adapter"], metrics["seconds"])
    return metrics
