"""`lavin-lightning demo [lavin|instruct|vqa] [options]`: the main jobs on the embedded default.

    demo [lavin]   LaVIN on SmolLM2-135M-Instruct + a small ViT, ScienceQA-format easy-VQA
    demo instruct  text instruction tuning (LLaMA-Excitor, LLaMA-Adapter or LoRA)
    demo vqa       PETAL (or a baseline) on an InstructBLIP built from the embedded parts
"""

from __future__ import annotations

import importlib

DEMOS = {"lavin": "demo_lavin", "instruct": "demo_instruct", "vqa": "demo_vqa"}


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    name = argv[0] if argv and not argv[0].startswith("-") else "lavin"
    if name not in DEMOS:
        raise SystemExit(f"lavin-lightning demo: unknown demo {name!r}; choose one of {sorted(DEMOS)}")
    rest = argv[1:] if argv and argv[0] == name else argv
    importlib.import_module(f"lavin_lightning.commands.{DEMOS[name]}").main(rest)
