"""A fully connected classifier on flattened images: the baseline every vision model should beat."""

from collections.abc import Sequence

import torch
from torch import nn


class MLPClassifier(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden size -> Linear."""

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = in_channels * image_size * image_size
        for d_out in hidden:
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d_in = d_out
        layers.append(nn.Linear(d_in, num_classes))
        self.net = nn.Sequential(*layers)

    def output_layer(self) -> nn.Module:
        """The module that produces the logits."""
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to logits (B, num_classes)."""
        return self.net(x)
