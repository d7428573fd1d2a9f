"""A fully connected network on flat features: the baseline on images (flattened) and the workhorse on tables.

With `hidden=[]` it is a linear model: multinomial logistic regression for classification, linear regression for a
regression target (`num_outputs=1`).
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "tanh", "sigmoid", "gelu"]
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class MLP(nn.Module):
    """Flatten -> [Linear -> (BatchNorm) -> activation -> Dropout] per hidden size -> Linear.

    Input size: `in_features` (tables), or `in_channels * image_size**2` (images); output size: `num_classes` logits,
    or `num_outputs` values for regression.
    """

    def __init__(
        self,
        *,
        in_features: int | None = None,
        in_channels: int | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        num_outputs: int | None = None,
        hidden: Sequence[int] = (512, 256),
        activation: Activation = "relu",
        dropout: float = 0.2,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_ACTIVATIONS)}")
        if in_features is None:
            if in_channels is None or image_size is None:
                raise ValueError("MLP needs in_features (tables) or in_channels and image_size (images)")
            in_features = in_channels * image_size * image_size
        out = num_classes if num_classes is not None else num_outputs
        if out is None:
            raise ValueError("MLP needs num_classes (classification) or num_outputs (regression)")
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = in_features
        for d_out in hidden:
            layers.append(nn.Linear(d_in, d_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers += [_ACTIVATIONS[activation](), nn.Dropout(dropout)]
            d_in = d_out
        layers.append(nn.Linear(d_in, out))
        self.net = nn.Sequential(*layers)

    def output_layer(self) -> nn.Module:
        """The module that produces the logits."""
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, F) features or (B, C, H, W) images to (B, num_classes) logits or (B, num_outputs) values."""
        return self.net(x)


MLPClassifier = MLP  # the name runs saved before the MLP served tables too


def linear(
    *,
    in_features: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    num_outputs: int | None = None,
) -> MLP:
    """No hidden layer: logistic regression (softmax over num_classes) or linear regression (num_outputs=1)."""
    return MLP(in_features=in_features, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
               num_outputs=num_outputs, hidden=(), dropout=0.0)
