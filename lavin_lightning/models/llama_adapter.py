"""LLaMA-Adapter v1 as a LightningModule (text, and multimodal with a vision encoder)."""

from __future__ import annotations

import contextlib

from torch import nn

from lavin_lightning.adapters.llama_adapter import (
    AdaptionPrompt,
    LlamaAdapterConfig,
    VisualPromptBias,
    inject_llama_adapter,
)
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig, adapters_holding


class LlamaAdapterModel(AdaptedCausalLM):
    """Frozen LLaMA with zero-init attention prompts; with a ViT, image features join the prompts."""

    def __init__(self, llm: nn.Module, tokenizer, config: LlamaAdapterConfig, vision: nn.Module | None = None):
        super().__init__(llm, tokenizer, vision)
        inject_llama_adapter(llm, config)
        if vision is not None:
            self.visual_bias = VisualPromptBias(vision.width, vision.num_feature_tokens, llm.config.hidden_size)

    def conditioning(self, batch: dict) -> contextlib.AbstractContextManager:
        pixels = self.image_pixels(batch)
        if pixels is None:
            return contextlib.nullcontext()
        bias = self.visual_bias(self.vision.cls_features(pixels), batch["has_image"].bool())
        prompts = [m for m in self.llm.modules() if isinstance(m, AdaptionPrompt)]
        return adapters_holding(prompts, "visual", bias)


class LlamaAdapter(CausalLMModule):
    """LLaMA-Adapter v1 (Zhang et al., 2023) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder (multimodal v1); None for the text model.
        adapter: prompt length, layers and init.
        optim: optimizer and schedule (defaults: the release, base lr 9e-3).
        generation: decoding at test/predict time (temperature 0.1, top-p 0.75).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
    """

    method = "llama_adapter"

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, adapter: LlamaAdapterConfig | None = None,
                 optim: OptimConfig | None = None, generation: GenerationConfig | None = None,
                 adapter_path: str | None = None):
        super().__init__(llm, vision, optim, generation, adapter_path)
        self.adapter = adapter or LlamaAdapterConfig()
        self.save_hyperparameters()

    def build_adapted(self, llm, vision, tokenizer) -> LlamaAdapterModel:
        return LlamaAdapterModel(llm, tokenizer, self.adapter, vision)
