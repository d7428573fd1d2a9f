"""Vision Transformer (Dosovitskiy et al., 2020): images as sequences of patches."""

from typing import Literal

import torch
from torch import nn

from attnlab.models.layers import Block, LearnedPositions

Pool = Literal["cls", "mean"]


def _cls_pool(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0]  # (B, D): the CLS token


def _mean_pool(x: torch.Tensor) -> torch.Tensor:
    return x[:, 1:].mean(dim=1)  # (B, D): average of the patch tokens, CLS left out


_POOLS = {"cls": _cls_pool, "mean": _mean_pool}


class PatchEmbedding(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to d_model."""

    def __init__(self, *, image_size: int, patch_size: int, in_channels: int, d_model: int) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            options = ", ".join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}; "
                f"choose a patch_size that divides it (e.g. {options})"
            )
        self.num_patches = (image_size // patch_size) ** 2
        # A conv with kernel = stride = patch is exactly a linear map applied to each flattened patch.
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to patch embeddings (B, N, D)."""
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order


class ViT(nn.Module):
    """Patch embedding + CLS token + learned positions -> pre-norm transformer blocks -> linear head."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        d_model: int = 128,
        n_layers: int = 6,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.0,
        pool: Pool = "cls",
    ) -> None:
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of: {', '.join(_POOLS)}")
        self.pool = _POOLS[pool]
        self.patch_embed = PatchEmbedding(
            image_size=image_size, patch_size=patch_size, in_channels=in_channels, d_model=d_model
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = LearnedPositions(max_len=self.patch_embed.num_patches + 1, d_model=d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff or 4 * d_model, dropout=dropout)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

        nn.init.trunc_normal_(self.cls_token, std=0.02)  # LearnedPositions inits pos the same way
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Small truncated-normal weights and zero biases, as in the reference ViT and timm code,
        # whose published hyperparameters assume this init rather than PyTorch's fan-in default.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def output_layer(self) -> nn.Module:
        """The module that produces the logits."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to logits (B, num_classes)."""
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.size(0), -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, N + 1, D)
        x = self.drop(self.pos(x))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.head(self.pool(x))  # (B, num_classes)


def vit_tiny(**kw) -> ViT:
    """A 4-layer, 64-wide ViT for small images such as MNIST."""
    return ViT(**{"d_model": 64, "n_layers": 4, "n_heads": 4, **kw})


def vit_small(**kw) -> ViT:
    """A 6-layer, 128-wide ViT."""
    return ViT(**{"d_model": 128, "n_layers": 6, "n_heads": 4, **kw})
