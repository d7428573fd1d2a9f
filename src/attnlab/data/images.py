"""Image preprocessing: how raw images become a model's input, stated once for the batches of training and for every
consumer of a trained run (`attnlab.runs.load_model(...).preprocess`, `predict`).

Every preprocessing object here has `to_batch(inputs)`: a list of raw images (file paths, PIL images or uint8 arrays)
-> the model's input batch, each image read with Pillow, converted to the run's channels (and said so), resized.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode


def read_image(source: Any, *, channels: int, image_size: int) -> tuple[np.ndarray, str | None]:
    """uint8 (C, H, W) of one image (a path, a PIL image or a uint8 (H, W) / (H, W, C) array), in `channels`
    channels and resized to image_size x image_size; the second value is the original mode when it was converted.

    A missing, unreadable or truncated file raises OSError (Pillow's own), so callers decide to skip or refuse it.
    """
    from PIL import Image

    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    elif isinstance(source, (str, Path)):
        with Image.open(source) as opened:
            opened.load()  # decodes now: a truncated file fails here, not later
            image = opened.copy()
    else:
        image = source
    converted = None
    if image.mode != MODES[channels]:
        converted = image.mode
        image = image.convert(MODES[channels])
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), converted  # (C, H, W)


def read_images(inputs: Sequence[Any], *, channels: int, image_size: int) -> Tensor:
    """uint8 (B, C, H, W) of raw images; a conversion to the run's channels is logged, an unreadable file is a
    DataError naming it."""
    arrays, converted = [], []
    for i, item in enumerate(inputs):
        try:
            array, mode = read_image(item, channels=channels, image_size=image_size)
        except FileNotFoundError:
            raise DataError(f"no such image file: {item}") from None
        except OSError as err:  # Pillow: not an image, truncated
            raise DataError(f"cannot read image {item} ({err})") from None
        arrays.append(array)
        if mode is not None:
            converted.append(f"{item if isinstance(item, (str, Path)) else f'input {i}'} ({mode})")
    if converted:
        log.warning("%d image(s) converted to %d channel(s) (%s), as the run was trained on: %s%s", len(converted),
                    channels, MODES[channels], ", ".join(converted[:5]), " ..." if len(converted) > 5 else "")
    return torch.from_numpy(np.stack(arrays))


@dataclass(frozen=True)
class ImageNormalization:
    """uint8 images (B, H, W) or (B, C, H, W) -> float32 (B, C, H, W) with pixels / 255 in [0, 1]."""

    channels: int
    image_size: int

    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 pixels (0-255), got {images.dtype}")
        x = images.unsqueeze(1) if images.dim() == 3 else images  # (B, C, H, W)
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, {self.image_size}, {self.image_size}) or (B, {self.channels}, "
                f"{self.image_size}, {self.image_size}), got {tuple(images.shape)}"
            )
        return x.to(torch.float32).div_(255)  # a new tensor: the input is uint8

    def to_batch(self, inputs: Sequence[Any]) -> Tensor:
        """Raw images (paths, PIL images, uint8 arrays) -> the model's input (B, C, H, W)."""
        return self(read_images(inputs, channels=self.channels, image_size=self.image_size))


@dataclass(frozen=True)
class StandardizedImages:
    """uint8 images (B, C, H, W) -> float32 ((pixels / 255) - mean) / std per channel, with the statistics of the
    run's training images."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor) -> Tensor:
        x = ImageNormalization(self.channels, self.image_size)(images)  # (B, C, H, W) in [0, 1]
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def to_batch(self, inputs: Sequence[Any]) -> Tensor:
        """Raw images (paths, PIL images, uint8 arrays) -> the model's input (B, C, H, W)."""
        return self(read_images(inputs, channels=self.channels, image_size=self.image_size))
