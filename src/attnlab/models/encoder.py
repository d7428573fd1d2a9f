"""Transformer encoders for text classification, after BERT (Devlin et al., 2019), RoBERTa (Liu et al., 2019) and
DistilBERT (Sanh et al., 2019), built from the shared pre-norm blocks of layers.py.

The families differ in what the builders below switch, not in code: BERT has token-type embeddings and a
pooler (dense + tanh over [CLS]); RoBERTa drops token types (and is paired with byte-level BPE in its
experiment); DistilBERT has half the layers of its BERT and no pooler. Sizes follow the published BERT
miniatures (Turc et al., 2019): tiny 2x128, mini 4x256, small 4x512, medium 8x512, base 12x768; heads of 64.
Unlike the originals the blocks are pre-norm, which trains from scratch without a long warm-up.

`head="tokens"` gives the same encoder BERT's masked-LM head instead of the classifier (dense + GELU + LayerNorm,
then the output layer tied to the token embedding): what `task=masked_lm` pretrains. A classifier started from such
a run (`init_from=<run> init_from_strict=false`) takes every tensor but the heads and the pooler.
"""

from typing import Literal

import torch
from torch import nn

from attnlab.models.layers import Activation, Block, LearnedPositions, SinusoidalPositions

Positions = Literal["learned", "sinusoidal"]
Pool = Literal["cls", "mean"]
Head = Literal["classes", "tokens"]
_POSITIONS = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}
_POOLS = ("cls", "mean")


class Encoder(nn.Module):
    """Token (+ type) + position embeddings -> pre-norm blocks with a key-padding mask -> pooled state -> head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        num_classes: int | None = None,
        max_len: int,
        pad_id: int = 0,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        activation: Activation = "gelu",
        type_vocab_size: int = 0,
        positions: Positions = "learned",
        pool: Pool = "cls",
        pooler: bool = True,
        head: Head = "classes",
    ) -> None:
        super().__init__()
        if head not in ("classes", "tokens"):
            raise ValueError(f"unknown head {head!r}; choose classes (a classifier) or tokens (masked-LM pretraining)")
        if head == "classes" and not num_classes:
            raise ValueError("head=classes needs num_classes (a fact of labelled data); a text corpus has no classes: "
                             "pretrain with head=tokens (task=masked_lm)")
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
            Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff or 4 * d_model, dropout=dropout, activation=activation,
                  attn_dropout=attn_dropout)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head_kind = head
        if head == "classes":
            assert num_classes is not None
            self.pooler = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh()) if pooler else nn.Identity()
            self.head = nn.Linear(d_model, num_classes)
        else:
            self.lm_head = MaskedLMHead(d_model, vocab_size, activation=activation)
        self.apply(self._init_weights)
        if head == "tokens":
            self.lm_head.decoder.weight = self.tok_embed.weight  # tied, as BERT's

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
        return self.head if self.head_kind == "classes" else self.lm_head.decoder

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T), a mask (B, T) (True/1 = real token) and segment ids (B, T) -> the final hidden states
        (B, T, D) and the real-token mask (B, T) bool (None when no mask was given)."""
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
        return self.ln_f(x), real

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits over the vocabulary (..., V) for hidden states (..., D): pass only the masked positions'
        states, so the V-wide output layer runs on ~15% of the tokens."""
        if self.head_kind != "tokens":
            raise ValueError("this encoder has a classification head (head=classes), not a masked-LM one")
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map token ids (B, T), a mask (B, T) (True/1 = real token) and segment ids (B, T) to logits: (B, num_classes)
        for head=classes, (B, T, V) for every position with head=tokens."""
        x, real = self.encode(input_ids, attention_mask, token_type_ids)
        if self.head_kind == "tokens":
            return self.lm_head(x)  # (B, T, V)
        if self.pool == "cls":
            pooled = x[:, 0]  # (B, D): the first token, <cls>
        elif real is None:
            pooled = x.mean(dim=1)  # (B, D)
        else:
            weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, D): mean of real tokens
        return self.head(self.drop(self.pooler(pooled)))  # (B, num_classes)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: dense + activation + LayerNorm, then a (tied) output layer over the vocabulary."""

    def __init__(self, d_model: int, vocab_size: int, *, activation: Activation = "gelu") -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


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
