"""Padding and training throughput: length-bucketed batches vs shuffled batches vs the release's
fixed 512-token rows.

    python benchmarks/length_buckets.py [--llm smollm2|tiny] [--batch 8] [--pool 64]
                                        [--time-batch 4] [--steps 2]

Two training sets, as the data modules serve them (`ScienceQADataModule.setup("fit")`):

* ScienceQA (real): the 361 real ScienceQA problems of ../shared/reference-data (skipped when
  absent) as LaVIN's QCM-ALE training rows (prompt + answer + lecture + solution), tokenised by
  SmolLM2's tokenizer, max_seq_len 512 as in the release;
* LaVIN demo mix: the demo's ScienceQA-format easy-VQA training problems (QCM-EA; image, text
  hint and no-context questions) plus text-only Alpaca-format instructions (the offline
  verifiable set), the mixture-of-modality training of LaVIN, max_seq_len 256 as the demo.

For each: the padding fraction of the text rows (pad tokens / all tokens of the batches) of the
release (every row padded to 512), of shuffled batches padded to their longest row (our default)
and of length buckets (`length_buckets: true`, mixed modalities), with the share of batches that
hold one modality only; then the same for the LLM's rows, which LaVIN lengthens by the visual
slots and prefixes; for reference, batches sorted by length alone (no mix). Then the training
step of LaVIN (forward, backward, AdamW; random weights of the `--llm` architecture) on the first
`--steps` batches of `--time-batch` rows of each arrangement: real (unpadded) LLM tokens per
second against the release's 512-token rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_time import backbones, module  # noqa: E402
from data_modules.batching import Collator, EpochShuffle, LengthBuckets  # noqa: E402
from data_modules.prepare.easy_vqa import build_scienceqa_from_easy_vqa  # noqa: E402
from data_modules.prepare.instructions import verifiable_instructions  # noqa: E402
from data_modules.scienceqa import ScienceQADataModule  # noqa: E402
from lavin_lightning.batch import IGNORE_INDEX  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import entry, write_json  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "scienceqa"
RELEASE_ROW = 512  # the LaVIN release pads every training row to max_seq_len (512)


def real_scienceqa(root: Path) -> Path | None:
    """The 361 real problems in the ScienceQA layout (images: 1-pixel stand-ins; only `image` is read)."""
    problems_file = REFERENCE / "problems_test_subset.json"
    if not problems_file.is_file():
        return None
    problems = json.loads(problems_file.read_text())
    from PIL import Image

    for pid, problem in problems.items():
        problem["split"] = "train"
        if problem.get("image"):
            folder = root / "images" / "train" / pid
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(folder / problem["image"])
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": list(problems), "val": [], "test": []}))
    return root


def datasets(work: Path, tokenizer) -> dict:
    found = {}
    real = real_scienceqa(work / "sqa")
    if real is not None:
        dm = ScienceQADataModule(str(real), prompt_format="QCM-ALE", max_seq_len=512, global_batch_size=8,
                                 image_size=16, tokenizer=tokenizer)
        dm.setup("fit")
        found["ScienceQA (real, 361)"] = dm.datasets["train"].samples
    data = build_scienceqa_from_easy_vqa(work / "demo", n_train=2000, n_val=10, n_test=10, seed=0)
    instructions = work / "instructions.json"
    instructions.write_text(json.dumps([{k: r[k] for k in ("instruction", "input", "output")}
                                        for r in verifiable_instructions(100, seed=0)]))
    dm = ScienceQADataModule(str(data), prompt_format="QCM-EA", max_seq_len=256, global_batch_size=8,
                             image_size=16, tokenizer=tokenizer, text_instructions=str(instructions))
    dm.setup("fit")
    found["LaVIN demo mix (2000 + 500 text)"] = dm.datasets["train"].samples
    return found


def arrangements(samples, batch: int, pool: int) -> dict[str, list[list[int]]]:
    n = len(samples)
    lengths = [len(s.input_ids) for s in samples]
    has_image = [s.image_path is not None for s in samples]
    shuffled = EpochShuffle(list(range(n)), seed=0)
    bucketed = EpochShuffle(list(range(n)), seed=0, buckets=LengthBuckets(lengths, has_image, batch, pool))
    cut = lambda order: [order[k: k + batch] for k in range(0, n, batch)]  # noqa: E731
    order = list(shuffled)
    return {"release (rows of 512)": cut(order), "shuffled (default)": cut(order),
            "length buckets, mixed": cut(list(bucketed)),
            "sorted by length alone": cut(sorted(order, key=lengths.__getitem__))}


def padding(batches, lengths, fixed: list[int] | None = None) -> float:
    """Pad tokens / all tokens; `fixed[i]`: row i's padded length (else the batch's longest row)."""
    real = sum(lengths[i] for b in batches for i in b)
    if fixed is not None:
        return 1 - real / sum(fixed[i] for b in batches for i in b)
    return 1 - real / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def release_batch(items, pad_id: int) -> dict:
    """The release's rows: every row padded to 512 text tokens."""
    batch = Collator(pad_id)(items)
    extra = RELEASE_ROW - batch["input_ids"].shape[1]
    batch["input_ids"] = F.pad(batch["input_ids"], (0, extra), value=pad_id)
    batch["attention_mask"] = F.pad(batch["attention_mask"], (0, extra), value=0)
    batch["labels"] = F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)
    return batch


def throughput(lavin, samples, batches, steps: int, release: bool, extra) -> tuple[float, float]:
    """(real LLM tokens per second, seconds per step) of LaVIN training steps on `batches[:steps]`."""
    from data_modules.batching import SampleDataset

    dataset = SampleDataset(samples, lambda image: torch.zeros(3, 1, 1), lavin.model.vision.image_size)
    pad_id = lavin.tokenizer.pad_token_id or 0
    optimizer = torch.optim.AdamW([p for p in lavin.parameters() if p.requires_grad], lr=1e-4)
    lavin.train()
    seconds, tokens = [], 0
    for index in batches[: steps + 1]:  # the first warms up
        items = [dataset[i] for i in index]
        size = lavin.model.vision.image_size
        for item in items:
            item["pixel_values"] = torch.randn(3, size, size) if item["has_image"] else torch.zeros(3, size, size)
        batch = release_batch(items, pad_id) if release else Collator(pad_id)(items)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        lavin.training_losses(batch)["loss"].backward()
        optimizer.step()
        if index is not batches[0]:
            seconds.append(time.perf_counter() - start)
            tokens += sum(len(samples[i].input_ids) + extra[samples[i].image_path is not None] for i in index)
    return tokens / sum(seconds), statistics.median(seconds)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8, help="rows per (micro-)batch for the padding fractions")
    ap.add_argument("--pool", type=int, default=64, help="LengthBuckets pool, in batches")
    ap.add_argument("--time-batch", type=int, default=4, help="rows per timed training step")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per arrangement (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine); 0: default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lavin = module("lavin", backbones(args.llm))
    tokenizer = lavin.tokenizer
    # What LaVIN puts into every LLM row besides the text: modality token, prefix, visual slots.
    model = lavin.model
    head = 1 if model.modality is not None else 0
    extra = {True: head + len(model.image_prefix_ids) + model.num_visual_tokens,
             False: head + len(model.text_prefix_ids)}
    work = Path(tempfile.mkdtemp(prefix="length-bench-"))
    results = {}
    try:
        found = datasets(work, tokenizer)
        for name, samples in found.items():
            lengths = [len(s.input_ids) for s in samples]
            has_image = [s.image_path is not None for s in samples]
            rows = [n + extra[h] for n, h in zip(lengths, has_image)]
            medians = [statistics.median([n for n, h in zip(lengths, has_image) if h == image] or [0])
                       for image in (True, False)]
            print(f"\n{name}: {len(samples)} training rows, {sum(has_image)} with an image; text tokens per row: "
                  f"median {statistics.median(lengths):.0f} (image {medians[0]:.0f}, text-only {medians[1]:.0f}), "
                  f"max {max(lengths)}; batches of {args.batch}, pool {args.pool}")
            print(f"  {'arrangement':<26} {'padding (text)':>15} {'padding (LLM rows)':>19} "
                  f"{'one-modality batches':>21}")
            release_rows = ([RELEASE_ROW] * len(samples), [RELEASE_ROW + extra[h] for h in has_image])
            results[name] = {}
            for arrangement, batches in arrangements(samples, args.batch, args.pool).items():
                release = arrangement.startswith("release")
                text_pad = padding(batches, lengths, release_rows[0] if release else None)
                row_pad = padding(batches, rows, release_rows[1] if release else None)
                pure = sum(len({has_image[i] for i in b}) == 1 for b in batches)
                print(f"  {arrangement:<26} {100 * text_pad:14.1f}% {100 * row_pad:18.1f}% {pure:>13}/{len(batches)}")
                results[name][arrangement] = {"padding_text": round(text_pad, 4),
                                              "padding_llm_rows": round(row_pad, 4),
                                              "one_modality_batches": pure, "batches": len(batches)}
        if args.steps:
            name = next(iter(found))
            samples = found[name]
            timed = arrangements(samples, args.time_batch, args.pool)
            print(f"\nLaVIN training step ({args.llm} architecture, random weights, {torch.get_num_threads()} "
                  f"threads) on {name}, {args.steps} batches of {args.time_batch} (median step, real LLM tokens/s):")
            speeds = {}
            for arrangement in ("release (rows of 512)", "shuffled (default)", "length buckets, mixed"):
                rate, step = throughput(lavin, samples, timed[arrangement], args.steps,
                                        arrangement.startswith("release"), extra)
                speeds[arrangement] = rate
                print(f"  {arrangement:<26} {step:7.2f} s/step {rate:9.1f} tokens/s  "
                      f"x{rate / speeds['release (rows of 512)']:.2f} vs the release", flush=True)
            results["tokens_per_second"] = {k: round(v, 1) for k, v in speeds.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios, absolute = [], []
    for name, arrangements_of in results.items():
        if name == "tokens_per_second":
            continue
        for arrangement, r in arrangements_of.items():
            ratios.append(entry(f"padding: {name}, {arrangement}", r["padding_llm_rows"], "fraction",
                                f"text rows {r['padding_text']:.3f}; one-modality batches "
                                f"{r['one_modality_batches']}/{r['batches']}"))
    speeds = results.get("tokens_per_second", {})
    for arrangement, rate in speeds.items():
        absolute.append(entry(f"LaVIN training: {arrangement}", rate, "tokens/s"))
        if not arrangement.startswith("release"):
            ratios.append(entry(f"training throughput: {arrangement}", rate / speeds["release (rows of 512)"], "x",
                                "real tokens/s vs the release's 512-token rows"))
    write_json(args.json, ratios, absolute, settings=vars(args), results=results)
    return results


if __name__ == "__main__":
    main()
