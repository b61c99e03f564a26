"""What every method built on a frozen causal LM shares: inputs, loss, log-likelihoods, decoding.

`AdaptedCausalLM` is the nn.Module side: a frozen LLaMA-family model (plus, for multimodal
methods, a frozen vision encoder) into which a method has injected its adapters. Batches
follow one contract (`lavin_lightning.batch`): right-padded `input_ids` that start with BOS,
`attention_mask`, optional `labels` (-100 where unsupervised, not shifted), `pixel_values`
and `has_image`. The LLM always receives an explicit 4D float mask, so every method runs
the same attention arithmetic as the base model and "identity at init" can be exact.

`CausalLMModule` is the LightningModule side: tokenizer, backbones, training and validation
loss, generated text for test and predict (the task's scoring callback reads the answers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from lavin_lightning.adapters.core import decoding_cache
from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm, load_tokenizer
from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.base import OptimConfig, PEFTModule


@dataclass
class GenerationConfig:
    """Decoding at test/predict/chat time (defaults: the LaVIN, LLaMA-Adapter and Excitor releases).

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
    """Next tokens (B,): greedy at temperature 0, else nucleus sampling as the releases do."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


class AdaptedCausalLM(nn.Module):
    """A frozen causal LM (`llm`) and optionally a frozen ViT (`vision`), into which a method's
    `inject` puts its adapters.

    Hooks for methods that change how a batch reaches the LLM: `prepare` (token embeddings ->
    the LLM's input rows), `attention_inputs` (per-batch keyword arguments that the LLM's
    forward hands to every attention function: the explicit path for per-batch inputs such as
    image features), `conditioning` (per-batch state for seams that have no such path, held
    for one forward or one whole generation), `decoding` (caches that live for one
    generation) and `attention_mask` (extra masking rules).
    """

    def __init__(self, llm: nn.Module, tokenizer, vision: nn.Module | None = None):
        super().__init__()
        self.llm = llm
        self.vision = vision
        # tokenizer=None builds the shapes only (parameter counts on the meta device).
        self.bos_id = tokenizer.bos_token_id if tokenizer is not None else None
        self.eos_id = tokenizer.eos_token_id if tokenizer is not None else None
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        self.pad_id = pad if pad is not None else self.eos_id

    # -- hooks ------------------------------------------------------------------------
    def prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(embeds (B,T,C), valid keys (B,T) bool, labels (B,T) or None), right-padded."""
        embeds = self.llm.get_input_embeddings()(batch["input_ids"])
        return embeds, batch["attention_mask"].bool(), batch.get("labels")

    def attention_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Keyword arguments for the LLM's forward passes of `batch`, which transformers hands
        on to every attention function (default: none)."""
        self.image_pixels(batch)  # refuses images without a vision encoder
        return {}

    def conditioning(self, batch: dict) -> contextlib.AbstractContextManager:
        """State that adapters without a keyword path read during `batch` (default: none)."""
        return contextlib.nullcontext()

    def image_pixels(self, batch: dict) -> torch.Tensor | None:
        """Pixels of the samples that have an image (the frozen ViT runs on those only), in
        the ViT's dtype; None when the batch has no image."""
        has_image = batch.get("has_image")
        if has_image is None or not bool(has_image.any()):
            return None
        if self.vision is None:
            raise ConfigError(f"the batch has images but this {type(self).__name__} has no vision encoder; "
                              "configure `vision` or give text-only inputs")
        return batch["pixel_values"][has_image.bool()].to(next(self.vision.parameters()).dtype)

    def decoding(self) -> contextlib.AbstractContextManager:
        """Caches valid for one generation (prefill + decode steps)."""
        return decoding_cache(self)

    def decoding_positions(self, index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Position ids of the sequence positions `index` during generation, given the rows'
        prompt lengths (default: the positions the model was trained with)."""
        return index

    def attention_mask(self, valid: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
        """Float mask (B,1,Q,K) for the last Q of K positions: causal and no padded keys.
        Every query sees itself, so no row is empty (padding rows stay finite)."""
        return _float_mask(self._allowed(valid, num_queries), dtype)

    def _allowed(self, valid: torch.Tensor, num_queries: int) -> torch.Tensor:
        keys = valid.shape[1]
        q_index = torch.arange(keys - num_queries, keys, device=valid.device)[:, None]
        k_index = torch.arange(keys, device=valid.device)[None, :]
        return ((k_index <= q_index) & valid[:, None, :]) | (k_index == q_index)

    # -- running the LLM --------------------------------------------------------------
    def _llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def run_llm(self, embeds, valid, position_ids, num_queries, past=None, input_ids=None,
                attention_inputs: dict | None = None) -> torch.Tensor:
        dtype = embeds.dtype if embeds is not None else self._llm_dtype()
        return self.llm.model(
            inputs_embeds=embeds, input_ids=input_ids, attention_mask=self.attention_mask(valid, num_queries, dtype),
            position_ids=position_ids, cache=past, use_cache=past is not None, **(attention_inputs or {}),
        ).last_hidden_state

    def _supervised_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits only where a label is set (the LM head over every position costs a lot
        and nobody reads it): (logits (N,V), targets (N,), row index (N,))."""
        inputs = self.attention_inputs(batch)
        with self.conditioning(batch):
            embeds, valid, labels = self.prepare(batch)
            if labels is None:
                raise ConfigError("this batch has no `labels`; loss and log-likelihoods need them")
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
            hidden = self.run_llm(embeds, valid, positions, embeds.shape[1], attention_inputs=inputs)
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[supervised]
        return self.llm.lm_head(hidden[:, :-1][supervised]).float(), targets[supervised], rows

    def loss(self, batch: dict) -> torch.Tensor:
        """Next-token cross-entropy over the supervised tokens of the batch."""
        logits, targets, _ = self._supervised_logits(batch)
        return F.cross_entropy(logits, targets)

    def sequence_logprobs(self, batch: dict) -> torch.Tensor:
        """(B,) sum of log p(token) over each row's labelled tokens (multiple-choice scoring)."""
        logits, targets, rows = self._supervised_logits(batch)
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        # Summed in float64: long continuations would otherwise differ with batch composition.
        sums = torch.zeros(batch["input_ids"].shape[0], dtype=torch.float64, device=logits.device)
        return sums.index_add(0, rows, token_logprobs.double())

    # -- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, config: GenerationConfig, use_cache: bool = True,
                 generator: torch.Generator | None = None,
                 on_token: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
        """New token ids per sample (EOS and what follows removed). `on_token` receives the
        (B,) tokens of every step as they are sampled (streaming)."""
        inputs = self.attention_inputs(batch)
        with self.conditioning(batch), self.decoding():
            embeds, valid, _ = self.prepare(batch)
            batch_size = embeds.shape[0]
            lengths = valid.sum(dim=1)
            finished = torch.zeros(batch_size, dtype=torch.bool, device=embeds.device)
            out: list[torch.Tensor] = []
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(batch_size, -1)
            positions = self.decoding_positions(positions, lengths)
            past = DynamicCache(config=self.llm.config) if use_cache else None
            hidden = self.run_llm(embeds, valid, positions, embeds.shape[1], past=past, attention_inputs=inputs)
            last = hidden[torch.arange(batch_size), lengths - 1]
            for step in range(config.max_new_tokens):
                token = sample_top_p(self.llm.lm_head(last), config.temperature, config.top_p, generator)
                token = token.masked_fill(finished, self.pad_id)
                out.append(token)
                if on_token is not None:
                    on_token(token)
                finished |= token == self.eos_id
                if finished.all() or step == config.max_new_tokens - 1:
                    break
                # Right padding: the new token goes after the longest row; shorter rows keep
                # their own positions and mask their padding.
                valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
                new_pos = self.decoding_positions((lengths + step)[:, None], lengths)
                if use_cache:
                    last = self.run_llm(None, valid, new_pos, 1, past=past, input_ids=token[:, None],
                                        attention_inputs=inputs)[:, -1]
                else:
                    embeds = torch.cat([embeds, self.llm.get_input_embeddings()(token)[:, None]], dim=1)
                    positions = torch.cat([positions, new_pos], dim=1)
                    last = self.run_llm(embeds, valid, positions, embeds.shape[1], attention_inputs=inputs)[:, -1]
        tokens = torch.stack(out, dim=1).tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in tokens]


def _float_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class CausalLMModule(PEFTModule):
    """LightningModule of a method over a frozen causal LM (and optionally a frozen ViT).

    A method sets `method`, keeps its settings in `self.adapter` (a dataclass), implements
    `inject(model)` and, if it changes how a batch reaches the LLM, sets `model_class` to its
    `AdaptedCausalLM` subclass. Its `__init__` takes its own arguments and hands the rest
    (`**kwargs`) to this one, whose arguments the command line then offers too.

    Args:
        llm: the frozen language model (LLaMA family).
        vision: the frozen image encoder; None for a text-only model.
        optim: optimizer and schedule.
        generation: decoding at test/predict time.
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
        global_batch_size: samples per optimizer step over all devices, for `optim.base_lr`
            (filled in from the data module by `lavin-lightning`).
    """

    model_class: type[AdaptedCausalLM] = AdaptedCausalLM

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, optim: OptimConfig | None = None,
                 generation: GenerationConfig | None = None, adapter_path: str | None = None,
                 global_batch_size: int | None = None):
        super().__init__(optim, adapter_path, global_batch_size)
        self.llm_spec = llm
        self.vision_spec = vision
        self.generation = generation or GenerationConfig()
        self._tokenizer = None
        self._sampling_generator = None

    @property
    def tokenizer(self):
        """Loaded on first use, so building a config (or counting on meta) reads no files."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.llm_spec)
        return self._tokenizer

    def model_options(self) -> dict:
        """Keyword arguments of `model_class` beyond (llm, tokenizer, vision)."""
        return {}

    def build_model(self) -> AdaptedCausalLM:
        counting_only = torch.get_default_device().type == "meta"
        llm = load_causal_lm(self.llm_spec)
        vision = build_vision_encoder(self.vision_spec) if self.vision_spec is not None else None
        return self.model_class(llm, None if counting_only else self.tokenizer, vision, **self.model_options())

    def backbones(self) -> dict[str, tuple[str, nn.Module]]:
        roles = {"llm": (self.llm_spec, self.model.llm), "vision": (self.vision_spec, self.model.vision)}
        return {role: (spec.backbone_id, module) for role, (spec, module) in roles.items() if module is not None}

    # -- steps ------------------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.model.loss(batch)}

    def _generator(self) -> torch.Generator:
        if self._sampling_generator is None:
            self._sampling_generator = torch.Generator(device=self.device).manual_seed(self.generation.seed)
        return self._sampling_generator

    def on_test_epoch_start(self) -> None:
        # Every test run samples the same way: seeded generators, reset per run.
        self._sampling_generator = None

    on_predict_epoch_start = on_test_epoch_start

    def generate_text(self, batch: dict, config: GenerationConfig | None = None,
                      on_token: Callable[[torch.Tensor], None] | None = None) -> list[str]:
        ids = self.model.generate(batch, config or self.generation, generator=self._generator(), on_token=on_token)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

