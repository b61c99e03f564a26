"""The method contract, one row per method: every method in the suite passes every column.

Columns: identity at init (or, for a method that cannot be, that it changes the outputs),
disabled == the frozen backbone, only adapter tensors change and all of them do (and they are
exactly what `inject` said it owns), an exact save/load round trip, cached == uncached and
batched == single generation, and a 4-step loss regression against recorded values (so that a
dependency upgrade that changes the numbers is caught). Rows use tiny backbones built from configs.

A new method adds one row to ROWS and its losses to recorded_losses.json (run this file
with `-k regression` once: a missing row fails with the losses to record).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lavin_lightning.adapters.bottleneck import BottleneckConfig
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.adapters.excitor import ExcitorConfig
from lavin_lightning.adapters.llama_adapter import LlamaAdapterConfig
from lavin_lightning.adapters.lora import LoRAConfig
from lavin_lightning.adapters.maple import MaPLeConfig
from lavin_lightning.adapters.mma import MMAConfig
from lavin_lightning.adapters.petal import PETALConfig
from lavin_lightning.adapters.qformer_tuning import QFormerTuningConfig
from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_instructblip
from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm
from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.checkpoint import load_adapter, save_adapter
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import AdaptedCausalLM, CausalLMModule, GenerationConfig
from lavin_lightning.models.excitor import Excitor
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig
from lavin_lightning.models.lavin import LaVIN
from lavin_lightning.models.llama_adapter import LlamaAdapter
from lavin_lightning.models.lora import LoRA
from lavin_lightning.models.maple import MaPLe
from lavin_lightning.models.petal import PETAL
from lavin_lightning.models.qformer_baselines import QFormerBottleneck, QFormerLoRA, QFormerTuning

TINY_LLM = LLMSpec(config="tiny")
TINY_CLIP = VisionSpec(kind="clip", config="tiny", cls_every=1)
TINY_CLIP_TOKENS = VisionSpec(kind="clip", config="tiny", cls_every=1, projection=True)
OPTIM = OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0)


@dataclass
class Row:
    """One method as the contract sees it."""

    method: type
    kwargs: dict = field(default_factory=dict)
    backbone: LLMSpec | InstructBLIPSpec = field(default_factory=lambda: TINY_LLM)
    # "init": the fresh model is the backbone; "zero_gates": after Excitor's zero_gates();
    # None: the method cannot be (extra tokens or fixed mixtures) and must change the outputs.
    identity: str | None = "init"
    # Trainable tensors no gradient can reach (full tuning: the Q-Former's last text-stream FFN,
    # whose output InstructBLIP discards); every other trainable tensor must change.
    no_gradient: frozenset = frozenset()

    @property
    def causal(self) -> bool:
        return issubclass(self.method, CausalLMModule)

    def build(self, seed: int = 0):
        torch.manual_seed(seed)  # the backbone first, then the adapters: both follow the seed
        if self.causal:
            module = self.method(self.backbone, optim=OPTIM, generation=GenerationConfig(max_new_tokens=5,
                                                                                       temperature=0.0),
                                 **self.kwargs)
        else:
            module = self.method(self.backbone, optim=OPTIM, generation=BeamSearchConfig(num_beams=2,
                                                                                       max_new_tokens=4),
                                 **self.kwargs)
        module.configure_model()
        return module.eval()


ROWS = {
    "lavin": Row(LaVIN, {"vision": TINY_CLIP, "adapter": MMAConfig(dropout=0.0)}),
    "excitor": Row(Excitor, {"adapter": ExcitorConfig(layers=2)}, identity="zero_gates"),
    "excitor-multimodal": Row(Excitor, {"vision": TINY_CLIP_TOKENS, "adapter": ExcitorConfig(layers=2)},
                              identity="zero_gates"),
    "llama_adapter": Row(LlamaAdapter, {"adapter": LlamaAdapterConfig(layers=2)}),
    "llama_adapter-multimodal": Row(LlamaAdapter, {"vision": TINY_CLIP, "adapter": LlamaAdapterConfig(layers=2)}),
    "lora": Row(LoRA, {"adapter": LoRAConfig(dropout=0.0, target_modules=["q_proj", "v_proj"])}),
    "petal": Row(PETAL, {"adapter": PETALConfig(dropout=0.0)}, InstructBLIPSpec(config="tiny-t5")),
    "petal-release": Row(PETAL, {"adapter": PETALConfig(experts="release", ssf=True, ib_weight=0.0, dropout=0.0)},
                         InstructBLIPSpec(config="tiny-llama"), identity=None),
    "qformer-full": Row(QFormerTuning, {"adapter": QFormerTuningConfig("full")}, InstructBLIPSpec(config="tiny-llama"),
                        no_gradient=frozenset(f"model.backbone.qformer.encoder.layer.1.{name}" for name in (
                            "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight",
                            "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"))),
    "qformer-head": Row(QFormerTuning, {"adapter": QFormerTuningConfig("head")}, InstructBLIPSpec(config="tiny-t5")),
    "qformer-lora": Row(QFormerLoRA, {"adapter": LoRAConfig(rank=4, alpha=4.0, dropout=0.0,
                                                           target_modules=["query", "value"])},
                        InstructBLIPSpec(config="tiny-llama")),
    "bottleneck": Row(QFormerBottleneck, {"adapter": BottleneckConfig(bottleneck=8)},
                      InstructBLIPSpec(config="tiny-llama")),
    "maple": Row(MaPLe, {"adapter": MaPLeConfig(depth=2)}, InstructBLIPSpec(config="tiny-llama"), identity=None),
}

# Losses of 4 AdamW steps (lr 1e-2, no weight decay) from seed 0 on `batch_for`'s batch, on the
# locked versions of requirements.lock.
RECORDED_LOSSES: dict[str, list[float]] = json.loads((Path(__file__).parent / "recorded_losses.json").read_text())

# --------------------------------------------------------------------------- batches

PROMPTS = [("Question: What colour is the square?\nResponse:", "The answer is A."),
           ("Question: Is it round?\nResponse:", "B"),
           ("Question: Which word is a colour, teal or three?\nResponse:", "The answer is teal.")]


def batch_for(module, labelled: bool = True, rows: list[int] | None = None) -> dict:
    """Right-padded rows of BOS + prompt (+ answer + EOS), the first and last with an image."""
    rows = list(range(len(PROMPTS))) if rows is None else rows
    tokenizer = module.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids, labels = [], []
    for i in rows:
        prompt, answer = PROMPTS[i]
        prompt_ids = bos + tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(prompt_ids + (answer_ids if labelled else []))
        labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(len(PROMPTS), 3, 32, 32, generator=generator)[rows]
    batch = {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids]),
             "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
             "pixel_values": pixels, "pids": [str(i) for i in rows]}
    if labelled:
        batch["labels"] = torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in labels])
    if isinstance(module, CausalLMModule):
        batch["has_image"] = torch.tensor([i != 1 for i in rows]) if module.vision_spec is not None \
            else torch.zeros(len(rows), dtype=torch.bool)
    else:
        instructions = module.instruction_tokenizer([PROMPTS[i][0] for i in rows])["input_ids"]
        length = max(map(len, instructions))
        batch["instruction_input_ids"] = torch.tensor([r + [0] * (length - len(r)) for r in instructions])
        batch["instruction_attention_mask"] = torch.tensor([[1] * len(r) + [0] * (length - len(r))
                                                            for r in instructions])
        batch["has_image"] = torch.ones(len(rows), dtype=torch.bool)
    return batch


# --------------------------------------------------------------------------- outputs


def outputs(model, batch: dict) -> torch.Tensor:
    """What the method computes on a labelled batch: per-row log-likelihoods of the answers
    (causal LMs), or the LM's input queries and the loss (InstructBLIP)."""
    with torch.no_grad():
        if isinstance(model, AdaptedInstructBLIP):
            return torch.cat([model.features(batch).projected.flatten(), model.loss(batch)[None]])
        return model.sequence_logprobs(batch)


def train(module, steps: int = 4) -> list[float]:
    module.train()
    # No weight decay: a tensor then changes only where a gradient reaches it.
    optimizer = torch.optim.AdamW(list(module._trainable.values()), lr=1e-2, weight_decay=0.0)
    batch = batch_for(module)
    losses = []
    for _ in range(steps):
        loss = module.training_losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def backbone_outputs(module, batch: dict, llm=None, vision=None) -> list[torch.Tensor]:
    """What the frozen backbone(s) compute on `batch`: for a causal LM the LLM's log-likelihoods
    of the text rows (through the suite's own input path, explicit mask included) and the
    ViT's features; for InstructBLIP the whole model's. `llm`/`vision` default to the module's."""
    with torch.no_grad():
        if not isinstance(module, CausalLMModule):
            return [outputs(module.model, batch)]
        text = {**batch, "has_image": torch.zeros_like(batch["has_image"])}
        found = [AdaptedCausalLM(llm or module.model.llm, module.tokenizer).sequence_logprobs(text)]
        vision = vision or module.model.vision
        if vision is not None:
            found += [vision.cls_features(batch["pixel_values"]), vision.token_features(batch["pixel_values"])]
        return found


def frozen_backbone_outputs(module, batch: dict, seed: int = 0) -> list[torch.Tensor]:
    """`backbone_outputs` of backbones built from the same seed as the module, never injected."""
    torch.manual_seed(seed)
    if isinstance(module, CausalLMModule):
        llm = load_causal_lm(module.llm_spec).eval()
        vision = build_vision_encoder(module.vision_spec).eval() if module.vision_spec is not None else None
        return backbone_outputs(module, batch, llm, vision)
    plain = AdaptedInstructBLIP(load_instructblip(module.backbone_spec), module.tokenizer).eval()
    return [outputs(plain, batch)]


def randomise(module, seed: int = 7) -> None:
    """Move every trainable tensor away from its (possibly identity) init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module._trainable.values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)


def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- the columns

rows = pytest.mark.parametrize("name", list(ROWS))


@rows
def test_identity_at_init(name):
    row = ROWS[name]
    module = row.build()
    if row.identity == "zero_gates":
        module.zero_gates()
    batch = batch_for(module)
    active = outputs(module.model, batch)
    with adapters_disabled(module.model):
        disabled = outputs(module.model, batch)
    if row.identity is None:
        assert not torch.allclose(active, disabled), f"{name} claims to change the outputs at init"
    else:
        assert torch.equal(active, disabled)


@rows
def test_disabled_adapters_are_the_frozen_backbone(name):
    row = ROWS[name]
    module = row.build()
    randomise(module)  # so that the adapters would show if they acted
    batch = batch_for(module)
    frozen = frozen_backbone_outputs(module, batch)
    assert not identical(backbone_outputs(module, batch), frozen)  # the adapters act ...
    if module.injection.trained:  # full / head tuning trains the backbone itself: nothing to switch off
        return
    with adapters_disabled(module.model):  # ... and switched off, the backbone is exactly itself
        assert identical(backbone_outputs(module, batch), frozen)


@rows
def test_only_adapter_tensors_change_and_all_of_them_do(name):
    module = ROWS[name].build()
    owned = {id(p) for m in module.injection.modules for p in m.parameters()}
    owned |= {id(p) for part in module.injection.trained
              for p in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters())}
    assert {id(p) for p in module._trainable.values()} == owned  # the trainable set is what inject owns
    assert all(p.requires_grad == (n in module.trainable_names) for n, p in module.named_parameters())
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    train(module)
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == module.trainable_names - ROWS[name].no_gradient


@rows
def test_save_load_round_trip_is_exact(name, tmp_path):
    row = ROWS[name]
    module = row.build()
    train(module, steps=2)
    module.eval()
    save_adapter(module, tmp_path)
    fresh = row.build()  # same backbone, adapters at their init
    batch = batch_for(module)
    assert not torch.equal(outputs(fresh.model, batch), outputs(module.model, batch))
    load_adapter(fresh, tmp_path)
    assert torch.equal(outputs(fresh.model, batch), outputs(module.model, batch))
    assert fresh.generate_text(batch_for(fresh, labelled=False)) == module.generate_text(batch_for(module,
                                                                                                  labelled=False))


@rows
def test_batched_generation_equals_single(name):
    module = ROWS[name].build()
    randomise(module)
    batched = module.generate_text(batch_for(module, labelled=False))
    single = [module.generate_text(batch_for(module, labelled=False, rows=[i]))[0] for i in range(len(PROMPTS))]
    assert batched == single


@pytest.mark.parametrize("name", [name for name, row in ROWS.items() if row.causal])
def test_cached_generation_equals_uncached(name):
    module = ROWS[name].build()
    randomise(module)
    batch = batch_for(module, labelled=False)
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    assert module.model.generate(batch, config, use_cache=True) == module.model.generate(batch, config,
                                                                                         use_cache=False)


@pytest.mark.parametrize("name", [name for name, row in ROWS.items() if row.causal])
def test_eager_attention_computes_what_sdpa_does(name):
    """`llm.attention: eager` (the CPU demos' kernel) is the same function as SDPA, adapters included:
    the same log-likelihoods, the same adapter gradients and the same greedy tokens."""
    from dataclasses import replace

    row = ROWS[name]
    results = []
    for attention in ("sdpa", "eager"):
        module = Row(row.method, row.kwargs, replace(row.backbone, attention=attention)).build()
        config = module.model.llm.config  # a method with its own attention function records the kernel it calls
        assert getattr(config, "base_attn_implementation", config._attn_implementation) == attention
        randomise(module)
        batch = batch_for(module)
        logprobs = outputs(module.model, batch)
        module.train()
        module.training_losses(batch)["loss"].backward()
        grads = [p.grad.clone() for p in module._trainable.values()]
        module.eval()
        results.append((logprobs, grads, module.generate_text(batch_for(module, labelled=False))))
    (sdpa, sdpa_grads, sdpa_text), (eager, eager_grads, eager_text) = results
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)
    for a, b in zip(eager_grads, sdpa_grads):  # float32 summation order differs between the kernels
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-8
    assert eager_text == sdpa_text


@rows
def test_loss_regression(name):
    losses = train(ROWS[name].build())
    if name not in RECORDED_LOSSES:
        pytest.fail(f"no recorded losses for {name!r}; record these: {losses!r}")
    assert losses == pytest.approx(RECORDED_LOSSES[name], abs=1e-4)
