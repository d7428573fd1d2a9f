"""Transformer encoders for text classification, after BERT (Devlin et al., 2019), RoBERTa (Liu et al., 2019) and
DistilBERT (Sanh et al., 2019), built from the shared pre-norm blocks of layers.py.

The families differ in what the builders below switch, not in code: BERT has token-type embeddings and a
pooler (dense + tanh over [CLS]); RoBERTa drops token types (and is paired with byte-level BPE in its
experiment); DistilBERT has half the layers of its BERT and no pooler. Sizes follow the published BERT
miniatures (Turc et al., 2019): tiny 2x128, mini 4x256, small 4x512, medium 8x512, base 12x768; heads of 64.
Unlike the originals the blocks are pre-norm, which trains from scratch without a long warm-up.
"""

from typing import Literal

import torch
from torch import nn

from attnlab.models.layers import Activation, Block, LearnedPositions, SinusoidalPositions

Positions = Literal["learned", "sinusoidal"]
Pool = Literal["cls", "mean"]
_POSITIONS = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}
_POOLS = ("cls", "mean")


class Encoder(nn.Module):
    """Token (+ type) + position embeddings -> pre-norm blocks with a key-padding mask -> pooled state -> head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int,
        max_len: int,
        pad_id: int = 0,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.1,
        activation: Activation = "gelu",
        type_vocab_size: int = 0,
        positions: Positions = "learned",
        pool: Pool = "cls",
        pooler: bool = True,
    ) -> None:
        super().__init__()
        if positions not in _POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; choose one of: {', '.join(_POSITIONS)}")
        if pool not in _POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of: {', '.join(_POOLS)}")
        self.pool = pool
        self.pad_id = pad_id
        self.tok_embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.type_embed = nn.Embedding(type_vocab_size, d_model) if type_vocab_size > 0 else None
        self.pos = _POSITIONS[positions](max_len=max_len, d_model=d_model)
        self.ln_embed = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff or 4 * d_model, dropout=dropout, activation=activation)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.pooler = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh()) if pooler else nn.Identity()
        self.head = nn.Linear(d_model, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases; the padding embedding stays zero.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def output_layer(self) -> nn.Module:
        """The module that produces the logits."""
        return self.head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map token ids (B, T), a mask (B, T) (True/1 = real token) and segment ids (B, T) to logits (B, num_classes)."""
        x = self.tok_embed(input_ids)  # (B, T, D)
        if self.type_embed is not None:
            x = x + self.type_embed(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        x = self.drop(self.ln_embed(self.pos(x)))
        real = None if attention_mask is None else attention_mask.bool()  # (B, T)
        # Without padding in the batch (length-bucketed batches often have none) SDPA runs unmasked, which is faster.
        mask = None if real is None or bool(real.all()) else real[:, None, None, :]  # (B, 1, 1, T): keys to attend
        if mask is not None:
            # A text with no real token would attend to nothing (NaN): let it attend to its padding instead.
            mask = mask | ~real.any(dim=1)[:, None, None, None]
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.ln_f(x)
        if self.pool == "cls":
            pooled = x[:, 0]  # (B, D): the first token, <cls>
        elif real is None:
            pooled = x.mean(dim=1)  # (B, D)
        else:
            weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, D): mean of real tokens
        return self.head(self.drop(self.pooler(pooled)))  # (B, num_classes)


_SIZES = {
    "tiny": {"n_layers": 2, "d_model": 128, "n_heads": 2},
    "mini": {"n_layers": 4, "d_model": 256, "n_heads": 4},
    "small": {"n_layers": 4, "d_model": 512, "n_heads": 8},
    "medium": {"n_layers": 8, "d_model": 512, "n_heads": 8},
    "base": {"n_layers": 12, "d_model": 768, "n_heads": 12},
}
_BERT = {"type_vocab_size": 2, "pooler": True, "pool": "cls"}
_ROBERTA = {"type_vocab_size": 0, "pooler": True, "pool": "cls"}
_DISTILBERT = {"type_vocab_size": 0, "pooler": False, "pool": "cls"}


def _distil(size: str) -> dict[str, int]:
    """Half the layers of the BERT of that size (at least one)."""
    return {**_SIZES[size], "n_layers": max(1, _SIZES[size]["n_layers"] // 2)}


def bert_tiny(**kw) -> Encoder:
    """BERT-Tiny: 2 layers, width 128, token types, [CLS] + pooler."""
    return Encoder(**{**_BERT, **_SIZES["tiny"], **kw})


def bert_mini(**kw) -> Encoder:
    """BERT-Mini: 4 layers, width 256."""
    return Encoder(**{**_BERT, **_SIZES["mini"], **kw})


def bert_small(**kw) -> Encoder:
    """BERT-Small: 4 layers, width 512."""
    return Encoder(**{**_BERT, **_SIZES["small"], **kw})


def bert_medium(**kw) -> Encoder:
    """BERT-Medium: 8 layers, width 512."""
    return Encoder(**{**_BERT, **_SIZES["medium"], **kw})


def bert_base(**kw) -> Encoder:
    """BERT-Base: 12 layers, width 768 (110M parameters with a 30k vocabulary)."""
    return Encoder(**{**_BERT, **_SIZES["base"], **kw})


def roberta_tiny(**kw) -> Encoder:
    """RoBERTa at BERT-Tiny's size: no token types."""
    return Encoder(**{**_ROBERTA, **_SIZES["tiny"], **kw})


def roberta_mini(**kw) -> Encoder:
    """RoBERTa at BERT-Mini's size."""
    return Encoder(**{**_ROBERTA, **_SIZES["mini"], **kw})


def roberta_small(**kw) -> Encoder:
    """RoBERTa at BERT-Small's size."""
    return Encoder(**{**_ROBERTA, **_SIZES["small"], **kw})


def roberta_base(**kw) -> Encoder:
    """RoBERTa-Base: 12 layers, width 768."""
    return Encoder(**{**_ROBERTA, **_SIZES["base"], **kw})


def distilbert_tiny(**kw) -> Encoder:
    """DistilBERT of BERT-Tiny: 1 layer, width 128, no pooler."""
    return Encoder(**{**_DISTILBERT, **_distil("tiny"), **kw})


def distilbert_mini(**kw) -> Encoder:
    """DistilBERT of BERT-Mini: 2 layers, width 256."""
    return Encoder(**{**_DISTILBERT, **_distil("mini"), **kw})


def distilbert_small(**kw) -> Encoder:
    """DistilBERT of BERT-Small: 2 layers, width 512."""
    return Encoder(**{**_DISTILBERT, **_distil("small"), **kw})


def distilbert_base(**kw) -> Encoder:
    """DistilBERT-Base: 6 layers, width 768."""
    return Encoder(**{**_DISTILBERT, **_distil("base"), **kw})
