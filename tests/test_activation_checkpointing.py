"""Activation checkpointing (`PEFTModule(activation_checkpointing=True)`): every method's adapter
gradients are exactly those without it, it acts in training only (nothing at evaluation or
generation), it is not a setting that checkpoints or exports are checked against, and the FSDP
strategy's option is the same mechanism. Plus a quick run of benchmarks/memory.py's measurement."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from models.test_method_contract import ROWS, batch_for, randomise

from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.models.base import OptimConfig, set_activation_checkpointing
from lavin_lightning.models.causal_lm import GenerationConfig

TINY_TIMM = VisionSpec(kind="timm", config={"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
                                            "embed_dim": 32, "depth": 2, "num_heads": 2}, cls_every=1)


def build(name: str, checkpointing: bool, **kwargs):
    """The contract row `name` (randomised adapters, so every gradient path is live), in training mode."""
    row = ROWS[name]
    if kwargs:
        row = type(row)(row.method, {**row.kwargs, **kwargs}, row.backbone, row.identity, row.no_gradient)
    module = row.build()
    randomise(module)
    if checkpointing:
        module.enable_activation_checkpointing()
    return module.train()


def gradients(module, batch: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # the same dropout draws in both runs
    module.zero_grad(set_to_none=True)
    module.training_losses(batch)["loss"].backward()
    return {name: p.grad for name, p in module._trainable.items() if p.grad is not None}


@contextlib.contextmanager
def counting_recomputed_blocks(module):
    """How many block forwards go through the checkpoint function (a list of one count)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    count = [0]
    blocks = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    originals = [m._gradient_checkpointing_func for m in blocks]

    def counted(original):
        def run(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)
        return run

    for block, original in zip(blocks, originals):
        block._gradient_checkpointing_func = counted(original)
    try:
        yield count
    finally:
        for block, original in zip(blocks, originals):
            block._gradient_checkpointing_func = original


def stored_tensors(module, batch: dict) -> int:
    """Tensors that autograd keeps from the forward for backward (a checkpointed block keeps its
    inputs only; what it keeps inside is the checkpoint's own, not seen here)."""
    count = [0]

    def pack(tensor):
        count[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module.training_losses(batch)["loss"]
    return count[0]


@pytest.mark.parametrize("name", list(ROWS))
def test_adapter_gradients_are_identical_with_and_without(name):
    plain, checkpointed = build(name, False), build(name, True)
    batch = batch_for(plain)
    expected = gradients(plain, batch)
    with counting_recomputed_blocks(checkpointed) as recomputed:
        found = gradients(checkpointed, batch)
    assert recomputed[0] > 0  # the blocks did run checkpointed
    assert expected and found.keys() == expected.keys()
    for key, grad in expected.items():
        assert torch.equal(found[key], grad), key
    assert stored_tensors(checkpointed, batch) < stored_tensors(plain, batch)


def test_dropout_is_replayed_exactly():
    """LaVIN's adapter dropout draws the same masks in the recomputation."""
    from lavin_lightning.adapters.mma import MMAConfig

    plain, checkpointed = (build("lavin", ac, adapter=MMAConfig(dropout=0.3)) for ac in (False, True))
    batch = batch_for(plain)
    expected, found = gradients(plain, batch), gradients(checkpointed, batch)
    assert all(torch.equal(found[k], g) for k, g in expected.items())


def test_timm_vision_tower_blocks_are_checkpointed_too():
    plain, checkpointed = (build("lavin", ac, vision=TINY_TIMM) for ac in (False, True))
    switched = set_activation_checkpointing(checkpointed.model)
    assert switched["VisionTransformer.blocks"] == 2 and switched["LlamaDecoderLayer"] == 2
    batch = batch_for(plain)
    expected, found = gradients(plain, batch), gradients(checkpointed, batch)
    assert any(".vision." in k for k in expected)  # adapters inside the timm blocks get gradients
    assert all(torch.equal(found[k], g) for k, g in expected.items())
    assert stored_tensors(checkpointed, batch) < stored_tensors(plain, batch)


@pytest.mark.parametrize("name", ["lavin", "lora"])
def test_inactive_in_evaluation_and_generation(name):
    plain, checkpointed = build(name, False), build(name, True)
    batch = batch_for(plain)
    prompts = {k: v for k, v in batch_for(plain, labelled=False).items()}
    config = GenerationConfig(max_new_tokens=4, temperature=0.0)
    with counting_recomputed_blocks(checkpointed) as recomputed:
        # Generation is no_grad: nothing recomputed even in training mode, and the KV cache is used.
        assert checkpointed.model.generate(prompts, config) == plain.model.generate(prompts, config)
        for module in (plain, checkpointed):
            module.eval()
        assert stored_tensors(checkpointed, batch) == stored_tensors(plain, batch)  # eval with autograd
        with torch.no_grad():
            assert torch.equal(checkpointed.model.loss(batch), plain.model.loss(batch))
        with checkpointed.inference():  # LaVIN folds its adapters, LoRA merges: the same blocks run
            checkpointed.model.generate(prompts, config)
    assert recomputed[0] == 0


def test_an_export_loads_whatever_the_setting_and_a_run_resumes_with_it_toggled(tmp_path):
    from lavin_lightning.adapters.mma import MMAConfig
    from lavin_lightning.checkpoint import save_adapter
    from lavin_lightning.models.lavin import LaVIN

    def lavin(**kwargs):
        torch.manual_seed(0)
        module = LaVIN(llm=LLMSpec(config="tiny"), vision=VisionSpec(kind="clip", config="tiny", cls_every=1),
                       adapter=MMAConfig(dropout=0.0), optim=OptimConfig(lr=1e-2, base_lr=None), **kwargs)
        module.configure_model()
        return module

    trained = lavin(activation_checkpointing=True)
    assert trained.hparams["activation_checkpointing"] is True
    randomise(trained)
    save_adapter(trained, tmp_path / "adapter")
    loaded = lavin(adapter_path=str(tmp_path / "adapter"))
    assert not loaded.activation_checkpointing
    for key, param in trained._trainable.items():
        assert torch.equal(loaded._trainable[key], param)

    # A Lightning checkpoint written with it resumes `fit` without it (and the other way round).
    checkpoint = {"state_dict": {k: p.detach().clone() for k, p in trained._trainable.items()},
                  "hyper_parameters": dict(trained.hparams), "global_step": 2}
    trained.on_save_checkpoint(checkpoint)
    for resumed in (lavin(), lavin(activation_checkpointing=True)):
        resumed._trainer = SimpleNamespace(ckpt_path="last.ckpt", state=SimpleNamespace(fn="fit"),
                                           checkpoint_callbacks=[], global_rank=0, world_size=1)
        resumed.on_load_checkpoint(checkpoint)  # no "other settings" error
        resumed._trainer = None


def fsdp_fit(checkpointing: bool, root) -> dict:
    """One step of the tiny LaVIN under a one-process AdapterFSDPStrategy (gloo); its adapters."""
    import lightning as L

    from lavin_lightning.strategies import AdapterFSDPStrategy

    module = build("lavin", False)
    module.global_batch_size = 3
    batch = batch_for(module)
    strategy = AdapterFSDPStrategy(frozen_dtype=None, activation_checkpointing=checkpointing,
                                   process_group_backend="gloo")
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=root)
    torch.manual_seed(0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    layers = [m for m in module.modules() if type(m).__name__.endswith("LlamaDecoderLayer")]
    assert layers and all(m.gradient_checkpointing == checkpointing for m in layers)
    assert module.activation_checkpointing == checkpointing
    return {k: p.detach().clone() for k, p in module._trainable.items()}


def test_fsdp_strategy_option_is_the_model_option(tmp_path):
    """AdapterFSDPStrategy(activation_checkpointing=True) switches the model's blocks (one process,
    gloo), and a step trains the same adapters as without it. Run in a child process: a process
    group and autograd's threads left in this one would break later tests that fork."""
    script = (
        "import sys, torch\n"
        f"sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO)!r}]\n"
        "from test_activation_checkpointing import fsdp_fit\n"
        f"plain, checkpointed = fsdp_fit(False, {str(tmp_path)!r}), fsdp_fit(True, {str(tmp_path)!r})\n"
        "assert plain and all(torch.equal(checkpointed[k], v) for k, v in plain.items())\n"
        "print('same adapters:', len(plain))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same adapters:" in done.stdout


def test_memory_benchmark_measures_a_tiny_run(capsys):
    """benchmarks/memory.py's measurement and report, in this process, on the tiny backbones."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import memory
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    runs = [memory.measure(variant, llm="tiny", batch=2, seq=16, steps=2, checkpointing=ac)
            for variant in ("lora", "full") for ac in (False, True)]
    for run in runs:
        assert run["peak_mib"] >= run["built_mib"] > 0 and run["step_peak_mib"] >= 0
    assert runs[0]["trainable"] < runs[2]["trainable"] == runs[2]["params"]
    summary = memory.report(runs)
    assert set(summary) == {"lora"} and summary["lora"]["compared_with"] == "full"
    assert "lora" in capsys.readouterr().out
