"""`lavin-lightning prepare easy-vqa|mme-easy-vqa|instructions --out DIR [options]`: build the embedded data sets."""

from __future__ import annotations


def main(argv: list[str]) -> None:
    if argv and argv[0] == "easy-vqa":
        from data_modules.prepare.easy_vqa import main as prepare
    elif argv and argv[0] == "mme-easy-vqa":
        from data_modules.prepare.mme import main as prepare
    elif argv and argv[0] == "instructions":
        from data_modules.prepare.instructions import main as prepare
    else:
        raise SystemExit("usage: lavin-lightning prepare easy-vqa|mme-easy-vqa|instructions --out DIR [options]\n"
                         "  easy-vqa       the easy-VQA data set in the ScienceQA layout, or with --layout in another\n"
                         "                 public one: vqa, coco-captions, flickr30k, textcaps, aokvqa, textvqa,\n"
                         "                 mmlu, truthfulqa, llava-instruct\n"
                         "  mme-easy-vqa   yes/no questions about easy-VQA pictures in MME's benchmark layout\n"
                         "  instructions   the offline instruction set (Alpaca format)")
    prepare(argv[1:])
