"""LoRA (through peft) as a LightningModule; the updates are merged for inference."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from lavin_lightning.adapters import lora
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.lora import LoRAConfig, check_mergeable, merged
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule

log = logging.getLogger(__name__)


class LoRA(CausalLMModule):
    """LoRA (Hu et al., 2022) baseline through `peft`.

    Args:
        llm: the frozen language model (LLaMA family).
        adapter: rank, alpha, dropout and target modules.
        merge_for_inference: fold the updates into the frozen weights for test, predict and
            chat, with peft's layers swapped for the merged base layers meanwhile, so decoding
            costs what the backbone costs; put back and unmerged afterwards. Over a
            quantized backbone (llm.quantization) nothing merges exactly: LoRA then runs
            unmerged, with a warning.
        **kwargs: `CausalLMModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "lora"

    def __init__(self, llm: LLMSpec, adapter: LoRAConfig | None = None, merge_for_inference: bool = True,
                 **kwargs):
        super().__init__(llm, **kwargs)
        self.adapter = adapter or LoRAConfig()
        self.merge_for_inference = merge_for_inference
        self.save_hyperparameters()

    def inject(self, model: AdaptedCausalLM) -> Injection:
        return lora.inject(model, self.adapter)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        if not self.merge_for_inference:
            yield
            return
        try:
            check_mergeable(self.model)
        except ConfigError as err:  # quantized frozen weights: a merge would not be exact
            log.warning("LoRA not merged for inference, decoding with the updates unmerged: %s", err)
            yield
            return
        with merged(self.model):
            yield
