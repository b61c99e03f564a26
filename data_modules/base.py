"""Shared data-module helpers: global batch arithmetic and the image transform.

Configs state the *global* batch size (ARCHITECTURE.md principle 7); the data module
derives the per-device batch and the gradient accumulation from the trainer's world
size, so the same YAML gives the same optimisation on 1 CPU or 8 GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from torchvision import transforms

from lavin_lightning.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_global_batch(
    global_batch_size: int, world_size: int, micro_batch_size: int | None
) -> tuple[int, int]:
    """Return ``(per_device_batch, accumulation)`` for a global batch.

    Without a micro batch every device takes ``global / world`` samples per step and no
    accumulation happens; with one, ``accumulation = global / (world * micro)``.
    """
    if global_batch_size < 1 or world_size < 1:
        raise ConfigError(
            f"global_batch_size ({global_batch_size}) and world size ({world_size}) must be >= 1"
        )
    if micro_batch_size is None:
        if global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size {global_batch_size} is not divisible by the world size "
                f"{world_size}; choose a global batch that is a multiple of {world_size} "
                "or set micro_batch_size"
            )
        return global_batch_size // world_size, 1
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    per_step = world_size * micro_batch_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not divisible by world size "
            f"{world_size} x micro_batch_size {micro_batch_size} = {per_step}"
        )
    return micro_batch_size, global_batch_size // per_step


class _ToRGB:
    """Convert a PIL image to RGB (a named class, unlike a lambda, pickles for workers)."""

    def __call__(self, image):
        return image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def image_transform(
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> transforms.Compose:
    """RGB -> Resize((s, s)) -> ToTensor -> Normalize.

    With the defaults this is the LaVIN release's ScienceQA transform (224 px bicubic,
    ImageNet mean/std rather than CLIP's own statistics).
    """
    try:
        mode = transforms.InterpolationMode(interpolation)
    except ValueError:
        valid = [m.value for m in transforms.InterpolationMode]
        raise ConfigError(f"unknown interpolation {interpolation!r}; expected one of {valid}") from None
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"image mean/std need 3 values (RGB), got {list(mean)} / {list(std)}")
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize((image_size, image_size), interpolation=mode),
            transforms.ToTensor(),
            transforms.Normalize(list(mean), list(std)),
        ]
    )


class GlobalBatchDataModule(L.LightningDataModule):
    """A LightningDataModule configured by its global batch size.

    ``setup()`` sets ``per_device_batch_size`` from the trainer's world size (1 without a
    trainer) and writes the derived gradient accumulation into the attached trainer.
    Subclasses call ``super().setup(stage)`` first.
    """

    def __init__(
        self,
        global_batch_size: int = 32,
        micro_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers
        # Fail at construction for errors that do not depend on the world size.
        self.per_device_batch_size, self.accumulate_grad_batches = split_global_batch(
            global_batch_size, 1, micro_batch_size
        )

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        self.per_device_batch_size, self.accumulate_grad_batches = split_global_batch(
            self.global_batch_size, self.world_size, self.micro_batch_size
        )
        if self.trainer is None:
            return
        configured = self.trainer.accumulate_grad_batches
        if configured not in (1, self.accumulate_grad_batches):
            raise ConfigError(
                f"Trainer(accumulate_grad_batches={configured}) conflicts with the data "
                f"module's global_batch_size {self.global_batch_size} (world size "
                f"{self.world_size}, micro_batch_size {self.micro_batch_size} -> "
                f"accumulation {self.accumulate_grad_batches}); state the global batch "
                "and leave accumulate_grad_batches at 1"
            )
        self.trainer.accumulate_grad_batches = self.accumulate_grad_batches
