"""Configs: the LightningCLI of fit/validate/test/predict, and the same YAML files outside it.

`SuiteCLI` links what the model and the data module share (tokenizers, global batch size),
finds the checkpoint `--ckpt_path` names or says what it looked for where, and keeps the config
as given (LightningCLI would parse a checkpoint's saved settings over it).
The commands that are not fit/validate/test/predict (params, chat, evaluate, ...) read the
same YAML files and build the same module from them, without a Trainer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from lavin_lightning.errors import CheckpointError, ConfigError
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

    def _parse_ckpt_path(self) -> None:
        # LightningCLI parses a checkpoint's saved settings over the config here, silently replacing
        # what the config files and the command line say. Here the config stands as given, and
        # `PEFTModule.on_load_checkpoint` compares it with the checkpoint's.
        return

    def _resolve_ckpt_path(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path"):
            config["ckpt_path"] = resolve_ckpt_path(str(config["ckpt_path"]), self.trainer)

    def before_fit(self) -> None:
        self._resolve_ckpt_path()

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()


def _checkpoint_dir(callback, trainer) -> str:
    """Where a ModelCheckpoint writes (Lightning's documented order): its dirpath, else the first
    logger's version folder, else the trainer's default_root_dir; then `checkpoints/`."""
    if callback.dirpath is not None:
        return str(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints")
    return os.path.join(trainer.default_root_dir, "checkpoints")


def resolve_ckpt_path(ckpt_path: str, trainer) -> str:
    """The checkpoint file that `ckpt_path` names, or a CheckpointError that says what was looked for
    where. "last" is the newest `last*.ckpt` of the trainer's ModelCheckpoint callbacks (where
    Lightning would warn and start from scratch when there is none); "best", "hpc", registry
    names and URLs are Lightning's to resolve (it fails loudly on those)."""
    if ckpt_path in ("best", "hpc") or ckpt_path.startswith("registry") or "://" in ckpt_path:
        return ckpt_path
    if ckpt_path != "last":
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"ckpt_path {ckpt_path}: no such checkpoint file")
        return ckpt_path
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not callbacks:
        raise CheckpointError(
            "ckpt_path 'last': checkpointing is off in the trainer config (trainer.enable_checkpointing: false, "
            f"or no ModelCheckpoint in trainer.callbacks), so no run under {trainer.default_root_dir} has written "
            "a last checkpoint to resume from; give the path of a .ckpt file, or turn checkpointing on "
            "(trainer.enable_checkpointing: true and a ModelCheckpoint with save_last: true and a fixed dirpath)")
    folders = {_checkpoint_dir(cb, trainer): cb for cb in callbacks}
    found = [path for folder, cb in folders.items()
             for path in Path(folder).glob(f"{cb.CHECKPOINT_NAME_LAST}*{cb.FILE_EXTENSION}")]
    if not found:
        raise CheckpointError(
            f"ckpt_path 'last': no last checkpoint ({callbacks[0].CHECKPOINT_NAME_LAST}*.ckpt) in "
            f"{', '.join(sorted(folders))}; a ModelCheckpoint writes one with save_last: true, and finds it again "
            "with a fixed dirpath (without one it writes into the logger's folder, a new version every run); "
            "or give the path of a .ckpt file")
    return str(max(found, key=lambda path: path.stat().st_mtime))


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


HEADER_LINE = re.compile(r"^# ([a-z][a-z_-]*): (.+)$")


def config_header(path: str | Path) -> dict[str, str]:
    """The `# key: value` lines of a config's leading comment block (a row's paper, table, row,
    expected values, command; `extends` / `with`). Lines of prose in that block are skipped."""
    header: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        match = HEADER_LINE.match(line)
        if match is not None:
            header.setdefault(match.group(1), match.group(2).strip())
    return header


def config_stack(path: str | Path, with_files: bool = True) -> list[Path]:
    """A config with the files its header comments name: `# extends: FILE` (stacked before it)
    and, with `with_files`, `# with: FILE` (after it: the default task of a PETAL row); paths are
    relative to the checkout that holds the config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    header = config_header(path)

    def named(key: str) -> list[Path]:
        if key not in header:
            return []
        name = header[key]
        root = next((parent for parent in path.resolve().parents if (parent / name).is_file()), None)
        if root is None:
            raise ConfigError(f"{path}: the header '# {key}: {name}' names a file that does not exist")
        return [root / name]

    parents = [stacked for parent in named("extends") for stacked in config_stack(parent, with_files)]
    return parents + [path] + (named("with") if with_files else [])


def expand_config_paths(paths: list[str]) -> list[str]:
    """Every `--config` file preceded by what it extends (`# extends:`), so that one table-row
    file is one `--config`; a `# with:` default task is not added (the command line names the
    task). Files with no settings of their own are dropped (LightningCLI refuses an empty config)."""
    expanded = []
    for path in paths:
        for file in config_stack(path, with_files=False):
            if yaml.safe_load(file.read_text()) is not None:
                expanded.append(_relative(file))
    return expanded


def _relative(file: Path) -> str:
    """`file` relative to the working directory when it lies below it (commands stay readable)."""
    try:
        return str(file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(file)


def expand_config_args(argv: list[str]) -> list[str]:
    """`argv` of fit/validate/test/predict with each `--config FILE` expanded (expand_config_paths)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv) and Path(argv[i + 1]).is_file():
            out += [item for file in expand_config_paths([argv[i + 1]]) for item in ("--config", file)]
            i += 2
            continue
        if arg.startswith("--config=") and Path(arg.split("=", 1)[1]).is_file():
            out += [f"--config={file}" for file in expand_config_paths([arg.split("=", 1)[1]])]
        else:
            out.append(arg)
        i += 1
    return out


def load_configs(paths: list[str]) -> dict:
    """Merge YAML files the way stacked `--config` flags do: later files win, dicts merge."""
    merged: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
    for path in expand_config_paths(paths):
        file = Path(path)
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
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        # As LightningCLI seeds before building: backbones built from a config (random weights)
        # come out as the ones an adapter was trained on.
        from lightning.pytorch import seed_everything

        seed_everything(seed, verbose=False)
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
    from lavin_lightning.checkpoint import adapter_file_size

    return {"method": module.method, "groups": groups, **module.parameter_counts(),
            "adapter_file_bytes": adapter_file_size(module)}
