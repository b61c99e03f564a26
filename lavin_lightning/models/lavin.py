"""LaVIN: Mixture-of-Modality Adaptation of a frozen LLaMA and a frozen ViT.

One sample becomes the LLM input (spec section 1)

    image-text: [t_m, BOS, tok("Image: "),   X'(n visual slots), prompt + answer, EOS]
    text-only:  [t_m, BOS, tok("Image: N/A"),                     prompt + answer, EOS]

where t_m is the modality embedding (row 1 for image-text, 0 for text-only) and X' the
visual neck's projection of the ViT's [CLS] tokens after every k-th layer. The mask hides
t_m from every later token; the LLM's MM-Adapters route on its normalised hidden state.
Batches are right-padded after the content; padded keys are masked, so the same layout
serves training, cached decoding and uncached decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from lavin_lightning.adapters.core import match_modules, wrap_norms
from lavin_lightning.adapters.mma import (
    MMAConfig,
    ModalityEmbedding,
    VisualNeck,
    make_llm_adapter,
    make_vision_adapter,
    routing_cache,
)
from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm, load_tokenizer
from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder
from lavin_lightning.errors import ConfigError
from lavin_lightning.metrics.scienceqa import extract_answer
from lavin_lightning.models.base import OptimConfig, PEFTModule

IGNORE_INDEX = -100
LLM_NORMS = {"attn": r"model\.layers\.(\d+)\.input_layernorm", "ffn": r"model\.layers\.(\d+)\.post_attention_layernorm"}


@dataclass
class GenerationConfig:
    """Decoding at test/predict time (defaults: the LaVIN release).

    Args:
        max_new_tokens: generation budget per sample.
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling threshold.
        seed: seed of the sampling generator (per test run, so runs repeat).
    """

    max_new_tokens: int = 64
    temperature: float = 0.1
    top_p: float = 0.75
    seed: int = 0


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (B,): greedy at temperature 0, else nucleus sampling as the release."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


class LaVINModel(nn.Module):
    """Frozen LLaMA + frozen ViT with MM-Adapters, visual neck and modality token."""

    def __init__(self, llm: nn.Module, vision: nn.Module | None, config: MMAConfig, tokenizer,
                 image_prefix: str = "Image: ", text_prefix: str = "Image: N/A"):
        super().__init__()
        self.config = config
        self.llm = llm
        self.vision = vision
        width = llm.config.hidden_size
        placements = ["attn"] + (["ffn"] if config.llm_placement == "block" else [])
        for where in placements:
            wrap_norms(llm, match_modules(llm, LLM_NORMS[where]), lambda c: make_llm_adapter(config, c))
        if vision is not None:
            if config.vision_adapter != "none":
                wrap_norms(vision, vision.block_norm_names("attn"), lambda c: make_vision_adapter(config, c))
            self.neck = VisualNeck(vision.width, width, config.neck_dim)
        self.modality = ModalityEmbedding(width) if config.modality_token else None
        # tokenizer=None builds the shapes only (parameter counts on the meta device).
        self.bos_id = tokenizer.bos_token_id if tokenizer is not None else None
        self.eos_id = tokenizer.eos_token_id if tokenizer is not None else None
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        self.pad_id = pad if pad is not None else self.eos_id

        def encode(text: str) -> torch.Tensor:
            ids = tokenizer(text, add_special_tokens=False).input_ids if tokenizer is not None else []
            return torch.tensor(ids, dtype=torch.long)

        self.register_buffer("image_prefix_ids", encode(image_prefix), persistent=False)
        self.register_buffer("text_prefix_ids", encode(text_prefix), persistent=False)

    @property
    def num_visual_tokens(self) -> int:
        return self.vision.num_feature_tokens if self.vision is not None else 0

    # -- input assembly ---------------------------------------------------------------
    def build_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(embeds (B,T,C), valid keys (B,T) bool, labels (B,T) or None), right-padded."""
        input_ids, text_mask = batch["input_ids"], batch["attention_mask"].bool()
        has_image = batch["has_image"].bool()
        labels = batch.get("labels")
        embed = self.llm.get_input_embeddings()
        token_embeds = embed(input_ids)
        visual = None
        if has_image.any():
            if self.vision is None:
                raise ConfigError("batch has images but this LaVIN model has no vision encoder")
            # The frozen ViT runs only on samples that have an image.
            features = self.vision.cls_features(batch["pixel_values"][has_image].to(self._vision_dtype()))
            visual = self.neck(features.to(self.neck.up.weight.dtype)).to(token_embeds.dtype)
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

    def _vision_dtype(self) -> torch.dtype:
        return next(self.vision.parameters()).dtype

    def attention_mask(self, valid: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
        """Float mask (B,1,Q,K) for the last Q of K positions: causal, no padded keys, and
        (with a modality token) no later token sees position 0. Every query sees itself,
        so no row is empty."""
        keys = valid.shape[1]
        q_index = torch.arange(keys - num_queries, keys, device=valid.device)[:, None]
        k_index = torch.arange(keys, device=valid.device)[None, :]
        allowed = (k_index <= q_index) & valid[:, None, :]
        if self.modality is not None:
            allowed &= ~((k_index == 0) & (q_index > 0))
        allowed |= k_index == q_index
        mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def _run_llm(self, embeds, valid, position_ids, num_queries, past=None, input_ids=None):
        mask = self.attention_mask(valid, num_queries, embeds.dtype if embeds is not None else self._llm_dtype())
        return self.llm.model(
            inputs_embeds=embeds, input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
            past_key_values=past, use_cache=past is not None,
        ).last_hidden_state

    def _llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # -- training ---------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        """Next-token cross-entropy on the answer tokens; logits only where supervised."""
        embeds, valid, labels = self.build_inputs(batch)
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        hidden = self._run_llm(embeds, valid, positions, embeds.shape[1])
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][supervised])
        return F.cross_entropy(logits.float(), targets[supervised])

    # -- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, config: GenerationConfig, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """New token ids per sample (EOS and what follows removed)."""
        embeds, valid, _ = self.build_inputs(batch)
        batch_size = embeds.shape[0]
        lengths = valid.sum(dim=1)
        finished = torch.zeros(batch_size, dtype=torch.bool, device=embeds.device)
        out: list[torch.Tensor] = []
        with routing_cache(self.llm):
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(batch_size, -1)
            past = DynamicCache(config=self.llm.config) if use_cache else None
            hidden = self._run_llm(embeds, valid, positions, embeds.shape[1], past=past)
            last = hidden[torch.arange(batch_size), lengths - 1]
            for step in range(config.max_new_tokens):
                token = sample_top_p(self.llm.lm_head(last), config.temperature, config.top_p, generator)
                token = token.masked_fill(finished, self.pad_id)
                out.append(token)
                finished |= token == self.eos_id
                if finished.all() or step == config.max_new_tokens - 1:
                    break
                valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
                new_pos = (lengths + step)[:, None]
                if use_cache:
                    last = self._run_llm(None, valid, new_pos, 1, past=past, input_ids=token[:, None])[:, -1]
                else:
                    embeds = torch.cat([embeds, self.llm.get_input_embeddings()(token)[:, None]], dim=1)
                    positions = torch.cat([positions, new_pos], dim=1)
                    last = self._run_llm(embeds, valid, positions, embeds.shape[1])[:, -1]
        tokens = torch.stack(out, dim=1).tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in tokens]


class LaVIN(PEFTModule):
    """LaVIN (Luo et al., NeurIPS 2023) as a LightningModule.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder; None for a text-only model.
        adapter: Mixture-of-Modality Adaptation settings.
        optim: optimizer and schedule.
        generation: decoding at test/predict time.
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
        image_prefix: text before the visual slots of image-text samples.
        text_prefix: text in their place for text-only samples.
        unparsed_answers: "unparsed" records generations without a valid answer as such
            (scored wrong); "random" picks a random option, as the release does.
    """

    method = "lavin"

    def __init__(
        self,
        llm: LLMSpec,
        vision: VisionSpec | None = None,
        adapter: MMAConfig | None = None,
        optim: OptimConfig | None = None,
        generation: GenerationConfig | None = None,
        adapter_path: str | None = None,
        image_prefix: str = "Image: ",
        text_prefix: str = "Image: N/A",
        unparsed_answers: str = "unparsed",
    ):
        super().__init__(optim)
        if unparsed_answers not in ("unparsed", "random"):
            raise ConfigError(f"unparsed_answers must be 'unparsed' or 'random', got {unparsed_answers!r}")
        self.llm_spec = llm
        self.vision_spec = vision
        self.mma = adapter or MMAConfig()
        self.generation = generation or GenerationConfig()
        self.adapter_path = adapter_path
        self.image_prefix, self.text_prefix = image_prefix, text_prefix
        self.unparsed_answers = unparsed_answers
        self._tokenizer = None
        self._sampling_generator = self._fallback_generator = None
        self.save_hyperparameters()

    @property
    def tokenizer(self):
        """Loaded on first use, so building a config (or counting on meta) reads no files."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.llm_spec)
        return self._tokenizer

    def build_model(self) -> LaVINModel:
        counting_only = torch.get_default_device().type == "meta"
        llm = load_causal_lm(self.llm_spec)
        vision = build_vision_encoder(self.vision_spec) if self.vision_spec is not None else None
        tokenizer = None if counting_only else self.tokenizer
        return LaVINModel(llm, vision, self.mma, tokenizer, self.image_prefix, self.text_prefix)

    def configure_model(self) -> None:
        first = self.model is None
        super().configure_model()
        if first and self.adapter_path:
            from lavin_lightning.checkpoint import load_adapter

            load_adapter(self, self.adapter_path)

    def adapter_meta(self) -> dict:
        from lavin_lightning.checkpoint import backbone_record

        return {**super().adapter_meta(), "config": asdict(self.mma),
                "image_prefix": self.image_prefix, "text_prefix": self.text_prefix,
                "backbone": backbone_record(self)}

    # -- steps ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["pids"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.model.loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["pids"]))
        return loss

    def _generator(self) -> torch.Generator:
        if self._sampling_generator is None:
            self._sampling_generator = torch.Generator(device=self.device).manual_seed(self.generation.seed)
        return self._sampling_generator

    def _cpu_generator(self) -> torch.Generator:
        if self._fallback_generator is None:
            self._fallback_generator = torch.Generator().manual_seed(self.generation.seed)
        return self._fallback_generator

    def on_test_epoch_start(self) -> None:
        # Every test run samples the same way: seeded generators, reset per run.
        self._sampling_generator = self._fallback_generator = None

    on_predict_epoch_start = on_test_epoch_start

    def generate_text(self, batch: dict) -> list[str]:
        ids = self.model.generate(batch, self.generation, generator=self._generator())
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def test_step(self, batch, batch_idx):
        texts = self.generate_text(batch)
        preds = [extract_answer(t, int(n)) for t, n in zip(texts, batch["n_choices"])]
        guessed = [False] * len(preds)
        if self.unparsed_answers == "random":  # the release's fallback, opt-in only
            for i, n in enumerate(batch["n_choices"]):
                if preds[i] is None:
                    preds[i] = int(torch.randint(int(n), (1,), generator=self._cpu_generator()))
                    guessed[i] = True
        return {"pids": list(batch["pids"]), "texts": texts, "preds": preds, "guessed": guessed}

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return {"pids": list(batch["pids"]), "texts": self.generate_text(batch)}
