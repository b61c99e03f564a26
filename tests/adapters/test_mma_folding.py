"""LaVIN's MM-Adapters folded into the frozen LLM weights per modality (inference): the same
outputs as the unfolded model, no adapter left on the LLM's path, and everything as it was after."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, perturb_adapters

from lavin_lightning.adapters.core import AdapterModule, adapters_disabled
from lavin_lightning.adapters.mma import ModalityFoldedLinear
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.causal_lm import GenerationConfig

GREEDY = GenerationConfig(max_new_tokens=8, temperature=0.0)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad(), model.conditioning(batch):
        embeds, valid, _ = model.prepare(batch)
        positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
        return model.llm.lm_head(model.run_llm(embeds, valid, positions, embeds.shape[1]))


@pytest.mark.parametrize("adapter", [{}, {"llm_placement": "block"}, {"llm_adapter": "repadapter"},
                                     {"modality_token": False}, {"scale": 0.5}])
def test_folded_model_equals_the_unfolded_one_on_mixed_batches(make_tiny_lavin, adapter):
    # In float64 the fold is exact to rounding; in float32 the two summation orders differ by
    # float32 rounding, which the tiny model's large weights amplify (greedy tokens still agree).
    module = make_tiny_lavin(**adapter)
    perturb_adapters(module, std=0.5)
    module.eval().double()
    batch = make_batch(module.tokenizer, has_image=(True, False, True))
    batch["pixel_values"] = batch["pixel_values"].double()
    expected = logits(module.model, batch)
    with module.inference():
        torch.testing.assert_close(logits(module.model, batch), expected, rtol=1e-10, atol=1e-10)
    module.float()
    prompts = make_batch(module.tokenizer, has_image=(True, False, True), with_labels=False)
    batch["pixel_values"] = batch["pixel_values"].float()
    expected_logits, expected_tokens = logits(module.model, batch), module.model.generate(prompts, GREEDY)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with module.inference():
        assert module.model.folding is not None
        assert module.model.generate(prompts, GREEDY) == expected_tokens
        one_modality = {k: v[:1] for k, v in prompts.items()}
        assert module.model.generate(one_modality, GREEDY) == expected_tokens[:1]
    # Unfolded: the very same modules and tensors as before.
    assert module.model.folding is None
    assert not any(isinstance(m, ModalityFoldedLinear) for m in module.modules())
    assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items())
    torch.testing.assert_close(logits(module.model, batch), expected_logits, rtol=0, atol=0)


def test_no_adapter_runs_on_the_folded_llm_path(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module)
    module.eval()
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in module.model.llm.modules()
             if isinstance(m, AdapterModule)]
    assert len(hooks) == module.model.llm.config.num_hidden_layers
    batch = make_batch(module.tokenizer, has_image=(False, False, False), with_labels=False)
    with module.inference():
        calls.clear()  # folding itself reads the routers once per modality
        folded = [m for m in module.model.llm.modules() if isinstance(m, ModalityFoldedLinear)]
        assert len(folded) == 3 * module.model.llm.config.num_hidden_layers  # q, k, v of every layer
        module.model.generate(batch, GREEDY)
    for hook in hooks:
        hook.remove()
    assert calls == []


def test_adapters_disabled_inside_the_fold_is_the_backbone(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module)
    module.eval()
    batch = make_batch(module.tokenizer)
    with adapters_disabled(module.model):
        backbone = logits(module.model, batch)
    with module.inference(), adapters_disabled(module.model):
        torch.testing.assert_close(logits(module.model, batch), backbone, rtol=1e-5, atol=1e-5)


def test_folding_refuses_training_mode_and_can_be_switched_off(make_tiny_lavin):
    module = make_tiny_lavin()
    module.train()
    with pytest.raises(ConfigError, match="eval"):
        module.model.fold()
    assert not any(isinstance(m, ModalityFoldedLinear) for m in module.modules())
    module.eval()
    module.fold_for_inference = False
    with module.inference():
        assert module.model.folding is None
