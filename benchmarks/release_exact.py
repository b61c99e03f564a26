"""What each release-exact evaluation option changes, measured side by side on one trained model.

    python benchmarks/release_exact.py [--out runs/bench/release_exact] [--limit-test 160]

Trains the tiny LaVIN of `experiments/tiny/lavin_tiny.yaml` once on the embedded easy-VQA data in
ScienceQA layout (image questions and text-only ones), then tests the same adapter with each
option of the release's evaluation alone and all together, in batches of 64 as the release
evaluates: ViT routing on row 0 (`vision_routing: release`), the release's decoding positions
(`decode_positions: release`), the release's sampling (top-p 0.75, temperature 0.1, seed 1).
Unparsable answers are counted (the release's random fallback would add chance-level guesses to
every row alike). Prints and writes (`report.json`, `report.md`) the accuracy, the
image-question accuracy and how many answers and generated texts differ from our default
evaluation. A tiny model's accuracy says little; the changed answers are the measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lavin_lightning.cli import main as cli  # noqa: E402

CONFIGS = ["--config", "experiments/base/trainer_cpu.yaml", "--config", "experiments/tiny/lavin_tiny.yaml"]
DATA = "data/easy_vqa_scienceqa"
RELEASE_DECODING = ["--model.init_args.generation.temperature", "0.1", "--model.init_args.generation.top_p", "0.75",
                    "--model.init_args.generation.seed", "1", "--model.init_args.generation.max_new_tokens", "24"]
VARIANTS = {
    "ours (default)": [],
    "vision_routing: release": ["--model.init_args.adapter.vision_routing", "release"],
    "decode_positions: release": ["--model.init_args.decode_positions", "release"],
    "release decoding": RELEASE_DECODING,
    "all of the release's": ["--model.init_args.adapter.vision_routing", "release",
                             "--model.init_args.decode_positions", "release", *RELEASE_DECODING],
}


def test(out: Path, name: str, extra: list[str], limit_test: int) -> dict:
    run = out / name.split(":")[0].split(" (")[0].replace(" ", "_").replace("'", "")
    cli(["test", *CONFIGS, "--trainer.default_root_dir", str(run),
         "--model.init_args.adapter_path", str(out / "fit" / "adapter"), "--data.init_args.eval_batch_size", "64",
         "--data.init_args.limit_test", str(limit_test), *extra])
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = json.loads((run / "predictions.json").read_text())
    return {"metrics": metrics, "predictions": predictions["results"], "texts": predictions["outputs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/release_exact")
    ap.add_argument("--limit-test", type=int, default=160)
    args = ap.parse_args()
    out = Path(args.out)
    if not (Path(DATA) / "problems.json").is_file():
        cli(["prepare", "easy-vqa", "--layout", "scienceqa", "--out", DATA])
    if not (out / "fit" / "adapter" / "adapter.safetensors").is_file():
        # Long enough for the tiny model to write "The answer is X." (256 samples, one epoch, do not).
        cli(["fit", *CONFIGS, "--trainer.default_root_dir", str(out / "fit"), "--data.init_args.limit_train", "1024",
             "--trainer.max_epochs", "3"])
    results = {name: test(out, name, extra, args.limit_test) for name, extra in VARIANTS.items()}
    reference = results["ours (default)"]
    report = {}
    lines = ["| evaluation | accuracy | image questions | answers changed | generations changed | unparsed |",
             "|---|---|---|---|---|---|"]
    for name, result in results.items():
        metrics = result["metrics"]
        changed = sum(result["predictions"][pid] != answer for pid, answer in reference["predictions"].items())
        texts = sum(result["texts"][pid] != text for pid, text in reference["texts"].items())
        total, counts = len(reference["texts"]), metrics["counts"]
        report[name] = {"acc_average": metrics["acc_average"], "acc_has_image": metrics["acc_has_image"],
                        "answers_changed": changed, "generations_changed": texts, "total": total,
                        "unparsed": counts["unparsed"]}
        lines.append(f"| {name} | {metrics['acc_average']} | {metrics['acc_has_image']} | {changed} / {total} | "
                     f"{texts} / {total} | {counts['unparsed']} |")
    text = "\n".join(lines)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
