"""The main job on the embedded default: LaVIN on SmolLM2-135M-Instruct + a small CLIP ViT.

    lavin-lightning demo [--steps 150] [--out runs/demo]

LaVIN's settings are those of experiments/tiny/lavin_tiny.yaml (on the embedded backbones).

1. builds the ScienceQA-format data set from the real easy-VQA data (image questions,
   the same facts as a text hint, and questions with no context);
2. scores ScienceQA accuracy per category and asks a few text-only instructions;
3. trains the MMA adapters, visual neck and modality token (everything else frozen);
4. scores and asks again, then writes metrics.json, a PNG chart, the adapter export and
   the offline W&B run, and says where they are.
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
from data_modules.scienceqa import ScienceQADataModule
from data_modules.templates import encode_conversation
from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation
from lavin_lightning.checkpoint import save_adapter
from lavin_lightning.commands.demo import embedded_module, report_written, trainer, wandb_logger
from lavin_lightning.io import write_json
from lavin_lightning.metrics.scienceqa import PAPER_LABELS
from lavin_lightning.models.causal_lm import CausalLMModule, GenerationConfig

CATEGORIES = list(PAPER_LABELS.items())


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


def chart(before: dict, after: dict, chance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [short for _, short in CATEGORIES]
    value = lambda m, k: float(m[k]) if m.get(k) is not None else 0.0
    xs = range(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    unparsed = lambda m: f"{m['counts']['unparsed']}/{m['counts']['total']} unparsed"
    ax.bar([x - 0.2 for x in xs], [value(before, k) for k, _ in CATEGORIES], 0.4,
           label=f"before training ({unparsed(before)})")
    ax.bar([x + 0.2 for x in xs], [value(after, k) for k, _ in CATEGORIES], 0.4,
           label=f"after training ({unparsed(after)})")
    ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("LaVIN (MMA) on SmolLM2-135M-Instruct: ScienceQA-format easy-VQA, test split")
    ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="lavin-lightning demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="output directory")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8, help="global batch size")
    ap.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: the tiny config's)")
    # QCM-EA: the target names what the picture shows, then the letter ("The shape in the
    # picture is a circle. The answer is B."), a short explanation as in LaVIN's QCM-ALE.
    ap.add_argument("--prompt-format", default="QCM-EA", help="ScienceQA prompt format (data_modules/prompts.py)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation budget at test time (default: the tiny config's)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=160, help="test problems scored before and after")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.time()
    out = Path(args.out)
    L.seed_everything(args.seed, verbose=False)

    data_root = build_scienceqa_from_easy_vqa(out / "data", n_train=args.n_train, n_val=100,
                                              n_test=args.n_test, seed=args.seed)
    print(f"data: ScienceQA layout built from easy-VQA at {data_root}")
    # Mixture-of-modality training also needs general text-only instructions; none ship
    # offline, so their responses are the frozen model's own (self-distillation, below).
    instructions_file = out / "data" / "text_instructions.json"
    overrides = {"optim": {"lr": args.lr}} if args.lr is not None else {}
    if args.max_new_tokens is not None:
        overrides["generation"] = {"max_new_tokens": args.max_new_tokens}
    module = embedded_module("lavin", **overrides)
    datamodule = ScienceQADataModule(data_root=str(data_root), prompt_format=args.prompt_format, image_size=64,
                                     global_batch_size=args.batch_size, eval_batch_size=32, max_seq_len=256,
                                     text_instructions=str(instructions_file), tokenizer=module.tokenizer)
    print("loading SmolLM2-135M-Instruct (GGUF, de-quantised to float32) ...")
    module.configure_model()
    counts = module.parameter_counts()
    print(f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable")

    logger = wandb_logger(out, "demo-smollm2-easyvqa", trainable_params=counts["trainable"],
                          total_params=counts["total"], steps=args.steps, lr=module.optim.lr,
                          global_batch_size=args.batch_size)
    results = {}
    answers = {}
    for phase in ("before", "after"):
        if phase == "after":
            if not instructions_file.exists():
                print("self-distilling text-only instructions from the frozen model ...")
                train_instructions = general_instructions()
                write_self_distilled_instructions(instructions_file, train_instructions,
                                                  ask(module, train_instructions))
            fitting = trainer(out, logger, max_steps=args.steps, max_epochs=-1, log_every_n_steps=10,
                              limit_val_batches=0, callbacks=[L.pytorch.callbacks.LearningRateMonitor()])
            print(f"training {args.steps} steps of {args.batch_size} samples ...")
            module.train()  # Lightning keeps the modes it finds; generation left it in eval
            fitting.fit(module, datamodule=datamodule)
        evaluation = ScienceQAEvaluation(output_dir=str(out / phase))
        trainer(out, logger, callbacks=[evaluation]).test(module, datamodule=datamodule, verbose=False)
        results[phase] = evaluation.metrics
        answers[phase] = ask(module, DEMO_HELD_OUT)

    save_adapter(module, out / "adapter")
    metrics = {"before": results["before"], "after": results["after"],
               "text_instructions": [{"instruction": q, "before": b, "after": a}
                                     for q, b, a in zip(DEMO_HELD_OUT, answers["before"], answers["after"])],
               "trainable_params": counts["trainable"], "steps": args.steps, "settings": vars(args),
               "seconds": round(time.time() - started, 1)}
    test_pids = datamodule.split_pids("test")
    chance = 100 * sum(1 / len(datamodule.problems[p]["choices"]) for p in test_pids) / len(test_pids)
    metrics["chance"] = round(chance, 2)
    write_json(out / "metrics.json", metrics)
    chart(results["before"], results["after"], chance, out / "accuracy.png")

    print("\nScienceQA-format easy-VQA test accuracy (%), "
          f"{results['after']['counts']['total']} problems (chance: {chance:.1f}):")
    print(f"{'':8}" + "".join(f"{short:>8}" for _, short in CATEGORIES) + f"{'unparsed':>10}")
    for phase in ("before", "after"):
        m = results[phase]
        print(f"{phase:8}" + "".join(f"{m[k] or '-':>8}" for k, _ in CATEGORIES) + f"{m['counts']['unparsed']:>10}")
    print("\nHeld-out text-only instructions (greedy), before -> after training:")
    for row in metrics["text_instructions"]:
        print(f"  Q: {row['instruction']}\n     before: {row['before']!r}\n     after:  {row['after']!r}")
    report_written(out, [out / "metrics.json", out / "accuracy.png", out / "adapter"], metrics["seconds"])
    return metrics


if __name__ == "__main__":
    main()
