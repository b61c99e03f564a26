"""AdamW groups, learning-rate scaling and the warmup + half-cycle cosine schedule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from lavin_lightning.errors import ConfigError
from lavin_lightning.models.base import OptimConfig, warmup_cosine


def test_schedule_matches_the_release_formula():
    lr, warmup, total = 1.125e-3, 10, 100
    assert warmup_cosine(0, warmup, total, lr, 0.0) == 0.0  # the release's first step uses lr 0
    assert warmup_cosine(5, warmup, total, lr, 0.0) == pytest.approx(lr / 2)
    assert warmup_cosine(10, warmup, total, lr, 0.0) == pytest.approx(lr)
    assert warmup_cosine(55, warmup, total, lr, 0.0) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, warmup, total, lr, 1e-5) == pytest.approx(1e-5)


def test_optimizer_groups_lr_scaling_and_schedule(make_tiny_lavin):
    module = make_tiny_lavin()
    module.optim = OptimConfig(base_lr=9e-3, weight_decay=0.02, warmup_epochs=2)
    module.global_batch_size = 32
    module._trainer = SimpleNamespace(estimated_stepping_batches=200, max_epochs=20)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["lr"] == pytest.approx(9e-3 * 32 / 256)  # 1.125e-3
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(module._trainable)
    assert config["lr_scheduler"]["interval"] == "step"
    assert schedule.get_last_lr()[0] == 0.0
    for _ in range(20):  # 2 warmup epochs of 10 steps
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(1.125e-3)

    module.optim = OptimConfig(base_lr=None, lr=None)
    with pytest.raises(ConfigError, match="optim.lr"):
        module.configure_optimizers()
    module.optim, module.global_batch_size = OptimConfig(base_lr=9e-3), None  # a base lr needs the global batch
    with pytest.raises(ConfigError, match="global_batch_size"):
        module.configure_optimizers()
