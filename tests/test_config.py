"""Configs outside LightningCLI: stacking, merging, and the demos' embedded-default modules."""

from __future__ import annotations

import pytest
from conftest import REPO

from lavin_lightning.config import config_stack, load_configs, merge
from lavin_lightning.errors import ConfigError


def test_merge_combines_sections_and_a_new_class_replaces_its_section():
    base = {"model": {"class_path": "a.A", "init_args": {"x": 1, "nested": {"p": 1, "q": 2}}}, "seed": 0}
    same = merge(base, {"model": {"class_path": "a.A", "init_args": {"nested": {"q": 3}}}})
    assert same["model"]["init_args"] == {"x": 1, "nested": {"p": 1, "q": 3}} and same["seed"] == 0
    other = merge(base, {"model": {"class_path": "b.B", "init_args": {"y": 2}}})
    assert other["model"] == {"class_path": "b.B", "init_args": {"y": 2}}


def test_stack_follows_extends_headers(tmp_path):
    stack = config_stack(REPO / "experiments/tiny/maple_tiny.yaml")
    assert [p.name for p in stack] == ["petal_tiny.yaml", "maple_tiny.yaml"]
    config = load_configs([str(p) for p in stack])
    assert config["model"]["class_path"].endswith("MaPLe") and config["model"]["init_args"]["adapter"] == {
        "depth": None}
    assert config["data"]["class_path"].endswith("VQADataModule")  # from the extended config
    broken = tmp_path / "broken.yaml"
    broken.write_text("# extends: experiments/nowhere.yaml\nmodel: {}\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        config_stack(broken)


def test_demos_find_their_methods_and_swap_in_the_embedded_backbones():
    from lavin_lightning.commands.demo import EMBEDDED, embedded_module, tiny_methods
    from lavin_lightning.models.causal_lm import CausalLMModule
    from lavin_lightning.models.instructblip import InstructBLIPModule

    assert tiny_methods(CausalLMModule, "AlpacaDataModule") == ["excitor", "llama_adapter", "lora"]
    assert tiny_methods(InstructBLIPModule) == ["bottleneck", "maple", "petal", "qformer_full", "qformer_head",
                                                "qformer_lora"]
    lavin = embedded_module("lavin", optim={"lr": 1e-3})
    assert lavin.llm_spec.path == EMBEDDED["llm"]["path"] and lavin.vision_spec.config == "clip-small-64"
    assert lavin.optim.lr == 1e-3 and lavin.adapter.temperature == 10.0  # the tiny config's, overridden
    petal = embedded_module("petal")
    assert petal.backbone_spec.config == "small" and petal.adapter.rank == 32


def test_build_module_seeds_like_lightning_cli_so_random_backbones_match_their_adapter():
    """`evaluate` and `chat` build the module outside LightningCLI: with the config's seed, a
    backbone built from a config gets the weights the adapter was trained on."""
    import torch

    from lavin_lightning.config import build_module

    config = load_configs([str(REPO / "experiments/tiny/excitor_tiny.yaml")])
    built = []
    for _ in range(2):
        torch.manual_seed(123 + len(built))  # whatever the state before
        module = build_module(config)
        module.configure_model()
        built.append(module.model.llm.get_input_embeddings().weight.detach().clone())
    assert torch.equal(built[0], built[1])
