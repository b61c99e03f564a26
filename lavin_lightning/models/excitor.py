"""LLaMA-Excitor as a LightningModule (text, and multimodal with a vision encoder)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lavin_lightning.adapters.excitor import ExcitorBlock, ExcitorConfig, inject_excitor
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig, adapters_holding


class ExcitorModel(AdaptedCausalLM):
    """Frozen LLaMA with Excitor blocks; with a ViT, its tokens become extra Excitor keys/values."""

    def __init__(self, llm: nn.Module, tokenizer, config: ExcitorConfig, vision: nn.Module | None = None):
        super().__init__(llm, tokenizer, vision)
        inject_excitor(llm, config, vision.token_width if vision is not None else None)

    def conditioning(self, batch: dict) -> contextlib.AbstractContextManager:
        pixels = self.image_pixels(batch)
        if pixels is None:
            return contextlib.nullcontext()
        # Samples without an image get zero tokens, masked inside the Excitor softmax.
        has_image = batch["has_image"].bool()
        features = self.vision.token_features(pixels)
        tokens = features.new_zeros(has_image.shape[0], *features.shape[1:])
        tokens[has_image] = features
        blocks = [m for m in self.llm.modules() if isinstance(m, ExcitorBlock)]
        return adapters_holding(blocks, "visual", (tokens, has_image))


class Excitor(CausalLMModule):
    """LLaMA-Excitor (Zou et al., CVPR 2024) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder (multimodal Excitor: CLIP with `projection: true`
            gives the paper's D = 768 tokens); None for the text model.
        adapter: Excitor settings (prompt length, rank, gate init, scaling, RoPE, heads).
        optim: optimizer and schedule (the paper: LLaMA-Adapter's, base lr 9e-3).
        generation: decoding at test/predict time (temperature 0.1, top-p 0.75).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "excitor"

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, adapter: ExcitorConfig | None = None,
                 optim: OptimConfig | None = None, generation: GenerationConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(llm, vision, optim, generation, adapter_path)
        self.adapter = adapter or ExcitorConfig()
        self.save_hyperparameters()

    def build_adapted(self, llm, vision, tokenizer) -> ExcitorModel:
        return ExcitorModel(llm, tokenizer, self.adapter, vision)

    @torch.no_grad()
    def zero_gates(self) -> None:
        """Set every gate to zero: the model is then the backbone exactly."""
        for block in self.model.modules():
            if isinstance(block, ExcitorBlock):
                block.gate.zero_()
