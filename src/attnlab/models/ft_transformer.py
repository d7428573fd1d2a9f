"""FT-Transformer (Gorishniy et al., 2021, "Revisiting Deep Learning Models for Tabular Data"): every feature becomes
a token, a [CLS] token reads them through the shared pre-norm transformer blocks, a small head reads [CLS].

Numeric feature j -> x_j * W_j + b_j (a per-feature linear embedding); categorical feature j -> an embedding lookup of
its category (index 0 is "unknown or missing": the data module's ordinal encoding gives those -1) + b_j.
The input is the table's preprocessed row: `num_numeric` standardised values, then one category id per categorical
column (data.categorical_encoding=ordinal; with one-hot encoding every column is numeric and cat_cardinalities empty).
"""

from collections.abc import Sequence

import torch
from torch import nn

from attnlab.models.layers import Block, FeedForward


class FeatureTokenizer(nn.Module):
    """(B, n_num + n_cat) preprocessed row -> (B, n_num + n_cat, D) feature tokens."""

    def __init__(self, *, num_numeric: int, cat_cardinalities: Sequence[int], d_model: int) -> None:
        super().__init__()
        self.num_numeric = num_numeric
        self.weight = nn.Parameter(torch.empty(num_numeric, d_model))
        n_tokens = num_numeric + len(cat_cardinalities)
        self.bias = nn.Parameter(torch.empty(n_tokens, d_model))
        sizes = [c + 1 for c in cat_cardinalities]  # + "unknown"
        self.register_buffer("offsets", torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0), persistent=False)
        self.categories = nn.Embedding(sum(sizes), d_model) if sizes else None
        bound = d_model ** -0.5  # the paper's uniform init
        for p in (self.weight, self.bias):
            nn.init.uniform_(p, -bound, bound)
        if self.categories is not None:
            nn.init.uniform_(self.categories.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numeric = x[:, : self.num_numeric, None] * self.weight  # (B, n_num, D)
        tokens = [numeric]
        if self.categories is not None:
            ids = x[:, self.num_numeric:].long() + 1 + self.offsets  # (B, n_cat): -1 (unknown) -> each column's slot 0
            tokens.append(self.categories(ids))  # (B, n_cat, D)
        return torch.cat(tokens, dim=1) + self.bias  # (B, n_tokens, D)


class FTTransformer(nn.Module):
    """Feature tokens + [CLS] -> pre-norm blocks -> LayerNorm -> ReLU -> Linear on [CLS]."""

    def __init__(
        self,
        *,
        num_numeric: int,
        cat_cardinalities: Sequence[int] = (),
        num_classes: int | None = None,
        num_outputs: int | None = None,
        d_model: int = 192,
        n_layers: int = 3,
        n_heads: int = 8,
        d_ff: int | None = None,
        dropout: float = 0.1,
        activation: FeedForward = "gelu",
    ) -> None:
        super().__init__()
        out = num_classes if num_classes is not None else num_outputs
        if out is None:
            raise ValueError("FTTransformer needs num_classes (classification) or num_outputs (regression)")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.tokenizer = FeatureTokenizer(num_numeric=num_numeric, cat_cardinalities=cat_cardinalities, d_model=d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.normal_(self.cls, std=d_model ** -0.5)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff or 4 * d_model // 3, dropout=dropout, activation=activation)
            for _ in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.ReLU(), nn.Linear(d_model, out))

    def output_layer(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, n_num + n_cat) rows to (B, num_classes) logits or (B, num_outputs) values."""
        tokens = self.tokenizer(x)  # (B, F, D)
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1 + F, D)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, 0])
