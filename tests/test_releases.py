"""Reading release files safely and mapping their tensors: the conv layouts against F.conv1d, the
refusals of unsafe or unreadable files, and the paper rows' release key sets (on the meta device)."""

from __future__ import annotations

import argparse
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch import nn

from lavin_lightning.adapters.mma import GroupedLinear, RepAdapterRouter
from lavin_lightning.checkpoint import adapter_state
from lavin_lightning.config import build_module, load_configs
from lavin_lightning.errors import CheckpointError
from lavin_lightning.releases import (
    CONV,
    GROUPED_CONV,
    lavin_release_name,
    lavin_release_tensors,
    llama_adapter_release_tensors,
    read_release_file,
    release_shape,
    to_ours,
)


def test_grouped_conv_weight_is_a_grouped_linear():
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 12, 1, groups=2)
    x = torch.randn(3, 5, 8)
    reference = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, groups=2).transpose(1, 2)
    ours = GroupedLinear(8, 12, groups=2)
    assert release_shape(GROUPED_CONV, tuple(ours.weight.shape)) == tuple(conv.weight.shape) == (12, 4, 1)
    with torch.no_grad():
        ours.weight.copy_(to_ours(GROUPED_CONV, conv.weight, tuple(ours.weight.shape)))
        ours.bias.copy_(conv.bias)
    torch.testing.assert_close(ours(x), reference, rtol=0, atol=1e-6)


def test_release_router_adapter_computes_what_ours_does():
    """The release's RepAdapter_Router forward, written out with F.conv1d, against our MM-Adapter
    holding the mapped tensors: conv_B is expert 0, conv_D expert 1, expert_weights the router."""
    torch.manual_seed(0)
    width, hidden, temperature, scale = 12, 8, 5.0, 0.7
    release = {"conv_A.weight": torch.randn(hidden, width, 1), "conv_A.bias": torch.randn(hidden),
               "conv_B.weight": torch.randn(width, hidden // 2, 1), "conv_B.bias": torch.randn(width),
               "conv_D.weight": torch.randn(width, hidden // 2, 1), "conv_D.bias": torch.randn(width),
               "expert_weights.weight": torch.randn(2, width), "expert_weights.bias": torch.randn(2)}
    x = torch.randn(3, 6, width)
    weights = torch.softmax(F.linear(x[:, 0], release["expert_weights.weight"], release["expert_weights.bias"])
                            / temperature, -1)
    hidden_x = F.conv1d(x.transpose(1, 2), release["conv_A.weight"], release["conv_A.bias"])
    first = F.conv1d(hidden_x, release["conv_B.weight"], release["conv_B.bias"], groups=2)
    second = F.conv1d(hidden_x, release["conv_D.weight"], release["conv_D.bias"], groups=2)
    reference = x + scale * (weights[:, 0, None, None] * first + weights[:, 1, None, None] * second).transpose(1, 2)

    ours = RepAdapterRouter(width, hidden, scale=scale, temperature=temperature, dropout=0.0, routing="sample")
    prefix = "llm.model.layers.0.input_layernorm.adapter."
    expected = {prefix + name: tuple(p.shape) for name, p in ours.named_parameters()}
    state = {f"layers.0.adapter_attn.{key}": value for key, value in release.items()}
    mapped = lavin_release_tensors(state, expected)
    ours.load_state_dict({name.removeprefix(prefix): value for name, value in mapped.items()})
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference, rtol=1e-5, atol=1e-5)


def test_layouts_of_the_release_names():
    assert lavin_release_name("llm.model.layers.3.input_layernorm.adapter.down.weight") == \
        ("layers.3.adapter_attn.conv_A.weight", CONV)
    assert lavin_release_name("llm.model.layers.3.post_attention_layernorm.adapter.up_experts.1.weight") == \
        ("layers.3.adapter_mlp.conv_D.weight", GROUPED_CONV)
    assert lavin_release_name("vision.model.encoder.layers.23.layer_norm1.adapter.router.bias") == \
        ("backbone.visual.transformer.resblocks.23.adapter_attn.expert_weights.bias", "plain")
    assert lavin_release_name("neck.up.weight") == ("adapter_proj.conv_B.weight", "plain")
    assert lavin_release_name("modality.embedding.weight") == ("adapter_modality_embedding.weight", "plain")
    assert lavin_release_name("visual_bias.proj.weight") is None


@pytest.mark.parametrize("row, tensors, parameters", [
    ("experiments/lavin/sqa_lavin_7b.yaml", 453, 3_781_296),
    ("experiments/lavin/sqa_lavin_13b.yaml", 517, 5_390_080),
])
def test_paper_rows_expect_the_release_key_sets(row, tensors, parameters):
    module = build_module(load_configs([str(REPO / row)]))
    with torch.device("meta"):
        module.configure_model()
    release = {}
    for name, tensor in adapter_state(module).items():
        key, layout = lavin_release_name(name)
        release[key] = release_shape(layout, tuple(tensor.shape))
    assert len(release) == tensors
    assert sum(math.prod(shape) for shape in release.values()) == parameters


def test_reads_wrapped_files_and_strips_module_prefix(tmp_path):
    path = tmp_path / "release.pth"
    args = argparse.Namespace(temperature=5.0, options=["A", "B"], n_prompt=6, nested={"a": 1}, none=None)
    torch.save({"model": {"module.layers.0.adapter_attn.conv_A.bias": torch.ones(8)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]},
                "epoch": 19, "scaler": {"scale": 65536.0}, "args": args}, path)
    state, plain, info = read_release_file(path)
    assert list(state) == ["layers.0.adapter_attn.conv_A.bias"]
    assert plain == {"temperature": 5.0, "options": ["A", "B"], "n_prompt": 6, "none": None}
    assert info["source"] == "release.pth" and info["wrapped"] and len(info["sha256"]) == 64


def leave_marker(path: str) -> None:
    pathlib.Path(path).touch()


class Payload:
    """Stands for whatever a hostile file might carry: unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (leave_marker, (str(self.marker),))


@pytest.mark.parametrize("payload, refused", [
    (lambda tmp: pathlib.PurePosixPath("/x"), "pathlib.*PurePosixPath"),
    (lambda tmp: Payload(tmp / "marker"), "test_releases.leave_marker"),
])
def test_refuses_to_unpickle_other_objects(tmp_path, payload, refused):
    path = tmp_path / "release.pth"
    torch.save({"model": {"adapter_query.weight": torch.zeros(2, 2)}, "args": payload(tmp_path)}, path)
    with pytest.raises(CheckpointError, match=f"holds an object of type .*{refused}.*refusing to unpickle"):
        read_release_file(path)
    assert not (tmp_path / "marker").exists()


def test_refuses_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="release file not found"):
        read_release_file(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_release_file(garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="holds a list, not a dict of tensors"):
        read_release_file(listed)
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"adapter_query.weight": 3}, not_tensors)
    with pytest.raises(CheckpointError, match="'adapter_query.weight' to a int, not a tensor"):
        read_release_file(not_tensors)


def test_llama_adapter_7b_release_layout_maps_onto_the_row():
    """The release's 7B file: 30 layers x 10 prompts in adapter_query, gates of all 32 layers (the
    first two zero); the row's 1,229,760 parameters come out of it."""
    module = build_module(load_configs([str(REPO / "experiments/baselines/alpaca_llama_adapter_7b.yaml")]))
    with torch.device("meta"):
        module.configure_model()
    expected = {name: tuple(t.shape) for name, t in adapter_state(module).items()}
    state = {"adapter_query.weight": torch.randn(300, 4096)}
    state |= {f"layers.{i}.attention.gate": torch.full((1, 32, 1, 1), 0.0 if i < 2 else 0.1) for i in range(32)}
    mapped = llama_adapter_release_tensors(state, expected, num_layers=32, gate="tanh")
    assert sum(t.numel() for t in mapped.values()) == 1_229_760
    assert torch.equal(mapped["llm.model.layers.2.self_attn.adaption_prompt.prompt"],
                       state["adapter_query.weight"][:10])
    assert torch.equal(mapped["llm.model.layers.31.self_attn.adaption_prompt.prompt"],
                       state["adapter_query.weight"][290:])
    raw = llama_adapter_release_tensors(state, expected, num_layers=32, gate="raw")
    torch.testing.assert_close(raw["llm.model.layers.5.self_attn.adaption_prompt.gate"],
                               torch.full((32,), 0.1).atanh())
