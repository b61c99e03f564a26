"""Shared fixtures: tiny offline backbones and the location of the shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

# No hub look-ups and no W&B account in tests: set before transformers/wandb import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The public reference samples live beside the repository; tests skip when absent.
REFERENCE_DATA = REPO.parent / "shared" / "reference-data"


def tiny_lavin(**adapter_kwargs):
    """A configured tiny LaVIN: 2-layer LLaMA (width 64) + 2-layer CLIP ViT (width 32)."""
    from lavin_lightning.adapters.mma import MMAConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.backbones.vision import VisionSpec
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.lavin import LaVIN

    adapter_kwargs.setdefault("dropout", 0.0)
    module = LaVIN(
        llm=LLMSpec(config="tiny"),
        vision=VisionSpec(kind="clip", config="tiny", cls_every=1),
        adapter=MMAConfig(**adapter_kwargs),
        optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0),
    )
    module.configure_model()
    return module


@pytest.fixture
def make_tiny_lavin():
    def make(seed: int = 0, **adapter_kwargs):
        torch.manual_seed(seed)
        return tiny_lavin(**adapter_kwargs)

    return make
