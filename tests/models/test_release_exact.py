"""The release-exact evaluation options: each changes exactly what it says and nothing else.

LaVIN: `vision_routing: release` (the ViT runs on every sample, text-only ones on their zero
image, and its routers read row 0), `decode_positions: release` (positions after the shortest
prompt one lower), the release's visual RepAdapter without residual. LLaMA-Adapter: the raw
gate at inference, weight decay on the gates (`optim.decay_also`).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import make_batch, perturb_adapters

from lavin_lightning.adapters.mma import RepAdapter, RepAdapterRouter
from lavin_lightning.checkpoint import load_adapter, save_adapter
from lavin_lightning.errors import CheckpointError, ConfigError
from lavin_lightning.models.base import OptimConfig
from lavin_lightning.models.causal_lm import GenerationConfig
from lavin_lightning.models.lavin import LaVINModel

GREEDY = GenerationConfig(max_new_tokens=8, temperature=0.0)


def visual_slots(module, batch, row: int) -> torch.Tensor:
    """The neck's output as it sits in `row` of the LLM input: [t_m, BOS, prefix, slots, ...]."""
    embeds, _, _ = module.model.prepare(batch)
    start = 2 + module.model.image_prefix_ids.numel()
    return embeds[row, start : start + module.model.num_visual_tokens]


def neck(module, pixels: torch.Tensor) -> torch.Tensor:
    return module.model.neck(module.model.vision.cls_features(pixels))


@torch.no_grad()
def test_release_vision_routing_runs_the_vit_on_every_sample_and_routes_on_row_zero(make_tiny_lavin):
    module = make_tiny_lavin(vision_routing="release")
    perturb_adapters(module)
    module.eval()
    batch = make_batch(module.tokenizer, has_image=(False, True, True))  # row 0 is text-only
    pixels = batch["pixel_values"]
    assert not pixels[0].any()  # the text-only sample's all-zero image
    # As the release: the ViT sees the whole batch, row 0's blank image included, and every
    # image routes on it.
    on_every_sample = neck(module, pixels)
    torch.testing.assert_close(visual_slots(module, batch, 1), on_every_sample[1])
    # Not what routing on the first *image* would give (the ViT on the image samples only).
    on_images = neck(module, pixels[1:])
    assert not torch.allclose(on_every_sample[1], on_images[0], atol=1e-4)

    routers = [m for m in module.model.vision.modules() if isinstance(m, RepAdapterRouter)]
    for router in routers:
        router.recorded = []
    module.model.prepare(batch)
    assert all(len(r.recorded) == 1 and r.recorded[0].shape[0] == 1 for r in routers)  # one row's routing

    # Token routing (the default) does not depend on the other samples: the ViT sees the images only.
    token = make_tiny_lavin()
    perturb_adapters(token)
    token.eval()
    torch.testing.assert_close(visual_slots(token, batch, 1), neck(token, pixels[1:])[0])
    # A batch without images never runs the ViT, whatever the routing.
    text_only = make_batch(module.tokenizer, has_image=(False, False, False))
    calls = []
    hook = module.model.vision.register_forward_pre_hook(lambda *args: calls.append(1))
    module.model.prepare(text_only)
    hook.remove()
    assert calls == []


def test_release_decode_positions_are_one_lower_after_the_shortest_prompt():
    index = torch.arange(8).expand(2, -1)
    lengths = torch.tensor([5, 7])
    model = SimpleNamespace(decode_positions="release")
    shifted = LaVINModel.decoding_positions(model, index, lengths)
    assert shifted.tolist() == [[0, 1, 2, 3, 4, 4, 5, 6]] * 2
    model.decode_positions = "training"
    assert LaVINModel.decoding_positions(model, index, lengths) is index


@torch.no_grad()
def test_release_decode_positions_change_only_the_decoded_tokens(make_tiny_lavin):
    default = make_tiny_lavin()
    perturb_adapters(default, std=0.5)
    default.eval()
    batch = make_batch(default.tokenizer, with_labels=False)
    training = default.model.generate(batch, GREEDY)
    default.model.decode_positions = "release"
    cached = default.model.generate(batch, GREEDY)
    assert default.model.generate(batch, GREEDY, use_cache=False) == cached
    assert cached != training
    # One sample alone: its prompt is the shortest, so its prefill (the first token) is unchanged.
    one = {k: v[:1] for k, v in batch.items()}
    default.model.decode_positions = "training"
    alone_training = default.model.generate(one, GREEDY)
    default.model.decode_positions = "release"
    alone_release = default.model.generate(one, GREEDY)
    assert alone_release[0][0] == alone_training[0][0]

    with pytest.raises(ConfigError, match="modality token"):
        from lavin_lightning.models.lavin import LaVIN

        LaVIN(llm=default.llm_spec, adapter=type(default.adapter)(modality_token=False), decode_positions="release")


@torch.no_grad()
def test_release_visual_repadapter_has_no_residual_and_no_scale(make_tiny_lavin):
    adapter = RepAdapter(16, scale=3.0, dropout=0.0, residual=False)
    torch.nn.init.normal_(adapter.up.weight)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(adapter(x), adapter.up(adapter.down(x)))

    module = make_tiny_lavin(vision_adapter="repadapter_release")
    vit_adapters = [m for m in module.model.vision.modules() if isinstance(m, RepAdapter)]
    assert vit_adapters and not any(a.residual for a in vit_adapters)
    llm_adapters = [m for m in module.model.llm.modules() if isinstance(m, (RepAdapter, RepAdapterRouter))]
    assert llm_adapters and all(getattr(a, "residual", True) for a in llm_adapters)
    # The same tensors as the plain RepAdapter, so the same file layout.
    plain = make_tiny_lavin(vision_adapter="repadapter")
    assert {k: p.shape for k, p in module._trainable.items()} == {k: p.shape for k, p in plain._trainable.items()}
    # At init the release's variant hands attention zeros: the ViT is no longer the frozen one.
    pixels = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(module.model.vision.cls_features(pixels), plain.model.vision.cls_features(pixels))


def _llama_adapter(gate: str, seed: int = 0):
    from lavin_lightning.adapters.llama_adapter import LlamaAdapterConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.models.llama_adapter import LlamaAdapter

    torch.manual_seed(seed)
    module = LlamaAdapter(llm=LLMSpec(config="tiny"), adapter=LlamaAdapterConfig(layers=1, gate=gate),
                          optim=OptimConfig(lr=1e-2, base_lr=None, weight_decay=0.02, warmup_epochs=0.0))
    module.configure_model()
    return module.eval()


@torch.no_grad()
def test_raw_gate_multiplies_by_the_parameter_itself(tmp_path, caplog):
    tanh, raw = _llama_adapter("tanh"), _llama_adapter("raw")
    batch = make_batch(tanh.tokenizer, has_image=(False, False, False))
    values = torch.linspace(-0.9, 0.9, tanh.model.llm.config.num_attention_heads)
    for module, gate in ((tanh, torch.atanh(values)), (raw, values)):
        perturb_adapters(module)
        for name, param in module._trainable.items():
            if name.endswith(".gate"):
                param.copy_(gate)
    torch.testing.assert_close(raw.model.loss(batch), tanh.model.loss(batch))

    # The gate's convention is a choice of evaluation: an export loads under either, with a warning.
    save_adapter(tanh, tmp_path / "tanh")
    with caplog.at_level(logging.WARNING, logger="lavin_lightning.checkpoint"):
        load_adapter(_llama_adapter("raw"), tmp_path / "tanh")
    assert "config.gate: checkpoint 'tanh' vs model 'raw'" in caplog.text
    # Settings that shape the tensors or their meaning still refuse.
    from lavin_lightning.adapters.llama_adapter import LlamaAdapterConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.models.llama_adapter import LlamaAdapter

    torch.manual_seed(0)
    other = LlamaAdapter(llm=LLMSpec(config="tiny"), adapter=LlamaAdapterConfig(layers=1, prompt_length=4))
    other.configure_model()
    with pytest.raises(CheckpointError, match="prompt_length"):
        load_adapter(other, tmp_path / "tanh")


def test_decay_also_puts_the_gates_into_the_decayed_group():
    module = _llama_adapter("tanh")
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    gates = {id(p) for n, p in module._trainable.items() if n.endswith(".gate")}
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert gates <= {id(p) for p in no_decay["params"]}  # 1-D: not decayed by default
    module.optim.decay_also = (r"adaption_prompt\.gate$",)
    decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    assert gates <= {id(p) for p in decay["params"]} and decay["weight_decay"] == 0.02
    assert not gates & {id(p) for p in no_decay["params"]}
    module.optim.decay_also = (r"adaption_prompt\.gat$",)
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        module.configure_optimizers()
