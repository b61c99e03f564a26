"""Frozen vision towers (CLIP from `transformers`, ViT from `timm`) exposing LaVIN's features.

LaVIN feeds the language model the [CLS] token taken after every k-th transformer layer
of a frozen ViT (k = 4 for CLIP ViT-L/14: layers 4, 8, ..., 24 -> 6 tokens of width 1024),
before the final layer norm and without CLIP's projection (spec `lavin_mma.md`, section 1).

Nothing is ever downloaded: weights come from a local path, or the tower is built from a
config with random weights (tests, the demo, parameter counts on the meta device). A
missing path is a `ConfigError` that names it and says how to obtain it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lavin_lightning.errors import ConfigError

# Exact architectures of the public CLIP vision towers, plus two small random ones.
_CLIP_COMMON = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
NAMED_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "clip-vit-l/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                          num_attention_heads=16, patch_size=14, image_size=224,
                          projection_dim=768, **_CLIP_COMMON),
    # LLaMA-Excitor's "@336px" encoder: ViT-L/14 at 336 px (577 tokens).
    "clip-vit-l/14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, patch_size=14, image_size=336,
                              projection_dim=768, **_CLIP_COMMON),
    "clip-vit-b/16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, patch_size=16, image_size=224,
                          projection_dim=512, **_CLIP_COMMON),
    # The demo tower: matches easy-vqa's 64x64 images.
    "clip-small-64": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, patch_size=8, image_size=64, projection_dim=128,
                          **_CLIP_COMMON),
    # Tests.
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, patch_size=8, image_size=32, projection_dim=24, **_CLIP_COMMON),
}

# Where the real weights of a named config live on the Hugging Face hub (for error messages).
_CLIP_HUB_IDS = {"clip-vit-l/14": "openai/clip-vit-large-patch14",
                 "clip-vit-l/14-336": "openai/clip-vit-large-patch14-336",
                 "clip-vit-b/16": "openai/clip-vit-base-patch16"}

# The fields that define a CLIP vision tower's architecture (fingerprint, consistency check).
_CLIP_ARCH_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "patch_size", "image_size", "num_channels", "hidden_act", "layer_norm_eps")


@dataclass
class VisionSpec:
    """Where the frozen vision encoder comes from.

    Args:
        kind: "clip" (transformers CLIPVisionModel) or "timm" (a timm VisionTransformer).
        path: clip: a local Hugging Face directory (config.json + *.safetensors); timm: a
            local .safetensors weights file. None: random weights built from `config`
            (tests, demo). Never downloaded.
        config: clip: a named architecture (clip-vit-l/14, clip-vit-b/16, clip-small-64,
            tiny) or a dict of CLIPVisionConfig fields, used when `path` is None or when
            counting parameters on the meta device without the weights; timm: the timm
            model name (e.g. vit_large_patch14_clip_224.openai), or a dict with
            `model_name` plus timm.create_model keyword arguments (always needed for timm).
        cls_every: take the [CLS] token after layers k, 2k, ..., N (LaVIN: 4, which gives
            6 visual tokens for the 24 layers of ViT-L/14). Must divide the layer count.
        projection: clip only: also load CLIP's output projection (`visual_projection`,
            e.g. 1024 -> 768 for ViT-L/14), applied by `token_features` (LLaMA-Excitor's
            D = 768 image tokens).
    """

    kind: str = "clip"
    path: str | None = None
    config: str | dict | None = None
    cls_every: int = 4
    projection: bool = False

    @property
    def backbone_id(self) -> str:
        """The source of the weights: the path, else the config's name."""
        if self.path:
            return self.path
        if isinstance(self.config, dict):
            return f"config:{self.config.get('model_name', 'custom')}"
        return f"config:{self.config}"


class VisionEncoder(nn.Module):
    """A frozen ViT wrapped as `self.model`, with LaVIN's per-layer [CLS] features.

    Subclasses set `_block_norm_template` (where the pre-attention / pre-MLP norms live)
    and implement `cls_features`.
    """

    _block_norm_template: str = ""  # e.g. "model.encoder.layers.{i}.{norm}"
    _norm_names: dict[str, str] = {}  # position ("attn"/"ffn") -> norm attribute in a block

    def __init__(self, model: nn.Module, *, width: int, num_layers: int, image_size: int,
                 cls_every: int, backbone_id: str, arch: dict[str, Any]):
        super().__init__()
        check_cls_every(cls_every, num_layers)
        self.model = model
        self.width = width
        self.num_layers = num_layers
        self.image_size = image_size
        self.cls_every = cls_every
        self.num_feature_tokens = num_layers // cls_every
        self.backbone_id = backbone_id
        self._arch = arch
        # Frozen: adapters injected later add the only trainable parameters.
        self.requires_grad_(False)

    def config_dict(self) -> dict[str, Any]:
        """A JSON-able description of the architecture (for backbone fingerprints)."""
        return {**self._arch, "cls_every": self.cls_every}

    def block_norm_names(self, position: str = "attn") -> list[str]:
        """Names (relative to this module) of the norm in front of attention ("attn") or the
        MLP ("ffn") in every block, in layer order: the seams where adapters wrap the norm."""
        if position not in self._norm_names:
            raise ConfigError(f"position must be one of {sorted(self._norm_names)}, got {position!r}")
        norm = self._norm_names[position]
        return [self._block_norm_template.format(i=i, norm=norm) for i in range(self.num_layers)]

    def _taken_layers(self) -> list[int]:
        """1-based layers whose output [CLS] is a feature: k, 2k, ..., N."""
        return list(range(self.cls_every, self.num_layers + 1, self.cls_every))

    def cls_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_feature_tokens, width): [CLS] after layers k, 2k, ..., N, pre final norm.

        Not run under no_grad: gradients must reach adapters injected into the blocks. With
        only frozen parameters and inputs, autograd records nothing anyway.
        """
        raise NotImplementedError

    @property
    def token_width(self) -> int:
        """Width of `token_features`."""
        return self.width

    def token_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, token_width): every token of the last layer after the final norm."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.cls_features(pixel_values)


class CLIPVisionEncoder(VisionEncoder):
    """`transformers.CLIPVisionModel`: embeddings -> pre_layrnorm -> encoder layers."""

    _block_norm_template = "model.encoder.layers.{i}.{norm}"
    _norm_names = {"attn": "layer_norm1", "ffn": "layer_norm2"}

    def cls_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The three steps of CLIPVisionModel.forward up to the last encoder layer, calling
        # the upstream modules (no hooks, no post_layernorm/pooler). pre_layrnorm is OpenAI
        # CLIP's ln_pre, applied before layer 1. A test checks this against HF's own
        # output_hidden_states.
        model = self.model
        hidden = model.pre_layrnorm(model.embeddings(pixel_values))
        features = []
        for index, layer in enumerate(model.encoder.layers, start=1):
            hidden = layer(hidden, None)  # vision tokens: no attention mask
            if index % self.cls_every == 0:
                features.append(hidden[:, 0])
        return torch.stack(features, dim=1)

    @property
    def token_width(self) -> int:
        projection = getattr(self, "projection", None)
        return projection.out_features if projection is not None else self.width

    def token_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # OpenAI CLIP's ln_post and proj over all tokens, as LLaMA-Adapter V2's clip_encode_image.
        model = self.model
        hidden = model.pre_layrnorm(model.embeddings(pixel_values))
        for layer in model.encoder.layers:
            hidden = layer(hidden, None)
        hidden = model.post_layernorm(hidden)
        projection = getattr(self, "projection", None)
        return projection(hidden) if projection is not None else hidden


class TimmVisionEncoder(VisionEncoder):
    """A `timm` VisionTransformer with a class token (position 0)."""

    _block_norm_template = "model.blocks.{i}.{norm}"
    _norm_names = {"attn": "norm1", "ffn": "norm2"}

    def cls_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # timm's own intermediate API: norm=False gives block outputs before the final norm;
        # the prefix tokens come separately, the class token first.
        out = self.model.forward_intermediates(
            pixel_values,
            indices=[layer - 1 for layer in self._taken_layers()],  # timm counts from 0
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
            output_dict=True,
        )
        return torch.stack([prefix[:, 0] for prefix in out["image_intermediates_prefix"]], dim=1)

    def token_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)  # all tokens after the final norm


# -- building -----------------------------------------------------------------------------

def check_cls_every(cls_every: int, num_layers: int) -> None:
    if not isinstance(cls_every, int) or isinstance(cls_every, bool) or cls_every < 1 \
            or num_layers % cls_every:
        raise ConfigError(
            f"cls_every={cls_every!r} must be a positive integer that divides the vision "
            f"tower's {num_layers} layers (LaVIN uses 4 for the 24 layers of ViT-L/14)"
        )


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ConfigError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _counting_only() -> bool:
    """Under `with torch.device("meta")` we build shapes only and never read weights."""
    return torch.get_default_device().type == "meta"


def build_vision_encoder(spec: VisionSpec, dtype: torch.dtype | str = torch.float32) -> VisionEncoder:
    """The frozen vision tower of `spec`. Under `torch.device("meta")`: shapes only, from
    the config of `path` when it exists, else from `config`."""
    if spec.kind == "clip":
        return _build_clip(spec, _dtype(dtype))
    if spec.kind == "timm":
        return _build_timm(spec, _dtype(dtype))
    raise ConfigError(f"VisionSpec.kind must be 'clip' or 'timm', got {spec.kind!r}")


# -- CLIP (transformers) ------------------------------------------------------------------

def _how_to_get_clip(spec: VisionSpec) -> str:
    name = spec.config if isinstance(spec.config, str) else ""
    hub_id = _CLIP_HUB_IDS.get(name, "openai/clip-vit-large-patch14")
    return (
        f"Expected a local Hugging Face directory with config.json and model.safetensors of "
        f"{hub_id}, e.g. saved with CLIPVisionModel.from_pretrained('{hub_id}')"
        f".save_pretrained(DIR) on a machine with network. See README, section 'Weights and data'."
    )


def _named_or_dict_clip_config(spec: VisionSpec):
    from transformers import CLIPVisionConfig

    if isinstance(spec.config, str):
        if spec.config not in NAMED_CLIP_CONFIGS:
            raise ConfigError(f"unknown CLIP config {spec.config!r}; named configs: {sorted(NAMED_CLIP_CONFIGS)}")
        return CLIPVisionConfig(**NAMED_CLIP_CONFIGS[spec.config])
    if isinstance(spec.config, dict):
        return CLIPVisionConfig(**spec.config)
    raise ConfigError(f"CLIP config must be a name or a dict of CLIPVisionConfig fields, got {spec.config!r}")


def _clip_directory(spec: VisionSpec) -> Path:
    """The weights directory of `spec.path`, checked so that from_pretrained never looks online."""
    root = Path(spec.path).expanduser()
    if not root.is_dir() or not (root / "config.json").is_file():
        raise ConfigError(f"CLIP vision weights not found: {root} (no such directory with config.json). "
                          f"{_how_to_get_clip(spec)}")
    if not any(root.glob("*.safetensors")):
        raise ConfigError(f"no *.safetensors weights in {root} (pickled .bin files are never loaded). "
                          f"{_how_to_get_clip(spec)}")
    return root


def _clip_config(spec: VisionSpec):
    """The architecture: from `path` when it exists (checked against a named `config`)."""
    from transformers import CLIPVisionConfig

    if spec.path and Path(spec.path).expanduser().exists():
        root = _clip_directory(spec)
        config = CLIPVisionConfig.from_pretrained(root, local_files_only=True)
        if spec.config is not None:
            # A config given beside the path must describe the same tower, else the meta-device
            # parameter counts (which use `config` when the weights are absent) would lie.
            expected = _named_or_dict_clip_config(spec)
            diff = [f"{f} {getattr(config, f)} (path) != {getattr(expected, f)} (config)"
                    for f in _CLIP_ARCH_FIELDS if getattr(config, f) != getattr(expected, f)]
            if diff:
                raise ConfigError(f"the CLIP weights in {root} do not match config {spec.config!r}: "
                                  + "; ".join(diff))
        return config
    if spec.config is None:
        if spec.path:
            _clip_directory(spec)  # raises: names the missing path
        raise ConfigError("VisionSpec(kind='clip') needs `path` or `config` (e.g. config: clip-vit-l/14)")
    return _named_or_dict_clip_config(spec)


def _build_clip(spec: VisionSpec, dtype: torch.dtype) -> CLIPVisionEncoder:
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    config = _clip_config(spec)
    check_cls_every(spec.cls_every, config.num_hidden_layers)  # before reading any weights
    model_class = CLIPVisionModelWithProjection if spec.projection else CLIPVisionModel
    if spec.path and not _counting_only():
        # use_safetensors: never unpickle a .bin; local_files_only: never touch the hub.
        model = model_class.from_pretrained(_clip_directory(spec), local_files_only=True,
                                            use_safetensors=True, dtype=dtype)
    else:
        model = model_class(config).to(dtype)
    config = model.config
    projection = None
    if spec.projection:
        model, projection = model.vision_model, model.visual_projection
    arch = {"kind": "clip", **{f: getattr(config, f) for f in _CLIP_ARCH_FIELDS}}
    if projection is not None:
        arch["projection_dim"] = projection.out_features
    encoder = CLIPVisionEncoder(model, width=config.hidden_size, num_layers=config.num_hidden_layers,
                                image_size=config.image_size, cls_every=spec.cls_every,
                                backbone_id=spec.backbone_id, arch=arch)
    if projection is not None:
        encoder.projection = projection.requires_grad_(False)
    return encoder


# -- timm ---------------------------------------------------------------------------------

def _timm_name_and_kwargs(spec: VisionSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec.config, str) and spec.config:
        return spec.config, {}
    if isinstance(spec.config, dict) and isinstance(spec.config.get("model_name"), str):
        kwargs = dict(spec.config)
        return kwargs.pop("model_name"), kwargs
    raise ConfigError(
        "VisionSpec(kind='timm') needs `config`: a timm model name (e.g. vit_large_patch14_clip_224.openai) "
        f"or a dict with `model_name` and timm.create_model arguments; got {spec.config!r}"
    )


def _timm_weights_file(spec: VisionSpec, name: str, must_exist: bool) -> Path:
    path = Path(spec.path).expanduser()
    how = (f"Expected a .safetensors weights file for timm model {name}, e.g. written on a machine with "
           f"network by safetensors.torch.save_file(timm.create_model('{name}', pretrained=True, "
           f"num_classes=0).state_dict(), FILE).")
    if path.suffix != ".safetensors":
        # Pickled checkpoints (.pth/.bin/.pt) can run code when loaded: refuse them.
        raise ConfigError(f"timm weights must be a .safetensors file, got {path}. {how}")
    if must_exist and not path.is_file():
        raise ConfigError(f"timm weights not found: {path}. {how}")
    return path


def _build_timm(spec: VisionSpec, dtype: torch.dtype) -> TimmVisionEncoder:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    name, kwargs = _timm_name_and_kwargs(spec)
    weights = None
    if spec.path:  # checked before building; on the meta device only the file type
        weights = _timm_weights_file(spec, name, must_exist=not _counting_only())
        weights = None if _counting_only() else weights
    try:
        # pretrained=False: never download; num_classes=0: no classifier head (features only).
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise ConfigError(f"timm cannot build {name!r}: {err}") from None
    if not isinstance(model, VisionTransformer) or not model.has_class_token:
        raise ConfigError(f"timm model {name!r} must be a VisionTransformer with a class token "
                          f"(got {type(model).__name__})")
    num_layers = len(model.blocks)
    check_cls_every(spec.cls_every, num_layers)  # before reading any weights
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights), device="cpu")
        # Hub files of timm models carry the classifier/projection head that num_classes=0
        # removed; everything else must match exactly.
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ConfigError(f"the weights in {weights} do not fit timm model {name!r}: {err}") from None
    model = model.to(dtype)
    arch = json.loads(json.dumps({
        "kind": "timm", "model_name": name, "create_kwargs": kwargs, "embed_dim": model.embed_dim,
        "depth": num_layers, "num_heads": model.blocks[0].attn.num_heads,
        "img_size": model.patch_embed.img_size, "patch_size": model.patch_embed.patch_size,
    }, default=repr))  # tuples -> lists, odd kwargs (classes) -> their repr
    return TimmVisionEncoder(model, width=model.embed_dim, num_layers=num_layers,
                             image_size=model.patch_embed.img_size[0], cls_every=spec.cls_every,
                             backbone_id=spec.backbone_id, arch=arch)


__all__ = ["VisionSpec", "VisionEncoder", "CLIPVisionEncoder", "TimmVisionEncoder",
           "build_vision_encoder", "NAMED_CLIP_CONFIGS", "check_cls_every"]
