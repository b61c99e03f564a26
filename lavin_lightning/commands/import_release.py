"""`lavin-lightning import lavin-release|llama-adapter-release`: the authors' released weights as our export.

    lavin-lightning import lavin-release --checkpoint F.pth --config ROW.yaml --out DIR [--overwrite]
    lavin-lightning import llama-adapter-release --checkpoint F.pth --config ROW.yaml --out DIR --gate tanh|raw

The release file is read with weights_only (`releases.read_release_file`) and every tensor is
mapped onto the configured model's adapters and checked, on the meta device, before the
backbone is loaded; then the configured backbone is loaded (the export's fingerprint needs its
weights), the tensors are copied in, and `DIR` receives adapter.safetensors + adapter_config.json
as `fit` writes them, with a `release` entry recording the file, its sha256 and its training
arguments. `test --model.init_args.adapter_path DIR` then evaluates the release in our harness.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from lavin_lightning.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state, save_adapter
from lavin_lightning.config import build_module, load_configs
from lavin_lightning.errors import CheckpointError, ConfigError
from lavin_lightning.releases import (
    GATE_CONVENTIONS,
    LAVIN_FORMAT,
    LLAMA_ADAPTER_FORMAT,
    lavin_args_differences,
    lavin_release_tensors,
    llama_adapter_args_differences,
    llama_adapter_release_tensors,
    read_release_file,
)

log = logging.getLogger(__name__)

FORMATS = {
    LAVIN_FORMAT: ("lavin_lightning.models.lavin.LaVIN", "a LaVIN Model Zoo checkpoint (.pth with model/args entries)"),
    LLAMA_ADAPTER_FORMAT: ("lavin_lightning.models.llama_adapter.LlamaAdapter",
                           "a LLaMA-Adapter v1 adapter file (adapter_query + per-layer gates)"),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lavin-lightning import",
                                 description="Turn the authors' released adapter weights into an adapter export "
                                             "(adapter.safetensors + adapter_config.json) of the configured model.")
    sub = ap.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, (class_path, what) in FORMATS.items():
        p = sub.add_parser(name, help=what, description=f"Import {what} into the model of a {class_path} config.")
        p.add_argument("--checkpoint", required=True, help="the release file (read with weights_only)")
        p.add_argument("--config", action="append", required=True,
                       help="the row's YAML config (repeatable, later wins); its backbone is loaded")
        p.add_argument("--out", required=True, help="directory for adapter.safetensors + adapter_config.json")
        p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
        if name == LLAMA_ADAPTER_FORMAT:
            p.add_argument("--gate", required=True, choices=GATE_CONVENTIONS,
                           help="tanh: the file's gates are pre-tanh parameters (the training code's), stored as "
                                "they are; raw: they are the multipliers (the release's inference code), stored "
                                "as atanh(g)")
    return ap


def _module(config: dict, fmt: str, meta: bool):
    """The configured module with its adapters injected: on the meta device (shapes only, to
    validate against), or with the backbone's weights loaded."""
    module = build_module(config)
    class_path = FORMATS[fmt][0]
    if f"{type(module).__module__}.{type(module).__name__}" != class_path:
        raise ConfigError(f"`import {fmt}` needs a config of {class_path.rsplit('.', 1)[1]} "
                          f"(model.class_path: {class_path}), not {type(module).__name__}")
    module.adapter_path = None  # the imported weights are what goes in
    if meta:
        with torch.device("meta"):
            module.configure_model()
    else:
        module.configure_model()
    return module.eval()


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    present = [name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if (out / name).exists()]
    if present and not args.overwrite:
        raise CheckpointError(f"{out} already holds {', '.join(present)}; pass --overwrite to replace them")
    state, release_args, info = read_release_file(args.checkpoint)
    config = load_configs(args.config)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    data_args = data.get("init_args") if isinstance(data.get("init_args"), dict) else {}

    # Everything is checked against the model's shapes before the backbone is read.
    shapes_only = _module(config, args.format, meta=True)
    expected = {name: tuple(t.shape) for name, t in adapter_state(shapes_only).items()}
    if args.format == LAVIN_FORMAT:
        tensors = lavin_release_tensors(state, expected, source=info["source"])
        vision = shapes_only.model.vision
        differences = lavin_args_differences(release_args, shapes_only.adapter,
                                             vision.num_feature_tokens if vision is not None else None, data_args)
    else:
        num_layers = shapes_only.model.llm.config.num_hidden_layers
        tensors = llama_adapter_release_tensors(state, expected, num_layers, args.gate, source=info["source"])
        differences = llama_adapter_args_differences(release_args, shapes_only.adapter, num_layers, data_args)
    for line in differences:
        log.warning("%s: %s (importing anyway)", info["source"], line)

    module = _module(config, args.format, meta=False)
    targets = adapter_state(module)
    with torch.no_grad():
        for name, tensor in tensors.items():
            targets[name].copy_(tensor.to(targets[name].device, targets[name].dtype))
    parameters = sum(t.numel() for t in tensors.values())
    record = {"format": args.format, "source": info["source"], "sha256": info["sha256"], "args": release_args,
              "tensors": len(tensors), "parameters": parameters, "warnings": differences}
    if args.format == LLAMA_ADAPTER_FORMAT:
        record["gate"] = args.gate
    save_adapter(module, out, extra={"release": record})
    print(f"imported {len(tensors)} tensors ({parameters:,} parameters) from {info['source']} into {out}; "
          f"{len(differences)} warning{'s' if len(differences) != 1 else ''}")
