"""Image preprocessing: how raw 8-bit images become a model's input, stated once for the batches of training and
for every consumer of a trained run (`attnlab.runs.load_model(...).preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
