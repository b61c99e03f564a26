"""LLaMA-Excitor as a LightningModule (text, and multimodal with a vision encoder)."""

from __future__ import annotations

import contextlib
import functools

import torch

from lavin_lightning.adapters import excitor
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.excitor import ExcitorBlock, ExcitorConfig
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.models.base import held_for_forward
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule


class ExcitorModel(AdaptedCausalLM):
    """Frozen LLaMA with Excitor blocks; with a ViT, its tokens become extra Excitor keys/values."""

    def conditioning(self, batch: dict) -> contextlib.AbstractContextManager:
        pixels = self.image_pixels(batch)
        if pixels is None:
            return contextlib.nullcontext()
        # Samples without an image get zero tokens, masked inside the Excitor softmax.
        has_image = batch["has_image"].bool()
        features = self.vision.token_features(pixels)
        tokens = features.new_zeros(has_image.shape[0], *features.shape[1:])
        tokens[has_image] = features
        # Held so that activation checkpointing's recomputation in backward sees them too.
        return held_for_forward(functools.partial(excitor.image_tokens, self.llm, tokens, has_image))


class Excitor(CausalLMModule):
    """LLaMA-Excitor (Zou et al., CVPR 2024) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder (multimodal Excitor: CLIP with `projection: true`
            gives the paper's D = 768 tokens); None for the text model.
        adapter: Excitor settings (prompt length, rank, gate init, scaling, RoPE, heads).
        **kwargs: `CausalLMModule`'s (optim: the paper uses LLaMA-Adapter's, base lr 9e-3;
            generation: temperature 0.1, top-p 0.75; adapter_path; global_batch_size).
    """

    method = "excitor"
    model_class = ExcitorModel

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, adapter: ExcitorConfig | None = None,
                 **kwargs):
        super().__init__(llm, vision, **kwargs)
        self.adapter = adapter or ExcitorConfig()
        self.save_hyperparameters()

    def inject(self, model: ExcitorModel) -> Injection:
        return excitor.inject(model, self.adapter)

    @torch.no_grad()
    def zero_gates(self) -> None:
        """Set every gate to zero: the model is then the backbone exactly."""
        for block in self.model.modules():
            if isinstance(block, ExcitorBlock):
                block.gate.zero_()
