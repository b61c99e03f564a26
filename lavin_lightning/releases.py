"""The authors' released adapter checkpoints (LaVIN, LLaMA-Adapter v1), read safely and mapped onto ours.

A release file is a `torch.save` pickle. It is read with `weights_only=True`: tensors, plain
containers and numbers, and `argparse.Namespace` (the training arguments that LaVIN's files
carry) are rebuilt; any other object is refused, never unpickled.

LaVIN (`torch.save({"model": {...}, "optimizer": ..., "epoch": ..., "scaler": ..., "args": Namespace})`,
keys possibly prefixed `module.`) names its adapters after the release's modules:

    layers.{i}.adapter_attn.*                               -> llm.model.layers.{i}.input_layernorm.adapter.*
    layers.{i}.adapter_mlp.*            (adapter_type block) -> llm.model.layers.{i}.post_attention_layernorm.adapter.*
    backbone.visual.transformer.resblocks.{j}.adapter_attn.* -> vision.model.encoder.layers.{j}.layer_norm1.adapter.*
        conv_A (Conv1d c->h, 1x1)            -> down          (Linear: the trailing 1 dropped)
        conv_B, conv_D (Conv1d h->c, groups) -> up_experts.0/1, or up for a plain RepAdapter
                                                (GroupedLinear: (c, h/g, 1) -> (g, c/g, h/g))
        expert_weights (Linear c->2)          -> router
    adapter_proj.conv_A / conv_B (Linear)    -> neck.down / neck.up
    adapter_modality_embedding.weight        -> modality.embedding.weight

LLaMA-Adapter v1 (a plain dict, or wrapped like LaVIN's): `adapter_query.weight` (L*K, c) holds
the K prompts of each of the top L layers in order, `layers.{i}.attention.gate` (1, H, 1, 1) or
(1,) the gates of every layer (zeros where a layer has no prompts). Our model multiplies the
prompt branch by tanh(gate); whether a file's gates are pre-tanh parameters or the multipliers
themselves is the caller's to say (`gate`).

The expected release keys and shapes are derived from the configured model's own adapter
tensors (the inverse of the mapping above), so a file for another model size or layout is
refused by its key set and shapes; every refusal says what the file holds and what the model
expects. Nothing here writes anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from lavin_lightning.errors import CheckpointError

LAVIN_FORMAT = "lavin-release"
LLAMA_ADAPTER_FORMAT = "llama-adapter-release"
GATE_CONVENTIONS = ("tanh", "raw")

# Model widths of the releases' language models and ViT, for messages.
KNOWN_WIDTHS = {4096: "LLaMA-7B", 5120: "LLaMA-13B", 6656: "LLaMA-33B", 8192: "LLaMA-65B"}
KNOWN_VIT_WIDTHS = {1024: "CLIP ViT-L/14", 768: "CLIP ViT-B/16"}

# How a tensor is laid out in the release relative to ours.
PLAIN, CONV, GROUPED_CONV = "plain", "conv", "grouped conv"

_SHOWN = 3  # keys listed per kind of problem in a refusal


# -- reading --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refused_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _plain_value(value):
    """`value` if it is plain data (str/int/float/bool/None, or lists of them), else None;
    the second result says whether it was."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value, True
    if isinstance(value, (list, tuple)):
        items = [_plain_value(v) for v in value]
        if all(ok for _, ok in items):
            return [v for v, _ in items], True
    return None, False


def plain_args(args) -> dict:
    """The training arguments of a release file as plain data (argparse Namespace or dict;
    values that are not plain data are left out)."""
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, Mapping):
        return {}
    out = {}
    for key, value in args.items():
        value, ok = _plain_value(value)
        if ok:
            out[str(key)] = value
    return out


def read_release_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(state dict, training arguments, info) of a release file, unpickled with weights_only.

    The state dict is the file's `model` entry when it has one (LaVIN's layout), else the file
    itself (LLaMA-Adapter's), with any `module.` prefix removed. The arguments are the `args`
    entry as plain data ({} without one). `info`: the file's name, sha256, whether it was wrapped
    and its top-level entries."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"release file not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused is not None:
            raise CheckpointError(
                f"{path} holds an object of type {refused} (a class or function to call while unpickling) that a "
                "release file never contains; refusing to unpickle it (only tensors, plain containers, numbers "
                "and the training arguments are read)"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors: not a release file")
    wrapped = isinstance(obj.get("model"), dict)
    state = obj["model"] if wrapped else obj
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = str(key).removeprefix("module.")
        if not isinstance(value, torch.Tensor):
            where = "its `model` entry" if wrapped else "it"
            raise CheckpointError(f"{path}: {where} maps {key!r} to a {type(value).__name__}, not a tensor: "
                                  "not a release file")
        if name in tensors:
            raise CheckpointError(f"{path}: {name!r} occurs twice (with and without the `module.` prefix)")
        tensors[name] = value
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (entries: {sorted(map(str, obj))[:5]})")
    info = {"source": path.name, "sha256": _sha256(path), "wrapped": wrapped,
            "entries": sorted(map(str, obj)) if wrapped else []}
    return tensors, plain_args(obj.get("args")) if wrapped else {}, info


def _first_line(err: BaseException) -> str:
    """The cause of a failed load, without torch's advice to retry with weights_only=False."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# -- what a file holds ----------------------------------------------------------------------------

_LAVIN_LLM_KEY = re.compile(r"^layers\.(\d+)\.adapter_(attn|mlp)\.(\w+)\.(weight|bias)$")
_LAVIN_VIT_KEY = re.compile(
    r"^backbone\.visual\.transformer\.resblocks\.(\d+)\.adapter_(attn|mlp)\.(\w+)\.(weight|bias)$")
_LLAMA_ADAPTER_GATE = re.compile(r"^layers\.(\d+)\.attention\.gate$")
_LLAMA_ADAPTER_QUERY = "adapter_query.weight"


def _kind(shapes: Mapping[str, tuple]) -> str | None:
    """"lavin", "llama_adapter" or None, from a file's key names."""
    if _LLAMA_ADAPTER_QUERY in shapes:
        return "llama_adapter"
    lavin_prefixes = ("adapter_proj.", "adapter_modality_embedding.")
    if any(_LAVIN_LLM_KEY.match(k) or _LAVIN_VIT_KEY.match(k) or k.startswith(lavin_prefixes) for k in shapes):
        return "lavin"
    return None


def _named(width: int | None, names: Mapping[int, str]) -> str:
    return f"{width} ({names[width]})" if width in names else str(width)


def _adapter_summary(shapes: Mapping[str, tuple], pattern: re.Pattern) -> dict:
    """Layers, width, placements and router presence of the LaVIN adapters whose keys match `pattern`."""
    layers, places, parts, width = set(), set(), set(), None
    for key, shape in shapes.items():
        match = pattern.match(key)
        if match is None:
            continue
        layers.add(int(match.group(1)))
        places.add(match.group(2))
        parts.add(match.group(3))
        if match.group(3) == "conv_A" and match.group(4) == "weight" and len(shape) >= 2:
            width = shape[1]
    return {"layers": sorted(layers), "places": places, "router": "expert_weights" in parts, "width": width}


def lavin_summary(shapes: Mapping[str, tuple]) -> dict:
    """What LaVIN-named tensors of the given shapes amount to: LLM and ViT adapters, neck, modality token."""
    neck_in = shapes.get("adapter_proj.conv_A.weight")
    neck_out = shapes.get("adapter_proj.conv_B.weight")
    return {"llm": _adapter_summary(shapes, _LAVIN_LLM_KEY), "vit": _adapter_summary(shapes, _LAVIN_VIT_KEY),
            "neck": None if neck_in is None or neck_out is None or len(neck_in) < 2 or len(neck_out) < 2
            else (neck_in[1], neck_in[0], neck_out[0]),
            "modality": "adapter_modality_embedding.weight" in shapes}


def describe_lavin(shapes: Mapping[str, tuple]) -> str:
    """One line: the LaVIN adapters that tensors of these names and shapes make up."""
    summary = lavin_summary(shapes)
    parts = []
    llm, vit = summary["llm"], summary["vit"]
    if llm["layers"]:
        where = "before attention and the FFN (block)" if "mlp" in llm["places"] else "before attention"
        kind = "router" if llm["router"] else "plain"
        parts.append(f"{kind} adapters on {len(llm['layers'])} LLM layers of width "
                     f"{_named(llm['width'], KNOWN_WIDTHS)}, {where}")
    if vit["layers"]:
        kind = "router" if vit["router"] else "plain RepAdapter"
        extra = ", also before the FFN (router_block)" if "mlp" in vit["places"] else ""
        parts.append(f"{kind} adapters on {len(vit['layers'])} ViT blocks of width "
                     f"{_named(vit['width'], KNOWN_VIT_WIDTHS)}{extra}")
    if summary["neck"] is not None:
        parts.append("a visual neck {} -> {} -> {}".format(*summary["neck"]))
    if summary["modality"]:
        parts.append("a modality token")
    return "; ".join(parts) if parts else "no LaVIN adapters"


def describe_llama_adapter(shapes: Mapping[str, tuple]) -> str:
    """One line: the LLaMA-Adapter v1 prompts and gates that tensors of these names and shapes make up."""
    query = shapes.get(_LLAMA_ADAPTER_QUERY)
    gates = sorted(int(m.group(1)) for k in shapes if (m := _LLAMA_ADAPTER_GATE.match(k)))
    parts = []
    if query is not None and len(query) == 2:
        parts.append(f"{_LLAMA_ADAPTER_QUERY} of {query[0]} prompts of width {_named(query[1], KNOWN_WIDTHS)}")
    if gates:
        shape = tuple(shapes[f"layers.{gates[0]}.attention.gate"])
        parts.append(f"gates {shape} on {len(gates)} layers ({gates[0]}..{gates[-1]})")
    return "; ".join(parts) if parts else "no LLaMA-Adapter tensors"


def describe_file(shapes: Mapping[str, tuple]) -> str:
    """What a release file's tensors are, in one line."""
    kind = _kind(shapes)
    if kind == "lavin":
        return f"a LaVIN file: {describe_lavin(shapes)}"
    if kind == "llama_adapter":
        return f"a LLaMA-Adapter v1 file: {describe_llama_adapter(shapes)}"
    return f"neither a LaVIN nor a LLaMA-Adapter v1 file (keys such as {sorted(shapes)[:_SHOWN]})"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return f"{shown}{', ...' if len(items) > _SHOWN else ''} ({len(items)})"


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _refusal(source: str, method: str, file_shapes: Mapping[str, tuple], model_line: str, hints: list[str],
             missing: list[str], unexpected: list[str], wrong: list[str]) -> CheckpointError:
    lines = [f"{source} does not fit the configured {method} model:",
             f"the file is {describe_file(file_shapes)}",
             f"the configured model expects {model_line}", *hints]
    if missing:
        lines.append(f"missing release keys: {_listed(missing)}")
    if unexpected:
        lines.append(f"unexpected release keys: {_listed(unexpected)}")
    if wrong:
        lines.append(f"wrong shapes (file vs expected): {_listed(wrong)}")
    return CheckpointError("\n  ".join(lines))


# -- LaVIN ----------------------------------------------------------------------------------------

_OUR_LLM = re.compile(r"^llm\.model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.adapter\.(.+)$")
_OUR_VIT = re.compile(r"^vision\.model\.encoder\.layers\.(\d+)\.layer_norm1\.adapter\.(.+)$")
_PLACES = {"input_layernorm": "adapter_attn", "post_attention_layernorm": "adapter_mlp"}
# Our adapter's parameter -> the release module's parameter and its layout there.
_ADAPTER_PARTS = {
    "down.weight": ("conv_A.weight", CONV), "down.bias": ("conv_A.bias", PLAIN),
    "up.weight": ("conv_B.weight", GROUPED_CONV), "up.bias": ("conv_B.bias", PLAIN),
    "up_experts.0.weight": ("conv_B.weight", GROUPED_CONV), "up_experts.0.bias": ("conv_B.bias", PLAIN),
    "up_experts.1.weight": ("conv_D.weight", GROUPED_CONV), "up_experts.1.bias": ("conv_D.bias", PLAIN),
    "router.weight": ("expert_weights.weight", PLAIN), "router.bias": ("expert_weights.bias", PLAIN),
}
_OTHER_PARTS = {
    "neck.down.weight": "adapter_proj.conv_A.weight", "neck.down.bias": "adapter_proj.conv_A.bias",
    "neck.up.weight": "adapter_proj.conv_B.weight", "neck.up.bias": "adapter_proj.conv_B.bias",
    "modality.embedding.weight": "adapter_modality_embedding.weight",
}


def lavin_release_name(name: str) -> tuple[str, str] | None:
    """(release key, layout) of one of our LaVIN adapter tensors (named relative to the
    LightningModule's `model`), or None when the release has no such tensor."""
    if name in _OTHER_PARTS:
        return _OTHER_PARTS[name], PLAIN
    if (match := _OUR_LLM.match(name)) is not None:
        layer, norm, part = match.groups()
        prefix = f"layers.{layer}.{_PLACES[norm]}"
    elif (match := _OUR_VIT.match(name)) is not None:
        layer, part = match.groups()
        prefix = f"backbone.visual.transformer.resblocks.{layer}.adapter_attn"
    else:
        return None
    if part not in _ADAPTER_PARTS:
        return None
    release_part, layout = _ADAPTER_PARTS[part]
    return f"{prefix}.{release_part}", layout


def release_shape(layout: str, shape: tuple) -> tuple:
    """The release's shape of a tensor that has `shape` in our model."""
    if layout == CONV:
        return (*shape, 1)
    if layout == GROUPED_CONV:
        groups, group_out, group_in = shape
        return (groups * group_out, group_in, 1)
    return tuple(shape)


def to_ours(layout: str, tensor: torch.Tensor, shape: tuple) -> torch.Tensor:
    """A release tensor in our layout. A grouped 1x1 conv weight (out, in/g, 1): group g owns
    output channels [g*out/g, (g+1)*out/g), so it is our (g, out/g, in/g) by a plain view."""
    if layout in (CONV, GROUPED_CONV):
        return tensor.squeeze(-1).reshape(shape).clone()
    return tensor.clone()


def _lavin_hints(file_shapes: Mapping[str, tuple], model_shapes: Mapping[str, tuple]) -> list[str]:
    kind = _kind(file_shapes)
    if kind == "llama_adapter":
        return ["this is a LLaMA-Adapter v1 file, not a LaVIN one (`lavin-lightning import llama-adapter-release` "
                "reads it)"]
    if kind is None:
        return ["this is not a LaVIN release file"]
    hints = []
    found, wanted = lavin_summary(file_shapes), lavin_summary(model_shapes)
    for part, names, what in (("llm", KNOWN_WIDTHS, "LLM adapters"), ("vit", KNOWN_VIT_WIDTHS, "ViT adapters")):
        have, need = found[part], wanted[part]
        if have["width"] is not None and need["width"] is not None and have["width"] != need["width"]:
            hints.append(f"the file's {what} have width {_named(have['width'], names)}, the configured model's "
                         f"{_named(need['width'], names)}")
        if have["layers"] and need["layers"] and len(have["layers"]) != len(need["layers"]):
            hints.append(f"the file has {what} on {len(have['layers'])} layers, the configured model on "
                         f"{len(need['layers'])}")
        if have["layers"] and need["layers"] and have["places"] != need["places"]:
            hints.append(f"the file's {what} sit {sorted(have['places'])}, the configured model's "
                         f"{sorted(need['places'])} (adapter.llm_placement)")
        if have["layers"] and need["layers"] and have["router"] != need["router"]:
            hints.append(f"the file's {what} {'have' if have['router'] else 'have no'} routers, the configured "
                         f"model's {'do' if need['router'] else 'do not'}")
    if found["vit"]["layers"] and not wanted["vit"]["layers"]:
        hints.append("the file has ViT adapters, the configured model none")
    return hints


def lavin_release_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple],
                          source: str = "the release file") -> dict[str, torch.Tensor]:
    """The tensors of a LaVIN release `state` under our names and in our layouts.

    `expected`: our adapter tensors' shapes by name (`checkpoint.adapter_state` of the configured
    model). Refuses, naming missing, unexpected and mis-shaped release keys, unless the file
    holds exactly the tensors that the configured model's adapters correspond to."""
    inverse: dict[str, tuple[str, str, tuple]] = {}
    no_counterpart = []
    for name, shape in expected.items():
        mapped = lavin_release_name(name)
        if mapped is None:
            no_counterpart.append(name)
            continue
        key, layout = mapped
        inverse[key] = (name, layout, release_shape(layout, tuple(shape)))
    if no_counterpart:
        raise CheckpointError(f"the configured LaVIN model has adapter tensors that a LaVIN release file does not "
                              f"hold: {_listed(sorted(no_counterpart))} (the release adapts a transformers-layout "
                              "LLaMA and CLIP ViT, with MM-Adapters as the release builds them)")
    file_shapes = _shapes(state)
    model_shapes = {key: shape for key, (_, _, shape) in inverse.items()}
    missing = sorted(set(inverse) - set(state))
    unexpected = sorted(set(state) - set(inverse))
    wrong = [f"{key}: {file_shapes[key]} vs {model_shapes[key]}" for key in sorted(set(state) & set(inverse))
             if file_shapes[key] != model_shapes[key]]
    if missing or unexpected or wrong:
        raise _refusal(source, "LaVIN", file_shapes, describe_lavin(model_shapes),
                       _lavin_hints(file_shapes, model_shapes), missing, unexpected, wrong)
    return {name: to_ours(layout, state[key], tuple(expected[name])) for key, (name, layout, _) in inverse.items()}


# Release argument -> (our setting, how to read the release's value as ours).
_PLACEMENTS = {"attn": "attn", "repattn": "attn", "block": "block"}
_VISION_ADAPTERS = {"router": "router", "normal": "repadapter_release"}


def lavin_args_differences(args: Mapping, adapter, num_visual_tokens: int | None, data: Mapping) -> list[str]:
    """Where a LaVIN release file's training arguments disagree with the configured model
    (`adapter`: its MMAConfig; `num_visual_tokens`: its visual token count) and data module
    (`data`: the config's data.init_args), one line each. Missing arguments are skipped. Raises
    for a visual_adapter_type the suite does not implement."""
    if args.get("visual_adapter_type") == "router_block":
        raise CheckpointError("the release file was trained with visual_adapter_type 'router_block' (MM-Adapters "
                              "before the ViT's FFN too), which lavin-lightning does not implement")
    checks = [
        ("temperature", "model.init_args.adapter.temperature", adapter.temperature, float),
        ("adapter_dim", "model.init_args.adapter.adapter_dim", adapter.adapter_dim, int),
        ("adapter_scale", "model.init_args.adapter.scale", adapter.scale, float),
        ("hidden_proj", "model.init_args.adapter.neck_dim", adapter.neck_dim, int),
        ("adapter_type", "model.init_args.adapter.llm_placement", adapter.llm_placement, _PLACEMENTS.get),
        ("visual_adapter_type", "model.init_args.adapter.vision_adapter", adapter.vision_adapter,
         _VISION_ADAPTERS.get),
        ("n_prompt", "visual token count (model.init_args.vision.cls_every)", num_visual_tokens, int),
        ("prompt_format", "data.init_args.prompt_format", data.get("prompt_format"), str),
        ("max_seq_len", "data.init_args.max_seq_len", data.get("max_seq_len"), int),
    ]
    return _differences(args, checks)


def llama_adapter_args_differences(args: Mapping, adapter, num_layers: int, data: Mapping) -> list[str]:
    """As `lavin_args_differences`, for a wrapped LLaMA-Adapter file's arguments
    (`adapter`: the configured LlamaAdapterConfig; `num_layers`: the LLM's layer count)."""
    layers = adapter.layers if adapter.layers is not None else num_layers
    checks = [
        ("adapter_layer", "model.init_args.adapter.layers", layers, int),
        ("adapter_len", "model.init_args.adapter.prompt_length", adapter.prompt_length, int),
        ("max_seq_len", "data.init_args.max_seq_len", data.get("max_seq_len"), int),
    ]
    return _differences(args, checks)


def _differences(args: Mapping, checks: list) -> list[str]:
    lines = []
    for arg, key, ours, read in checks:
        if arg not in args:
            continue
        value = args[arg]
        try:
            theirs = read(value)
        except (TypeError, ValueError):
            theirs = None
        if theirs is None or theirs != ours:
            shown = "not set" if ours is None else repr(ours)
            meaning = "" if theirs is None or theirs == value else f" (= {theirs!r})"
            lines.append(f"release arg {arg}={value!r}{meaning} differs from the config's {key}: {shown}")
    return lines


# -- LLaMA-Adapter v1 -----------------------------------------------------------------------------

_OUR_PROMPT = re.compile(r"^llm\.model\.layers\.(\d+)\.self_attn\.adaption_prompt\.(prompt|gate)$")


def llama_adapter_release_tensors(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple],
                                  num_layers: int, gate: str, source: str = "the release file"
                                  ) -> dict[str, torch.Tensor]:
    """The prompts and gates of a LLaMA-Adapter v1 release `state` under our names.

    `expected`: our adapter tensors' shapes by name; `num_layers`: the LLM's layer count (gates
    of layers without prompts may be present, and must be zero). `gate`: "tanh" when the file's
    gates are pre-tanh parameters (the training code's convention; stored as they are), "raw"
    when they are the multipliers themselves (the release's inference code; stored as atanh).
    A scalar gate (1,) applies to every head."""
    if gate not in GATE_CONVENTIONS:
        raise CheckpointError(f"gate convention must be one of {GATE_CONVENTIONS}, got {gate!r}")
    layers: dict[int, dict[str, tuple]] = {}
    no_counterpart = []
    for name, shape in expected.items():
        match = _OUR_PROMPT.match(name)
        if match is None:
            no_counterpart.append(name)
        else:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tuple(shape)
    if no_counterpart:
        raise CheckpointError(f"the configured LlamaAdapter model has adapter tensors that a LLaMA-Adapter v1 "
                              f"release file does not hold: {_listed(sorted(no_counterpart))} (the v1 release is "
                              "text-only: configure no vision encoder)")
    adapted = sorted(layers)
    length, width = layers[adapted[0]]["prompt"]
    heads = layers[adapted[0]]["gate"][0]
    rows = len(adapted) * length
    file_shapes = _shapes(state)
    gate_keys = {f"layers.{i}.attention.gate": i for i in range(num_layers)}
    required = {_LLAMA_ADAPTER_QUERY: (rows, width), **{f"layers.{i}.attention.gate": (1, heads, 1, 1)
                                                        for i in adapted}}
    missing = sorted(set(required) - set(state))
    unexpected = sorted(set(state) - set(gate_keys) - {_LLAMA_ADAPTER_QUERY})
    wrong = []
    for key in sorted(set(state) & (set(gate_keys) | {_LLAMA_ADAPTER_QUERY})):
        shape = file_shapes[key]
        fits = shape == (rows, width) if key == _LLAMA_ADAPTER_QUERY else shape in ((1, heads, 1, 1), (1,))
        if not fits:
            wanted = required.get(key, (1, heads, 1, 1))
            wrong.append(f"{key}: {shape} vs {wanted}{' or (1,)' if key != _LLAMA_ADAPTER_QUERY else ''}")
    model_line = (f"{_LLAMA_ADAPTER_QUERY} of {rows} prompts = {len(adapted)} layers ({adapted[0]}..{adapted[-1]}, "
                  f"adapter.layers) x {length} (adapter.prompt_length) of width {_named(width, KNOWN_WIDTHS)}, "
                  f"and gates of {heads} heads on those layers")
    if missing or unexpected or wrong:
        raise _refusal(source, "LlamaAdapter", file_shapes, model_line,
                       _llama_adapter_hints(state, file_shapes, rows, width), missing, unexpected, wrong)
    for key, layer in gate_keys.items():
        if layer not in layers and key in state and bool(state[key].ne(0).any()):
            value = state[key].abs().max().item()
            raise CheckpointError(
                f"{source}: the gate of layer {layer} is nonzero (max |g| {value:.4g}), but in the configured layout "
                f"(prompts on the top {len(adapted)} of {num_layers} layers: adapter.layers) layer {layer} has no "
                "prompts; the file's layout is not what the configuration says")
    prompts = state[_LLAMA_ADAPTER_QUERY].reshape(len(adapted), length, width)
    out: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(adapted):
        prefix = f"llm.model.layers.{layer}.self_attn.adaption_prompt"
        values = state[f"layers.{layer}.attention.gate"].reshape(-1).float().expand(heads).clone()
        if gate == "raw":
            too_large = values.abs() >= 1
            if bool(too_large.any()):
                raise CheckpointError(
                    f"{source}: the gate of layer {layer} has |g| >= 1 ({values[too_large][0].item():.4g}), which "
                    "no tanh-gated prompt reaches; with --gate raw every gate must lie in (-1, 1). Are the file's "
                    "gates pre-tanh parameters (--gate tanh)?")
            values = torch.atanh(values)
        out[f"{prefix}.prompt"] = prompts[index].clone()
        out[f"{prefix}.gate"] = values  # float32: atanh near +-1 needs the precision
    return out


def _llama_adapter_hints(state: Mapping[str, torch.Tensor], file_shapes: Mapping[str, tuple], rows: int,
                         width: int) -> list[str]:
    kind = _kind(file_shapes)
    if kind == "lavin":
        return ["this is a LaVIN file, not a LLaMA-Adapter one (`lavin-lightning import lavin-release` reads it)"]
    if kind is None:
        return ["this is not a LLaMA-Adapter v1 release file"]
    hints = []
    query = file_shapes[_LLAMA_ADAPTER_QUERY]
    if len(query) == 2 and query[1] != width:
        hints.append(f"the file's prompts have width {_named(query[1], KNOWN_WIDTHS)}, the configured model's "
                     f"{_named(width, KNOWN_WIDTHS)}")
    if len(query) == 2 and query[0] != rows:
        nonzero = sorted(int(m.group(1)) for k, v in state.items()
                         if (m := _LLAMA_ADAPTER_GATE.match(k)) and bool(v.ne(0).any()))
        seen = f"; the file has nonzero gates on {len(nonzero)} layers" if nonzero else ""
        hints.append(f"the file holds {query[0]} prompts, the configured model needs {rows} "
                     f"(adapter.layers x adapter.prompt_length){seen}")
    return hints
