"""LLaMA-Adapter v1 as a LightningModule (text, and multimodal with a vision encoder)."""

from __future__ import annotations

import torch

from lavin_lightning.adapters import llama_adapter
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.llama_adapter import VISUAL_KWARG, LlamaAdapterConfig
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule


class LlamaAdapterModel(AdaptedCausalLM):
    """Frozen LLaMA with zero-init attention prompts; with a ViT, image features join the prompts."""

    def attention_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        pixels = self.image_pixels(batch)
        if pixels is None:
            return {}
        return {VISUAL_KWARG: self.visual_bias(self.vision.cls_features(pixels), batch["has_image"].bool())}


class LlamaAdapter(CausalLMModule):
    """LLaMA-Adapter v1 (Zhang et al., 2023) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder (multimodal v1); None for the text model.
        adapter: prompt length, layers and init.
        **kwargs: `CausalLMModule`'s (optim: the release's base lr 9e-3 is the default;
            generation: temperature 0.1, top-p 0.75; adapter_path; global_batch_size).
    """

    method = "llama_adapter"
    model_class = LlamaAdapterModel

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, adapter: LlamaAdapterConfig | None = None,
                 **kwargs):
        super().__init__(llm, vision, **kwargs)
        self.adapter = adapter or LlamaAdapterConfig()
        self.save_hyperparameters()

    def inject(self, model: LlamaAdapterModel) -> Injection:
        return llama_adapter.inject(model, self.adapter)
