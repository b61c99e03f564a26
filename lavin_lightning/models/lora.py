"""LoRA (through peft) as a LightningModule; the updates are merged for inference."""

from __future__ import annotations

from torch import nn

from lavin_lightning.adapters.lora import LoRAConfig, inject_lora, merge_lora, unmerge_lora
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig


class LoRAModel(AdaptedCausalLM):
    """Frozen LLaMA with peft LoRA layers (text only)."""

    def __init__(self, llm: nn.Module, tokenizer, config: LoRAConfig):
        super().__init__(llm, tokenizer)
        inject_lora(llm, config)


class LoRA(CausalLMModule):
    """LoRA (Hu et al., 2022) baseline through `peft`.

    Args:
        llm: the frozen language model (LLaMA family).
        adapter: rank, alpha, dropout and target modules.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (temperature 0.1, top-p 0.75).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
        merge_for_inference: fold the updates into the frozen weights for predict (and
            chat), so decoding costs what the backbone costs; unmerged afterwards.
    """

    method = "lora"

    def __init__(self, llm: LLMSpec, adapter: LoRAConfig | None = None, optim: OptimConfig | None = None,
                 generation: GenerationConfig | None = None, adapter_path: str | None = None,
                 merge_for_inference: bool = True):
        super().__init__(llm, None, optim, generation, adapter_path)
        self.adapter = adapter or LoRAConfig()
        self.merge_for_inference = merge_for_inference
        self.save_hyperparameters()

    def build_adapted(self, llm, vision, tokenizer) -> LoRAModel:
        return LoRAModel(llm, tokenizer, self.adapter)

    def on_predict_start(self) -> None:
        if self.merge_for_inference:
            merge_lora(self.model)

    def on_predict_end(self) -> None:
        unmerge_lora(self.model)
