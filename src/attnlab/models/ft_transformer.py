"""FT-Transformer (Gorishniy et al., 2021, "Revisiting Deep Learning Models for Tabular Data"): every feature becomes
a token, a [CLS] token reads them through the shared pre-norm transformer blocks, a small head reads [CLS].

Numeric feature j -> x_j * W_j + b_j (a per-feature linear embedding), or with `numeric_embedding=periodic`
ReLU(Linear_j([cos(2 pi c_j x_j), sin(2 pi c_j x_j)])) + b_j with k learned frequencies c_j per feature (PLR, Gorishniy
et al., 2022, "On Embeddings for Numerical Features in Tabular Deep Learning": a token can then hold a non-monotonic
function of its value); categorical feature j -> an embedding lookup of its category (index 0 is "unknown or missing":
the data module's ordinal encoding gives those -1) + b_j.
The input is the table's preprocessed row: `num_numeric` standardised values, then one category id per categorical
column (data.categorical_encoding=ordinal; with one-hot encoding every column is numeric and cat_cardinalities empty).
"""

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from attnlab.models.layers import Block, FeedForward


class FeatureTokenizer(nn.Module):
    """(B, n_num + n_cat) preprocessed row -> (B, n_num + n_cat, D) feature tokens."""

    def __init__(self, *, num_numeric: int, cat_cardinalities: Sequence[int], d_model: int,
                 numeric_embedding: Literal["linear", "periodic"] = "linear", n_frequencies: int = 48,
                 frequency_scale: float = 0.01) -> None:
        super().__init__()
        if numeric_embedding not in ("linear", "periodic"):
            raise ValueError(f"model.numeric_embedding={numeric_embedding!r}: choose linear or periodic")
        if numeric_embedding == "periodic" and not (n_frequencies >= 1 and frequency_scale > 0):
            raise ValueError(f"model.n_frequencies={n_frequencies}, model.frequency_scale={frequency_scale}: "
                             "periodic embeddings need n_frequencies >= 1 and frequency_scale > 0")
        self.num_numeric = num_numeric
        self.periodic = numeric_embedding == "periodic"
        if self.periodic:  # frequencies ~ N(0, sigma^2) truncated at 3 sigma; then one Linear(2k -> D) per feature
            self.frequencies = nn.Parameter(torch.empty(num_numeric, n_frequencies))
            nn.init.trunc_normal_(self.frequencies, 0.0, frequency_scale, -3 * frequency_scale, 3 * frequency_scale)
            self.periodic_weight = nn.Parameter(torch.empty(num_numeric, 2 * n_frequencies, d_model))
            self.periodic_bias = nn.Parameter(torch.empty(num_numeric, d_model))
            for p in (self.periodic_weight, self.periodic_bias):  # nn.Linear's init
                nn.init.uniform_(p, -(2 * n_frequencies) ** -0.5, (2 * n_frequencies) ** -0.5)
        self.weight = nn.Parameter(torch.empty(num_numeric, d_model)) if not self.periodic else None
        n_tokens = num_numeric + len(cat_cardinalities)
        self.bias = nn.Parameter(torch.empty(n_tokens, d_model))
        sizes = [c + 1 for c in cat_cardinalities]  # + "unknown"
        self.register_buffer("offsets", torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0), persistent=False)
        self.categories = nn.Embedding(sum(sizes), d_model) if sizes else None
        bound = d_model ** -0.5  # the paper's uniform init
        for p in (self.weight, self.bias):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        if self.categories is not None:
            nn.init.uniform_(self.categories.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x[:, : self.num_numeric, None]  # (B, n_num, 1)
        if self.periodic:
            z = 2 * math.pi * values * self.frequencies  # (B, n_num, k)
            z = torch.cat([torch.cos(z), torch.sin(z)], dim=-1)  # (B, n_num, 2k)
            numeric = torch.relu(torch.einsum("bnk,nkd->bnd", z, self.periodic_weight) + self.periodic_bias)
        else:
            numeric = values * self.weight  # (B, n_num, D)
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
        numeric_embedding: Literal["linear", "periodic"] = "linear",
        n_frequencies: int = 48,
        frequency_scale: float = 0.01,
    ) -> None:
        super().__init__()
        out = num_classes if num_classes is not None else num_outputs
        if out is None:
            raise ValueError("FTTransformer needs num_classes (classification) or num_outputs (regression)")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.tokenizer = FeatureTokenizer(num_numeric=num_numeric, cat_cardinalities=cat_cardinalities, d_model=d_model,
                                          numeric_embedding=numeric_embedding, n_frequencies=n_frequencies,
                                          frequency_scale=frequency_scale)
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
