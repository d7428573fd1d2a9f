"""Transformer building blocks shared by ViT, encoders, GPT decoders and seq2seq models."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["gelu", "relu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention; self-attention, or cross-attention when given a context."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            options = ", ".join(str(h) for h in range(1, d_model + 1) if d_model % h == 0 and h <= 16)
            raise ValueError(
                f"d_model {d_model} is not divisible by n_heads {n_heads}; "
                f"choose n_heads that divides d_model (e.g. {options})"
            )
        self.n_heads = n_heads
        self.dropout = dropout
        # Queries come from x, keys and values from the context: one module serves self- and cross-attention.
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attend from x (B, T, D) to context (B, S, D), or to x itself; mask is bool, True = may attend."""
        B, T, D = x.shape
        context = x if context is None else context
        S = context.size(1)
        hs = D // self.n_heads

        q = self.q_proj(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = self.kv_proj(context).split(D, dim=-1)  # each (B, S, D)
        k = k.view(B, S, self.n_heads, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, self.n_heads, hs).transpose(1, 2)  # (B, nh, S, hs)

        if mask is not None:
            # A float mask would be *added* to the scores by SDPA, so a 0/1 mask would silently mask nothing.
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
            if is_causal:
                # SDPA refuses attn_mask with is_causal: fold in a causal mask (top-left aligned, like SDPA).
                causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()  # (T, S)
                mask = mask & causal
                is_causal = False

        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads side by side again
        return self.out_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> activation -> Linear -> Dropout."""

    def __init__(
        self, *, d_model: int, d_ff: int, dropout: float = 0.0, activation: Activation = "gelu"
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_ACTIVATIONS)}")
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each on a residual branch."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: Activation = "gelu",
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation)

    def forward(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        x = x + self.drop(self.attn(self.ln1(x), mask=mask, is_causal=is_causal))
        x = x + self.mlp(self.ln2(x))
        return x


def _check_length(T: int, max_len: int) -> None:
    if T > max_len:
        raise ValueError(
            f"sequence length {T} exceeds max_len {max_len}; raise max_len or truncate the inputs"
        )


class LearnedPositions(nn.Module):
    """Adds a learned position embedding to each of the first max_len positions."""

    def __init__(self, *, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        _check_length(x.size(1), self.max_len)
        return x + self.pos[: x.size(1)]  # (T, D) broadcasts over the batch


class SinusoidalPositions(nn.Module):
    """Adds the fixed sine/cosine position encoding of 'Attention Is All You Need'."""

    def __init__(self, *, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)  # (max_len, ceil(D/2))
        pe[:, 1::2] = torch.cos(position * div[: d_model // 2])  # (max_len, floor(D/2)); odd D has one less
        # Not persistent: it is a pure function of (max_len, d_model), so checkpoints need not carry it.
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        _check_length(x.size(1), self.max_len)
        return x + self.pe[: x.size(1)].to(x.dtype)
