"""Adapter-only checkpoints: `adapter.safetensors` + `adapter_config.json`.

The JSON sidecar records the method, its configuration, the backbone modules it targeted,
the trainable count and a fingerprint of each frozen backbone (architecture hash + a hash
of sampled weight values). The two files are written as one unit (a directory renamed into
place), never with NaN/inf or non-float tensors. Loading checks every field of the record, that
it fits the model, and every key, shape, dtype and value of the tensors, before copying
anything. Nothing is ever unpickled.

Lightning checkpoints (`.ckpt`, for resuming) carry the same record, checked by the same
`check_record` and `check_meta` when one is loaded (`PEFTModule.on_load_checkpoint`), the settings the module
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
from lavin_lightning.io import write_directory

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
        # A quantized weight (backbones.llama.quantize_frozen_linears) counts as the float weight it
        # was made from, as fp16 and fp32 copies do; how it was quantized is recorded beside.
        source = getattr(param, "quantized_from", None)
        structure.update(f"{name}:{source[0] if source else tuple(param.shape)};".encode())
        if param.device.type == "meta":
            on_meta = True
            continue
        if source is not None:
            sample = source[1]
        else:
            flat = param.detach().flatten()
            sample = torch.cat([flat[:4], flat[-4:]]).to("cpu", torch.float16)
        values.update(sample.numpy().tobytes())
    record = {"structure": structure.hexdigest()[:16], "weights": None if on_meta else values.hexdigest()[:16]}
    if getattr(module, "quantization", None):
        record["quantization"] = dict(module.quantization)
    return record


def adapter_state(pl_module) -> dict[str, torch.Tensor]:
    """The trainable tensors, keyed relative to the LightningModule's `model`."""
    return {name.removeprefix("model."): p.detach() for name, p in pl_module._trainable.items()}


def adapter_file_size(pl_module) -> int:
    """Bytes of the adapter.safetensors that `save_adapter` writes, without the tensors' values
    (counted on the meta device too): the same names, shapes and fp32 dtype, serialised as zeros."""
    from safetensors.torch import save

    zeros = {name: torch.zeros(p.shape, dtype=torch.float32) for name, p in adapter_state(pl_module).items()}
    return len(save(zeros, metadata={"format": "pt"}))


def check_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse adapter tensors that are not floating point (an integer or bool tensor is not a
    trained weight, and copying it into one would round silently) or hold NaN/inf (a diverged
    run), naming them."""
    not_float = [f"{name} ({t.dtype})" for name, t in tensors.items() if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: adapter tensors must be floating point; these are not "
                              f"({len(not_float)}): {not_float[:5]}")
    non_finite = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if non_finite:
        raise CheckpointError(f"{source}: adapter tensors with NaN or inf values ({len(non_finite)}): {non_finite[:5]} "
                              "(the training diverged; lower optim.lr, or set optim.on_nonfinite: skip)")


# An existing export directory is replaced only if it holds nothing but an export (and what a
# killed write of the per-file exports of earlier versions left): never a user's other files.
_EXPORT_LEFTOVERS = (f".{ADAPTER_WEIGHTS}.", f".{ADAPTER_CONFIG}.")


def check_export_target(directory: str | os.PathLike) -> None:
    """A CheckpointError when the export cannot replace `directory` as one unit: it holds anything
    but an adapter export (or is not a directory), is a mount point (which cannot be renamed), or
    its parent, where the new export is written first, is not writable."""
    directory = Path(directory)
    parent = next((p for p in directory.absolute().parents if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"refusing to export to {directory}: {parent} is not writable (the export is written "
                              "beside its target, then renamed into place)")
    if not directory.exists():
        return
    if os.path.ismount(directory):
        raise CheckpointError(f"refusing to export to {directory}: it is a mount point, which cannot be replaced "
                              "as one unit (renamed); export into a directory below it")
    foreign = [directory.name] if not directory.is_dir() else sorted(
        entry.name for entry in directory.iterdir()
        if entry.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
        and not (entry.name.startswith(_EXPORT_LEFTOVERS) and entry.name.endswith(".tmp")))
    if foreign:
        raise CheckpointError(f"refusing to export to {directory}: it holds {foreign[:5]} besides an adapter "
                              f"export ({ADAPTER_WEIGHTS}, {ADAPTER_CONFIG}), which the export would replace; "
                              "export into a directory of its own")


def save_adapter(pl_module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write adapter.safetensors + adapter_config.json into `directory`, as one unit; return it.

    Both files are written into a temporary directory beside `directory`, which then takes its
    place (`io.write_directory`): a reader never sees new weights beside an old record. An
    existing `directory` is replaced only when it holds nothing but an export. Tensors that are
    not floating point or not finite are refused before anything is written.

    `extra`: further top-level entries of the JSON record (e.g. `release`: where imported
    weights came from); they may not replace the record's own fields."""
    directory = Path(directory)
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_state(pl_module).items()}
    check_tensors(tensors, f"refusing to export to {directory}")
    meta = {"format_version": FORMAT_VERSION, **pl_module.adapter_meta(),
            "shapes": {k: list(v.shape) for k, v in tensors.items()}}
    clashes = sorted(set(extra or {}) & set(meta))
    if clashes:
        raise ValueError(f"save_adapter: extra entries {clashes} would replace the record's own fields")
    meta.update(extra or {})
    check_export_target(directory)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    return write_directory(directory, write)


def _diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Settings that differ, one line each. A setting the checkpoint does not record was added
    after it was written, with a default that keeps the earlier behaviour: not a difference."""
    out = []
    for key in sorted(saved):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r} vs model {b!r}")
    return out


MISMATCH_HINT = ("; to load it anyway, set the model's allow_backbone_mismatch: true "
                 "(--model.init_args.allow_backbone_mismatch true)")


def load_adapter(pl_module, directory: str | os.PathLike, allow_backbone_mismatch: bool = False) -> dict:
    """Load an exported adapter into an already-built module; validate everything first: the
    record's fields, that it fits the model (`check_meta`), the file's tensors against the
    record and the model (names, shapes, dtypes, finite values). Nothing is copied before."""
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"adapter file missing: {path} (expected {ADAPTER_WEIGHTS} + {ADAPTER_CONFIG})")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    check_record(saved, str(config_path), export=True)
    current = pl_module.adapter_meta()
    problems = check_meta(saved, current, allow_backbone_mismatch, weights_hint=MISMATCH_HINT)
    if problems:
        raise CheckpointError(f"{directory} does not fit this model:\n  " + "\n  ".join(problems))
    for change in evaluation_setting_changes(saved, current):
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
    recorded = {name: list(t.shape) for name, t in tensors.items()}
    if recorded != saved["shapes"]:
        differ = sorted(name for name in set(recorded) | set(saved["shapes"])
                        if recorded.get(name) != saved["shapes"].get(name))
        raise CheckpointError(f"{config_path}: field 'shapes' does not describe {weights_path} (the two files are "
                              f"not of one export) at {len(differ)} tensors, e.g. " + ", ".join(
                                  f"{name}: record {saved['shapes'].get(name)} vs file {recorded.get(name)}"
                                  for name in differ[:3]))
    check_tensors(tensors, str(weights_path))
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key].to(target.device, target.dtype))
    return saved


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_record(saved, source: str, export: bool) -> None:
    """A CheckpointError naming `source` and each field of the record (`adapter_meta`) that is not
    of the type the checks read, before anything reads it. `export`: the adapter_config.json of an
    export, which also records its format_version, shapes and trainable count (a Lightning
    checkpoint's record does not)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: expected a JSON object (the adapter record) at the top level, "
                              f"got {type(saved).__name__}")
    problems = []

    def need(field: str, ok: bool, expected: str, required: bool = True) -> None:
        if field not in saved:
            if required:
                problems.append(f"field {field!r} is missing (expected {expected})")
        elif not ok:
            problems.append(f"field {field!r} is {saved[field]!r:.80}, expected {expected}")

    version = saved.get("format_version")
    need("format_version", _is_int(version) and 1 <= version <= FORMAT_VERSION,
         f"an integer from 1 to {FORMAT_VERSION} (a newer lavin-lightning may have written it)", required=export)
    need("method", isinstance(saved.get("method"), str), "the method's name (a string)")
    need("config", isinstance(saved.get("config"), dict), "the method's settings (an object)")
    # Format 1 (and the Lightning checkpoints of its time) did not record the targeted modules.
    need("targets", _is_str_list(saved.get("targets")), "a list of module names",
         required=export and _is_int(version) and version >= 2)
    need("evaluation_settings", _is_str_list(saved.get("evaluation_settings")), "a list of setting names",
         required=False)
    need("trainable_params", _is_int(saved.get("trainable_params")) and saved.get("trainable_params") >= 0,
         "the trainable parameter count (a non-negative integer)", required=export)
    shapes = saved.get("shapes")
    need("shapes", isinstance(shapes, dict) and all(
        isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape) for shape in shapes.values()),
         "an object of tensor name -> list of non-negative integers", required=export)
    backbone = saved.get("backbone")
    need("backbone", isinstance(backbone, dict), "an object of role -> fingerprint")
    if isinstance(backbone, dict):
        for role, record in backbone.items():
            if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                    and isinstance(record.get("structure"), str)
                    and (record.get("weights") is None or isinstance(record.get("weights"), str))):
                problems.append(f"field 'backbone.{role}' is {record!r:.80}, expected an object with 'id' and "
                                "'structure' (strings) and 'weights' (a string or null)")
    if problems:
        raise CheckpointError(f"{source}: not a valid adapter record:\n  " + "\n  ".join(problems))


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
    if "trainable_params" in saved and saved["trainable_params"] != current["trainable_params"]:
        problems.append(f"trainable_params: checkpoint {saved['trainable_params']} vs model "
                        f"{current['trainable_params']}")
    for role, now in current.get("backbone", {}).items():
        then = saved.get("backbone", {}).get(role)
        if then is None:
            problems.append(f"backbone.{role}: not recorded in the checkpoint")
            continue
        if then.get("quantization") != now.get("quantization"):
            # Not a mismatch: the same weights, quantized otherwise (or not), like another dtype.
            log.warning("backbone.%s: the adapters were trained over %s and run over %s (outputs differ by the "
                        "quantization error)", role, _quantization_name(then), _quantization_name(now))
        if then.get("structure") != now["structure"]:
            problems.append(f"backbone.{role}: architecture differs (checkpoint trained on {then.get('id')!r}, "
                            f"model is {now['id']!r})")
        elif not allow_backbone_mismatch and None not in (then.get("weights"), now["weights"]) \
                and then["weights"] != now["weights"]:
            problems.append(f"backbone.{role}: same architecture but different weights (checkpoint trained "
                            f"on {then.get('id')!r}){weights_hint}")
    return problems


def _quantization_name(record: dict) -> str:
    q = record.get("quantization")
    return f"a {q['backend']} {q['bits']}-bit quantized backbone" if q else "a float backbone"


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
