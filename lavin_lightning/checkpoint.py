"""Adapter-only checkpoints: `adapter.safetensors` + `adapter_config.json`.

The JSON sidecar records the method, its configuration, the backbone modules it targeted,
the trainable count and a fingerprint of each frozen backbone (architecture hash + a hash
of sampled weight values). Loading checks all of it, and every key and shape, before
copying anything. Nothing is ever unpickled.

Lightning checkpoints (`.ckpt`, for resuming) carry the same record, checked by the same
`check_meta` when one is loaded (`PEFTModule.on_load_checkpoint`), the settings the module
was built with (compared by `settings_diff`) and the random number generators' states
(`rng_state`), which Lightning does not save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lavin_lightning.errors import CheckpointError
from lavin_lightning.io import atomic_write, write_json

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 2  # 2 records the targeted modules

log = logging.getLogger(__name__)


def fingerprint(module: nn.Module) -> dict:
    """Hashes of a frozen module's architecture and (unless on meta) a sample of its weights.

    Values are sampled (first and last 4 of every tensor) and rounded to float16, so the
    same weights held in fp32, fp16 or on another device give the same hash.
    """
    frozen = sorted((n, p) for n, p in module.named_parameters() if not p.requires_grad)
    structure = hashlib.sha256()
    values = hashlib.sha256()
    on_meta = False
    for name, param in frozen:
        structure.update(f"{name}:{tuple(param.shape)};".encode())
        if param.device.type == "meta":
            on_meta = True
            continue
        flat = param.detach().flatten()
        sample = torch.cat([flat[:4], flat[-4:]]).to("cpu", torch.float16)
        values.update(sample.numpy().tobytes())
    return {"structure": structure.hexdigest()[:16], "weights": None if on_meta else values.hexdigest()[:16]}


def adapter_state(pl_module) -> dict[str, torch.Tensor]:
    """The trainable tensors, keyed relative to the LightningModule's `model`."""
    return {name.removeprefix("model."): p.detach() for name, p in pl_module._trainable.items()}


def adapter_file_size(pl_module) -> int:
    """Bytes of the adapter.safetensors that `save_adapter` writes, without the tensors' values
    (counted on the meta device too): the same names, shapes and fp32 dtype, serialised as zeros."""
    from safetensors.torch import save

    zeros = {name: torch.zeros(p.shape, dtype=torch.float32) for name, p in adapter_state(pl_module).items()}
    return len(save(zeros, metadata={"format": "pt"}))


def save_adapter(pl_module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write adapter.safetensors + adapter_config.json into `directory`; return it.

    `extra`: further top-level entries of the JSON record (e.g. `release`: where imported
    weights came from); they may not replace the record's own fields."""
    directory = Path(directory)
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_state(pl_module).items()}
    meta = {"format_version": FORMAT_VERSION, **pl_module.adapter_meta(),
            "shapes": {k: list(v.shape) for k, v in tensors.items()}}
    clashes = sorted(set(extra or {}) & set(meta))
    if clashes:
        raise ValueError(f"save_adapter: extra entries {clashes} would replace the record's own fields")
    meta.update(extra or {})
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(directory / ADAPTER_CONFIG, meta)
    return directory


def _diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r} vs model {b!r}")
    return out


def load_adapter(pl_module, directory: str | os.PathLike, allow_backbone_mismatch: bool = False) -> dict:
    """Load an exported adapter into an already-built module; validate everything first."""
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"adapter file missing: {path} (expected {ADAPTER_WEIGHTS} + {ADAPTER_CONFIG})")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    problems = check_meta(saved, pl_module.adapter_meta(), allow_backbone_mismatch,
                          weights_hint="; pass allow_backbone_mismatch=True to load anyway")
    if problems:
        raise CheckpointError(f"{directory} does not fit this model:\n  " + "\n  ".join(problems))
    for change in evaluation_setting_changes(saved, pl_module.adapter_meta()):
        log.warning("%s: evaluated with another setting than it records (the model's is used): %s", directory, change)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from None
    expected = adapter_state(pl_module)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong_shape = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in sorted(set(tensors) & set(expected)) if tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{weights_path} does not match the model's adapters: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unexpected[:3]} ({len(unexpected)}), wrong shapes {wrong_shape[:3]}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key].to(target.device, target.dtype))
    return saved


def check_meta(saved: dict, current: dict, allow_backbone_mismatch: bool = False, weights_hint: str = "") -> list[str]:
    """What keeps a checkpoint's record (`adapter_meta`) from fitting a model's, one line per field:
    method, method settings, targeted modules, frozen backbones (architecture, then weights;
    `weights_hint` ends the line of a weights mismatch)."""
    problems = []
    if saved.get("method") != current["method"]:
        problems.append(f"method: checkpoint {saved.get('method')!r} vs model {current['method']!r}")
    problems += [line for line in _diff(saved.get("config", {}), current.get("config", {}), "config.")
                 if line not in evaluation_setting_changes(saved, current)]
    if "targets" in saved and set(saved["targets"]) != set(current["targets"]):  # format 1 did not record them
        missing = sorted(set(current["targets"]) - set(saved["targets"]))
        extra = sorted(set(saved["targets"]) - set(current["targets"]))
        problems.append(f"targets: the model's adapters sit on {missing[:3]} ({len(missing)}) where the checkpoint's "
                        f"do not, and the checkpoint's on {extra[:3]} ({len(extra)}) where the model's do not")
    for role, now in current.get("backbone", {}).items():
        then = saved.get("backbone", {}).get(role)
        if then is None:
            problems.append(f"backbone.{role}: not recorded in the checkpoint")
            continue
        if then.get("structure") != now["structure"]:
            problems.append(f"backbone.{role}: architecture differs (checkpoint trained on {then.get('id')!r}, "
                            f"model is {now['id']!r})")
        elif not allow_backbone_mismatch and None not in (then.get("weights"), now["weights"]) \
                and then["weights"] != now["weights"]:
            problems.append(f"backbone.{role}: same architecture but different weights (checkpoint trained "
                            f"on {then.get('id')!r}){weights_hint}")
    return problems


def evaluation_setting_changes(saved: dict, current: dict) -> list[str]:
    """The settings that differ between a checkpoint's record and a model's and that the model
    declares choices of evaluation (`evaluation_settings`: e.g. the release's ViT routing), one
    line each. They do not keep the checkpoint from loading; the model's value is used."""
    names = set(current.get("evaluation_settings", ()))
    saved_config, config = saved.get("config", {}), current.get("config", {})
    return [f"config.{name}: checkpoint {saved_config.get(name)!r} vs model {config.get(name)!r}"
            for name in sorted(names) if name in saved_config and saved_config[name] != config.get(name)]


def _plain(value):
    """Settings as plain data: dataclasses as dicts, tuples as lists, private keys (`_class_path`,
    `_instantiator`, which LightningCLI adds) left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def settings_diff(saved: Mapping, current: Mapping) -> list[str]:
    """The settings (a module's hyperparameters) that differ between a checkpoint's and a module's,
    one line per field, whether either side holds them as dataclasses or as plain dicts."""
    return _diff(_plain(saved), _plain(current))


def rng_state() -> dict:
    """This process's random number generators: torch (CPU, and this process's CUDA device once
    CUDA is in use), numpy and Python; plain tensors, lists and numbers, loadable with weights_only."""
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` took."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
