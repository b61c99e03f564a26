"""`lavin-lightning score scienceqa|vqa|textvqa|aokvqa|captions|mme ...`: score a predictions file.

Prints a short summary; `--output FILE` keeps every score (per category, per question) as
JSON, and `--json` prints the scores as JSON instead of the summary (without the per-question
accuracies, which only the output file holds).
"""

from __future__ import annotations

import argparse
import json


def _summary(task: str, scores: dict) -> str:
    if task == "scienceqa":
        from lavin_lightning.metrics.scienceqa import PAPER_LABELS

        header = "".join(f"{label:>8}" for label in PAPER_LABELS.values())
        values = "".join(f"{scores[key] or '-':>8}" for key in PAPER_LABELS)
        counts = scores["counts"]
        return (f"ScienceQA accuracy (%), {counts['total']} problems, {counts['unparsed']} unparsed:\n"
                f"{header}\n{values}")
    if task == "vqa":
        kinds = ", ".join(f"{kind} {value:.2f}" for kind, value in scores["perAnswerType"].items())
        return f"VQA accuracy: {scores['overall']:.2f} ({kinds})"
    if task == "textvqa":
        return f"TextVQA accuracy: {scores['accuracy']:.2f}"
    if task == "aokvqa":
        shown = {k: scores[k] for k in ("direct_answer", "multiple_choice")}
        return "A-OKVQA: " + ", ".join(f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.2f}'}"
                                        for k, v in shown.items())
    if task == "mme":
        return _mme_summary(scores)
    return "captions: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())


def _mme_summary(scores: dict) -> str:
    from lavin_lightning.metrics.mme import GROUPS

    totals = []
    for group, names in GROUPS.items():
        scored = [name for name in names if name in scores["subtasks"]]
        value = "-" if scores[group] is None else f"{scores[group]:.2f}"
        totals.append(f"{group} {value} ({len(scored)} of {len(names)} subtasks)")
    lines = [f"MME ({scores['parsing']} parsing): " + ", ".join(totals)]
    lines += [f"  {name:<22} acc {s['acc']:6.2f}  acc+ {s['acc_plus']:6.2f}  score {s['score']:6.2f}"
              for name, s in scores["subtasks"].items()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
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
    mme = sub.add_parser("mme", help="MME Perception / Cognition, as the benchmark's eval tool calculation.py")
    mme.add_argument("--results", required=True, help="folder of <subtask>.txt: image, question, ground truth, "
                                                      "prediction (tab-separated, two lines per image)")
    mme.add_argument("--parsing", choices=["official", "release"], default="official",
                     help="official: the eval tool; release: LaVIN's eval_mme.py (ignores the ground truth, "
                          "takes each image's first question as yes and its second as no)")
    for parser in (sqa, vqa, textvqa, aokvqa, captions, mme):
        parser.add_argument("--output", default=None, help="write every score here (JSON)")
        parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a summary")
    args = ap.parse_args(argv)
    if args.task == "scienceqa":
        from lavin_lightning.metrics.scienceqa import score_scienceqa_files

        scores = score_scienceqa_files(args.data_root, args.predictions, split=args.split, output=args.output)
    elif args.task == "captions":
        from lavin_lightning.metrics.captions import score_caption_files

        scores = score_caption_files(args.references, args.results, output=args.output)
    elif args.task == "vqa":
        from lavin_lightning.metrics.vqa import score_vqa_files

        scores = score_vqa_files(args.questions, args.annotations, args.results, mode=args.mode, output=args.output)
    elif args.task == "mme":
        from lavin_lightning.metrics.mme import score_mme_files

        scores = score_mme_files(args.results, parsing=args.parsing, output=args.output)
    elif args.task == "textvqa":
        from lavin_lightning.metrics.textvqa import score_textvqa_files

        scores = score_textvqa_files(args.data, args.results, output=args.output)
    else:
        from lavin_lightning.metrics.aokvqa import score_aokvqa_files

        scores = score_aokvqa_files(args.dataset, args.predictions, output=args.output)
    if args.json:
        print(json.dumps({k: v for k, v in scores.items() if k != "evalQA"}, indent=2))
        return
    print(_summary(args.task, scores))
    if args.output:
        print(f"wrote every score to {args.output}")
