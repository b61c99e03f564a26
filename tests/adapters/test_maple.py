"""MaPLe (coupled vision/language prompts) on the tiny InstructBLIPs."""

from __future__ import annotations

import pytest
import torch

from data_modules.batching import Collator
from data_modules.templates import encode_records
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.adapters.maple import InsertTextPrompts, MaPLeConfig, ReplaceTextPrompts, VisionPrompts
from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_instructblip
from lavin_lightning.checkpoint import load_adapter, save_adapter
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.models.instructblip import AdaptedInstructBLIP, BeamSearchConfig
from lavin_lightning.models.maple import MaPLe

CONFIGS = ["tiny-t5", "tiny-llama"]
# Defaults (n_ctx 2, J 9) on InstructBLIP FlanT5-XXL (Q-Former width 768, ViT width 1408):
# J n_ctx 768 (prompts) + J (768 1408 + 1408) (couplings).
FLANT5_XXL_TRAINABLE = 9_758_592


def build(config: str = "tiny-t5", seed: int = 0, **adapter) -> MaPLe:
    torch.manual_seed(seed)
    module = MaPLe(InstructBLIPSpec(config=config), MaPLeConfig(**{"depth": 2, **adapter}))
    module.configure_model()
    return module.eval()


QUESTIONS = ("what color is it?", "what colour is the big round ball on the left?")


def make_batch(module, answers=("red", "blue green"), seed: int = 1) -> tuple[list[dict], dict]:
    """Items and their batch: prompt + answer rows (generation prompts when an answer is None),
    of different lengths, so that both the LM rows and the Q-Former's instructions are padded."""
    tok, qtok = module.tokenizer, module.instruction_tokenizer
    records = [InstructRecord(str(i), ((f"Question: {q} Short answer:", ans),), "", None)
               for i, (q, ans) in enumerate(zip(QUESTIONS, answers))]
    samples, _ = encode_records(records, tok, "plain", 64, qtok, "")
    generator = torch.Generator().manual_seed(seed)
    items = [{"pid": s.pid, "input_ids": torch.tensor(s.input_ids),
              "labels": None if s.labels is None else torch.tensor(s.labels),
              "pixel_values": torch.randn(3, 32, 32, generator=generator), "has_image": True,
              "instruction_ids": torch.tensor(s.instruction_ids)} for s in samples]
    return items, Collator(tok.pad_token_id)(items)


@pytest.mark.parametrize("config", CONFIGS)
def test_disabled_prompts_reproduce_the_frozen_backbone_exactly(config):
    module = build(config)
    _, batch = make_batch(module)
    torch.manual_seed(0)  # the same backbone weights, no prompts
    plain = AdaptedInstructBLIP(load_instructblip(InstructBLIPSpec(config=config)), module.tokenizer).eval()
    with torch.no_grad():
        reference = plain.loss(batch)
        with adapters_disabled(module.model):
            assert module.model.maple.prompt_tokens == 0
            disabled = module.model.loss(batch)
        active = module.model.loss(batch)
        shift = (module.model.features(batch).projected - plain.features(batch).projected).abs().max()
    assert torch.equal(disabled, reference)
    # Prompts cannot be the identity at init. Their effect is small at init_std 0.02: the
    # Q-Former's text stream is LayerNorm-ed (unit scale) and the couplings are small.
    assert not torch.equal(active, reference) and shift > 1e-5


def test_config_and_injection_are_validated():
    with pytest.raises(ConfigError, match="depth"):
        MaPLeConfig(depth=0)
    with pytest.raises(ConfigError, match="prompt_length"):
        MaPLeConfig(prompt_length=0)
    with pytest.raises(ConfigError, match=r"ViT has 2 layers and the Q-Former 2"):
        build(depth=3)
    module = build(depth=1)
    from lavin_lightning.adapters import maple

    with pytest.raises(ConfigError, match="inject once"):
        maple.inject(module.model, MaPLeConfig(depth=1))


def test_no_depth_means_every_layer_of_the_shallower_branch():
    module = build(depth=None)  # tiny: 2 ViT layers, 2 Q-Former layers
    assert module.model.maple.depth == 2 and len(module.model.maple.couplings) == 2
    assert module.injection.targets == ["backbone.qformer.embeddings", "backbone.vision_model.encoder.layers.0",
                                        "backbone.vision_model.encoder.layers.1", "backbone.qformer.encoder.layer.1"]


def test_wrappers_sit_in_the_first_j_layers_only():
    module = build(depth=1)
    backbone = module.model.backbone
    assert isinstance(backbone.qformer.embeddings, InsertTextPrompts)
    assert isinstance(backbone.vision_model.encoder.layers[0], VisionPrompts)
    assert not isinstance(backbone.vision_model.encoder.layers[1], VisionPrompts)
    assert not any(isinstance(layer, ReplaceTextPrompts) for layer in backbone.qformer.encoder.layer)
    # The wrappers register the shared prompts too; they are named (and saved) once, on the model.
    assert sorted(module.trainable_names) == ["model.maple.couplings.0.bias", "model.maple.couplings.0.weight",
                                              "model.maple.prompts"]


@pytest.mark.parametrize("config", CONFIGS)
def test_sequences_grow_by_the_prompts_and_carry_them(config):
    module = build(config, prompt_length=3)
    n, q = 3, module.model.num_queries
    _, batch = make_batch(module)
    backbone, prompts = module.model.backbone, module.model.maple
    seen = {}
    hooks = [
        backbone.qformer.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.update(qmask=kwargs["attention_mask"]), with_kwargs=True),
        backbone.qformer.register_forward_hook(
            lambda mod, args, out: seen.update(qformer_len=out.last_hidden_state.shape[1])),
        backbone.qformer.encoder.layer[1].layer.register_forward_pre_hook(
            lambda mod, args: seen.update(qformer_in=args[0])),
        backbone.vision_model.encoder.layers[1].layer.register_forward_pre_hook(
            lambda mod, args: seen.update(vision_in=args[0])),
    ]
    text = batch["instruction_input_ids"].shape[1]
    with torch.no_grad():
        with adapters_disabled(module.model):
            plain = module.model.features(batch)
            assert seen["qformer_len"] == q + text and seen["qmask"].shape[1] == q + text
        prompted = module.model.features(batch)
        assert seen["qformer_len"] == q + n + text
        mask = seen["qmask"]
        assert mask.shape[1] == q + n + text and bool(mask[:, : q + n].all())
        assert torch.equal(mask[:, q + n:], batch["instruction_attention_mask"])
        # Layer 1 reads P_1 at the prompt positions (Q-Former) and F_1(P_1) at the end (ViT).
        expected = prompts.language(1).expand(len(batch["pids"]), -1, -1)
        assert torch.equal(seen["qformer_in"][:, q: q + n], expected)
        assert torch.allclose(seen["vision_in"][:, -n:], prompts.vision(1).expand(len(batch["pids"]), -1, -1))
    for hook in hooks:
        hook.remove()
    assert prompted.image_tokens.shape[1] == plain.image_tokens.shape[1] + n
    assert prompted.query_tokens.shape == plain.query_tokens.shape
    assert not torch.allclose(prompted.query_tokens, plain.query_tokens)


def test_training_moves_every_prompt_tensor_and_no_backbone_tensor():
    module = build()
    module.train()
    _, batch = make_batch(module)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainable = module.trainable_names
    assert all(p.requires_grad == (name in trainable) for name, p in module.named_parameters())
    optimizer = torch.optim.AdamW(list(module._trainable.values()), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        module.model.loss(batch).backward()
        optimizer.step()
    after = dict(module.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed == trainable


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_runs_and_batching_does_not_change_it(config, num_beams):
    module = build(config)
    items, batch = make_batch(module, answers=(None, None))
    assert "labels" not in batch
    settings = BeamSearchConfig(num_beams=num_beams, max_new_tokens=6)
    assert not bool(batch["instruction_attention_mask"].all())  # the instructions are padded
    texts = module.generate_text(batch, settings)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    collate = Collator(module.tokenizer.pad_token_id)
    single = [module.generate_text(collate([item]), settings)[0] for item in items]
    assert texts == single
    # What the LM reads does not depend on the batch either (padded instructions, prompts).
    with torch.no_grad():
        batched = module.model.features(batch).projected
        for i, item in enumerate(items):
            alone = module.model.features(collate([item])).projected[0]
            torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-5)


def test_parameter_count_on_the_meta_device_matches_the_formula():
    j, n, d_q, d_v = 9, 2, 768, 1408
    assert j * n * d_q + j * (d_q * d_v + d_v) == FLANT5_XXL_TRAINABLE
    with torch.device("meta"):
        module = MaPLe(InstructBLIPSpec(config="instructblip-flant5-xxl"))
        module.configure_model()
    assert module.parameter_counts()["trainable"] == FLANT5_XXL_TRAINABLE


def test_adapter_save_load_round_trip(tmp_path):
    module = build()
    with torch.no_grad():
        for param in module._trainable.values():
            param.add_(torch.randn_like(param))
    _, batch = make_batch(module)
    save_adapter(module, tmp_path / "maple")
    other = build()  # same backbone, fresh prompts
    assert not torch.equal(other.model.maple.prompts, module.model.maple.prompts)
    load_adapter(other, tmp_path / "maple")
    for name, param in module._trainable.items():
        assert torch.equal(other._trainable[name], param)
    with torch.no_grad():
        assert torch.equal(other.model.loss(batch), module.model.loss(batch))
    with pytest.raises(Exception, match="config"):
        load_adapter(build(prompt_length=3), tmp_path / "maple")
