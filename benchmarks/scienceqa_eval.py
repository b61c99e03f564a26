"""ScienceQA evaluation speed: the release's 64-token generation vs early stopping vs option scoring.

    python benchmarks/scienceqa_eval.py [--llm smollm2|tiny] [--n-test 96] [--batch 32]
                                        [--max-new-tokens 64] [--temperature 0.1] [--top-p 0.75]

The LaVIN demo's "before" model (experiments/tiny/lavin_tiny.yaml on the embedded default:
pretrained SmolLM2-135M-Instruct, freshly injected MMA adapters, i.e. untrained) tests the demo's
ScienceQA-format easy-VQA problems (prompt format QCM-EA) through the real test loop
(`Trainer.test` + `ScienceQAEvaluation`), once per way of evaluating, on the same problems:

* release: every batch decodes the full budget (`GenerationConfig.full_budget`: the release's
  loop has no early exit, so rows that wrote EOS keep decoding to the end), batches in the
  split's order: the LaVIN release's evaluation (which costs a little more still: it feeds the
  longer prompts' tails one token per step);
* stop/masked: a sample stops once its answer is decided (`AnswerStop`); the batch ends when all
  of its rows have stopped (stopped rows stay in it);
* stop/compact: rows that stopped leave the batch (`GenerationConfig.compact`);
* stop/compact/length: also test batches of similar prompt length (`eval_order: length`);
* options: every option's "The answer is X." scored after the prompt (`evaluation:
  option_likelihood`, length order), no generation.

Timing: wall seconds and this process's CPU seconds. On a shared machine, `--threads 1` (the
default) gives the steadiest comparison: with two OpenMP threads on two busy cores, every
parallel region waits for the thread the scheduler took away, which hits the large batches of
full generation far more than the small ones of compacted decoding (both numbers are printed;
say which when quoting them).

Sampling (the release's temperature 0.1, top-p 0.75 by default) draws per-sample streams, so
every generation mode must give the release mode's answers exactly and texts that are its
texts cut where the answer was decided; the table says whether they do. Option scoring is a
different estimator: its agreement with the generated answers is reported, not required.
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

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.prepare.easy_vqa import build_scienceqa_from_easy_vqa  # noqa: E402
from data_modules.scienceqa import ScienceQADataModule  # noqa: E402
from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation  # noqa: E402
from lavin_lightning.commands.demo import embedded_module  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import alternated, entry, write_json  # noqa: E402

MODES = {
    "release": {"stop": False, "compact": False, "eval_order": "split", "evaluation": "generate", "full_budget": True},
    "stop/masked": {"stop": True, "compact": False, "eval_order": "split", "evaluation": "generate"},
    "stop/compact": {"stop": True, "compact": True, "eval_order": "split", "evaluation": "generate"},
    "stop/compact/length": {"stop": True, "compact": True, "eval_order": "length", "evaluation": "generate"},
    "options": {"stop": True, "compact": True, "eval_order": "length", "evaluation": "option_likelihood"},
}


def build_module(llm: str, generation: dict):
    if llm == "tiny":
        backbones = {"llm": {"config": "tiny"}, "vision": {"kind": "clip", "config": "tiny", "cls_every": 1}}
        module = embedded_module("lavin", backbones=backbones, generation=generation)
    else:
        module = embedded_module("lavin", generation=generation)
    torch.manual_seed(0)
    module.configure_model()
    module.eval()
    return module


def evaluate(module, data_root: Path, out: Path, args, mode: dict) -> tuple[float, float, list[int], dict, dict]:
    """Wall and CPU seconds of `Trainer.test`, what the LLM computed ([positions encoded (prompts,
    re-encoded rows, packed options; padding included), row-steps decoded (one new token of one
    row each)]), {pid: answer index or None} and {pid: text}."""
    module.generation.compact = mode["compact"]
    module.generation.full_budget = mode.get("full_budget", False)
    datamodule = ScienceQADataModule(str(data_root), prompt_format=args.prompt_format,
                                     image_size=module.model.vision.image_size, global_batch_size=8,
                                     eval_batch_size=args.batch, max_seq_len=256, tokenizer=module.tokenizer,
                                     eval_order=mode["eval_order"], evaluation=mode["evaluation"])
    evaluation = ScienceQAEvaluation(output_dir=str(out), stop_when_decided=mode["stop"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[evaluation])
    work = [0, 0]

    def count(_, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs["input_ids"]
        work[x.shape[1] == 1] += x.shape[0] * x.shape[1]

    hook = module.model.llm.model.register_forward_pre_hook(count, with_kwargs=True)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        hook.remove()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    written = json.loads((out / "predictions.json").read_text())
    return seconds, cpu, work, written["results"], written["outputs"]


def cut_where_decided(full: str, stopped: str) -> bool:
    """`stopped` is `full` cut short (its last character may be U+FFFD: a character split by the stop)."""
    return full.startswith(stopped) or (stopped.endswith("\ufffd") and full.startswith(stopped[:-1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--n-test", type=int, default=96, help="test problems (the LaVIN demo scores 160)")
    ap.add_argument("--batch", type=int, default=32, help="test batch (the demo's)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="generation budget (the release's 64)")
    ap.add_argument("--temperature", type=float, default=0.1, help="the release's 0.1; 0 decodes greedily")
    ap.add_argument("--top-p", type=float, default=0.75)
    ap.add_argument("--prompt-format", default="QCM-EA", help="the LaVIN demo's")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    ap.add_argument("--repeats", type=int, default=1, help="runs of every mode (alternating); medians")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (see above); 0: torch's default")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "release" not in modes:
        ap.error(f"--modes must include 'release' and name only {list(MODES)}; unknown: {unknown}")
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    work = Path(tempfile.mkdtemp(prefix="sqa-eval-bench-"))
    try:
        data_root = build_scienceqa_from_easy_vqa(work / "data", n_train=16, n_val=4, n_test=args.n_test, seed=0)
        truth = {pid: p["answer"] for pid, p in json.loads((data_root / "problems.json").read_text()).items()}
        generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
        module = build_module(args.llm, generation)
        print(f"LaVIN demo model before training ({args.llm}), {args.n_test} easy-VQA ScienceQA problems "
              f"({args.prompt_format}), batch {args.batch}, {args.max_new_tokens} new tokens, temperature "
              f"{args.temperature} top-p {args.top_p} (per-sample streams), {torch.get_num_threads()} threads")
        evaluate(module, data_root, work / "warmup", argparse.Namespace(**{**vars(args), "batch": 2}),
                 {**MODES["options"]})  # loads what the first timed run would
        results, timings = {}, {name: ([], []) for name in modes}
        for repeat in range(args.repeats):
            for name in alternated(modes, repeat):
                seconds, cpu, computed, answers, texts = evaluate(module, data_root, work / name.replace("/", "_"),
                                                                  args, MODES[name])
                timings[name][0].append(seconds)
                timings[name][1].append(cpu)
                results[name] = {"seconds": statistics.median(timings[name][0]),
                                 "cpu": statistics.median(timings[name][1]), "work": computed,
                                 "answers": answers, "texts": texts}
                print(f"  {name:<22} {seconds:8.1f} s wall {cpu:8.1f} s CPU", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    release = results["release"]
    problems = len(release["answers"])
    unparsed = sum(a is None for a in release["answers"].values())
    print(f"\n{'mode':<20} {'wall s':>7} {'CPU s':>7} {'speed-up (wall, CPU)':>21} {'encoded':>8} {'decoded':>8} "
          f"{'accuracy':>9} {'answers = release':>18} {'texts cut from release':>23}")
    summary = {}
    for name, r in results.items():
        same = sum(r["answers"][p] == release["answers"][p] for p in release["answers"])
        if MODES[name]["evaluation"] == "generate":
            cut = sum(cut_where_decided(release["texts"][p], r["texts"][p]) for p in release["texts"])
            cut_text = f"{cut}/{problems}"
        else:
            cut_text = "(scored, not generated)"
        speedup, cpu_speedup = release["seconds"] / r["seconds"], release["cpu"] / r["cpu"]
        accuracy = 100 * sum(a == truth[p] for p, a in r["answers"].items()) / problems
        print(f"{name:<20} {r['seconds']:7.1f} {r['cpu']:7.1f} {speedup:9.2f}x {cpu_speedup:9.2f}x "
              f"{r['work'][0]:>8} {r['work'][1]:>8} {accuracy:8.1f}% {same:>12}/{problems:<5} {cut_text:>23}")
        summary[name] = {"seconds": round(r["seconds"], 2), "cpu_seconds": round(r["cpu"], 2),
                         "positions_encoded": r["work"][0], "row_steps_decoded": r["work"][1],
                         "speedup": round(speedup, 2), "cpu_speedup": round(cpu_speedup, 2),
                         "accuracy": round(accuracy, 2), "answers_equal_release": same,
                         "texts_cut_from_release": cut_text}
    print(f"release: {unparsed}/{problems} generations hold no valid 'The answer is X.' (unparsed); seconds are "
          f"medians of {args.repeats} run(s); encoded: LLM positions of prompts, re-encoded rows and packed options "
          "(padding included); decoded: row-steps of one new token")
    ratios = [entry(f"eval speed-up: {name}", r["speedup"], "x", f"wall, vs release; CPU {r['cpu_speedup']:.2f}x")
              for name, r in summary.items() if name != "release"]
    absolute = [entry(f"eval {name}", r["seconds"], "s", f"CPU {r['cpu_seconds']} s; answers = release "
                      f"{r['answers_equal_release']}/{problems}") for name, r in summary.items()]
    write_json(args.json, ratios, absolute, settings=vars(args), problems=problems, unparsed=unparsed, modes=summary)
    return summary


if __name__ == "__main__":
    main()
