"""`lavin-lightning params --config A.yaml [--json]`: parameter counts, built on the meta device."""

from __future__ import annotations

import argparse
import json

import torch

from lavin_lightning.config import build_module, load_configs, parameter_report


def main(argv: list[str]) -> None:
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
