"""The demos' configs, the demo's pretrained ViT, and a demo adapter loaded again through `chat`."""

from __future__ import annotations

import io

import pytest
import torch
import yaml
from conftest import REPO

pytest.importorskip("easy_vqa")


def weights(spec: dict) -> dict:
    """A backbone spec without how the demo holds and runs it (dtype, attention kernel, GGUF cache, dropout)."""
    how = ("dtype", "attention", "gguf_cache", "qformer_dropout")
    return {k: v for k, v in spec.items() if v is not None and k not in how}


def test_every_demo_method_has_a_config_on_the_embedded_default():
    from lavin_lightning.commands.demo import EMBEDDED, demo_config, demo_methods, tiny_config, tiny_methods
    from lavin_lightning.models.causal_lm import CausalLMModule
    from lavin_lightning.models.instructblip import InstructBLIPModule

    assert demo_methods("instruct") == tiny_methods(CausalLMModule, "AlpacaDataModule")
    assert demo_methods("vqa") == tiny_methods(InstructBLIPModule)
    names = ["lavin"] + [f"instruct_{m}" for m in demo_methods("instruct")] + [f"vqa_{m}" for m in demo_methods("vqa")]
    for name in names:
        method = name.split("_", 1)[1] if "_" in name else name
        demo, tiny = demo_config(name)["model"], tiny_config(method)["model"]
        args = demo["init_args"]
        # The tiny config's method and adapter, on the embedded backbones; LaVIN's demo also
        # layer-norms its small ViT's features before the neck.
        assert demo["class_path"] == tiny["class_path"]
        expected = tiny["init_args"].get("adapter")
        if name == "lavin":
            expected = {**expected, "neck_input_norm": True}
        assert args.get("adapter") == expected, name
        if "llm" in args:
            assert weights(args["llm"]) == EMBEDDED["llm"], name
        if "backbone" in args:
            backbone = {**weights(args["backbone"]), "language_model": weights(args["backbone"]["language_model"])}
            assert backbone == EMBEDDED["backbone"], name
    vision = demo_config("lavin")["model"]["init_args"]["vision"]
    assert vision == {**EMBEDDED["vision"], "path": "data/vit/clip-small-64"}


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    """The demo's ViT pretrained with a tiny budget on a few of easy-VQA's images."""
    from data_modules.prepare import vit

    real = vit._pictures
    mp = pytest.MonkeyPatch()
    mp.setattr(vit, "_pictures", lambda easy_vqa, split: tuple(c[:48 if split == "train" else 24]
                                                                 for c in real(easy_vqa, split)))
    mp.setattr(vit, "_PROBE_TRAIN_IMAGES", 48)
    try:
        out = tmp_path_factory.mktemp("vit") / "clip-small-64"
        logs: list[str] = []
        path = vit.build_pretrained_vit(out, log=logs.append, steps=3, batch_size=8, warmup_steps=1)
        yield vit, path, logs, mp
    finally:
        mp.undo()


def test_the_pretrained_vit_is_a_clip_directory_with_its_record(small_vit):
    vit, path, logs, _ = small_vit
    from lavin_lightning.backbones.vision import NAMED_CLIP_CONFIGS, VisionSpec, build_vision_encoder

    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    record = vit.pretraining_record(path)
    assert record["params"]["steps"] == 3 and record["params"]["architecture"] == NAMED_CLIP_CONFIGS["clip-small-64"]
    assert len(record["params"]["settings_sha256"]) == 16 and record["counts"]["train_images"] == 48
    probe = record["linear_probe_test_accuracy"]
    assert set(probe) == {"pretrained", "random_init"}
    assert all(0 <= probe[k][f] <= 100 for k in probe for f in ("color", "shape"))
    assert any("step 3/3" in line for line in logs)
    # The project's own loader reads it (checked against the named architecture).
    encoder = build_vision_encoder(VisionSpec(kind="clip", path=str(path), config="clip-small-64", cls_every=1))
    assert encoder.cls_features(torch.zeros(2, 3, 64, 64)).shape == (2, 4, 128)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_the_pretrained_vit_is_reused_and_rebuilt_when_a_setting_changes(small_vit):
    vit, path, _, _ = small_vit
    weights = (path / "model.safetensors").read_bytes()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    logs: list[str] = []
    assert vit.build_pretrained_vit(path, log=logs.append, steps=3, batch_size=8, warmup_steps=1) == path
    assert logs == [] and (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = path.parent / "again"
    vit.build_pretrained_vit(other, log=logs.append, steps=3, batch_size=8, warmup_steps=1)
    assert (other / "model.safetensors").read_bytes() == weights  # the same settings, the same weights
    vit.build_pretrained_vit(other, log=logs.append, steps=3, batch_size=8, warmup_steps=1, seed=1)
    assert vit.pretraining_record(other)["params"]["seed"] == 1
    assert (other / "model.safetensors").read_bytes() != weights


def test_unknown_or_bad_pretraining_settings_are_refused(tmp_path):
    from data_modules.prepare.vit import build_pretrained_vit
    from lavin_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown ViT pretraining settings"):
        build_pretrained_vit(tmp_path / "vit", epochs=2)
    with pytest.raises(ConfigError, match="keep_patches"):
        build_pretrained_vit(tmp_path / "vit", keep_patches=0)


def _demo_lavin_on_the_tiny_llm(vit_path) -> dict:
    """The LaVIN demo's config with the tiny test LLM in place of SmolLM2 (the ViT is the demo's)."""
    from lavin_lightning.commands.demo import demo_config

    config = demo_config("lavin")
    config["model"]["init_args"]["llm"] = {"config": "tiny"}
    config["model"]["init_args"]["vision"]["path"] = str(vit_path)
    return config


def test_a_demo_lavin_adapter_loads_through_chat(small_vit, tmp_path, monkeypatch):
    _, vit_path, _, _ = small_vit
    from PIL import Image

    from lavin_lightning.checkpoint import save_adapter
    from lavin_lightning.commands.chat import main as chat
    from lavin_lightning.commands.demo import demo_module
    from lavin_lightning.config import load_causal_lm_module

    config = _demo_lavin_on_the_tiny_llm(vit_path)
    torch.manual_seed(0)
    trained = demo_module(config)
    trained.configure_model()
    with torch.no_grad():
        for p in trained._trainable.values():
            p.add_(torch.randn_like(p) * 0.01)  # as if trained: no tensor at its initial value
    save_adapter(trained, tmp_path / "adapter")

    torch.manual_seed(123)  # whatever the state: nothing random is frozen
    loaded = load_causal_lm_module(config, str(tmp_path / "adapter"), "chat")
    for name, p in trained._trainable.items():
        assert torch.equal(loaded._trainable[name], p), name
    assert loaded.model.vision.backbone_id == str(vit_path)

    # The command itself, with the config written out and an easy-VQA sized picture.
    config_file = tmp_path / "lavin.yaml"
    config_file.write_text(yaml.safe_dump(config))
    Image.new("RGB", (64, 64), (200, 20, 20)).save(tmp_path / "red.png")
    monkeypatch.setattr("sys.stdin", io.StringIO("What colour is the shape?\n/exit\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    chat(["--config", str(config_file), "--adapter", str(tmp_path / "adapter"), "--template", "lavin",
          "--image", str(tmp_path / "red.png"), "--max-new-tokens", "3", "--temperature", "0"])
    assert "model> " in out.getvalue()


def test_a_demo_lavin_adapter_refuses_another_vit(small_vit, tmp_path):
    vit, vit_path, _, _ = small_vit
    from lavin_lightning.checkpoint import save_adapter
    from lavin_lightning.commands.demo import demo_module
    from lavin_lightning.config import load_causal_lm_module
    from lavin_lightning.errors import CheckpointError

    trained = demo_module(_demo_lavin_on_the_tiny_llm(vit_path))
    trained.configure_model()
    save_adapter(trained, tmp_path / "adapter")
    other = vit.build_pretrained_vit(tmp_path / "other-vit", log=lambda line: None, steps=3, batch_size=8,
                                     warmup_steps=1, seed=5)
    with pytest.raises(CheckpointError, match="backbone.vision: same architecture but different weights"):
        load_causal_lm_module(_demo_lavin_on_the_tiny_llm(other), str(tmp_path / "adapter"), "chat")


def test_the_zeroed_image_control_zeroes_the_pixels_only():
    from lavin_lightning.commands.demo_lavin import ZeroedImages

    batch = {"pixel_values": torch.ones(2, 3, 4, 4), "has_image": torch.tensor([True, False]),
             "input_ids": torch.ones(2, 3, dtype=torch.long)}
    ZeroedImages().on_test_batch_start(None, None, batch, 0)
    assert not batch["pixel_values"].any() and batch["has_image"].tolist() == [True, False]
    assert batch["input_ids"].sum() == 6


def test_the_demo_config_documents_its_commands():
    text = (REPO / "experiments/demo/lavin.yaml").read_text()
    assert "lavin-lightning chat --config experiments/demo/lavin.yaml --adapter runs/demo/adapter" in text
    assert "path: data/vit/clip-small-64" in text


@pytest.mark.parametrize("name", ["lavin", "instruct_excitor", "vqa_petal"])
def test_the_demos_run_in_float32_where_bf16_is_emulated(name, monkeypatch, capsys):
    """`--precision fp32` (and `auto` on a CPU without bf16 units) turns every bfloat16 of a demo
    config into float32 and bf16 autocast into 32-true; `bf16` keeps the config as it is."""
    from lavin_lightning.commands import demo

    config = demo.demo_config(name)
    as_config, chosen = demo.with_precision(config, "bf16")
    assert as_config is config and chosen == "bf16"
    fp32, chosen = demo.with_precision(config, "fp32")
    assert chosen == "fp32" and "bfloat16" in yaml.safe_dump(config) and "bfloat16" not in yaml.safe_dump(fp32)
    assert fp32["trainer"].get("precision", "32-true") == "32-true" and fp32["data"] == config["data"]
    module = demo.demo_module(fp32)
    spec = module.llm_spec if name != "vqa_petal" else module.backbone_spec.language_model
    assert spec.dtype == "float32" and config == demo.demo_config(name)  # the config itself untouched

    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(demo, "native_bf16", lambda native=native: (native, "a CPU"))
        assert demo.with_precision(config, "auto")[1] == expected
        assert f"precision: {expected} (a CPU has" in capsys.readouterr().out


def test_bf16_counts_as_native_only_with_bf16_units():
    from lavin_lightning.commands.demo import native_bf16

    native, device = native_bf16()
    assert isinstance(native, bool) and device
    if not torch.cuda.is_available():
        features = torch._C._cpu._get_cpu_capability()
        if features.get("architecture") == "x86_64":
            assert native == bool(features["avx512_bf16"] or features["amx_bf16"])


def test_commands_with_a_demo_config_write_beside_the_demo_not_over_it():
    """`test --config experiments/demo/lavin.yaml` once replaced the demo's runs/demo/metrics.json."""
    from lavin_lightning.commands.demo import DEMO_CONFIGS, demo_config

    for path in sorted(DEMO_CONFIGS.glob("*.yaml")):
        root = demo_config(path.stem)["trainer"]["default_root_dir"]
        demo_out = "runs/demo" if path.stem == "lavin" else f"runs/demo-{path.stem.replace('_', '-', 1)}"
        assert root == f"{demo_out}/cli", path
