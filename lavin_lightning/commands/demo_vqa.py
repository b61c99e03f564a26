"""PETAL (or one of its baselines) on the embedded default, scored by the official VQA evaluator.

    lavin-lightning demo vqa [--method petal|bottleneck|qformer_lora|qformer_head|qformer_full|maple] [--steps N]

The model and data settings are those of experiments/demo/vqa_<method>.yaml (the method of
experiments/tiny/<method>_tiny.yaml on the embedded parts); the options below override them.

The model is an InstructBLIP built on the embedded parts: SmolLM2-135M-Instruct as the LM, a
small config-built ViT, and a Q-Former of MiniLM-L6's shape started from its BERT weights
(cross-attention random, as BLIP-2 starts from BERT-base), with the bert-base-uncased
tokenizer. There are no pretrained InstructBLIP weights offline, so the frozen ViT, the
cross-attention and the projection into the LM are random: the adapters must learn to read
the image through them.

1. builds the real easy-VQA data in the official VQA layout (10 identical human answers);
2. scores the test questions with the frozen model (every adapter seam passed through);
3. trains the method's parameters (everything else frozen);
4. scores again and writes metrics.json, results, the adapter export and the offline W&B run.

Next to the official evaluator (which normalises nothing when the ten answers agree, as
easy-VQA's do, so "no." is wrong where "no" is right) it prints the legacy evaluator that
LAVIS and PETAL vendor, and a blind reference: each test question answered with the most
frequent training answer of its question type, which needs no image.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import lightning as L

from data_modules.prepare.easy_vqa import build_vqa_from_easy_vqa
from data_modules.vqa import VQADataModule
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.callbacks.vqa import VQAEvaluation
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
from lavin_lightning.io import read_json, write_json
from lavin_lightning.metrics.vqa import score_vqa


def score(module, datamodule, out: Path, logger, config: dict) -> dict:
    evaluation = VQAEvaluation(output_dir=str(out))
    testing = trainer(out, logger, callbacks=[evaluation], config=config, enable_progress_bar=False)
    testing.test(module, datamodule=datamodule)
    return evaluation.metrics


def question_type_prior(data: Path) -> list[dict]:
    """Blind answers: per test question, the most frequent training answer of its question type."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for a in read_json(data / "annotations_train.json", "training annotations")["annotations"]:
        counts[a["question_type"]][a["multiple_choice_answer"]] += 1
    overall = sum(counts.values(), Counter()).most_common(1)[0][0]
    test = read_json(data / "annotations_test.json", "test annotations")["annotations"]
    return [{"question_id": a["question_id"],
             "answer": counts[a["question_type"]].most_common(1)[0][0] if a["question_type"] in counts else overall}
            for a in test]


def official_and_legacy(data: Path, results: list[dict]) -> dict:
    def scored(mode: str) -> dict:
        return score_vqa(read_json(data / "questions_test.json", "test questions"),
                         read_json(data / "annotations_test.json", "test annotations"), results, mode=mode)

    return {"official": scored("official"), "legacy": scored("legacy")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="lavin-lightning demo vqa", description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=demo_methods("vqa"), default="petal",
                    help="a method on InstructBLIP with a demo config (experiments/demo/vqa_<method>.yaml)")
    ap.add_argument("--out", default=None, help="output directory (default runs/demo-vqa-<method>)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the config's)")
    ap.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: the config's)")
    ap.add_argument("--test-questions", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    add_device_options(ap)
    args = ap.parse_args(argv)
    config = demo_config(f"vqa_{args.method}")
    data_args = config["data"]["init_args"]
    args.steps = args.steps or config["trainer"]["max_steps"]
    args.batch_size = args.batch_size or data_args["global_batch_size"]
    config = apply_device_options(args, config)
    started = time.time()
    out = Path(args.out or f"runs/demo-vqa-{args.method}")
    L.seed_everything(args.seed, verbose=False)

    data = build_vqa_from_easy_vqa(out / "data", n_train=2000, n_val=100, n_test=args.test_questions, seed=args.seed)
    print(f"data: easy-VQA in the official VQA layout in {data}")
    module = demo_module(config, **({"optim": {"lr": args.lr}} if args.lr is not None else {}))
    lm_dtype = config["model"]["init_args"]["backbone"]["language_model"].get("dtype", "float32")
    print(f"loading SmolLM2-135M-Instruct (GGUF, de-quantised, held in {lm_dtype}) and the MiniLM-initialised "
          "Q-Former ...")
    module.configure_model()
    counts = module.parameter_counts()
    print(f"{args.method}: {counts['trainable']:,} trainable of {counts['total']:,} parameters")
    # The config's prompt and image normalisation (CLIP's), at the small ViT's 64 px.
    datamodule = VQADataModule(**{**data_args, "root": str(data), "global_batch_size": args.batch_size,
                                  "image_mean": tuple(data_args["image_mean"]),
                                  "image_std": tuple(data_args["image_std"]), "seed": args.seed},
                               tokenizer=module.tokenizer, instruction_tokenizer=module.instruction_tokenizer)
    logger = wandb_logger(out, f"demo-vqa-{args.method}", method=args.method, trainable_params=counts["trainable"],
                          steps=args.steps, lr=module.optim.lr, global_batch_size=args.batch_size,
                          precision=args.precision)

    seconds = {"loading": round(time.time() - started, 1)}
    phase_started = time.time()
    with adapters_disabled(module.model):
        before = score(module, datamodule, out / "before", logger, config)
    print(f"frozen model: official VQA accuracy {before['overall']}")
    seconds["before"] = round(time.time() - phase_started, 1)
    phase_started = time.time()
    fitting = trainer(out, logger, config=config, max_steps=args.steps, max_epochs=-1,
                      log_every_n_steps=10, limit_val_batches=0, callbacks=[L.pytorch.callbacks.LearningRateMonitor()])
    print(f"training {args.steps} steps of {args.batch_size} questions ...")
    module.train()
    fitting.fit(module, datamodule=datamodule)
    seconds["training"] = round(time.time() - phase_started, 1)
    phase_started = time.time()
    score(module, datamodule, out / "after", logger, config)
    seconds["after"] = round(time.time() - phase_started, 1)
    save_adapter(module, out / "adapter")

    scores = {phase: official_and_legacy(data, read_json(out / phase / "results.json", "results"))
              for phase in ("before", "after")}
    scores["question_type_prior"] = official_and_legacy(data, question_type_prior(data))
    metrics = {"method": args.method, **scores, "trainable_params": counts["trainable"], "settings": vars(args),
               "phase_seconds": seconds, "seconds": round(time.time() - started, 1)}
    write_json(out / "metrics.json", metrics)
    print(f"\nVQA accuracy (%) on {args.test_questions} held-out questions (yes/no, other: official):")
    print(f"  {'':28}{'official':>9}{'legacy':>9}{'yes/no':>9}{'other':>9}")
    for name, phase in (("before (frozen)", "before"), (f"after ({args.method})", "after"),
                        ("question-type prior (blind)", "question_type_prior")):
        official, kinds = scores[phase]["official"], scores[phase]["official"]["perAnswerType"]
        print(f"  {name:<28}{official['overall']:>9.2f}{scores[phase]['legacy']['overall']:>9.2f}"
              f"{kinds.get('yes/no', 0.0):>9.2f}{kinds.get('other', 0.0):>9.2f}")
    results = json.loads((out / "after" / "results.json").read_text())[:5]
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    print("examples:", ", ".join(f"{r['question_id']}: {r['answer']!r}" for r in results))
    report_written(out, [out / "metrics.json", out / "after", out / "adapter"], metrics["seconds"])
    return metrics
