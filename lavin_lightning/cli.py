"""`lavin-lightning`: Lightning's fit/validate/test/predict plus the suite's own commands.

    lavin-lightning fit|validate|test|predict --config A.yaml [--config B.yaml] [--key=value]
    lavin-lightning params --config A.yaml [--json]     parameter counts, built on the meta device
    lavin-lightning score scienceqa --data-root DIR --predictions FILE [--split test] [--output FILE]
    lavin-lightning score vqa|textvqa|aokvqa|captions ...   the official VQA-family and caption scorers
    lavin-lightning prepare easy-vqa --out DIR [--layout vqa]   the embedded data (ScienceQA or VQA layout)
    lavin-lightning prepare instructions --out DIR      the offline instruction set (Alpaca format)
    lavin-lightning table lavin-table1 [--runs runs]    paper values next to measured ones
    lavin-lightning demo [--steps N]                    the main job on the embedded default
    lavin-lightning demo instruct [--method M]          text instruction tuning on the embedded default
    lavin-lightning demo vqa [--method M]               PETAL (or a baseline) on InstructBLIP, easy-VQA
    lavin-lightning chat --config A.yaml [--adapter DIR] [--image PATH]   interactive, streamed
    lavin-lightning evaluate mc --config A.yaml [--adapter DIR] --mmlu DIR --truthfulqa FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.models.base import PEFTModule


def lightning_main(args: list[str]) -> None:
    LightningCLI(
        PEFTModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def load_configs(paths: list[str]) -> dict:
    """Merge YAML files the way stacked `--config` flags do: later files win, dicts merge."""

    def merge(base: dict, override: dict) -> dict:
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    merged: dict = {}
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        merged = merge(merged, data)
    return merged


def build_module(config: dict) -> PEFTModule:
    """Instantiate the config's `model` (class_path + init_args) without loading weights."""
    from jsonargparse import ArgumentParser

    if "model" not in config:
        raise ConfigError("the config has no `model` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PEFTModule, "model", required=True)
    namespace = parser.parse_object({"model": config["model"]})
    return parser.instantiate_classes(namespace).model


def parameter_report(module: PEFTModule) -> dict:
    """Total/trainable parameters per top-level component, adapters apart from frozen weights."""
    trainable = module.trainable_names
    groups: dict[str, dict[str, int]] = {}
    for name, param in module.named_parameters():
        component = name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
        key = f"{component} ({'trainable' if name in trainable else 'frozen'})"
        group = groups.setdefault(key, {"total": 0, "trainable": 0})
        group["total"] += param.numel()
        group["trainable"] += param.numel() if name in trainable else 0
    counts = module.parameter_counts()
    # The adapter export holds the trainable tensors in fp32: serialise zeros to measure it.
    from safetensors.torch import save

    zeros = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in module._trainable.items()}
    return {"method": module.method, "groups": groups, **counts,
            "adapter_file_bytes": len(save(zeros, metadata={"format": "pt"}))}


def params_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning params",
                                 description="Build the configured model on the meta device and count parameters.")
    ap.add_argument("--config", action="append", required=True, help="YAML config (repeatable, later wins)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    module = build_module(load_configs(args.config))
    with torch.device("meta"):
        module.configure_model()
    report = parameter_report(module)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'component':<28}{'parameters':>18}{'trainable':>16}")
    for key, group in report["groups"].items():
        print(f"{key:<28}{group['total']:>18,}{group['trainable']:>16,}")
    print(f"{'total':<28}{report['total']:>18,}{report['trainable']:>16,}")
    print(f"adapter file (fp32 safetensors): {report['adapter_file_bytes']:,} bytes "
          f"= {report['adapter_file_bytes'] / 1e6:.1f} MB")


def score_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning score", description="Score a predictions file.")
    sub = ap.add_subparsers(dest="task", required=True)
    sqa = sub.add_parser("scienceqa", help="ScienceQA accuracy, as the official evaluate_acc.py")
    sqa.add_argument("--data-root", required=True, help="directory with problems.json and pid_splits.json")
    sqa.add_argument("--predictions", required=True, help="JSON {pid: prediction} or {'results': {...}}")
    sqa.add_argument("--split", default="test")
    vqa = sub.add_parser("vqa", help="VQA accuracy (VQAv2, OK-VQA), as the official vqaEval.py")
    vqa.add_argument("--questions", required=True, help='{"questions": [{"question_id", "image_id", "question"}]}')
    vqa.add_argument("--annotations", required=True, help='{"annotations": [{"question_id", "answers", ...}]}')
    vqa.add_argument("--results", required=True, help='[{"question_id", "answer"}]')
    vqa.add_argument("--mode", choices=["official", "legacy"], default="official",
                     help="official: the 2021 evaluator; legacy: the pre-2021 one that LAVIS/PETAL vendor")
    textvqa = sub.add_parser("textvqa", help="TextVQA accuracy, as the EvalAI answer processor")
    textvqa.add_argument("--data", required=True, help='TextVQA json {"data": [{"question_id", "answers"}]}')
    textvqa.add_argument("--results", required=True, help='[{"question_id", "answer"}]')
    aokvqa = sub.add_parser("aokvqa", help="A-OKVQA direct answer and multiple choice, as eval_predictions.py")
    aokvqa.add_argument("--dataset", required=True, help="aokvqa_v1p0_<split>.json")
    aokvqa.add_argument("--predictions", required=True, help='{question_id: {"multiple_choice", "direct_answer"}}')
    captions = sub.add_parser("captions", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap), ROUGE-1/L F1+R")
    captions.add_argument("--references", required=True, help="COCO annotation format")
    captions.add_argument("--results", required=True, help='COCO results format [{"image_id", "caption"}]')
    for parser in (sqa, vqa, textvqa, aokvqa, captions):
        parser.add_argument("--output", default=None, help="write the scores here (JSON)")
    args = ap.parse_args(argv)
    if args.task == "scienceqa":
        from lavin_lightning.metrics.scienceqa import score_scienceqa_files

        scores = score_scienceqa_files(args.data_root, args.predictions, split=args.split, output=args.output)
    elif args.task == "captions":
        from lavin_lightning.metrics.captions import score_caption_files

        scores = score_caption_files(args.references, args.results, output=args.output)
    else:
        from lavin_lightning.metrics import vqa as vqa_metrics

        if args.task == "vqa":
            scores = vqa_metrics.score_vqa_files(args.questions, args.annotations, args.results, mode=args.mode,
                                                 output=args.output)
            scores = {k: v for k, v in scores.items() if k != "evalQA"}  # per question: in the output file
        elif args.task == "textvqa":
            scores = vqa_metrics.score_textvqa_files(args.data, args.results, output=args.output)
        else:
            scores = vqa_metrics.score_aokvqa_files(args.dataset, args.predictions, output=args.output)
    print(json.dumps(scores, indent=2))


def prepare_main(argv: list[str]) -> None:
    if argv and argv[0] == "easy-vqa":
        from data_modules.easy_vqa import main as prepare
    elif argv and argv[0] == "instructions":
        from data_modules.instructions import main as prepare
    else:
        raise SystemExit("usage: lavin-lightning prepare easy-vqa|instructions --out DIR [options]")
    prepare(argv[1:])


def table_main(argv: list[str]) -> None:
    from lavin_lightning.tables import main as table

    table(argv)


def chat_main(argv: list[str]) -> None:
    from lavin_lightning.chat import main as chat

    chat(argv)


def evaluate_main(argv: list[str]) -> None:
    from lavin_lightning.evaluate import main as evaluate

    evaluate(argv)


def demo_main(argv: list[str]) -> None:
    if argv and argv[0] == "instruct":
        from lavin_lightning.demo_instruct import main as run_instruction_demo

        run_instruction_demo(argv[1:])
        return
    if argv and argv[0] == "vqa":
        from lavin_lightning.demo_vqa import main as run_vqa_demo

        run_vqa_demo(argv[1:])
        return
    from lavin_lightning.demo import main as run_demo

    run_demo(argv)


COMMANDS = {"params": params_main, "score": score_main, "prepare": prepare_main, "table": table_main,
            "demo": demo_main, "chat": chat_main, "evaluate": evaluate_main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = COMMANDS.get(argv[0]) if argv else None
    if command is None:
        lightning_main(argv)
        return
    try:
        command(argv[1:])
    except (ConfigError, DataError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
