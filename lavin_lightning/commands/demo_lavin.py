"""The main job on the embedded default: LaVIN on SmolLM2-135M-Instruct + a small pretrained CLIP ViT.

    lavin-lightning demo [--steps N] [--out runs/demo] [--vit data/vit/clip-small-64]

The model and data settings are those of experiments/demo/lavin.yaml (LaVIN of
experiments/tiny/lavin_tiny.yaml on the embedded backbones); the options below override them.

1. pretrains the demo's small CLIP ViT on easy-VQA's training images and captions, once
   (data_modules/prepare/vit.py; reused while its settings stay the same), and prints how well
   a linear probe reads colour and shape from its frozen features;
2. builds the ScienceQA-format data set from the real easy-VQA data (image questions,
   the same facts as a text hint, and questions with no context);
3. scores ScienceQA accuracy per category and asks a few text-only instructions;
4. trains the MMA adapters, visual neck and modality token (the LLM and the ViT frozen);
5. scores again, and once more with every image zeroed (the control: what the trained model
   answers without seeing the pictures), asks again, then writes metrics.json, a PNG chart,
   the adapter export and the offline W&B run, and says where they are.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch

from data_modules.batching import collate_sequences, pad_token_id
from data_modules.prepare.easy_vqa import build_scienceqa_from_easy_vqa
from data_modules.prepare.instructions import DEMO_HELD_OUT, general_instructions, write_self_distilled_instructions
from data_modules.prepare.vit import DEFAULT_DIR as VIT_DIR
from data_modules.prepare.vit import build_pretrained_vit, pretraining_record
from data_modules.scienceqa import ScienceQADataModule
from data_modules.templates import encode_conversation
from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation
from lavin_lightning.checkpoint import save_adapter
from lavin_lightning.commands.demo import (
    add_device_options,
    apply_device_options,
    demo_config,
    demo_module,
    report_written,
    trainer,
    wandb_logger,
)
from lavin_lightning.io import write_json
from lavin_lightning.metrics.scienceqa import PAPER_LABELS
from lavin_lightning.models.causal_lm import CausalLMModule, GenerationConfig

CATEGORIES = list(PAPER_LABELS.items())
PHASES = {"before": "before", "after": "after", "zeroed": "after, images zeroed"}


class ZeroedImages(L.Callback):
    """Test with every image replaced by zeros (the control): the pictures' pixels never reach
    the model; which problems have an image, the prompts and the adapters stay as they are."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        batch["pixel_values"].zero_()


def text_batch(tokenizer, instructions: list[str]) -> dict:
    """Text-only prompts in the pipeline's own layout (BOS + prompt; no image)."""
    rows = [encode_conversation(tokenizer, "lavin", [(q, None)])[0] for q in instructions]
    batch = collate_sequences(rows, None, pad_token_id(tokenizer))
    batch.update(has_image=torch.zeros(len(rows), dtype=torch.bool), pixel_values=torch.zeros(len(rows), 3, 1, 1))
    return batch


def ask(module: CausalLMModule, instructions: list[str], max_new_tokens: int = 40, batch_size: int = 32) -> list[str]:
    """Greedy answers to text-only instructions, through the full LaVIN pipeline."""
    module.eval()
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    answers = []
    for start in range(0, len(instructions), batch_size):
        chunk = text_batch(module.tokenizer, instructions[start : start + batch_size])
        ids = module.model.generate(chunk, greedy)
        answers += [t.strip() for t in module.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return answers


def chart(results: dict, chance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [short for _, short in CATEGORIES]
    value = lambda m, k: float(m[k]) if m.get(k) is not None else 0.0
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    unparsed = lambda m: f"{m['counts']['unparsed']}/{m['counts']['total']} unparsed"
    width = 0.8 / len(results)
    for i, (phase, metrics) in enumerate(results.items()):
        offset = (i - (len(results) - 1) / 2) * width
        ax.bar([x + offset for x in xs], [value(metrics, k) for k, _ in CATEGORIES], width,
               label=f"{PHASES[phase]} ({unparsed(metrics)})")
    ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("LaVIN (MMA) on SmolLM2-135M-Instruct: ScienceQA-format easy-VQA, test split")
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pretrained_vit(directory: str) -> tuple[Path, dict]:
    """The demo's pretrained ViT (built now if missing or built with other settings) and its record."""
    progress: list[str] = []  # the build reports progress only when it pretrains

    def log(line: str) -> None:
        progress.append(line)
        print(line)

    path = build_pretrained_vit(directory, log=log)
    record = pretraining_record(path) or {}
    built = "pretrained now" if progress else "reused"
    probe = record.get("linear_probe_test_accuracy", {})
    counts = record.get("counts", {})
    print(f"vision: the small CLIP ViT pretrained on easy-VQA in {path} ({built}; {record.get('seconds')} s to build)")
    print(f"  linear probe on its frozen features, {counts.get('probe_test_images')} held-out test images:")
    for name, label in (("pretrained", "pretrained"), ("random_init", "at random init")):
        if name in probe:
            print(f"    {label:<15} colour {probe[name]['color']:6.2f}%   shape {probe[name]['shape']:6.2f}%")
    return path, record


def print_table(results: dict, chance: float) -> None:
    total = next(iter(results.values()))["counts"]["total"]
    print(f"\nScienceQA-format easy-VQA test accuracy (%), {total} problems (chance: {chance:.1f}):")
    print(f"{'':22}" + "".join(f"{short:>7}" for _, short in CATEGORIES) + f"{'unparsed':>10}")
    for phase, m in results.items():
        row = "".join(f"{m[k] if m.get(k) is not None else '-':>7}" for k, _ in CATEGORIES)
        print(f"{PHASES[phase]:22}" + row + f"{m['counts']['unparsed']:>10}")


def main(argv: list[str] | None = None) -> dict:
    config = demo_config("lavin")
    data_args, trainer_args = config["data"]["init_args"], config.get("trainer", {})
    ap = argparse.ArgumentParser(prog="lavin-lightning demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="output directory")
    ap.add_argument("--vit", default=VIT_DIR, help="the pretrained ViT's directory: built there when missing "
                    f"(default {VIT_DIR}, which experiments/demo/lavin.yaml names)")
    ap.add_argument("--steps", type=int, default=trainer_args["max_steps"], help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=data_args["global_batch_size"], help="global batch size")
    ap.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: the config's)")
    ap.add_argument("--prompt-format", default=data_args["prompt_format"],
                    help="ScienceQA prompt format (data_modules/prompts.py)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation budget at test time (default: the config's)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=120, help="test problems scored before and after")
    ap.add_argument("--seed", type=int, default=0)
    add_device_options(ap)
    args = ap.parse_args(argv)
    config = apply_device_options(args, config)
    started = time.time()
    out = Path(args.out)
    L.seed_everything(args.seed, verbose=False)

    vit_dir, vit_record = pretrained_vit(args.vit)
    data_root = build_scienceqa_from_easy_vqa(out / "data", n_train=args.n_train, n_val=100,
                                              n_test=args.n_test, seed=args.seed)
    print(f"data: ScienceQA layout built from easy-VQA at {data_root}")
    # Mixture-of-modality training also needs general text-only instructions; none ship
    # offline, so their responses are the frozen model's own (self-distillation, below).
    instructions_file = out / "data" / "text_instructions.json"
    overrides = {"vision": {"path": args.vit}}
    if args.lr is not None:
        overrides["optim"] = {"lr": args.lr}
    if args.max_new_tokens is not None:
        overrides["generation"] = {"max_new_tokens": args.max_new_tokens}
    module = demo_module(config, **overrides)
    datamodule = ScienceQADataModule(**{**data_args, "data_root": str(data_root), "prompt_format": args.prompt_format,
                                        "global_batch_size": args.batch_size,
                                        "text_instructions": str(instructions_file)}, tokenizer=module.tokenizer)
    print("loading SmolLM2-135M-Instruct (GGUF, de-quantised, held in "
          f"{config['model']['init_args']['llm']['dtype']}) ...")
    module.configure_model()
    counts = module.parameter_counts()
    print(f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable")

    logger = wandb_logger(out, "demo-smollm2-easyvqa", trainable_params=counts["trainable"],
                          total_params=counts["total"], steps=args.steps, lr=module.optim.lr,
                          global_batch_size=args.batch_size, precision=args.precision, vit=str(vit_dir))
    results, answers, seconds = {}, {}, {}
    for phase in PHASES:
        phase_started = time.time()
        if phase == "after":
            if not instructions_file.exists():
                print("self-distilling text-only instructions from the frozen model ...")
                train_instructions = general_instructions()
                write_self_distilled_instructions(instructions_file, train_instructions,
                                                  ask(module, train_instructions))
                seconds["self_distillation"] = round(time.time() - phase_started, 1)
                phase_started = time.time()
            fitting = trainer(out, logger, config=config, max_steps=args.steps, max_epochs=-1,
                              log_every_n_steps=10, limit_val_batches=0,
                              callbacks=[L.pytorch.callbacks.LearningRateMonitor()])
            print(f"training {args.steps} steps of {args.batch_size} samples ...")
            module.train()  # Lightning keeps the modes it finds; generation left it in eval
            fitting.fit(module, datamodule=datamodule)
            seconds["training"] = round(time.time() - phase_started, 1)
            phase_started = time.time()
        evaluation = ScienceQAEvaluation(output_dir=str(out / phase))
        callbacks = [evaluation] + ([ZeroedImages()] if phase == "zeroed" else [])
        print(f"scoring the test problems ({PHASES[phase]}) ...")
        testing = trainer(out, logger, callbacks=callbacks, config=config)
        testing.test(module, datamodule=datamodule, verbose=False)
        results[phase] = evaluation.metrics
        if phase != "zeroed":
            answers[phase] = ask(module, DEMO_HELD_OUT)
        seconds[phase] = round(time.time() - phase_started, 1)

    save_adapter(module, out / "adapter")
    metrics = {**results,
               "text_instructions": [{"instruction": q, "before": b, "after": a}
                                     for q, b, a in zip(DEMO_HELD_OUT, answers["before"], answers["after"])],
               "trainable_params": counts["trainable"], "steps": args.steps, "settings": vars(args),
               "vit": {"path": str(vit_dir), "linear_probe_test_accuracy": vit_record.get("linear_probe_test_accuracy"),
                       "settings_sha256": vit_record.get("params", {}).get("settings_sha256")},
               "phase_seconds": seconds, "seconds": round(time.time() - started, 1)}
    test_pids = datamodule.split_pids("test")
    chance = 100 * sum(1 / len(datamodule.problems[p]["choices"]) for p in test_pids) / len(test_pids)
    metrics["chance"] = round(chance, 2)
    write_json(out / "metrics.json", metrics)
    chart(results, chance, out / "accuracy.png")

    print_table(results, chance)
    print("\nHeld-out text-only instructions (greedy), before -> after training:")
    for row in metrics["text_instructions"]:
        print(f"  Q: {row['instruction']}\n     before: {row['before']!r}\n     after:  {row['after']!r}")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    report_written(out, [out / "metrics.json", out / "accuracy.png", out / "adapter"], metrics["seconds"])
    return metrics


if __name__ == "__main__":
    main()
