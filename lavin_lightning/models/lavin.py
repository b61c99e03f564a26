"""LaVIN: Mixture-of-Modality Adaptation of a frozen LLaMA and a frozen ViT.

One sample becomes the LLM input (spec section 1)

    image-text: [t_m, BOS, tok("Image: "),   X'(n visual slots), prompt + answer, EOS]
    text-only:  [t_m, BOS, tok("Image: N/A"),                     prompt + answer, EOS]

where t_m is the modality embedding (row 1 for image-text, 0 for text-only) and X' the
visual neck's projection of the ViT's [CLS] tokens after every k-th layer. The mask hides
t_m from every later token; the LLM's MM-Adapters route on its normalised hidden state.
Batches are right-padded after the content; padded keys are masked, so the same layout
serves training, cached decoding and uncached decoding.

Two behaviours of the release's evaluation are options (docs/faithfulness.md): its ViT runs
on every sample of a batch when its visual routers read row 0 (`vision_routing: release`),
and its decoding positions (`decode_positions: release`).

For inference (test, predict, chat) the LLM's MM-Adapters fold into the frozen q/k/v (and,
with `llm_placement: block`, gate/up) weights once per modality (`fold`): the modality token's
hidden state, which the routers read, depends on the modality only (it attends to itself), so
each adapter has exactly two routings, and an adapter is linear at inference.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import torch
from torch import nn

from lavin_lightning.adapters import mma
from lavin_lightning.adapters.core import Injection
from lavin_lightning.adapters.mma import Folding, MMAConfig, RepAdapterRouter, modality_rows, routing_cache
from lavin_lightning.backbones.llama import LLMSpec
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, _float_mask

log = logging.getLogger(__name__)


class LaVINModel(AdaptedCausalLM):
    """Frozen LLaMA + frozen ViT; `mma.inject` adds the MM-Adapters, the visual neck (`neck`)
    and the modality token (`modality`, None without one)."""

    def __init__(self, llm: nn.Module, tokenizer, vision: nn.Module | None = None,
                 image_prefix: str = "Image: ", text_prefix: str = "Image: N/A",
                 vision_on_every_sample: bool = False, decode_positions: str = "training"):
        super().__init__(llm, tokenizer, vision)
        self.modality: nn.Module | None = None
        self.vision_on_every_sample = vision_on_every_sample
        self.decode_positions = decode_positions
        self.folding: Folding | None = None  # the MM-Adapters folded into the LLM's weights (inference)

        def encode(text: str) -> torch.Tensor:
            ids = tokenizer(text, add_special_tokens=False).input_ids if tokenizer is not None else []
            return torch.tensor(ids, dtype=torch.long)

        self.register_buffer("image_prefix_ids", encode(image_prefix), persistent=False)
        self.register_buffer("text_prefix_ids", encode(text_prefix), persistent=False)

    @property
    def num_visual_tokens(self) -> int:
        return self.vision.num_feature_tokens if self.vision is not None else 0

    # -- input assembly ---------------------------------------------------------------
    def prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(embeds (B,T,C), valid keys (B,T) bool, labels (B,T) or None), right-padded."""
        input_ids, text_mask = batch["input_ids"], batch["attention_mask"].bool()
        has_image = batch["has_image"].bool()
        labels = batch.get("labels")
        embed = self.llm.get_input_embeddings()
        token_embeds = embed(input_ids)
        visual = None
        pixels = self.image_pixels(batch)
        if pixels is not None:
            if self.vision_on_every_sample:  # text-only samples as their all-zero images
                pixels = batch["pixel_values"].to(pixels.dtype)
            features = self.vision.cls_features(pixels)
            visual = self.neck(features.to(self.neck.up.weight.dtype)).to(token_embeds.dtype)
            if self.vision_on_every_sample:
                visual = visual[has_image]
        lead = 1 if self.bos_id is not None else 0  # the prefix goes right after BOS
        rows, row_labels = [], []
        image_row = 0
        for b in range(input_ids.shape[0]):
            n = int(text_mask[b].sum())
            if has_image[b]:
                inserted = [embed(self.image_prefix_ids), visual[image_row]]
                image_row += 1
            else:
                inserted = [embed(self.text_prefix_ids)]
            head = [self.modality(has_image[b : b + 1]).to(token_embeds.dtype)] if self.modality is not None else []
            rows.append(torch.cat(head + [token_embeds[b, :lead]] + inserted + [token_embeds[b, lead:n]]))
            if labels is not None:
                # Only answer tokens (and EOS) count: modality token, BOS, prefix and visual
                # slots are ignored.
                n_ignored = len(head) + lead + sum(part.shape[0] for part in inserted)
                row_labels.append(torch.cat([labels.new_full((n_ignored,), IGNORE_INDEX), labels[b, lead:n]]))
        length = max(r.shape[0] for r in rows)
        embeds = token_embeds.new_zeros(len(rows), length, token_embeds.shape[-1])
        valid = torch.zeros(len(rows), length, dtype=torch.bool, device=input_ids.device)
        out_labels = None if labels is None else torch.full((len(rows), length), IGNORE_INDEX,
                                                            dtype=labels.dtype, device=labels.device)
        for b, row in enumerate(rows):
            embeds[b, : row.shape[0]] = row
            valid[b, : row.shape[0]] = True
            if out_labels is not None:
                out_labels[b, : row.shape[0]] = row_labels[b]
        return embeds, valid, out_labels

    def conditioning(self, batch: dict) -> contextlib.AbstractContextManager:
        # Images enter as tokens (prepare); folded adapters need each row's modality.
        return modality_rows(self.folding, batch["has_image"].bool()) if self.folding else contextlib.nullcontext()

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the LLM's MM-Adapters into its frozen weights, per modality (eval mode only)."""
        if self.folding is not None:
            return
        mma.check_foldable(self.llm)  # before anything runs (a sharded model must not be run here)
        routers = {name: m.adapter for name, m in self.llm.named_modules()
                   if isinstance(getattr(m, "adapter", None), RepAdapterRouter)}
        for router in routers.values():
            router.recorded = []
        try:
            embed = self.llm.get_input_embeddings()
            for has_image in (False, True):  # the routers read position 0: the modality token (or BOS)
                if self.modality is not None:
                    first = self.modality(torch.tensor([has_image], device=embed.weight.device))
                else:
                    first = embed(torch.tensor([self.bos_id], device=embed.weight.device))
                one = torch.ones(1, 1, dtype=torch.bool, device=first.device)
                self.run_llm(first[None].to(embed.weight.dtype), one, torch.zeros_like(one, dtype=torch.long), 1)
            routing = {name: torch.cat([w.reshape(1, 2) for w in router.recorded]) for name, router in routers.items()}
        finally:
            for router in routers.values():
                router.recorded = None
        self.folding = mma.fold(self.llm, routing)

    def unfold(self) -> None:
        """Put the LLM back as it was (adapters applied after the norms)."""
        if self.folding is not None:
            self.folding.unfold()
            self.folding = None

    def decoding(self) -> contextlib.AbstractContextManager:
        return routing_cache(self.llm)

    def batch_dependence(self) -> list[str]:
        reasons = super().batch_dependence()
        if self.vision_on_every_sample:
            reasons.append("the ViT's routers read row 0 of the batch (vision_routing: release)")
        return reasons

    def decoding_positions(self, index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """"release": the release's KV cache drops the modality token after the prefill of the
        shortest prompt, so every later position (longer prompts' tails, new tokens) is one lower."""
        if self.decode_positions == "training":
            return index
        return torch.where(index < lengths.min(), index, index - 1)

    def attention_mask(self, valid: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
        """Causal, no padded keys, and (with a modality token) no later token sees position 0."""
        allowed = self._allowed(valid, num_queries)
        if self.modality is not None:
            keys = valid.shape[1]
            q_index = torch.arange(keys - num_queries, keys, device=valid.device)[:, None]
            k_index = torch.arange(keys, device=valid.device)[None, :]
            allowed &= ~((k_index == 0) & (q_index > 0))
        return _float_mask(allowed, dtype)


class LaVIN(CausalLMModule):
    """LaVIN (Luo et al., NeurIPS 2023) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder; None for a text-only model.
        adapter: Mixture-of-Modality Adaptation settings.
        image_prefix: text before the visual slots of image-text samples.
        text_prefix: text in their place for text-only samples.
        decode_positions: "training": generated tokens take the positions they would have in
            training; "release": the release's evaluation, where each position after the
            batch's shortest prompt is one lower (its cache drops the modality token).
        fold_for_inference: fold the LLM's MM-Adapters into the frozen weights for test,
            predict and chat (the same outputs to float precision, at the backbone's cost);
            unfolded afterwards.
        **kwargs: `CausalLMModule`'s (optim, generation, adapter_path, global_batch_size).
    """

    method = "lavin"
    model_class = LaVINModel

    def __init__(
        self,
        llm: LLMSpec,
        vision: VisionSpec | None = None,
        adapter: MMAConfig | None = None,
        image_prefix: str = "Image: ",
        text_prefix: str = "Image: N/A",
        decode_positions: Literal["training", "release"] = "training",
        fold_for_inference: bool = True,
        **kwargs,
    ):
        super().__init__(llm, vision, **kwargs)
        self.adapter = adapter or MMAConfig()
        if decode_positions not in ("training", "release"):
            raise ConfigError(f"decode_positions must be 'training' or 'release', got {decode_positions!r}")
        if decode_positions == "release" and not self.adapter.modality_token:
            raise ConfigError("decode_positions 'release' shifts positions for the modality token the release's "
                              "cache drops; this model has none (adapter.modality_token: false)")
        self.image_prefix, self.text_prefix = image_prefix, text_prefix
        self.decode_positions = decode_positions
        self.fold_for_inference = fold_for_inference
        self.save_hyperparameters()

    def model_options(self) -> dict:
        return {"image_prefix": self.image_prefix, "text_prefix": self.text_prefix,
                "vision_on_every_sample": self.adapter.vision_adapter == "router"
                and self.adapter.vision_routing == "release",
                "decode_positions": self.decode_positions}

    def inject(self, model: LaVINModel) -> Injection:
        return mma.inject(model, self.adapter)

    @contextlib.contextmanager
    def inference(self):
        if not self.fold_for_inference:
            yield
            return
        try:
            self.model.fold()
        except ConfigError as err:  # sharded (FSDP) or quantized frozen weights: nothing folds exactly
            log.warning("MM-Adapters not folded for inference, running them as in training: %s", err)
            yield
            return
        try:
            yield
        finally:
            self.model.unfold()

    def adapter_meta(self) -> dict:
        return {**super().adapter_meta(), "image_prefix": self.image_prefix, "text_prefix": self.text_prefix}
