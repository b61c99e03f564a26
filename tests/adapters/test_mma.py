"""MM-Adapter, injection and the LaVIN model on tiny backbones."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_batch, perturb_adapters
from torch import nn

from lavin_lightning.adapters.core import NormThenAdapter, match_modules, wrap_norms
from lavin_lightning.adapters.mma import GroupedLinear, MMAConfig, RepAdapter, RepAdapterRouter
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.causal_lm import GenerationConfig


def llm_hidden(model, batch):
    embeds, valid, _ = model.prepare(batch)
    positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
    return model.run_llm(embeds, valid, positions, embeds.shape[1]), valid


# -- building blocks ---------------------------------------------------------------------
def test_grouped_linear_is_block_diagonal():
    layer = GroupedLinear(8, 6, groups=2)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    dense = torch.zeros(6, 8)
    dense[:3, :4], dense[3:, 4:] = layer.weight[0], layer.weight[1]
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
    assert sum(p.numel() for p in layer.parameters()) == 6 * 8 // 2 + 6


def test_neck_input_norm_normalises_each_cls_feature_and_adds_no_parameters():
    from lavin_lightning.adapters.mma import VisualNeck

    torch.manual_seed(0)
    raw, normed = VisualNeck(32, 48, 16), VisualNeck(32, 48, 16, input_norm=True)
    normed.load_state_dict(raw.state_dict())  # the same parameters, no more
    x = torch.randn(3, 4, 32) * torch.tensor([1.0, 5.0, 20.0, 50.0])[:, None]  # growing per layer
    unit = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(normed(x), raw(unit))
    torch.testing.assert_close(normed(7.0 * x + 3.0), normed(x), rtol=1e-4, atol=1e-4)  # scale-free
    assert not torch.allclose(raw(x), normed(x))
    assert MMAConfig().neck_input_norm is False  # the paper and the release feed raw features


@pytest.mark.parametrize("width", [64, 576, 4096])
def test_mm_adapter_parameter_count_is_20c_plus_10(width):
    adapter = RepAdapterRouter(width, adapter_dim=8, groups=2)
    assert sum(p.numel() for p in adapter.parameters()) == 20 * width + 10
    assert sum(p.numel() for p in RepAdapter(width).parameters()) == 13 * width + 8


def test_router_is_identity_at_init_and_routes_with_temperature():
    adapter = RepAdapterRouter(16, temperature=5.0, routing="sample")
    x = torch.randn(3, 7, 16)
    assert torch.equal(adapter(x), x)
    expected = torch.softmax(adapter.router(x[:, 0]) / 5.0, dim=-1)
    torch.testing.assert_close(adapter.routing_weights(x)[:, 0], expected)
    token = RepAdapterRouter(16, routing="token")
    assert token.routing_weights(x).shape == (3, 7, 2)


def test_injection_fails_loudly_and_leaves_the_model_untouched():
    model = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
    with pytest.raises(ConfigError, match="matches no module"):
        match_modules(model, r"layers\.(\d+)\.input_layernorm")
    with pytest.raises(ConfigError, match=r"asks for layers \[3\]"):
        match_modules(nn.ModuleDict({"layers": nn.ModuleList([nn.LayerNorm(4)] * 2)}), r"layers\.(\d+)", [0, 3])
    # A bad target among good ones: nothing is wrapped.
    with pytest.raises(ConfigError, match="cannot read the width of Linear"):
        wrap_norms(model, ["0", "1"], lambda width: RepAdapter(width))
    assert isinstance(model[0], nn.LayerNorm)


def test_widths_come_from_the_wrapped_norms(make_tiny_lavin):
    module = make_tiny_lavin()
    llm_layer = module.model.llm.model.layers[0]
    assert isinstance(llm_layer.input_layernorm, NormThenAdapter)
    assert llm_layer.input_layernorm.adapter.down.in_features == module.model.llm.config.hidden_size
    vision_norm = module.model.vision.get_submodule(module.model.vision.block_norm_names("attn")[0])
    assert isinstance(vision_norm, NormThenAdapter)
    assert vision_norm.adapter.down.in_features == module.model.vision.width
    assert not isinstance(llm_layer.post_attention_layernorm, NormThenAdapter)
    block = make_tiny_lavin(llm_placement="block").model.llm.model.layers[0]
    assert isinstance(block.post_attention_layernorm, NormThenAdapter)


# -- the LaVIN model -----------------------------------------------------------------------
def test_identity_at_init(make_tiny_lavin):
    """Freshly injected adapters leave both frozen backbones' outputs exactly unchanged."""
    module = make_tiny_lavin()
    model = module.model
    batch = make_batch(module.tokenizer)
    base_llm = copy.deepcopy(model.llm)
    for layer in base_llm.model.layers:  # unwrap: the bare backbone
        layer.input_layernorm = layer.input_layernorm.norm
    embeds, valid, _ = model.prepare(batch)
    positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
    mask = model.attention_mask(valid, embeds.shape[1], embeds.dtype)
    adapted = model.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    bare = base_llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    assert torch.equal(adapted, bare)

    vision = model.vision
    bare_vision = copy.deepcopy(vision)
    for name in bare_vision.block_norm_names("attn"):
        wrapper = bare_vision.get_submodule(name)
        parent, _, child = name.rpartition(".")
        setattr(bare_vision.get_submodule(parent), child, wrapper.norm)
    pixels = batch["pixel_values"]
    assert torch.equal(vision.cls_features(pixels), bare_vision.cls_features(pixels))
    perturb_adapters(module)
    assert not torch.equal(vision.cls_features(pixels), bare_vision.cls_features(pixels))


def test_sequence_layout_labels_and_mask(make_tiny_lavin):
    module = make_tiny_lavin()
    model = module.model
    batch = make_batch(module.tokenizer)
    embeds, valid, labels = model.prepare(batch)
    n_visual = model.num_visual_tokens
    text_lengths = batch["attention_mask"].sum(1)
    prefix = {True: len(model.image_prefix_ids) + n_visual, False: len(model.text_prefix_ids)}
    for b, has_image in enumerate(batch["has_image"].tolist()):
        assert int(valid[b].sum()) == 1 + int(text_lengths[b]) + prefix[has_image]
        # Position 0 is the modality embedding of this sample's modality.
        expected = model.modality.embedding.weight[int(has_image)]
        torch.testing.assert_close(embeds[b, 0], expected)
        # The supervised tokens are exactly the answer + EOS, in order.
        kept = labels[b][labels[b] != -100]
        wanted = batch["labels"][b][batch["labels"][b] != -100]
        assert torch.equal(kept, wanted)
    mask = model.attention_mask(valid, valid.shape[1], torch.float32)
    blocked = torch.finfo(torch.float32).min
    assert (mask[:, 0, 1:, 0] == blocked).all()  # nobody after position 0 sees the modality token
    assert (mask[:, 0, 0, 0] == 0).all()
    assert (mask[:, 0, 5, 6] == blocked).all()  # causal


def test_modality_token_is_hidden_from_later_tokens(make_tiny_lavin):
    """Changing the modality embedding changes outputs only through the routers."""
    module = make_tiny_lavin(llm_adapter="repadapter", vision_adapter="none")
    perturb_adapters(module)
    batch = make_batch(module.tokenizer)
    before, valid = llm_hidden(module.model, batch)
    with torch.no_grad():
        module.model.modality.embedding.weight.mul_(-3.0)
    after, _ = llm_hidden(module.model, batch)
    torch.testing.assert_close(before[:, 1:][valid[:, 1:]], after[:, 1:][valid[:, 1:]])
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_routing_differs_between_modalities_and_is_constant_within_a_sample(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module)
    batch = make_batch(module.tokenizer, has_image=(True, False, True))
    embeds, valid, _ = module.model.prepare(batch)
    router = module.model.llm.model.layers[1].input_layernorm.adapter
    seen = []
    hook = router.register_forward_hook(lambda mod, args, out: seen.append(mod.routing_weights(args[0])))
    try:
        llm_hidden(module.model, batch)
    finally:
        hook.remove()
    weights = seen[0]
    assert weights.shape == (3, 1, 2)  # one decision per sample, broadcast over its tokens
    assert not torch.allclose(weights[0], weights[1], atol=1e-4)  # image-text vs text-only
    # The router reads the modality token only: image samples with different pictures and
    # prompts get the same weights (the modality token attends only to itself).
    torch.testing.assert_close(weights[0], weights[2])


def test_only_adapter_tensors_change_after_optimizer_steps(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module)  # non-zero up-projections, so every adapter tensor gets gradient
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = module.trainable_names
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(module.tokenizer)
    module.train()
    for _ in range(3):
        optimizer.zero_grad()
        module.model.loss(batch).backward()
        optimizer.step()
    for name, param in module.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trainable), name
    assert {n for n, p in module.named_parameters() if p.requires_grad} == trainable


def test_cached_generation_equals_uncached_and_batched_equals_single(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module, std=0.5)
    module.eval()
    batch = make_batch(module.tokenizer, with_labels=False)
    greedy = GenerationConfig(max_new_tokens=10, temperature=0.0)
    cached = module.model.generate(batch, greedy, use_cache=True)
    uncached = module.model.generate(batch, greedy, use_cache=False)
    assert cached == uncached
    assert all(len(row) > 0 for row in cached)
    singles = []
    for b in range(3):
        one = {k: (v[b : b + 1] if torch.is_tensor(v) else v[b : b + 1]) for k, v in batch.items()}
        singles += module.model.generate(one, greedy)
    assert singles == cached
    # Sampling is seeded: the same generator seed gives the same tokens.
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9)
    first = module.model.generate(batch, sampled, generator=torch.Generator().manual_seed(3))
    again = module.model.generate(batch, sampled, generator=torch.Generator().manual_seed(3))
    assert first == again


def test_config_validation():
    with pytest.raises(ConfigError, match="llm_placement"):
        MMAConfig(llm_placement="ffn")
    with pytest.raises(ConfigError, match="divisible"):
        MMAConfig(adapter_dim=7)


def test_vocabulary_logits_only_at_supervised_positions(make_tiny_lavin):
    module = make_tiny_lavin()
    batch = make_batch(module.tokenizer)
    rows = []
    hook = module.model.llm.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    try:
        module.model.loss(batch)
    finally:
        hook.remove()
    assert rows == [int((batch["labels"] != -100).sum())]  # answer + EOS tokens, nothing else


def test_sample_routing_mixes_expert_weights_like_mixing_outputs():
    adapter = RepAdapterRouter(16, adapter_dim=8, routing="sample", dropout=0.0)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    x = torch.randn(3, 5, 16)
    weights = adapter.routing_weights(x)
    hidden = adapter.down(x)
    expected = x + weights[..., :1] * adapter.up_experts[0](hidden) + weights[..., 1:] * adapter.up_experts[1](hidden)
    torch.testing.assert_close(adapter(x), expected)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_sample_routed_adapter_gradients_equal_autograds_of_the_composed_modules(dropout):
    """The written-out forward and backward (_SampleRoutedUp) against autograd through the
    modules, dropout included (the same seed draws the same masks)."""
    torch.manual_seed(0)
    adapter = RepAdapterRouter(12, adapter_dim=4, routing="sample", dropout=dropout, scale=0.7).double()
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    x = torch.randn(3, 5, 12, dtype=torch.double, requires_grad=True)
    grad_out = torch.randn(3, 5, 12, dtype=torch.double)

    def composed():
        weights = adapter.routing_weights(x)
        hidden = adapter.dropout(adapter.down(x))
        first, second = adapter.up_experts
        return x + 0.7 * (weights[..., :1] * first(hidden) + weights[..., 1:] * second(hidden))

    results = []
    for run in (adapter, composed):
        torch.manual_seed(1)
        out = run(x) if run is adapter else run()
        grads = torch.autograd.grad(out, [x, *adapter.parameters()], grad_out)
        results.append((out, grads))
    (out, grads), (expected, expected_grads) = results
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    if dropout == 0.0:
        torch.autograd.gradcheck(lambda x: adapter(x), (x,))


def test_sample_routed_adapter_computes_in_its_own_dtype_under_autocast():
    """Mixed-precision training (bf16 autocast) leaves the adapter's arithmetic in fp32, forward
    and backward alike: the same output and gradients as without autocast."""
    torch.manual_seed(0)
    adapter = RepAdapterRouter(16, adapter_dim=8, routing="sample", dropout=0.0)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    x = torch.randn(2, 5, 16, requires_grad=True)
    plain = adapter(x)
    plain_grads = torch.autograd.grad(plain.square().sum(), [x, *adapter.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = adapter(x)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    for got, want in zip(torch.autograd.grad(mixed.square().sum(), [x, *adapter.parameters()]), plain_grads,
                         strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
