"""LLaMA-Excitor, LLaMA-Adapter v1 and LoRA on a tiny LLaMA (GQA: 4 query / 2 key-value heads)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from lavin_lightning.adapters.core import adapters_disabled, decoding_cache, peft_layers
from lavin_lightning.adapters.excitor import ExcitorBlock, ExcitorConfig, image_tokens
from lavin_lightning.adapters.llama_adapter import AdaptionPrompt, LlamaAdapterConfig
from lavin_lightning.adapters.lora import LoRAConfig, SparseDropout, dropped_positions, merged
from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.backbones.vision import VisionSpec
from lavin_lightning.checkpoint import load_adapter, save_adapter
from lavin_lightning.errors import CheckpointError, ConfigError
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import AdaptedCausalLM, GenerationConfig
from lavin_lightning.models.excitor import Excitor
from lavin_lightning.models.llama_adapter import LlamaAdapter
from lavin_lightning.models.lora import LoRA

TOKENIZER = byte_tokenizer()
TINY_CLIP = VisionSpec(kind="clip", config="tiny", cls_every=1, projection=True)


def make(method: str, seed: int = 0, vision: bool = False, **adapter):
    """A configured tiny module; the backbone's weights depend on `seed` only."""
    torch.manual_seed(seed)
    common = dict(llm=LLMSpec(config="tiny"), optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0))
    if method == "excitor":
        module = Excitor(vision=TINY_CLIP if vision else None, adapter=ExcitorConfig(**{"layers": 1, **adapter}),
                         **common)
    elif method == "llama_adapter":
        module = LlamaAdapter(vision=TINY_CLIP if vision else None,
                              adapter=LlamaAdapterConfig(**{"layers": 1, **adapter}), **common)
    else:
        module = LoRA(adapter=LoRAConfig(dropout=0.0, **adapter), **common)
    module.configure_model()
    return module.eval()


def base_model(seed: int = 0) -> AdaptedCausalLM:
    """The same frozen backbone as `make(..., seed)`, without adapters."""
    torch.manual_seed(seed)
    return AdaptedCausalLM(load_causal_lm(LLMSpec(config="tiny")), TOKENIZER).eval()


def text_batch(texts: list[str], supervised_from: int = 3, images: int = 0) -> dict:
    rows = [[TOKENIZER.bos_token_id] + TOKENIZER(t, add_special_tokens=False).input_ids for t in texts]
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, supervised_from : len(row)] = ids[i, supervised_from : len(row)]
    has_image = torch.tensor([i < images for i in range(len(rows))])
    torch.manual_seed(123)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "has_image": has_image,
            "pixel_values": torch.randn(len(rows), 3, 32, 32), "pids": [str(i) for i in range(len(rows))]}


def logits(model: AdaptedCausalLM, batch: dict) -> torch.Tensor:
    with torch.no_grad(), model.conditioning(batch):
        inputs = model.attention_inputs(batch)
        embeds, valid, _ = model.prepare(batch)
        positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
        return model.llm.lm_head(model.run_llm(embeds, valid, positions, embeds.shape[1], attention_inputs=inputs))


def randomise(module) -> None:
    """Move every adapter tensor away from its (possibly identity) init."""
    torch.manual_seed(7)
    with torch.no_grad():
        for param in module._trainable.values():
            param.add_(torch.randn_like(param) * 0.5)


BATCH = ["the cat sat on the mat", "hello", "a longer sentence to pad the others"]
METHODS = ["excitor", "llama_adapter", "lora"]


# -- identity ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["llama_adapter", "lora"])
def test_identity_at_init(method):
    batch = text_batch(BATCH)
    assert torch.equal(logits(make(method).model, batch), logits(base_model(), batch))


def test_excitor_with_zero_gates_is_the_base_model_exactly():
    batch = text_batch(BATCH)
    module = make("excitor")
    assert not torch.equal(logits(module.model, batch), logits(base_model(), batch))  # N(0, 0.1) gates
    module.zero_gates()
    randomise_except_gates(module)
    assert torch.equal(logits(module.model, batch), logits(base_model(), batch))


def randomise_except_gates(module) -> None:
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in module._trainable.items():
            if not name.endswith(".gate"):
                param.add_(torch.randn_like(param))


@pytest.mark.parametrize("method", METHODS)
def test_adapters_disabled_is_the_base_model_exactly(method):
    batch = text_batch(BATCH)
    module = make(method)
    randomise(module)
    adapted = logits(module.model, batch)
    with adapters_disabled(module.model):
        assert torch.equal(logits(module.model, batch), logits(base_model(), batch))
    assert not torch.allclose(adapted, logits(base_model(), batch), atol=1e-3)
    assert torch.equal(logits(module.model, batch), adapted)  # re-enabled


# -- attention functions against the formulas, written out eagerly ----------------------------
def eager_reference(attention, hidden, position_embeddings, mask, extra_scores_fn=None, prompt_branch_fn=None):
    """softmax(Q K^T / sqrt(d) + mask [+ extra]) V (+ prompt branch), head by head, by hand."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    batch, length, _ = hidden.shape
    d = attention.head_dim
    q = attention.q_proj(hidden).view(batch, length, -1, d).transpose(1, 2)
    k_proj = getattr(attention.k_proj, "base_layer", attention.k_proj)
    v_proj = getattr(attention.v_proj, "base_layer", attention.v_proj)
    k = k_proj(hidden).view(batch, length, -1, d).transpose(1, 2)
    v = v_proj(hidden).view(batch, length, -1, d).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = attention.num_key_value_groups
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = q @ k.transpose(2, 3) / math.sqrt(d) + mask
    if extra_scores_fn is not None:
        scores = scores + extra_scores_fn(q, cos, sin)
    out = torch.softmax(scores, dim=-1) @ v
    if prompt_branch_fn is not None:
        out = out + prompt_branch_fn(q)
    return attention.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def attention_inputs(module):
    llm = module.model.llm
    attention = llm.model.layers[-1].self_attn
    torch.manual_seed(3)
    hidden = torch.randn(2, 5, llm.config.hidden_size)
    positions = torch.arange(5).expand(2, -1)
    position_embeddings = llm.model.rotary_emb(hidden, positions)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    mask = module.model.attention_mask(valid, 5, hidden.dtype)
    return attention, hidden, position_embeddings, mask


@pytest.mark.parametrize("rope, extra_scale", [(True, "head_dim"), (False, "head_dim"), (True, "hidden"),
                                               (False, "hidden")])
@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_excitor_attention_matches_the_formula(rope, extra_scale, base):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    module = make("excitor", rope_on_key_extra=rope, excitor_heads=2, extra_scale=extra_scale)
    randomise(module)
    module.model.llm.config.base_attn_implementation = base
    attention, hidden, position_embeddings, mask = attention_inputs(module)
    block: ExcitorBlock = (attention.k_proj if rope else attention.v_proj).excitor
    d = attention.head_dim

    def extra_scores(q, cos, sin):
        # Eqs. 6-7 per token: two Excitor heads over C, 1/sqrt(C/2); then split into query heads.
        t = block.query(hidden).view(2, 5, 2, -1).transpose(1, 2)
        p = block.prompt.view(-1, 2, block.prompt.shape[1] // 2).transpose(0, 1)
        weights = torch.softmax(t @ p.transpose(1, 2) / math.sqrt(p.shape[-1]), dim=-1)
        key_extra = (weights @ p).transpose(1, 2).reshape(2, 5, -1).view(2, 5, -1, d).transpose(1, 2)
        if rope:
            _, key_extra = apply_rotary_pos_emb(key_extra, key_extra, cos, sin)
        scale = 1 / math.sqrt(d if extra_scale == "head_dim" else hidden.shape[-1])
        return block.gate[None, :, None, None] * (q @ key_extra.transpose(2, 3)) * scale

    with torch.no_grad():
        expected = eager_reference(attention, hidden, position_embeddings, mask, extra_scores_fn=extra_scores)
        got, _ = attention(hidden, position_embeddings, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("excitor_heads", [1, 2])
@pytest.mark.parametrize("multimodal", [False, True])
def test_excitor_key_extra_matches_eqs_6_to_9(excitor_heads, multimodal):
    """Key_extra, written out sample by sample and head by head: keys and values [P; W_k(I)],
    [P; W_v(I)] for samples with an image, P alone for the others."""
    config = ExcitorConfig(prompt_length=3, rank=4, excitor_heads=excitor_heads)
    torch.manual_seed(5)
    width, query_heads = 8, 4
    block = ExcitorBlock(config, width, query_heads, visual_width=6 if multimodal else None)
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn_like(param))
    tokens = torch.randn(3, 5, width)
    images, has_image = torch.randn(3, 2, 6), torch.tensor([True, False, True])
    if multimodal:
        block.visual = (images, has_image)
    c = width // excitor_heads
    expected = torch.empty(3, 5, width)
    for b in range(3):
        keys = values = block.prompt
        if multimodal and has_image[b]:
            keys = torch.cat([block.prompt, block.visual_key(images[b])])
            values = torch.cat([block.prompt, block.visual_value(images[b])])
        query = block.query(tokens[b])
        for h in range(excitor_heads):
            part = slice(h * c, (h + 1) * c)
            weights = torch.softmax(query[:, part] @ keys[:, part].T / math.sqrt(c), dim=-1)
            expected[b, :, part] = weights @ values[:, part]
    torch.testing.assert_close(block.key_extra(tokens), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra_scale, multimodal", [("head_dim", False), ("hidden", False), ("head_dim", True)])
def test_excitor_decoding_keys_equal_the_training_keys(extra_scale, multimodal):
    """While generating, a block folds its gates and down() into per-generation constants: the
    keys it returns are the training path's, up to float rounding (multimodal: per sample, the
    text-only one without the image keys)."""
    module = make("excitor", vision=multimodal, extra_scale=extra_scale)
    randomise(module)
    projection = module.model.llm.model.layers[-1].self_attn.k_proj
    hidden = torch.randn(3, 4, module.model.llm.config.hidden_size)
    images = torch.randn(3, 2, module.model.vision.token_width) if multimodal else None
    with torch.no_grad(), (image_tokens(module.model, images, torch.tensor([True, False, True]))
                           if multimodal else contextlib.nullcontext()):
        trained = projection(hidden)
        with decoding_cache(module.model):
            decoded = projection(hidden)
            assert "decoding_map" in projection.excitor._memo  # the folded path ran
    torch.testing.assert_close(decoded, trained, rtol=1e-5, atol=1e-5)
    config = module.model.llm.config
    head_dim = config.hidden_size // config.num_attention_heads
    groups = config.num_attention_heads // config.num_key_value_heads
    with torch.no_grad():  # the keys without Excitor, one per query head: the gates must move them
        plain = projection.base_layer(hidden).unflatten(-1, (-1, 1, head_dim)).expand(-1, -1, -1, groups, -1)
    assert not torch.allclose(trained, plain.flatten(-3), atol=1e-3)


@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_llama_adapter_attention_matches_the_release_formula(base):
    from transformers.models.llama.modeling_llama import repeat_kv

    module = make("llama_adapter")
    randomise(module)
    module.model.llm.config.base_attn_implementation = base
    attention, hidden, position_embeddings, mask = attention_inputs(module)
    prompt: AdaptionPrompt = attention.adaption_prompt
    d = attention.head_dim

    def prompt_branch(q):
        # Frozen W_k / W_v on the prompts, no RoPE, own softmax, tanh gate per head.
        kp = repeat_kv(attention.k_proj(prompt.prompt)[None].view(1, -1, 2, d).transpose(1, 2), 2)
        vp = repeat_kv(attention.v_proj(prompt.prompt)[None].view(1, -1, 2, d).transpose(1, 2), 2)
        probs = torch.softmax(q @ kp.transpose(2, 3) / math.sqrt(d), dim=-1)
        return torch.tanh(prompt.gate)[None, :, None, None] * probs @ vp

    with torch.no_grad():
        expected = eager_reference(attention, hidden, position_embeddings, mask, prompt_branch_fn=prompt_branch)
        got, _ = attention(hidden, position_embeddings, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layers_below_the_top_l_are_unchanged():
    module = make("excitor")
    assert not hasattr(module.model.llm.model.layers[0].self_attn.k_proj, "excitor")
    assert hasattr(module.model.llm.model.layers[1].self_attn.k_proj, "excitor")


@pytest.mark.parametrize("method", ["excitor", "llama_adapter"])
def test_no_layer_count_adapts_every_layer(method):
    module = make(method)  # the top layer
    every = make(method, layers=None)
    assert module.injection.targets == every.injection.targets[1:]
    assert len(every.injection.targets) == 2 == module.model.llm.config.num_hidden_layers


# -- training touches adapters only ----------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_tensors_change(method):
    module = make(method).train()
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if n not in module.trainable_names}
    before = {n: p.detach().clone() for n, p in module._trainable.items()}
    assert all(not module.get_parameter(n).requires_grad for n in frozen)
    optimizer = torch.optim.AdamW(module._trainable.values(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        module.model.loss(text_batch(BATCH)).backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    changed = [n for n, p in module._trainable.items() if not torch.equal(p, before[n])]
    assert sorted(changed) == sorted(module.trainable_names)


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_adapter_round_trip(method, tmp_path):
    batch = text_batch(BATCH)
    trained = make(method)
    randomise(trained)
    save_adapter(trained, tmp_path / "adapter")
    fresh = make(method)
    assert not torch.equal(logits(fresh.model, batch), logits(trained.model, batch))
    load_adapter(fresh, tmp_path / "adapter")
    assert torch.equal(logits(fresh.model, batch), logits(trained.model, batch))


def test_adapter_of_another_method_is_refused(tmp_path):
    save_adapter(make("lora"), tmp_path / "lora")
    with pytest.raises(CheckpointError, match="method"):
        load_adapter(make("llama_adapter"), tmp_path / "lora")


# -- generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_cached_generation_equals_uncached_and_batching_does_not_matter(method):
    module = make(method)
    randomise(module)
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    batch = text_batch(BATCH)
    batch.pop("labels")
    cached = module.model.generate(batch, config, use_cache=True)
    assert cached == module.model.generate(batch, config, use_cache=False)
    single = module.model.generate({k: (v[1:2] if torch.is_tensor(v) else v[1:2]) for k, v in batch.items()}, config)
    assert single[0] == cached[1]


def test_streaming_reports_every_token():
    module = make("excitor")
    batch = text_batch(["hi"])
    batch.pop("labels")
    seen = []
    ids = module.model.generate(batch, GenerationConfig(max_new_tokens=5, temperature=0.0),
                                on_token=lambda t: seen.append(int(t[0])))
    assert seen[: len(ids[0])] == ids[0]


def test_lora_merge_keeps_outputs_and_leaves_only_the_backbones_layers():
    module = make("lora", target_modules=["q_proj", "v_proj", "down_proj"])
    randomise(module)
    batch = text_batch(BATCH)
    unmerged = logits(module.model, batch)
    with adapters_disabled(module.model):
        backbone = logits(module.model, batch)
    with merged(module.model) as count:
        assert count == 6  # 3 targets x 2 layers
        assert peft_layers(module.model) == []  # the decoding path holds nn.Linear layers only
        # Folding W + s B A changes float rounding only (logits here are of order 10).
        torch.testing.assert_close(logits(module.model, batch), unmerged, rtol=1e-4, atol=5e-4)
        with pytest.raises(ConfigError, match="disable the adapters before entering inference"):
            adapters_disabled(module.model).__enter__()
    assert len(peft_layers(module.model)) == 6
    assert torch.equal(logits(module.model, batch), unmerged)  # the frozen weights are restored bit for bit
    with adapters_disabled(module.model), merged(module.model) as count:  # the "before" runs of the demos
        assert count == 0
        assert torch.equal(logits(module.model, batch), backbone)
    # Training after inference: the LoRA tensors are back in the graph.
    module.model.loss(text_batch(BATCH)).backward()
    assert all(p.grad is not None for name, p in module.model.named_parameters() if "lora_B" in name)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_dropped_positions_are_iid_bernoulli(p):
    """The gap-drawn positions have i.i.d. Bernoulli(p) statistics: the dropped fraction, that of
    neighbouring pairs and of the first and last slots, within 5 standard deviations."""
    torch.manual_seed(0)
    n, rounds = 200_000, 20
    dropped = torch.zeros(rounds, n, dtype=torch.bool)
    for row in dropped:
        positions = dropped_positions(n, p)
        assert positions.dtype == torch.int64 and bool((positions[1:] > positions[:-1]).all())
        assert 0 <= int(positions[0]) and int(positions[-1]) < n
        row[positions] = True

    def close(fraction: torch.Tensor, expected: float, trials: int) -> bool:
        return abs(float(fraction) - expected) < 5 * math.sqrt(expected * (1 - expected) / trials)

    assert close(dropped.double().mean(), p, rounds * n)
    assert close((dropped[:, 1:] & dropped[:, :-1]).double().mean(), p * p, rounds * (n - 1) // 2)
    for edge in (dropped[:, :1000], dropped[:, -1000:]):  # no slot is favoured
        assert close(edge.double().mean(), p, edge.numel())
    assert dropped_positions(0, p).numel() == 0


def test_sparse_dropout_scales_kept_values_and_masks_their_gradient():
    dropout = SparseDropout(0.25)
    x = torch.randn(4, 7, 96, requires_grad=True)
    torch.manual_seed(1)
    positions = dropped_positions(x.numel(), 0.25)
    torch.manual_seed(1)
    out = dropout(x)  # the positions drawn from the same seed are the ones dropped
    kept = torch.ones(x.numel(), dtype=torch.bool).index_fill_(0, positions, False).view(x.shape)
    assert 0.6 < float(kept.double().mean()) < 0.9
    assert torch.equal(out, torch.where(kept, x * (1 / 0.75), 0.0))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.equal(x.grad, torch.where(kept, grad * (1 / 0.75), 0.0))
    assert dropout.eval()(x) is x


@pytest.mark.parametrize("sampler", ["gaps", "torch"])
def test_lora_dropout_sampler(sampler):
    module = LoRA(llm=LLMSpec(config="tiny"), adapter=LoRAConfig(dropout=0.1, dropout_sampler=sampler))
    module.configure_model()
    dropouts = [d for layer in peft_layers(module.model) for d in layer.lora_dropout.values()]
    kind = SparseDropout if sampler == "gaps" else nn.Dropout
    assert dropouts and all(type(d) is kind and d.p == 0.1 for d in dropouts)
    without_dropout = LoRA(llm=LLMSpec(config="tiny"), adapter=LoRAConfig(dropout=0.0))
    without_dropout.configure_model()
    assert sorted(module.trainable_names) == sorted(without_dropout.trainable_names)  # checkpoints unchanged
    with pytest.raises(ConfigError, match="dropout_sampler"):
        LoRAConfig(dropout_sampler="fast")


# -- multimodal --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["excitor", "llama_adapter"])
def test_images_condition_only_their_own_samples(method):
    module = make(method, vision=True)
    randomise(module)
    mixed = text_batch(BATCH, images=2)  # samples 0, 1 with an image; 2 text-only
    text_only = text_batch(BATCH, images=0)
    with_images, without = logits(module.model, mixed), logits(module.model, text_only)
    assert not torch.allclose(with_images[:2], without[:2], atol=1e-4)
    torch.testing.assert_close(with_images[2], without[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["excitor", "llama_adapter"])
def test_multimodal_generation_cached_equals_uncached(method):
    module = make(method, vision=True)
    randomise(module)
    batch = text_batch(BATCH, images=2)
    batch.pop("labels")
    config = GenerationConfig(max_new_tokens=5, temperature=0.0)
    assert module.model.generate(batch, config) == module.model.generate(batch, config, use_cache=False)


def test_text_only_model_refuses_images():
    with pytest.raises(ConfigError, match="no vision encoder"):
        make("lora").model.loss(text_batch(BATCH, images=1))


# -- parameter counts at real scale (meta device) ------------------------------------------------
def count(module) -> int:
    with torch.device("meta"):
        module.configure_model()
    return module.parameter_counts()["trainable"]


def test_llama_adapter_7b_count_is_the_papers():
    assert count(LlamaAdapter(llm=LLMSpec(config="llama-7b"))) == 1_229_760  # 10 x 30 x 4096 + 30 x 32


def test_excitor_7b_counts():
    assert count(Excitor(llm=LLMSpec(config="llama-7b"))) == 7_619_520  # K = 30
    assert count(Excitor(llm=LLMSpec(config="llama-7b"), adapter=ExcitorConfig(prompt_length=10))) == 5_161_920
    multimodal = Excitor(llm=LLMSpec(config="llama-7b"),
                         vision=VisionSpec(kind="clip", config="clip-vit-l/14", projection=True))
    assert count(multimodal) == 7_619_520 + 4_669_440  # + D = 768 visual maps, r = 16, 30 layers


def test_lora_7b_count():
    assert count(LoRA(llm=LLMSpec(config="llama-7b"))) == 4_194_304  # 2 x 8 x 4096 x 2 x 32
