"""A quantized frozen backbone (`LLMSpec.quantization`, LaVIN-lite): the option validates, only the
decoder blocks' linears are quantized and their bytes fall, every causal-LM method trains its fp32
adapters over it, folding / merging is refused with a message, the outputs stay close to the float
model's, and an adapter trained over it exports and loads back. torchao runs here (CPU)."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "models"))
from test_method_contract import OPTIM, ROWS, batch_for, outputs, train  # noqa: E402

from lavin_lightning.adapters.core import Injection  # noqa: E402
from lavin_lightning.adapters.lora import merged  # noqa: E402
from lavin_lightning.backbones.llama import (  # noqa: E402
    LLMSpec,
    QuantizationSpec,
    is_quantized,
    load_causal_lm,
    recompute_weight_in_backward,
)
from lavin_lightning.checkpoint import load_adapter, save_adapter  # noqa: E402
from lavin_lightning.errors import ConfigError  # noqa: E402
from lavin_lightning.models.causal_lm import GenerationConfig  # noqa: E402
from lavin_lightning.models.lora import LoRA  # noqa: E402

pytest.importorskip("torchao")

CAUSAL = ["lavin", "excitor", "llama_adapter", "llama_adapter-multimodal", "lora"]


def quantized_spec(bits: int = 8, **kwargs) -> LLMSpec:
    return LLMSpec(config="tiny", quantization={"backend": "torchao", "bits": bits, **kwargs})


def build(name: str, llm: LLMSpec, seed: int = 0):
    row = ROWS[name]
    torch.manual_seed(seed)
    module = row.method(llm, optim=OPTIM, generation=GenerationConfig(max_new_tokens=5, temperature=0.0),
                        **row.kwargs)
    module.configure_model()
    return module.eval()


def state_bytes(tensor: torch.Tensor) -> int:
    """Bytes that hold `tensor`, through a tensor subclass's inner tensors (torchao)."""
    if type(tensor) is not torch.Tensor and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(state_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


# --------------------------------------------------------------------------- the option


@pytest.mark.parametrize("fields, words", [
    ({"backend": "gptq"}, ["llm.quantization.backend", "'gptq'", "bitsandbytes", "torchao"]),
    ({"backend": "torchao", "bits": 3}, ["llm.quantization.bits", "3", "[4, 8]"]),
    ({"backend": "bitsandbytes", "bits": 4, "quant_type": "int4"}, ["llm.quantization.quant_type", "nf4", "fp4"]),
    ({"backend": "torchao", "group_size": 0}, ["llm.quantization.group_size"]),
    ({"backend": "torchao", "bitz": 8}, ["llm.quantization", "bitz", "bits"]),
])
def test_the_option_validates_naming_field_and_choices(fields, words):
    with pytest.raises(ConfigError) as err:
        LLMSpec(config="tiny", quantization=fields)
    assert all(word in str(err.value) for word in words), err.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs bitsandbytes")
def test_bitsandbytes_without_cuda_says_so_and_names_the_cpu_backend():
    spec = LLMSpec(config="tiny", quantization={"backend": "bitsandbytes", "bits": 4})
    with pytest.raises(ConfigError) as err:
        load_causal_lm(spec)
    message = str(err.value)
    assert ("not installed" in message) or ("CUDA GPU" in message and "backend: torchao" in message), message


def test_group_size_must_divide_the_inputs():
    with pytest.raises(ConfigError, match=r"group_size: 48 does not divide the inputs of .*q_proj \(64 inputs\)"):
        load_causal_lm(quantized_spec(4, group_size=48))


def test_quantization_is_part_of_the_backbone_identity():
    assert LLMSpec(config="tiny").backbone_id == "config:tiny"
    assert quantized_spec(8).backbone_id == "config:tiny [torchao-int8]"
    assert LLMSpec(config="tiny", quantization=QuantizationSpec("bitsandbytes", 4)).backbone_id \
        == "config:tiny [bitsandbytes-nf4]"


def test_meta_device_builds_shapes_without_quantizing():
    with torch.device("meta"):
        model = load_causal_lm(quantized_spec(4))
    assert not any(is_quantized(p) for p in model.parameters())


# --------------------------------------------------------------------------- what is quantized


@pytest.mark.parametrize("bits, at_most", [(8, 0.27), (4, 0.33)])
def test_only_decoder_linears_are_quantized_and_their_bytes_fall(bits, at_most):
    torch.manual_seed(0)
    fp = load_causal_lm(LLMSpec(config="tiny"))
    torch.manual_seed(0)
    q = load_causal_lm(quantized_spec(bits))
    quantized = {n for n, p in q.named_parameters() if is_quantized(p)}
    linears = {f"model.layers.{i}.{part}.weight" for i in range(2) for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert quantized == linears
    assert not any(p.requires_grad for p in q.parameters())
    fp_params = dict(fp.named_parameters())
    for name, p in q.named_parameters():  # embeddings, norms, LM head: untouched floats
        if name not in linears:
            assert type(p.data) is torch.Tensor and torch.equal(p, fp_params[name]), name
    fp_bytes = sum(state_bytes(fp_params[n]) for n in linears)
    q_bytes = sum(state_bytes(p) for n, p in q.named_parameters() if n in linears)
    # int8 values (1 of fp32's 4 bytes) plus fp32 scales per output row (int8) or per group of 32 (int4,
    # whose values torchao's CPU layout keeps one per byte, with an int8 zero point per group).
    assert q_bytes <= at_most * fp_bytes, (q_bytes, fp_bytes)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", CAUSAL)
def test_training_over_the_quantized_backbone_updates_only_fp32_adapters(name, bits):
    module = build(name, quantized_spec(bits))
    frozen = {n: (p.detach().dequantize() if is_quantized(p) else p.detach()).clone()
              for n, p in module.named_parameters() if n not in module.trainable_names}
    before = {n: p.detach().clone() for n, p in module._trainable.items()}
    assert all(p.dtype == torch.float32 and not is_quantized(p) for p in module._trainable.values())
    losses = train(module, steps=2)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    changed = {n for n, p in module._trainable.items() if not torch.equal(before[n], p)}
    assert changed == module.trainable_names
    for n, p in module.named_parameters():
        if n not in module.trainable_names:
            now = p.detach().dequantize() if is_quantized(p) else p.detach()
            assert torch.equal(now, frozen[n]), n
    # The optimizer state follows the fp32 adapters.
    optimizer = torch.optim.AdamW(list(module._trainable.values()), lr=1e-3)
    module.training_losses(batch_for(module))["loss"].backward()
    optimizer.step()
    assert {s.dtype for state in optimizer.state.values() for s in state.values() if s.ndim} == {torch.float32}


def quantized_linears(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and is_quantized(m.weight)}


def embeds_grad(model, embeds: torch.Tensor, cotangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Logits, d<logits, cotangent>/d(input embeddings), and the tensors autograd saved in the forward."""
    saved = []
    x = embeds.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logits = model(inputs_embeds=x).logits
    (grad,) = torch.autograd.grad(logits, x, cotangent)
    return logits.detach(), grad, saved


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_linears_recompute_their_float_weight_in_backward(bits):
    """torchao's weight-only linear dequantizes inside autograd, which would keep a float copy of
    every quantized weight for backward (a training step then peaks above the float model). The
    quantized linears stay nn.Linear (what adapters wrap) and save no float weight; the gradients
    are torchao's own (int8: up to rounding, as torchao rescales after its matmul; int4, which
    dequantizes first: bit for bit), and each layer's are those of its dequantized float weight."""
    torch.manual_seed(0)
    model = load_causal_lm(quantized_spec(bits))
    linears = quantized_linears(model)
    assert len(linears) == 14 and all(type(m) is torch.nn.Linear for m in linears.values())
    shapes = {s for m in linears.values() for s in (tuple(m.weight.shape), tuple(m.weight.shape)[::-1])}
    embeds = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(1))  # 7 tokens: no weight's shape
    cotangent = torch.randn(1, 7, model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    logits, grad, saved = embeds_grad(model, embeds, cotangent)
    floats = [t for t in saved if t.is_floating_point() and not is_quantized(t)]
    assert not [t.shape for t in floats if tuple(t.shape) in shapes]

    for linear in linears.values():  # torchao's own autograd
        del linear.forward
    plain_logits, plain_grad, plain_saved = embeds_grad(model, embeds, cotangent)
    assert sum(tuple(t.shape) in shapes and t.is_floating_point() for t in plain_saved) == 14  # what it kept
    assert torch.equal(logits, plain_logits)
    assert torch.allclose(grad, plain_grad, rtol=1e-4, atol=1e-5 * plain_grad.abs().max().item())
    if bits == 4:
        assert torch.equal(grad, plain_grad)

    for linear in linears.values():  # each layer's backward: the dequantized weight's, bit for bit
        x = torch.randn(1, 7, linear.in_features, requires_grad=True)
        g = torch.randn(1, 7, linear.out_features)
        (fake,) = torch.autograd.grad(torch.nn.functional.linear(x, linear.weight.dequantize()), x, g)
        recompute_weight_in_backward(linear)
        (ours,) = torch.autograd.grad(linear(x), x, g)
        assert torch.equal(ours, fake)


def test_quantized_linears_run_torchaos_plain_linear_without_autograd(monkeypatch):
    from lavin_lightning.backbones import llama

    model = load_causal_lm(quantized_spec(8))
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    with_graph = model(ids).logits  # frozen everything: nothing to differentiate, so no graph either

    def refuse(*args):
        raise AssertionError("the recomputing autograd function ran without autograd")

    monkeypatch.setattr(llama._FrozenQuantizedLinear, "apply", refuse)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, with_graph)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, with_graph)
    twin = copy.deepcopy(model)  # the replaced forward follows the copy's own layer
    q_proj = twin.model.layers[0].self_attn.q_proj
    assert q_proj.forward.args[0] is q_proj


def test_full_tuning_of_quantized_weights_is_refused():
    class FullLayer(LoRA):  # a method that would train a decoder layer as a whole
        def inject(self, model):
            return Injection([], [], trained=[model.llm.model.layers[0]])

    module = FullLayer(quantized_spec(8), optim=OPTIM)
    with pytest.raises(ConfigError, match=r"trains backbone weights as a whole.*quantized.*Drop llm.quantization"):
        module.configure_model()


# --------------------------------------------------------------------------- folding / merging


def test_lavin_does_not_fold_into_quantized_weights_and_says_so(caplog):
    module = build("lavin", quantized_spec(8))
    with pytest.raises(ConfigError, match=r"q_proj is a Linear holding a Int8Tensor \(quantized"):
        module.model.fold()
    batch = batch_for(module, labelled=False)
    plain = module.generate_text(batch)
    with caplog.at_level(logging.WARNING), module.inference():
        assert module.model.folding is None
        assert module.generate_text(batch) == plain
    assert "MM-Adapters not folded for inference, running them as in training" in caplog.text


def test_lora_does_not_merge_into_quantized_weights_and_says_so(caplog):
    module = build("lora", quantized_spec(4))
    train(module, steps=1)
    module.eval()
    with pytest.raises(ConfigError, match=r"self_attn.q_proj: its frozen weight is quantized .*not merged: it runs "
                                          r"unmerged"), merged(module.model):
        pass
    batch = batch_for(module)
    unmerged = outputs(module.model, batch)
    with caplog.at_level(logging.WARNING), module.inference():
        assert torch.equal(outputs(module.model, batch), unmerged)
    assert "LoRA not merged for inference, decoding with the updates unmerged" in caplog.text


# --------------------------------------------------------------------------- effect on outputs


@pytest.mark.parametrize("bits, bound", [(8, 0.1), (4, 0.7)])
def test_quantized_outputs_stay_close_to_the_float_model(bits, bound):
    """Relative error ||q - fp|| / ||fp|| of the logits over a batch of prompts. Weight-only int8
    with a scale per row moves each linear's output by ~0.5% (relative) on Gaussian weights; the
    tiny model's large random init (std 0.3: peaky, every block far from identity) compounds its 14
    linears to 4.0% (measured; 98% of next-token argmaxes agree), so 0.1 leaves 2.5x. Int4 in groups
    of 32 rounds ~17x coarser (~9% per linear): 48% measured on this worst case, bound 0.7, which
    still tells it from unrelated logits (~140%). SmolLM2-135M's real weights (benchmarks/quantization.py):
    3.2% int8, 45% int4."""
    torch.manual_seed(0)
    fp = load_causal_lm(LLMSpec(config="tiny")).eval()
    torch.manual_seed(0)
    q = load_causal_lm(quantized_spec(bits)).eval()
    ids = torch.randint(3, 250, (4, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = fp(ids).logits, q(ids).logits
    error = ((b - a).norm() / a.norm()).item()
    assert 0 < error < bound, error


# --------------------------------------------------------------------------- export


def test_an_adapter_trained_over_the_quantized_backbone_exports_and_loads_back(tmp_path, caplog):
    module = build("lora", quantized_spec(8))
    train(module, steps=2)
    module.eval()
    save_adapter(module, tmp_path)
    fresh = build("lora", quantized_spec(8))
    batch = batch_for(module)
    assert not torch.equal(outputs(fresh.model, batch), outputs(module.model, batch))
    with caplog.at_level(logging.WARNING):
        meta = load_adapter(fresh, tmp_path)
    assert "quantization error" not in caplog.text  # same backbone, same quantization: silent
    assert meta["backbone"]["llm"]["quantization"]["backend"] == "torchao"
    assert torch.equal(outputs(fresh.model, batch), outputs(module.model, batch))
    # The same adapter over the float backbone it was quantized from: same weights, loaded with a warning.
    floating = build("lora", LLMSpec(config="tiny"))
    with caplog.at_level(logging.WARNING):
        load_adapter(floating, tmp_path)
    assert "trained over a torchao 8-bit quantized backbone and run over a float backbone" in caplog.text
    assert torch.equal(floating._trainable["model.llm.model.layers.0.self_attn.q_proj.lora_A.default.weight"],
                       module._trainable["model.llm.model.layers.0.self_attn.q_proj.lora_A.default.weight"])


def test_other_weights_are_still_refused_over_a_quantized_backbone(tmp_path):
    module = build("lora", quantized_spec(8), seed=0)
    save_adapter(module, tmp_path)
    other = build("lora", quantized_spec(8), seed=1)  # other random backbone weights
    with pytest.raises(Exception, match="different weights"):
        load_adapter(other, tmp_path)
