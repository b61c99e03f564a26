"""Configs: the LightningCLI of fit/validate/test/predict, and the same YAML files outside it.

`SuiteCLI` links what the model and the data module share (tokenizers, global batch size).
The commands that are not fit/validate/test/predict (params, chat, evaluate, ...) read the
same YAML files and build the same module from them, without a Trainer.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from lavin_lightning.errors import ConfigError
from lavin_lightning.models.base import PEFTModule


class SuiteCLI(LightningCLI):
    """LightningCLI over every method (`model`) and data module (`data`), with argument links:
    the data module tokenises with the model's tokenizer(s), and the model's base learning
    rate scales with the data module's global batch size."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("model.instruction_tokenizer", "data.init_args.instruction_tokenizer",
                              apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.global_batch_size", apply_on="parse",
                              compute_fn=_global_batch_size)


def _global_batch_size(data) -> int | None:
    # Predict-only data modules (prompt files) have no global batch: nothing trains.
    return data.init_args.get("global_batch_size") if data is not None else None


def merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, as stacked `--config` flags combine: dicts merge, the rest is
    replaced, and a section naming another `class_path` replaces the section (its arguments are
    another class's)."""
    if "class_path" in override and override["class_path"] != base.get("class_path", override["class_path"]):
        return dict(override)
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_stack(path: str | Path) -> list[Path]:
    """A config with the files its header comments name: `# extends: FILE` (stacked before it)
    and `# with: FILE` (after it, e.g. a PETAL row and its task); paths are relative to the
    checkout that holds the config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()

    def named(key: str) -> list[Path]:
        match = re.search(rf"^# {key}: (\S+)$", text, flags=re.M)
        if match is None:
            return []
        root = next((parent for parent in path.resolve().parents if (parent / match.group(1)).is_file()), None)
        if root is None:
            raise ConfigError(f"{path}: the header '# {key}: {match.group(1)}' names a file that does not exist")
        return [root / match.group(1)]

    return [stacked for parent in named("extends") for stacked in config_stack(parent)] + [path] + named("with")


def load_configs(paths: list[str]) -> dict:
    """Merge YAML files the way stacked `--config` flags do: later files win, dicts merge."""
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


def load_causal_lm_module(config: dict, adapter_path: str | None, command: str):
    """The configured method on a causal LM, built, with the adapter at `adapter_path` loaded."""
    from lavin_lightning.models.causal_lm import CausalLMModule

    module = build_module(config)
    if not isinstance(module, CausalLMModule):
        raise ConfigError(f"`{command}` runs methods on a causal LM (CausalLMModule), not {type(module).__name__}; "
                          "methods on InstructBLIP answer prompt files with `predict`")
    if adapter_path:
        module.adapter_path = adapter_path
    module.configure_model()
    return module


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
