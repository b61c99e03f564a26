"""The demo's vision encoder, pretrained here: a small CLIP ViT that learnt easy-VQA's pictures.

No pretrained ViT can be obtained offline, and LaVIN's premise is a *pretrained* frozen image
encoder. So the embedded default pretrains its own, once, the way CLIP learnt: contrastively,
pictures against captions. The pictures are easy-VQA's training images whose shape and colour
its questions settle (3,542 images; none of its test images); each picture's caption states those
facts in one of several wordings ("There is a red circle on a light background.").

* image side: the `clip-small-64` architecture (64 px, patch 8, width 128, 4 layers), CLIP's
  pooled output (the last layer's [CLS] after the final layer norm) and a linear projection;
* text side: the mean of learnt word embeddings of the caption, and a linear projection;
* objective: CLIP's symmetric InfoNCE with a learnt temperature, every pair in the batch whose
  captions state the same facts counted as a match (a batch holds many pictures of each of the
  24 shape-colour pairs; CLIP's one-hot targets would teach two red circles apart);
* AdamW, linear warm-up then cosine decay, horizontal flips; a fixed seed.

The text side and both projections are thrown away: ``out_dir`` holds a Hugging Face
``CLIPVisionModel`` directory (``config.json`` + ``model.safetensors``) that
``VisionSpec(kind="clip", path=out_dir)`` loads, and the build manifest
(``easy_vqa_build.json``: every setting, their hash, the loss curve, the time, and a linear
probe). The probe fits a logistic regression on the frozen features that LaVIN reads (the
[CLS] token after every layer) of the training images and scores colour and shape on easy-VQA's
held-out test images, for the pretrained tower and for the same tower at its random
initialisation.

Built once and reused (atomic, like the other builds of this package); built again when a
setting changes. ``python -m data_modules.prepare.vit [--out data/vit/clip-small-64]`` builds it;
``lavin-lightning demo`` builds it when it is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

from data_modules.prepare.captions import _CAPTION_TEMPLATES
from data_modules.prepare.easy_vqa import (
    MANIFEST_NAME,
    _build_once,
    _easy_vqa_version,
    _import_easy_vqa,
    _load_sources,
    _read_manifest,
    _write_json,
)

__all__ = ["DEFAULT_DIR", "DEFAULT_SETTINGS", "build_pretrained_vit", "main"]

DEFAULT_DIR = "data/vit/clip-small-64"
# Bump when the procedure changes (not only a setting), so that older builds are rebuilt.
VERSION = 1
DEFAULT_SETTINGS = {
    "config": "clip-small-64",  # a named architecture of lavin_lightning.backbones.vision
    "steps": 400,
    "batch_size": 64,
    "lr": 3.0e-3,
    "weight_decay": 0.05,
    "warmup_steps": 30,
    "embed_dim": 64,  # width of the shared image-caption space (the projections are thrown away)
    "temperature": 0.07,  # CLIP's initial temperature (learnt)
    "flip": True,  # random horizontal flips (every easy-VQA shape stays itself)
    "keep_patches": 16,  # of the 64 patches per image in training, the shape's first (FLIP-style masking)
    "seed": 0,
}
# The first six wordings of the caption data set's references (each true of every easy-VQA picture).
_TEMPLATES = _CAPTION_TEMPLATES[:6]
_PROBE_STEPS = 100
# The probe is fitted on this many training images (the first by id) and scored on every test image.
_PROBE_TRAIN_IMAGES = 1000


def _settings(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULT_SETTINGS))
    if unknown:
        from lavin_lightning.errors import ConfigError

        raise ConfigError(f"unknown ViT pretraining settings {unknown}; known: {sorted(DEFAULT_SETTINGS)}")
    settings = {**DEFAULT_SETTINGS, **overrides}
    for name in ("steps", "batch_size", "embed_dim", "keep_patches"):
        value = settings[name]
        if not (name == "keep_patches" and value is None) and (not isinstance(value, int) or value < 1):
            from lavin_lightning.errors import ConfigError

            raise ConfigError(f"ViT pretraining setting {name} must be an integer >= 1, got {value!r}")
    return settings


def _params(settings: dict) -> dict:
    """What the manifest records and a later build compares: the settings, the procedure's version,
    the architecture and a hash of them all."""
    from lavin_lightning.backbones.vision import NAMED_CLIP_CONFIGS

    record = {"procedure": VERSION, **settings, "architecture": NAMED_CLIP_CONFIGS[settings["config"]]}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return {"layout": "clip-vision-model", **record, "settings_sha256": digest}


def _images(paths: list[str]):
    import torch
    from PIL import Image

    from data_modules.base import image_transform

    # The demo's own transform (the ScienceQA data module's default: ImageNet statistics), at 64 px.
    transform = image_transform(64)
    pictures = []
    for path in paths:
        with Image.open(path) as image:
            pictures.append(transform(image))
    return torch.stack(pictures)


def _pictures(easy_vqa, split: str) -> tuple[list[str], list[str], list[str]]:
    """(PNG paths, shapes, colours) of the easy-VQA ``split`` images whose facts are known, by id."""
    source = _load_sources(easy_vqa)[split]
    ids = sorted(source.facts)
    return ([source.image_paths[i] for i in ids], [source.facts[i][0] for i in ids],
            [source.facts[i][1] for i in ids])


def _caption_vocabulary() -> dict[str, int]:
    from data_modules.prepare.easy_vqa import COLORS, SHAPES, _words

    words = sorted({w for t in _TEMPLATES for w in _words(t.format(color="", shape=""))} | set(SHAPES) | set(COLORS))
    return {w: i for i, w in enumerate(words)}


def _foreground_first(pixels, patch: int, generator):
    """Per image, its patch indices with the patches that the shape touches first (a pixel more than
    half a standard deviation from the image's median colour, its background), each group in
    random order."""
    import torch

    background = pixels.flatten(2).median(dim=2).values[:, :, None, None, None, None]
    patches = pixels.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, 3, rows, cols, patch, patch)
    foreground = ((patches - background).abs().amax(dim=(1, 4, 5)).flatten(1) > 0.5).float()
    noise = torch.rand(foreground.shape, generator=generator)
    return (2 * foreground + noise).argsort(dim=1, descending=True)


def _pooled(model, pixels, keep: int | None, generator):
    """CLIP's pooled output (the last layer's [CLS] after the final layer norm); with `keep`, of the
    image's `keep` patches that `_foreground_first` puts first (FLIP-style masking)."""
    import torch

    if keep is None:
        return model(pixel_values=pixels).pooler_output
    tokens = model.embeddings(pixels)  # [CLS] + patches, with their position embeddings
    order = _foreground_first(pixels, model.config.patch_size, generator)[:, :keep]
    kept = tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
    hidden = model.pre_layrnorm(torch.cat([tokens[:, :1], kept], dim=1))
    for layer in model.encoder.layers:
        hidden = layer(hidden, None)  # as CLIPVisionEncoder runs them (no attention mask)
    return model.post_layernorm(hidden[:, 0])


def _pretrain(settings: dict, pixels, shapes: list[str], colors: list[str], log) -> tuple[object, list[float]]:
    """The pretrained CLIPVisionModel and the loss every 10 steps."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from data_modules.prepare.easy_vqa import _words
    from lavin_lightning.backbones.vision import NAMED_CLIP_CONFIGS

    torch.manual_seed(settings["seed"])
    rng = random.Random(settings["seed"])
    generator = torch.Generator().manual_seed(settings["seed"])
    model = CLIPVisionModel(CLIPVisionConfig(**NAMED_CLIP_CONFIGS[settings["config"]]))
    width, dim = model.config.hidden_size, settings["embed_dim"]
    vocabulary = _caption_vocabulary()
    image_projection = nn.Linear(width, dim, bias=False)
    word_embedding = nn.EmbeddingBag(len(vocabulary), dim, mode="mean")
    text_projection = nn.Linear(dim, dim, bias=False)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / settings["temperature"])))
    trained = nn.ModuleList([model, image_projection, word_embedding, text_projection])
    decayed = [p for p in trained.parameters() if p.ndim >= 2]
    plain = [p for p in trained.parameters() if p.ndim < 2] + [logit_scale]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": settings["weight_decay"]},
                                   {"params": plain, "weight_decay": 0.0}], lr=settings["lr"])
    steps, warmup = settings["steps"], settings["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, steps - warmup)))))
    facts = [f"{c} {s}" for s, c in zip(shapes, colors)]
    losses = []
    model.train()
    for step in range(steps):
        batch = rng.sample(range(len(facts)), min(settings["batch_size"], len(facts)))
        images = pixels[batch]
        if settings["flip"]:
            flipped = torch.tensor([rng.random() < 0.5 for _ in batch])
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        captions = [_words(rng.choice(_TEMPLATES).format(color=colors[i], shape=shapes[i])) for i in batch]
        ids = torch.tensor([vocabulary[w] for words in captions for w in words])
        offsets = torch.tensor([0] + [len(words) for words in captions[:-1]]).cumsum(0)
        pooled = _pooled(model, images, settings["keep_patches"], generator)
        image_emb = F.normalize(image_projection(pooled), dim=-1)
        text_emb = F.normalize(text_projection(word_embedding(ids, offsets)), dim=-1)
        logits = logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.T
        same = torch.tensor([[facts[i] == facts[j] for j in batch] for i in batch], dtype=torch.float32)
        targets = same / same.sum(dim=1, keepdim=True)  # symmetric: the same matrix both ways
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 9 or step == steps - 1:
            losses.append(round(loss.item(), 4))
        if step % 50 == 49 or step == steps - 1:
            log(f"  step {step + 1}/{steps}: contrastive loss {loss.item():.3f}")
    model.eval()
    return model, losses


def _features(model, pixels, batch_size: int = 256):
    """What LaVIN reads (cls_every 1): the [CLS] token after every layer, before the final norm,
    concatenated."""
    import torch

    from lavin_lightning.backbones.vision import CLIPVisionEncoder

    encoder = CLIPVisionEncoder(model, width=model.config.hidden_size, num_layers=model.config.num_hidden_layers,
                                image_size=model.config.image_size, cls_every=1, backbone_id="probe", arch={})
    with torch.no_grad():
        return torch.cat([encoder.cls_features(pixels[i:i + batch_size]).flatten(1)
                          for i in range(0, len(pixels), batch_size)])


def _probe(train_x, train_y: list[str], test_x, test_y: list[str]) -> float:
    """Test accuracy (%) of a multinomial logistic regression (L-BFGS, small L2) on standardised features."""
    import torch
    import torch.nn.functional as F

    classes = sorted(set(train_y))
    ytr = torch.tensor([classes.index(y) for y in train_y])
    yte = torch.tensor([classes.index(y) if y in classes else -1 for y in test_y])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(xtr.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=_PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, ytr) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return round(100 * float(((xte @ weight + bias).argmax(1) == yte).float().mean()), 2)


def _probes(model, train, test) -> dict:
    (train_pixels, train_shapes, train_colors), (test_pixels, test_shapes, test_colors) = train, test
    train_x, test_x = _features(model, train_pixels), _features(model, test_pixels)
    return {"color": _probe(train_x, train_colors, test_x, test_colors),
            "shape": _probe(train_x, train_shapes, test_x, test_shapes)}


def _write_vit_build(tmp: Path, easy_vqa, params: dict, settings: dict, log) -> dict:
    import torch

    started = time.time()
    train_paths, train_shapes, train_colors = _pictures(easy_vqa, "train")
    test_paths, test_shapes, test_colors = _pictures(easy_vqa, "test")
    train_pixels, test_pixels = _images(train_paths), _images(test_paths)
    log(f"pretraining the demo's ViT ({settings['config']}) contrastively on {len(train_paths)} easy-VQA training "
        f"images and their captions: {settings['steps']} steps of {settings['batch_size']}")
    n = _PROBE_TRAIN_IMAGES
    train = (train_pixels[:n], train_shapes[:n], train_colors[:n])
    test = (test_pixels, test_shapes, test_colors)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lavin_lightning.backbones.vision import NAMED_CLIP_CONFIGS

    torch.manual_seed(settings["seed"])
    random_probe = _probes(CLIPVisionModel(CLIPVisionConfig(**NAMED_CLIP_CONFIGS[settings["config"]])).eval(),
                           train, test)
    model, losses = _pretrain(settings, train_pixels, train_shapes, train_colors, log)
    probe = _probes(model, train, test)
    model.save_pretrained(tmp, safe_serialization=True)
    seconds = round(time.time() - started, 1)
    manifest = {
        "source": f"easy-vqa {_easy_vqa_version()}",
        "layout": params["layout"],
        "params": params,
        "counts": {"train_images": len(train_paths), "probe_train_images": len(train[0]),
                   "probe_test_images": len(test_paths),
                   "parameters": sum(p.numel() for p in model.parameters())},
        "losses_every_10_steps": losses,
        "linear_probe_test_accuracy": {"pretrained": probe, "random_init": random_probe},
        "seconds": seconds,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def build_pretrained_vit(out_dir: str | os.PathLike = DEFAULT_DIR, *, overwrite: bool = False, log=print,
                         **settings) -> Path:
    """Pretrain the demo's ViT into ``out_dir`` (or reuse the build there with the same settings)
    and return its absolute path: a ``CLIPVisionModel`` directory and its manifest. ``settings``
    override ``DEFAULT_SETTINGS`` (tests use a few steps)."""
    settings = _settings(settings)
    params = _params(settings)
    return _build_once(out_dir, params, overwrite,
                       lambda tmp, easy_vqa: _write_vit_build(tmp, easy_vqa, params, settings, log),
                       files=("config.json", "model.safetensors"))


def pretraining_record(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of the build in ``out_dir`` (settings, losses, probe, time), or None."""
    return _read_manifest(Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_modules.prepare.vit", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_DIR, help=f"output directory (default {DEFAULT_DIR})")
    ap.add_argument("--steps", type=int, default=DEFAULT_SETTINGS["steps"])
    ap.add_argument("--overwrite", action="store_true", help="pretrain again even if built with these settings")
    args = ap.parse_args(argv)
    _import_easy_vqa()
    out = build_pretrained_vit(args.out, overwrite=args.overwrite, steps=args.steps)
    record = pretraining_record(out) or {}
    probe = record.get("linear_probe_test_accuracy", {})
    print(f"pretrained ViT: {out} ({record.get('seconds')} s when built)")
    for name, accuracy in probe.items():
        print(f"  linear probe on held-out images, {name}: colour {accuracy['color']}%, shape {accuracy['shape']}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
