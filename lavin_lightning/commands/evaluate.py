"""`lavin-lightning evaluate mc`: text ability by multiple-choice log-likelihood, base vs adapted.

    lavin-lightning evaluate mc --config A.yaml [--adapter DIR] [--mmlu DIR] [--truthfulqa FILE]
                                [--k-shot 5] [--limit N] [--output report.json]

The frozen backbone ("base": every adapter seam passed through) and the adapted model are
scored on the same requests in one process and reported side by side (absolute points and
relative change, as LLaMA-Excitor reports MMLU).
"""

from __future__ import annotations

import argparse

import torch

from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.config import build_module, load_configs
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.multiple_choice import compare_reports, format_comparison, run_mc_evaluation
from lavin_lightning.models.causal_lm import CausalLMModule


def evaluate_base_and_adapted(module, **benchmarks) -> dict:
    """{"base": report, "adapted": report, "comparison": ...} for a configured module."""
    module.eval()
    score = module.model.sequence_logprobs

    def run() -> dict:
        with torch.no_grad():
            return run_mc_evaluation(score, module.tokenizer, **benchmarks)

    with adapters_disabled(module.model):
        base = run()
    adapted = run()
    return {"base": base, "adapted": adapted, "comparison": compare_reports(base, adapted)}


def main(argv: list[str]) -> None:

    if not argv or argv[0] != "mc":
        raise SystemExit("usage: lavin-lightning evaluate mc --config A.yaml [--adapter DIR] [--mmlu DIR] "
                         "[--truthfulqa FILE] [options]")
    ap = argparse.ArgumentParser(prog="lavin-lightning evaluate mc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", required=True, help="YAML config of the model (repeatable)")
    ap.add_argument("--adapter", help="directory with adapter.safetensors + adapter_config.json")
    ap.add_argument("--mmlu", help="MMLU data directory (dev/ and test/ with <subject>_{dev,test}.csv)")
    ap.add_argument("--truthfulqa", help="TruthfulQA mc_task.json")
    ap.add_argument("--k-shot", type=int, default=5, help="MMLU examples from dev (default 5)")
    ap.add_argument("--subjects", nargs="*", help="MMLU subjects (default: all found)")
    ap.add_argument("--limit", type=int, help="first N questions per subject / of TruthfulQA (quick runs)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048, help="tokens per scored row (the LLM's context)")
    ap.add_argument("--output", help="write the reports and the comparison here (JSON)")
    args = ap.parse_args(argv[1:])

    module = build_module(load_configs(args.config))
    if not isinstance(module, CausalLMModule):
        raise ConfigError(f"`evaluate mc` runs methods on a causal LM (LaVIN, Excitor, LLaMA-Adapter, LoRA), not "
                          f"{type(module).__name__}; InstructBLIP methods answer prompt files with `predict`")
    if args.adapter:
        module.adapter_path = args.adapter
    module.configure_model()
    result = evaluate_base_and_adapted(
        module, mmlu_root=args.mmlu, truthfulqa_path=args.truthfulqa, k_shot=args.k_shot,
        subjects=args.subjects, limit=args.limit, batch_size=args.batch_size, max_length=args.max_length)
    print(format_comparison(result["comparison"], "base", module.method))
    if args.output:
        write_json(args.output, result)
