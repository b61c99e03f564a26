"""`lavin-lightning import`: release-format files built from tiny models with random adapters come back,
through an export loaded by `adapter_path`, as the same model; every refusal writes nothing."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
import yaml
from conftest import REPO, make_batch, perturb_adapters

from lavin_lightning.checkpoint import adapter_state
from lavin_lightning.cli import main as cli_main
from lavin_lightning.commands.import_release import main
from lavin_lightning.config import build_module, load_configs
from lavin_lightning.errors import CheckpointError, ConfigError

TINY_LAVIN = str(REPO / "experiments/tiny/lavin_tiny.yaml")
TINY_LLAMA_ADAPTER = str(REPO / "experiments/tiny/llama_adapter_tiny.yaml")

# Our LaVIN adapter parameter -> the release module's (written out here, apart from the importer's table).
RELEASE_PARTS = {"down": "conv_A", "up_experts.0": "conv_B", "up_experts.1": "conv_D", "router": "expert_weights",
                 "up": "conv_B"}


def built(configs: list[str], adapter_path=None):
    module = build_module(load_configs(configs))
    module.adapter_path = None if adapter_path is None else str(adapter_path)
    module.configure_model()
    return module.eval()


def lavin_release_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LaVIN adapter tensors (`adapter_state`) as the LaVIN release names and shapes them."""
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.clone()
        if (m := re.match(r"llm\.model\.layers\.(\d+)\.(input|post_attention)_layernorm\.adapter\.(.+)\.(\w+)$",
                          name)):
            layer, norm, part, kind = m.groups()
            key = f"layers.{layer}.{'adapter_attn' if norm == 'input' else 'adapter_mlp'}.{RELEASE_PARTS[part]}"
        elif (m := re.match(r"vision\.model\.encoder\.layers\.(\d+)\.layer_norm1\.adapter\.(.+)\.(\w+)$", name)):
            layer, part, kind = m.groups()
            key = f"backbone.visual.transformer.resblocks.{layer}.adapter_attn.{RELEASE_PARTS[part]}"
        else:
            out[{"neck.down.weight": "adapter_proj.conv_A.weight", "neck.down.bias": "adapter_proj.conv_A.bias",
                 "neck.up.weight": "adapter_proj.conv_B.weight", "neck.up.bias": "adapter_proj.conv_B.bias",
                 "modality.embedding.weight": "adapter_modality_embedding.weight"}[name]] = tensor
            continue
        if kind == "weight" and part == "down":
            tensor = tensor[..., None]  # Conv1d(c, h, 1)
        elif kind == "weight" and part.startswith("up"):
            tensor = torch.cat(list(tensor), dim=0)[..., None]  # group g's output channels follow group g-1's
        out[f"{key}.{kind}"] = tensor
    return out


def lavin_args(**changes) -> argparse.Namespace:
    args = dict(temperature=10.0, adapter_dim=8, adapter_scale=1.0, hidden_proj=128, adapter_type="attn",
                visual_adapter_type="router", n_prompt=2, prompt_format="QCM-A", max_seq_len=256, llm_model="7B",
                use_vicuna=False, output_dir="./LaVIN-7B", options=["A", "B", "C", "D", "E"], gpu=0)
    return argparse.Namespace(**{**args, **changes})


def save_lavin_release(path, state: dict, args: argparse.Namespace | None = None):
    """As the release's training script saves: DDP names, optimizer, epoch, scaler and args."""
    torch.save({"model": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 1.125e-3, "betas": (0.9, 0.95), "weight_decay": 0.02,
                                                "params": [0]}]},
                "epoch": 19, "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7},
                "args": args or lavin_args()}, path)
    return path


def llama_adapter_release_state(module, num_layers: int, raw: bool = False) -> dict[str, torch.Tensor]:
    """adapter_query (the top layers' prompts in order) and every layer's (1, H, 1, 1) gate (zeros without
    prompts); `raw`: the gates as multipliers (tanh of ours)."""
    state = adapter_state(module)
    adapted = sorted(int(m.group(1)) for k in state if (m := re.match(r"llm\.model\.layers\.(\d+)\..*prompt$", k)))
    prompt = "llm.model.layers.{}.self_attn.adaption_prompt.{}"
    out = {"adapter_query.weight": torch.cat([state[prompt.format(i, "prompt")] for i in adapted])}
    heads = state[prompt.format(adapted[0], "gate")].numel()
    for i in range(num_layers):
        gate = state[prompt.format(i, "gate")].clone() if i in adapted else torch.zeros(heads)
        out[f"layers.{i}.attention.gate"] = (gate.tanh() if raw else gate).view(1, heads, 1, 1)
    return out


def import_args(fmt, checkpoint, out, *configs, extra=()):
    args = [fmt, "--checkpoint", str(checkpoint), "--out", str(out)]
    for config in configs:
        args += ["--config", str(config)]
    return args + list(extra)


def override(tmp_path, name: str, settings: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def record(out) -> dict:
    return json.loads((out / "adapter_config.json").read_text())


# -- LaVIN -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lavin_source():
    """A tiny LaVIN with random adapters, its outputs on a batch, and the batch."""
    module = built([TINY_LAVIN])
    perturb_adapters(module)
    batch = make_batch(module.tokenizer)
    with torch.no_grad():
        return module, batch, module.model.loss(batch), module.model.sequence_logprobs(batch)


def test_lavin_release_round_trip(lavin_source, tmp_path, capsys):
    source, batch, loss, logprobs = lavin_source
    release = save_lavin_release(tmp_path / "lavin-7b.pth", lavin_release_state(adapter_state(source)),
                                 lavin_args(prompt_format="QCM-ALE"))
    out = tmp_path / "export"
    main(import_args("lavin-release", release, out, TINY_LAVIN))
    summary = capsys.readouterr().out
    assert "imported 37 tensors" in summary and "1 warning" in summary

    imported = built([TINY_LAVIN], adapter_path=out)
    for name, tensor in adapter_state(source).items():
        assert torch.equal(adapter_state(imported)[name], tensor), name
    with torch.no_grad():
        assert torch.equal(imported.model.loss(batch), loss)
        assert torch.equal(imported.model.sequence_logprobs(batch), logprobs)

    saved = record(out)["release"]
    assert saved["format"] == "lavin-release" and saved["source"] == "lavin-7b.pth" and len(saved["sha256"]) == 64
    assert saved["tensors"] == 37 and saved["parameters"] == imported.parameter_counts()["trainable"]
    assert saved["args"]["temperature"] == 10.0 and saved["args"]["options"] == ["A", "B", "C", "D", "E"]
    assert len(saved["warnings"]) == 1
    assert "prompt_format='QCM-ALE'" in saved["warnings"][0]
    assert "data.init_args.prompt_format: 'QCM-A'" in saved["warnings"][0]

    # An export already there is replaced only on request.
    with pytest.raises(CheckpointError, match="already holds adapter.safetensors.*--overwrite"):
        main(import_args("lavin-release", release, out, TINY_LAVIN))
    main(import_args("lavin-release", release, out, TINY_LAVIN, extra=["--overwrite"]))


def test_lavin_refusals_write_nothing(lavin_source, tmp_path):
    source = lavin_source[0]
    state = lavin_release_state(adapter_state(source))
    out = tmp_path / "export"

    missing = dict(state)
    del missing["layers.1.adapter_attn.conv_D.weight"], missing["adapter_modality_embedding.weight"]
    path = save_lavin_release(tmp_path / "missing.pth", missing)
    with pytest.raises(CheckpointError, match=r"missing release keys: adapter_modality_embedding.weight, "
                                              r"layers.1.adapter_attn.conv_D.weight \(2\)"):
        main(import_args("lavin-release", path, out, TINY_LAVIN))

    block = {**state, "layers.0.adapter_mlp.conv_A.bias": torch.zeros(8)}
    path = save_lavin_release(tmp_path / "block.pth", block)
    with pytest.raises(CheckpointError, match=r"unexpected release keys: layers.0.adapter_mlp.conv_A.bias \(1\)"):
        main(import_args("lavin-release", path, out, TINY_LAVIN))

    path = save_lavin_release(tmp_path / "router_block.pth", state, lavin_args(visual_adapter_type="router_block"))
    with pytest.raises(CheckpointError, match="router_block"):
        main(import_args("lavin-release", path, out, TINY_LAVIN))

    # The LaVIN file, imported as LLaMA-Adapter, and a LaVIN config given to the other importer.
    path = save_lavin_release(tmp_path / "lavin.pth", state)
    with pytest.raises(CheckpointError, match="this is a LaVIN file, not a LLaMA-Adapter one"):
        main(import_args("llama-adapter-release", path, out, TINY_LLAMA_ADAPTER, extra=["--gate", "tanh"]))
    with pytest.raises(ConfigError, match="needs a config of LaVIN"):
        main(import_args("lavin-release", path, out, TINY_LLAMA_ADAPTER))
    assert not out.exists()


def test_lavin_13b_file_into_the_7b_row_is_refused_before_loading_weights(tmp_path):
    """Only the meta device is needed: the rows' weights are not on this machine."""
    module = build_module(load_configs([str(REPO / "experiments/lavin/sqa_lavin_13b.yaml")]))
    with torch.device("meta"):
        module.configure_model()
    zeros = {name: torch.zeros(tensor.shape) for name, tensor in adapter_state(module).items()}
    path = save_lavin_release(tmp_path / "lavin-13b.pth", lavin_release_state(zeros),
                              lavin_args(llm_model="13B", temperature=5.0, n_prompt=6))
    out = tmp_path / "export"
    with pytest.raises(CheckpointError) as err:
        main(import_args("lavin-release", path, out, str(REPO / "experiments/lavin/sqa_lavin_7b.yaml")))
    message = str(err.value)
    assert "the file's LLM adapters have width 5120 (LLaMA-13B), the configured model's 4096 (LLaMA-7B)" in message
    assert "the file has LLM adapters on 40 layers, the configured model on 32" in message
    assert "missing release keys: " not in message and "unexpected release keys: layers.32." in message
    assert not out.exists()


# -- LLaMA-Adapter ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_adapter_source():
    module = built([TINY_LLAMA_ADAPTER])
    perturb_adapters(module)
    batch = make_batch(module.tokenizer, has_image=(False, False, False))
    with torch.no_grad():
        return module, batch, module.model.sequence_logprobs(batch)


def test_llama_adapter_tanh_gates_stored_as_they_are(llama_adapter_source, tmp_path):
    source, batch, logprobs = llama_adapter_source
    state = llama_adapter_release_state(source, num_layers=2)
    path = tmp_path / "llama_adapter_len10_layer2.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 4,
                "args": argparse.Namespace(adapter_layer=2, adapter_len=10, max_seq_len=512)}, path)
    out = tmp_path / "export"
    main(import_args("llama-adapter-release", path, out, TINY_LLAMA_ADAPTER, extra=["--gate", "tanh"]))
    imported = built([TINY_LLAMA_ADAPTER], adapter_path=out)
    for name, tensor in adapter_state(source).items():
        assert torch.equal(adapter_state(imported)[name], tensor), name
    with torch.no_grad():
        assert torch.equal(imported.model.sequence_logprobs(batch), logprobs)
    saved = record(out)["release"]
    assert saved["gate"] == "tanh" and saved["format"] == "llama-adapter-release"
    assert saved["args"] == {"adapter_layer": 2, "adapter_len": 10, "max_seq_len": 512}
    assert saved["tensors"] == 4 and saved["parameters"] == 2 * (10 * 64 + 4)
    assert len(saved["warnings"]) == 1 and "max_seq_len=512" in saved["warnings"][0]


def test_llama_adapter_raw_gates_stored_as_atanh(llama_adapter_source, tmp_path):
    source, batch, _ = llama_adapter_source
    reference = built([TINY_LLAMA_ADAPTER])
    with torch.no_grad():
        for name, tensor in adapter_state(source).items():
            adapter_state(reference)[name].copy_(tensor)
        adapter_state(reference)["llm.model.layers.0.self_attn.adaption_prompt.gate"].fill_(0.7)
        expected = reference.model.sequence_logprobs(batch)
    state = llama_adapter_release_state(reference, num_layers=2, raw=True)
    state["layers.0.attention.gate"] = torch.tensor([0.7]).tanh()  # the earliest code's scalar gate: every head
    path = tmp_path / "raw.pth"
    torch.save(state, path)
    out = tmp_path / "export"
    main(import_args("llama-adapter-release", path, out, TINY_LLAMA_ADAPTER, extra=["--gate", "raw"]))
    imported = built([TINY_LLAMA_ADAPTER], adapter_path=out)
    for name, tensor in adapter_state(reference).items():
        torch.testing.assert_close(adapter_state(imported)[name], tensor, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(imported.model.sequence_logprobs(batch), expected, rtol=1e-5, atol=1e-5)
    assert record(out)["release"]["gate"] == "raw" and record(out)["release"]["args"] == {}


def test_llama_adapter_refusals_write_nothing(llama_adapter_source, tmp_path):
    source = llama_adapter_source[0]
    state = llama_adapter_release_state(source, num_layers=2)
    out = tmp_path / "export"

    too_large = {**state, "layers.1.attention.gate": torch.tensor([[[[0.5]], [[1.0]], [[0.1]], [[0.2]]]])}
    torch.save(too_large, tmp_path / "large.pth")
    with pytest.raises(CheckpointError, match=r"gate of layer 1 has \|g\| >= 1 \(1\)"):
        main(import_args("llama-adapter-release", tmp_path / "large.pth", out, TINY_LLAMA_ADAPTER,
                         extra=["--gate", "raw"]))

    # Prompts on the top layer only: layer 0's gate must then be zero.
    top_one = override(tmp_path, "top_one.yaml", {"model": {"init_args": {"adapter": {"layers": 1}}}})
    one_layer = {"adapter_query.weight": state["adapter_query.weight"][10:],
                 "layers.0.attention.gate": torch.full((1, 4, 1, 1), 0.25),
                 "layers.1.attention.gate": state["layers.1.attention.gate"]}
    torch.save(one_layer, tmp_path / "nonzero.pth")
    with pytest.raises(CheckpointError, match="gate of layer 0 is nonzero .* layer 0 has no prompts"):
        main(import_args("llama-adapter-release", tmp_path / "nonzero.pth", out, TINY_LLAMA_ADAPTER, top_one,
                         extra=["--gate", "tanh"]))

    # A file with prompts for both layers, against a config that puts them on one.
    torch.save(state, tmp_path / "two.pth")
    with pytest.raises(CheckpointError, match="the file holds 20 prompts, the configured model needs 10"):
        main(import_args("llama-adapter-release", tmp_path / "two.pth", out, TINY_LLAMA_ADAPTER, top_one,
                         extra=["--gate", "tanh"]))

    # The LLaMA-Adapter file into the LaVIN importer, through the command line (SystemExit with the message).
    with pytest.raises(SystemExit, match="this is a LLaMA-Adapter v1 file, not a LaVIN one"):
        cli_main(["import", *import_args("lavin-release", tmp_path / "two.pth", out, TINY_LAVIN)])
    assert not out.exists()
