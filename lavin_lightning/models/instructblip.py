"""What every method on a frozen InstructBLIP shares (PETAL and its baselines).

`AdaptedInstructBLIP` runs the unmodified transformers model the way LAVIS does: the ViT
and the Q-Former (with the instruction as its text input) give the query features, which
are projected and put in front of the LM's input embeddings. A FlanT5 LM reads them with
the prompt in its encoder and is trained on the answer in its decoder; a decoder-only LM
(Vicuna/LLaMA) reads [queries ; prompt ; answer] and is trained on the answer. Generation
is transformers' own `generate` (beam search by default, as the PETAL release).

Batches are the data modules' usual ones (prompt + answer rows, ``labels`` marking the
answer), plus ``instruction_input_ids`` / ``instruction_attention_mask`` (the Q-Former's
text), which they add when the model has an ``instruction_tokenizer``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_instructblip, load_tokenizers
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.base import OptimConfig, PEFTModule


@dataclass
class BeamSearchConfig:
    """Decoding at test/predict time (defaults: the PETAL release's VQA settings; its caption
    configs use max_new_tokens 50, min_new_tokens 6, length_penalty 1.0).

    Args:
        num_beams: beam width (1 = greedy).
        max_new_tokens: generation budget per sample.
        min_new_tokens: tokens generated before EOS is allowed.
        length_penalty: beam-score exponent on length (negative favours short answers).
        repetition_penalty: CTRL-style penalty on repeated tokens (1.0 = none).
    """

    num_beams: int = 5
    max_new_tokens: int = 10
    min_new_tokens: int = 1
    length_penalty: float = -1.0
    repetition_penalty: float = 1.5

    def __post_init__(self):
        if self.num_beams < 1 or self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"BeamSearchConfig needs num_beams, max_new_tokens >= 1 and "
                              f"0 <= min_new_tokens <= max_new_tokens, got {self}")


class QueryFeatures(NamedTuple):
    image_tokens: torch.Tensor  # (B, N, D_vision): the ViT's output (X of the IB loss)
    query_tokens: torch.Tensor  # (B, Q, D_qformer): the Q-Former's query outputs (Z)
    projected: torch.Tensor  # (B, Q, D_lm): what the LM reads


class AdaptedInstructBLIP(nn.Module):
    """A frozen InstructBLIP (`backbone`) whose adapters are injected by a method's module."""

    def __init__(self, backbone: nn.Module, tokenizer):
        super().__init__()
        self.backbone = backbone
        self.decoder_only = bool(backbone.config.use_decoder_only_language_model)
        self.num_queries = backbone.config.num_query_tokens
        lm_config = backbone.config.text_config
        self.eos_id = tokenizer.eos_token_id if tokenizer is not None else lm_config.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer is not None else lm_config.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id

    @property
    def language_model(self) -> nn.Module:
        return self.backbone.language_model

    def instruction_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The Q-Former's attention mask over the instruction tokens; a method that inserts
        tokens into that stream widens it (default: as given)."""
        return mask

    def features(self, batch: dict) -> QueryFeatures:
        ids = batch.get("instruction_input_ids")
        if ids is None:
            raise ConfigError("InstructBLIP batches need instruction_input_ids (the Q-Former's text): the data "
                              "module adds them when the model has an instruction_tokenizer; use a VQA or "
                              "caption data module, or set its instruction_tokenizer")
        mask = self.instruction_mask(batch["instruction_attention_mask"])
        vision_dtype = self.backbone.vision_model.embeddings.patch_embedding.weight.dtype
        out = self.backbone.get_image_features(
            batch["pixel_values"].to(vision_dtype), qformer_input_ids=ids, qformer_attention_mask=mask,
            return_dict=True)
        queries = out.qformer_outputs.last_hidden_state[:, : self.num_queries]
        return QueryFeatures(out.vision_outputs.last_hidden_state, queries, out.pooler_output)

    # -- rows -----------------------------------------------------------------------
    def _rows(self, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per sample (prompt ids, answer ids or None), cut at the first supervised label."""
        rows = []
        labels = batch.get("labels")
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            ids = batch["input_ids"][i, :n]
            if labels is None:
                rows.append((ids, None))
                continue
            supervised = (labels[i, :n] != IGNORE_INDEX).nonzero()
            cut = int(supervised[0]) if len(supervised) else n
            rows.append((ids[:cut], ids[cut:]))
        return rows

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def _lm_inputs(self, projected: torch.Tensor, rows: list, with_answer: bool, left_pad: bool):
        """[queries ; text] embeddings and mask, padded on one side; text = prompt (+ answer),
        or for a seq2seq LM the encoder prompt (+ EOS, as T5's tokenizer adds)."""
        eos = torch.tensor([self.eos_id], device=projected.device)
        texts = []
        for prompt, answer in rows:
            text = prompt
            if not self.decoder_only:
                text = torch.cat([prompt, eos])
            elif with_answer and answer is not None:
                text = torch.cat([prompt, answer])
            texts.append(text)
        width = max(len(t) for t in texts)
        dtype = self.language_model.get_input_embeddings().weight.dtype
        embeds = projected.new_zeros(len(texts), self.num_queries + width, projected.shape[-1], dtype=dtype)
        mask = torch.zeros(embeds.shape[:2], dtype=torch.long, device=projected.device)
        for i, text in enumerate(texts):
            n = self.num_queries + len(text)
            start = embeds.shape[1] - n if left_pad else 0
            embeds[i, start: start + self.num_queries] = projected[i].to(dtype)
            embeds[i, start + self.num_queries: start + n] = self._embed(text)
            mask[i, start: start + n] = 1
        return embeds, mask

    # -- loss -----------------------------------------------------------------------
    def loss(self, batch: dict, features: QueryFeatures | None = None) -> torch.Tensor:
        """Cross-entropy on the answer tokens (and their EOS)."""
        features = features or self.features(batch)
        rows = self._rows(batch)
        if any(answer is None or not len(answer) for _, answer in rows):
            raise ConfigError("training/validation rows need answers (labels)")
        embeds, mask = self._lm_inputs(features.projected, rows, with_answer=True, left_pad=False)
        if not self.decoder_only:
            targets = pad_sequence([a for _, a in rows], batch_first=True, padding_value=IGNORE_INDEX)
            return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=targets,
                                       use_cache=False).loss  # no decoding follows: no key/value cache
        hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # Logits only where an answer token is predicted (the position before it).
        positions, targets = [], []
        for i, (prompt, answer) in enumerate(rows):
            first = self.num_queries + len(prompt) - 1
            positions += [(i, first + j) for j in range(len(answer))]
            targets.append(answer)
        index = torch.tensor(positions, device=hidden.device)
        logits = self.language_model.lm_head(hidden[index[:, 0], index[:, 1]])
        return F.cross_entropy(logits.float(), torch.cat(targets))

    # -- generation -----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: dict, config: BeamSearchConfig) -> torch.Tensor:
        """Generated token ids (B, T) of the prompts' continuations."""
        features = self.features(batch)
        rows = [(prompt, None) for prompt, _ in self._rows(batch)]
        # A decoder-only LM continues the last position, so its rows are left-padded.
        embeds, mask = self._lm_inputs(features.projected, rows, with_answer=False, left_pad=self.decoder_only)
        with warnings.catch_warnings():
            # Expected, as in LAVIS: the penalty sees generated tokens only (the prompt is embeddings).
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
            return self.language_model.generate(
                inputs_embeds=embeds, attention_mask=mask, num_beams=config.num_beams, do_sample=False,
                max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens,
                length_penalty=config.length_penalty, repetition_penalty=config.repetition_penalty,
                eos_token_id=self.eos_id, pad_token_id=self.pad_id)


class InstructBLIPModule(PEFTModule):
    """LightningModule of a method over a frozen InstructBLIP.

    A method sets `method`, keeps its settings in `self.adapter` (a dataclass), implements
    `inject(model)` and, to add training terms, `extra_loss`; a method that changes how a
    batch reaches the Q-Former sets `model_class` to its `AdaptedInstructBLIP` subclass. Its
    `__init__` takes its own arguments and hands the rest (`**kwargs`) to this one.

    Args:
        backbone: the frozen InstructBLIP.
        optim: optimizer and schedule.
        generation: decoding at test/predict time (beam search).
        adapter_path: a directory with adapter.safetensors + adapter_config.json to load.
        global_batch_size: samples per optimizer step over all devices, for `optim.base_lr`
            (filled in from the data module by `lavin-lightning`).
        allow_backbone_mismatch: load `adapter_path` although it was trained on other frozen
            weights of the same architecture (its fingerprint differs).
        activation_checkpointing: recompute the backbones' block activations in backward
            (`PEFTModule`'s; less memory, one more forward pass, the same gradients).
    """

    model_class: type[AdaptedInstructBLIP] = AdaptedInstructBLIP

    def __init__(self, backbone: InstructBLIPSpec, optim: OptimConfig | None = None,
                 generation: BeamSearchConfig | None = None, adapter_path: str | None = None,
                 global_batch_size: int | None = None, allow_backbone_mismatch: bool = False,
                 activation_checkpointing: bool = False):
        super().__init__(optim, adapter_path, global_batch_size, allow_backbone_mismatch,
                         activation_checkpointing)
        self.backbone_spec = backbone
        self.generation = generation or BeamSearchConfig()
        self._tokenizers = None

    @property
    def tokenizer(self):
        """The LM's tokenizer, loaded on first use (building a config reads no files)."""
        if self._tokenizers is None:
            self._tokenizers = load_tokenizers(self.backbone_spec)
        return self._tokenizers[0]

    @property
    def instruction_tokenizer(self):
        """The Q-Former's tokenizer: data modules tokenise the instruction with it."""
        self.tokenizer  # noqa: B018 -- loads both
        return self._tokenizers[1]

    def build_model(self) -> AdaptedInstructBLIP:
        counting_only = torch.get_default_device().type == "meta"
        return self.model_class(load_instructblip(self.backbone_spec), None if counting_only else self.tokenizer)

    def backbones(self) -> dict[str, tuple[str, nn.Module]]:
        return {"instructblip": (self.backbone_spec.backbone_id, self.model.backbone)}

    # -- steps ----------------------------------------------------------------------
    def extra_loss(self, batch: dict, features: QueryFeatures) -> dict[str, torch.Tensor]:
        """Training terms added to the cross-entropy (name -> value); logged under train/."""
        return {}

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The cross-entropy ("ce") plus the method's extra terms; names starting with "info_" are
        logged only."""
        features = self.model.features(batch)
        ce = self.model.loss(batch, features)
        extras = self.extra_loss(batch, features)
        total = ce + sum(v for k, v in extras.items() if not k.startswith("info_"))
        return {"loss": total, "ce": ce, **extras}

    def generate_text(self, batch: dict, config: BeamSearchConfig | None = None) -> list[str]:
        ids = self.model.generate(batch, config or self.generation)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

