"""Frozen vision towers: real configs on the meta device, LaVIN's per-layer [CLS] features
checked against independent computations, local loading, and loud failures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lavin_lightning.backbones.vision import VisionSpec, build_vision_encoder
from lavin_lightning.errors import ConfigError

# A timm ViT small enough for CPU tests (timm.create_model kwargs override the named model's).
TINY_TIMM = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
             "embed_dim": 32, "depth": 4, "num_heads": 2}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_clip(cls_every: int = 1, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_vision_encoder(VisionSpec(kind="clip", config="tiny", cls_every=cls_every, **kw))


def tiny_timm(cls_every: int = 2, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_vision_encoder(VisionSpec(kind="timm", config=dict(TINY_TIMM), cls_every=cls_every, **kw))


def pixels(encoder, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, encoder.image_size, encoder.image_size, generator=gen)


# -- real architectures on the meta device ---------------------------------------------------

def test_clip_vit_l14_on_meta_matches_the_real_tower():
    with torch.device("meta"):
        enc = build_vision_encoder(VisionSpec(kind="clip", config="clip-vit-l/14", cls_every=4))
    assert next(enc.parameters()).device.type == "meta"
    assert n_params(enc) == 303_179_776
    assert (enc.width, enc.num_layers, enc.num_feature_tokens, enc.image_size) == (1024, 24, 6, 224)
    for position, norm in (("attn", "layer_norm1"), ("ffn", "layer_norm2")):
        names = enc.block_norm_names(position)
        assert names == [f"model.encoder.layers.{i}.{norm}" for i in range(24)]
        modules = [enc.get_submodule(name) for name in names]
        assert all(isinstance(m, nn.LayerNorm) and m.normalized_shape == (1024,) for m in modules)


def test_clip_vit_b16_on_meta_gives_three_tokens_of_768():
    with torch.device("meta"):
        enc = build_vision_encoder(VisionSpec(kind="clip", config="clip-vit-b/16", cls_every=4))
    assert (enc.width, enc.num_layers, enc.num_feature_tokens) == (768, 12, 3)
    assert len(enc.block_norm_names()) == 12


def test_missing_weights_on_meta_fall_back_to_the_config(tmp_path):
    # `lavin-lightning params` counts the paper rows on machines without the weights.
    missing = str(tmp_path / "clip-vit-large-patch14")
    with torch.device("meta"):
        enc = build_vision_encoder(VisionSpec(kind="clip", path=missing, config="clip-vit-l/14"))
    assert n_params(enc) == 303_179_776
    assert enc.backbone_id == missing


@pytest.mark.parametrize("name, width, layers", [("vit_large_patch14_clip_224.openai", 1024, 24),
                                                 ("vit_base_patch16_224", 768, 12)])
def test_timm_real_configs_on_meta(name, width, layers):
    with torch.device("meta"):
        enc = build_vision_encoder(VisionSpec(kind="timm", config=name, cls_every=4))
    assert (enc.width, enc.num_layers, enc.num_feature_tokens) == (width, layers, layers // 4)
    norms = [enc.get_submodule(n) for n in enc.block_norm_names("attn")]
    assert len(norms) == layers and all(m.normalized_shape == (width,) for m in norms)
    assert enc.block_norm_names("ffn")[-1] == f"model.blocks.{layers - 1}.norm2"
    assert enc.config_dict()["model_name"] == name


# -- features against independent computations ---------------------------------------------

@pytest.mark.parametrize("cls_every", [1, 2])
def test_clip_cls_features_are_hf_hidden_states_before_post_layernorm(cls_every):
    enc = tiny_clip(cls_every=cls_every)
    x = pixels(enc)
    feats = enc.cls_features(x)
    assert feats.shape == (2, 2 // cls_every, 32)
    with torch.no_grad():
        out = enc.model(pixel_values=x, output_hidden_states=True)
    # hidden_states[0] is the (pre_layrnorm'ed) embedding; [k] is the output of layer k.
    expected = torch.stack([out.hidden_states[k][:, 0] for k in range(cls_every, 3, cls_every)], dim=1)
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=0)
    # The last feature is the [CLS] before post_layernorm: the pooler is its normalised form.
    torch.testing.assert_close(enc.model.post_layernorm(feats[:, -1]), out.pooler_output, atol=1e-6, rtol=0)
    assert not torch.allclose(feats[:, -1], out.pooler_output, atol=1e-3)


def test_timm_cls_features_match_running_the_blocks_by_hand():
    enc = tiny_timm(cls_every=2)
    x = pixels(enc)
    feats = enc.cls_features(x)
    assert feats.shape == (2, 2, 32)
    m = enc.model
    with torch.no_grad():
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        cls = []
        for block in m.blocks:
            h = block(h)
            cls.append(h[:, 0])
    torch.testing.assert_close(feats, torch.stack([cls[1], cls[3]], dim=1), atol=1e-6, rtol=0)
    assert not torch.allclose(feats[:, -1], m.norm(h)[:, 0], atol=1e-3)  # taken before the final norm


# -- loading from local files ----------------------------------------------------------------

def test_clip_round_trip_through_a_local_directory(tmp_path):
    enc = tiny_clip(cls_every=2)
    enc.model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = build_vision_encoder(VisionSpec(kind="clip", path=str(tmp_path), cls_every=2))
    x = pixels(enc)
    assert torch.equal(loaded.cls_features(x), enc.cls_features(x))
    assert loaded.backbone_id == str(tmp_path)
    assert loaded.config_dict() == enc.config_dict()
    assert not any(p.requires_grad for p in loaded.parameters())
    # A config given beside the path is checked against the weights' own config.
    same = build_vision_encoder(VisionSpec(kind="clip", path=str(tmp_path), config="tiny", cls_every=2))
    assert torch.equal(same.cls_features(x), enc.cls_features(x))
    with pytest.raises(ConfigError, match="do not match config 'clip-small-64'"):
        build_vision_encoder(VisionSpec(kind="clip", path=str(tmp_path), config="clip-small-64"))


def test_clip_directory_without_safetensors_is_refused(tmp_path):
    tiny_clip().model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        build_vision_encoder(VisionSpec(kind="clip", path=str(tmp_path), cls_every=1))


def test_timm_round_trip_through_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    enc = tiny_timm()
    file = tmp_path / "vit.safetensors"
    save_file(enc.model.state_dict(), str(file))
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = build_vision_encoder(VisionSpec(kind="timm", path=str(file), config=dict(TINY_TIMM), cls_every=2))
    x = pixels(enc)
    assert torch.equal(loaded.cls_features(x), enc.cls_features(x))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_timm_file_with_a_head_loads_but_a_wrong_architecture_does_not(tmp_path):
    import timm
    from safetensors.torch import save_file

    kwargs = {k: v for k, v in TINY_TIMM.items() if k != "model_name"}
    with_head = timm.create_model(TINY_TIMM["model_name"], pretrained=False, num_classes=5, **kwargs)
    file = tmp_path / "with_head.safetensors"
    save_file(with_head.state_dict(), str(file))
    loaded = build_vision_encoder(VisionSpec(kind="timm", path=str(file), config=dict(TINY_TIMM), cls_every=2))
    torch.testing.assert_close(loaded.model.cls_token, with_head.cls_token, atol=0, rtol=0)

    wider = dict(TINY_TIMM, embed_dim=64)
    with pytest.raises(ConfigError, match="do not fit timm model"):
        build_vision_encoder(VisionSpec(kind="timm", path=str(file), config=wider, cls_every=2))


# -- failures ---------------------------------------------------------------------------------

def test_missing_clip_directory_names_the_path_and_how_to_get_it(tmp_path):
    missing = tmp_path / "clip-vit-large-patch14"
    with pytest.raises(ConfigError) as err:
        build_vision_encoder(VisionSpec(kind="clip", path=str(missing), config="clip-vit-l/14"))
    assert str(missing) in str(err.value)
    assert "openai/clip-vit-large-patch14" in str(err.value) and "save_pretrained" in str(err.value)


def test_timm_paths_must_be_existing_safetensors_files(tmp_path):
    for suffix in (".pth", ".bin"):
        pickled = tmp_path / f"vit{suffix}"
        pickled.write_bytes(b"never unpickled")
        with pytest.raises(ConfigError, match="must be a .safetensors file"):
            build_vision_encoder(VisionSpec(kind="timm", path=str(pickled), config=dict(TINY_TIMM), cls_every=2))
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ConfigError) as err:
        build_vision_encoder(VisionSpec(kind="timm", path=str(missing), config=dict(TINY_TIMM), cls_every=2))
    assert str(missing) in str(err.value) and "vit_tiny_patch16_224" in str(err.value)


@pytest.mark.parametrize("spec, message", [
    (VisionSpec(kind="clip", config="tiny", cls_every=3), "divides"),  # 2 layers
    (VisionSpec(kind="clip", config="tiny", cls_every=0), "divides"),
    (VisionSpec(kind="timm", config=dict(TINY_TIMM), cls_every=3), "divides"),  # 4 layers
    (VisionSpec(kind="clip"), "needs `path` or `config`"),
    (VisionSpec(kind="clip", config="clip-vit-h/14"), "unknown CLIP config"),
    (VisionSpec(kind="timm"), "needs `config`"),
    (VisionSpec(kind="timm", config=dict(TINY_TIMM, class_token=False, global_pool="avg")), "class token"),
    (VisionSpec(kind="siglip", config="tiny"), "'clip' or 'timm'"),
])
def test_bad_specs_raise_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_vision_encoder(spec)


# -- frozen, but open to injected adapters ---------------------------------------------------

@pytest.mark.parametrize("make", [tiny_clip, tiny_timm], ids=["clip", "timm"])
def test_tower_is_frozen_and_builds_no_graph_on_its_own(make):
    enc = make()
    assert n_params(enc) > 0 and not any(p.requires_grad for p in enc.parameters())
    feats = enc.cls_features(pixels(enc))
    assert not feats.requires_grad and feats.grad_fn is None


@pytest.mark.parametrize("make", [tiny_clip, tiny_timm], ids=["clip", "timm"])
def test_gradients_reach_a_module_wrapped_around_a_block_norm(make):
    enc = make()
    name = enc.block_norm_names("attn")[0]
    parent, _, child = name.rpartition(".")
    probe = nn.Linear(enc.width, enc.width)
    setattr(enc.get_submodule(parent), child, nn.Sequential(enc.get_submodule(name), probe))
    feats = enc.cls_features(pixels(enc))
    assert feats.requires_grad
    feats.square().sum().backward()
    assert probe.weight.grad is not None and probe.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters() if not p.requires_grad)


def test_identity_config_and_dtype():
    enc = tiny_clip()
    assert enc.backbone_id == "config:tiny"
    assert json.loads(json.dumps(enc.config_dict())) == enc.config_dict()
    assert enc.config_dict() != tiny_clip(cls_every=2).config_dict()
    timm_dict = tiny_timm().config_dict()
    assert json.loads(json.dumps(timm_dict)) == timm_dict and timm_dict["embed_dim"] == 32
    half = build_vision_encoder(VisionSpec(kind="clip", config="tiny", cls_every=1), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.cls_features(pixels(half)).dtype == torch.bfloat16
