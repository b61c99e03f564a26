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
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

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

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Decoding at test/predict/chat time (defaults: the LaVIN, LLaMA-Adapter and Excitor releases).

    Args:
        max_new_tokens: generation budget per sample.
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling threshold.
        seed: seed of the sampling generator(s) (per test run, so runs repeat).
        streams: where sampling draws its randomness. "sample": every sample from a generator
            of its own, seeded with (seed, pid), so that a sample's text does not depend on its
            batch, its place in the split, the number of processes or when other samples stop;
            "run": one generator per test/predict run, consumed batch after batch (a sample's
            draws then depend on every batch before it, as with the releases' single stream).
        compact: decode only the rows that still run: once at most half of a batch's rows are
            still generating, they continue as a smaller batch (re-encoded by one forward over
            prompt + tokens so far). Used only where it changes no text: rows that generate
            independently of each other (`AdaptedCausalLM.batch_dependence`) and greedy
            decoding or per-sample streams. False keeps every row in its batch to the end.
        full_budget: a batch decodes all `max_new_tokens` steps even after every row has ended,
            as the releases' decoding loop does (it has no early exit). The texts are the same
            (a row's tokens end at its EOS) and nothing is compacted; only the cost is the
            releases', which benchmarks/scienceqa_eval.py measures the faster ways against.
    """

    max_new_tokens: int = 64
    temperature: float = 0.1
    top_p: float = 0.75
    seed: int = 0
    streams: Literal["sample", "run"] = "sample"
    compact: bool = True
    full_budget: bool = False

    def __post_init__(self):
        if self.streams not in ("sample", "run"):
            raise ConfigError(f"generation.streams must be 'sample' or 'run', got {self.streams!r}")


class StopRule(Protocol):
    """Decides, per running row, that a generation's outcome is settled (`AdaptedCausalLM.generate`).

    Called after every decoding step with the new token ids of each row that still runs (EOS
    never among them) and how many more tokens the budget allows; returns one bool per row:
    True stops that row there. A rule must only stop a row whose outcome the tokens it would
    still generate cannot change, so that stopping changes no result (e.g. ScienceQA's: its
    answer has been written, or can no longer be written in the tokens left).
    """

    def __call__(self, generated: Sequence[Sequence[int]], remaining: int) -> Sequence[bool]: ...


def sample_generators(seed: int, keys: Sequence[str]) -> list[torch.Generator]:
    """One CPU generator per key (a sample's pid), seeded from (seed, key): a sample's draws do
    not depend on which other samples share its batch."""
    generators = []
    for key in keys:
        digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1)))
    return generators


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float,
                 generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Next tokens (B,): greedy at temperature 0, else nucleus sampling as the releases do.

    `generator`: one generator for the batch (torch.multinomial, as the releases draw), or one
    per row: each row then draws one uniform number from its own and takes the token where it
    falls in the nucleus' cumulative distribution."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != logits.shape[0]:
            raise ConfigError(f"{len(generator)} generators for {logits.shape[0]} rows")
        uniform = torch.stack([torch.rand((), generator=g) for g in generator]).to(logits.device)
        cdf = sorted_probs.cumsum(dim=-1)
        # The first token whose cumulative mass exceeds u * mass: never one outside the nucleus.
        choice = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
        return order.gather(-1, choice.clamp_(max=cdf.shape[-1] - 1)).squeeze(-1)
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
    def batch_dependence(self) -> list[str]:
        """Why a row's generation depends on the other rows of its batch; empty when every row
        generates as it would alone (then batches may be composed, ordered and shrunk freely).

        Found by probing `decoding_positions` (does a row's position depend on the other rows'
        prompt lengths?); a method with other such behaviour extends this."""
        reasons = []
        # Row 0's prompt of 6 tokens, its 5th position, beside a row as long or shorter.
        index = torch.tensor([[4], [4]])
        alone = self.decoding_positions(index, torch.tensor([6, 6]))
        mixed = self.decoding_positions(index, torch.tensor([6, 2]))
        if not torch.equal(alone[0], mixed[0]):
            reasons.append("decoding positions depend on the batch's prompt lengths (decode_positions: release)")
        return reasons

    @torch.no_grad()
    def generate(self, batch: dict, config: GenerationConfig, use_cache: bool = True,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 on_token: Callable[[torch.Tensor], None] | None = None,
                 stop: StopRule | None = None, compact: bool = False) -> list[list[int]]:
        """New token ids per sample (EOS and what follows removed).

        Args:
            generator: one generator for the whole batch, or one per row (see `sample_top_p`).
            on_token: receives the (B,) tokens of every step as they are sampled (streaming);
                rows that no longer run show the pad id.
            stop: a `StopRule`, asked after every step about the rows still running; a row it
                stops keeps the tokens up to and including that step.
            compact: once at most half of the rows still run (and at least two steps are
                left), continue with those rows alone, re-encoded from their prompt and tokens
                so far; needs rows that generate independently (`batch_dependence`) and, when
                sampling, one generator per row, so that no row's tokens change.
        """
        rows = batch["input_ids"].shape[0]
        per_row = generator is not None and not isinstance(generator, torch.Generator)
        if per_row and len(generator) != rows:
            raise ConfigError(f"{len(generator)} generators for a batch of {rows}")
        if compact:
            reasons = self.batch_dependence()
            if reasons:
                raise ConfigError("compact decoding needs rows that generate independently; here " + "; ".join(reasons))
            if config.temperature > 0 and not per_row:
                raise ConfigError("compact decoding with sampling needs one generator per row (generation.streams: "
                                  "sample): a shared generator's draws depend on the batch's size")
        generated: list[list[int]] = [[] for _ in range(rows)]
        running, step, part = list(range(rows)), 0, batch
        while running and step < config.max_new_tokens:
            if step:  # a smaller batch of the rows still running: prompt + their tokens so far
                part = self._continuation(batch, running, generated)
            generators = [generator[r] for r in running] if per_row else generator
            running, step = self._decode(part, running, step, generated, config, use_cache, generators, on_token,
                                         stop, compact, rows)
        return generated

    def _decode(self, batch, rows, step, generated, config, use_cache, generator, on_token, stop, compact,
                batch_size) -> tuple[list[int], int]:
        """Decode `batch` (whose rows are the rows `rows` of the whole batch, after `step` steps)
        until every row has stopped or, with `compact`, until at most half of them still run.
        Appends each row's tokens to `generated`; returns the rows still running and the step."""
        inputs = self.attention_inputs(batch)
        with self.conditioning(batch), self.decoding():
            embeds, valid, _ = self.prepare(batch)
            size = embeds.shape[0]
            lengths = valid.sum(dim=1)
            running = torch.ones(size, dtype=torch.bool, device=embeds.device)
            positions = torch.arange(embeds.shape[1], device=embeds.device).expand(size, -1)
            positions = self.decoding_positions(positions, lengths)
            past = DynamicCache(config=self.llm.config) if use_cache else None
            hidden = self.run_llm(embeds, valid, positions, embeds.shape[1], past=past, attention_inputs=inputs)
            last = hidden[torch.arange(size), lengths - 1]
            for local in range(config.max_new_tokens - step):
                token = sample_top_p(self.llm.lm_head(last), config.temperature, config.top_p, generator)
                token = token.masked_fill(~running, self.pad_id)
                if on_token is not None:
                    shown = token if size == batch_size else token.new_full((batch_size,), self.pad_id).index_copy(
                        0, torch.tensor(rows, device=token.device), token)
                    on_token(shown)
                ended = token == self.eos_id
                for j, (value, runs, eos) in enumerate(zip(token.tolist(), running.tolist(), ended.tolist())):
                    if runs and not eos:
                        generated[rows[j]].append(value)
                running &= ~ended
                remaining = config.max_new_tokens - (step + local + 1)
                if stop is not None and remaining > 0 and bool(running.any()):
                    open_rows = running.nonzero().squeeze(-1).tolist()
                    settled = stop([generated[rows[j]] for j in open_rows], remaining)
                    for j, done in zip(open_rows, settled, strict=True):
                        if done:
                            running[j] = False
                n_running = int(running.sum())
                if (n_running == 0 and not config.full_budget) or remaining == 0:
                    return [], step + local + 1
                if compact and not config.full_budget and n_running <= size // 2 and remaining >= 2:
                    return [rows[j] for j in running.nonzero().squeeze(-1).tolist()], step + local + 1
                # Right padding: the new token goes after the longest row; shorter rows keep
                # their own positions and mask their padding.
                valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
                new_pos = self.decoding_positions((lengths + local)[:, None], lengths)
                if use_cache:
                    last = self.run_llm(None, valid, new_pos, 1, past=past, input_ids=token[:, None],
                                        attention_inputs=inputs)[:, -1]
                else:
                    embeds = torch.cat([embeds, self.llm.get_input_embeddings()(token)[:, None]], dim=1)
                    positions = torch.cat([positions, new_pos], dim=1)
                    last = self.run_llm(embeds, valid, positions, embeds.shape[1], attention_inputs=inputs)[:, -1]
        return [], config.max_new_tokens

    def _continuation(self, batch: dict, rows: list[int], generated: list[list[int]]) -> dict:
        """The rows `rows` of `batch`, each prompt followed by its tokens so far (right-padded)."""
        size = batch["input_ids"].shape[0]
        part = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
                part[key] = value[torch.tensor(rows, device=value.device)]
            elif isinstance(value, (list, tuple)) and len(value) == size:
                part[key] = [value[r] for r in rows]
            else:
                part[key] = value
        part.pop("labels", None)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        ids = [batch["input_ids"][r, : lengths[r]].tolist() + generated[r] for r in rows]
        width = max(map(len, ids))
        device = batch["input_ids"].device
        part["input_ids"] = torch.tensor([row + [self.pad_id] * (width - len(row)) for row in ids], device=device)
        part["attention_mask"] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids],
                                              dtype=batch["attention_mask"].dtype, device=device)
        return part

    # -- scoring candidate continuations ------------------------------------------------
    @torch.no_grad()
    def score_candidates(self, batch: dict) -> list[list[float]]:
        """Log-likelihood (float64 sums) of each of every prompt's candidate continuations.

        `batch` holds generation prompts (BOS + prompt, right-padded) and `candidates`: per
        prompt, a list of token id lists. A prompt's candidates are packed after it in one row:
        the tokens they all begin with once (e.g. "The answer is"), then the rest of each, which
        attends to the prompt, the shared tokens and itself only, at the positions it would have
        right after them. One forward scores them all: the same sums as `sequence_logprobs` on
        rows "prompt + candidate", up to floating point. Needs a `prepare` that keeps the text
        tokens at the end of each row (methods insert before them).
        """
        candidates = batch["candidates"]
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        ids, layouts = [], []
        for b, options in enumerate(candidates):
            if not options or any(len(c) == 0 for c in options):
                raise ConfigError(f"sample {b} of the batch has no candidates or an empty one")
            shared = 0
            while shared < min(map(len, options)) and len({c[shared] for c in options}) == 1:
                shared += 1
            ids.append(batch["input_ids"][b, : lengths[b]].tolist() + list(options[0][:shared])
                       + [t for c in options for t in c[shared:]])
            layouts.append((shared, shared + sum(len(c) - shared for c in options)))
        width = max(map(len, ids))
        device = batch["input_ids"].device
        packed = {**batch,
                  "input_ids": torch.tensor([r + [self.pad_id] * (width - len(r)) for r in ids], device=device),
                  "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=device)}
        packed.pop("labels", None)
        inputs = self.attention_inputs(packed)
        with self.conditioning(packed):
            embeds, valid, _ = self.prepare(packed)
            size, total = valid.shape
            segment = torch.zeros(size, total, dtype=torch.long, device=device)
            positions = torch.arange(total, device=device).expand(size, -1).clone()
            predecessor, targets, owner = [], [], []  # owner: the candidate, or -1 for a shared token
            for b, options in enumerate(candidates):
                shared, packed_length = layouts[b]
                start = int(valid[b].sum()) - packed_length  # the first candidate token's place
                if start < 1:
                    raise ConfigError(f"{type(self).__name__}.prepare does not keep the text at the end of its rows")
                # Token j is predicted at the place before it: the prompt's last (j = 0), a shared
                # token or the candidate's own previous token.
                predecessor += [(b, start - 1 + j) for j in range(shared)]
                targets += list(options[0][:shared])
                owner += [(b, -1)] * shared
                offset = start + shared
                for c, option in enumerate(options):
                    rest = len(option) - shared
                    segment[b, offset: offset + rest] = c + 1
                    positions[b, offset: offset + rest] = torch.arange(start + shared, start + len(option),
                                                                       device=device)
                    if rest:
                        predecessor += [(b, start + shared - 1)] + [(b, offset + j) for j in range(rest - 1)]
                    targets += list(option[shared:])
                    owner += [(b, c)] * rest
                    offset += rest
            mask = self.attention_mask(valid, total, embeds.dtype)
            other = (segment[:, None, :] != segment[:, :, None]) & (segment[:, None, :] > 0)
            mask = mask.masked_fill(other[:, None], torch.finfo(mask.dtype).min)
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                    use_cache=False, **inputs).last_hidden_state
        at = torch.tensor(predecessor, device=device)
        logits = self.llm.lm_head(hidden[at[:, 0], at[:, 1]]).float()
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(targets, device=device)[:, None])
        scores = [[0.0] * len(options) for options in candidates]
        for (b, c), value in zip(owner, token_logprobs.squeeze(-1).double().tolist(), strict=True):
            for k in range(len(scores[b])) if c < 0 else (c,):
                scores[b][k] += value
        return scores


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
        allow_backbone_mismatch: load `adapter_path` although it was trained on other frozen
            weights of the same architecture (its fingerprint differs).
        activation_checkpointing: recompute the backbones' block activations in backward
            (`PEFTModule`'s; less memory, one more forward pass, the same gradients).
    """

    model_class: type[AdaptedCausalLM] = AdaptedCausalLM

    def __init__(self, llm: LLMSpec, vision: VisionSpec | None = None, optim: OptimConfig | None = None,
                 generation: GenerationConfig | None = None, adapter_path: str | None = None,
                 global_batch_size: int | None = None, allow_backbone_mismatch: bool = False,
                 activation_checkpointing: bool = False):
        super().__init__(optim, adapter_path, global_batch_size, allow_backbone_mismatch,
                         activation_checkpointing)
        self.llm_spec = llm
        self.vision_spec = vision
        self.generation = generation or GenerationConfig()
        self._tokenizer = None
        self._sampling_generator = None
        self._stop_rule: StopRule | None = None
        self._warned_stop = False

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

    def batch_dependence(self) -> list[str]:
        """Why a test/predict generation depends on the batch it is in (empty: it does not, and
        the data module may order and compose evaluation batches freely, e.g. by length)."""
        reasons = list(self.model.batch_dependence()) if self.model is not None else []
        config = self.generation
        if config.temperature > 0 and config.streams == "run":
            reasons.append("sampling draws from one stream per run (generation.streams: run)")
        return reasons

    def set_stop_rule(self, rule: StopRule | None) -> None:
        """The `StopRule` of the test run's generations (the task's scoring callback sets it at the
        start of a test run and removes it at the end); None: generate the full budget."""
        self._stop_rule = rule

    def generate_text(self, batch: dict, config: GenerationConfig | None = None,
                      on_token: Callable[[torch.Tensor], None] | None = None, stop: StopRule | None = None,
                      per_sample: bool = False) -> list[str]:
        """The generated continuation of every prompt of `batch`.

        per_sample: with `config.streams` "sample", sample each row from its own generator
        (seeded with the seed and the row's pid; test and predict runs do); otherwise from the
        module's one generator (reset per run). Rows are compacted (`GenerationConfig.compact`)
        and `stop` applied only where that changes no text."""
        config = config or self.generation
        sampling = config.temperature > 0
        rows_apart = per_sample and config.streams == "sample"
        generator = None
        if sampling:
            pids = batch.get("pids") or [str(i) for i in range(batch["input_ids"].shape[0])]
            generator = sample_generators(config.seed, pids) if rows_apart else self._generator()
        exact = not sampling or rows_apart  # a row's tokens do not depend on when the batch ends
        if stop is not None and not exact:
            if not self._warned_stop:
                log.warning("not stopping generations early: with generation.streams 'run' and sampling, stopping "
                            "one batch early would change the draws of every later one")
                self._warned_stop = True
            stop = None
        compact = config.compact and exact and not self.model.batch_dependence()
        ids = self.model.generate(batch, config, generator=generator, on_token=on_token, stop=stop, compact=compact)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def choose_candidates(self, batch: dict) -> dict:
        """Answer by scoring: every prompt's candidate continuations (`batch["candidates"]`) by
        log-likelihood; the text is the decoded best one (the first of equal ones)."""
        scores = self.model.score_candidates(batch)
        texts = []
        for options, values in zip(batch["candidates"], scores, strict=True):
            best = max(range(len(values)), key=lambda c: (values[c], -c))
            texts.append(self.tokenizer.decode(options[best], skip_special_tokens=True))
        return {"pids": list(batch["pids"]), "texts": texts, "scores": scores}

    def test_step(self, batch, batch_idx):
        """Generated texts (or, for a batch with `candidates`, the best-scoring candidate); the
        task's scoring callback reads the answers out of them."""
        if "candidates" in batch:
            return self.choose_candidates(batch)
        return {"pids": list(batch["pids"]),
                "texts": self.generate_text(batch, stop=self._stop_rule, per_sample=True)}

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return {"pids": list(batch["pids"]), "texts": self.generate_text(batch, per_sample=True)}
