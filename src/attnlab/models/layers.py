"""Transformer building blocks shared by ViT, encoders, GPT decoders and seq2seq models.

Attention, feed-forward networks (plain MLP or SwiGLU), the encoder and encoder-decoder blocks (pre-norm, or
post-norm as in 'Attention Is All You Need'), position encodings (learned, sinusoidal, rotary) and the key/value
cache that lets a decoder generate one token per step without recomputing the past.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["gelu", "relu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}
# A block's feed-forward: the plain MLP with one of the activations above, or the gated SwiGLU.
FeedForward = Literal["gelu", "relu", "swiglu"]
_FEED_FORWARDS = (*_ACTIVATIONS, "swiglu")
Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, hs/2): the rotation angles of T positions


class KVCache:
    """Keys and values of the positions one attention layer has seen so far, for incremental decoding (no grad)."""

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0  # positions cached so far
        self.k: torch.Tensor | None = None  # (B, nh, max_len, hs), allocated on first use
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached ones; return all of them, (B, nh, length, hs) each."""
        B, nh, T, hs = k.shape
        if self.k is None:
            # One buffer written in place: concatenating every step would copy the whole past each time.
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(
                f"KV cache holds at most max_len {self.max_len} positions, got {self.length} cached + {T} new; "
                f"start a new cache and recompute the last max_len positions"
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows `index` (B',), in that order: beam search's reordering and pruning."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)  # (B', nh, max_len, hs)
            self.v = self.v.index_select(0, index)


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
        rope: Rope | None = None,
        cache: KVCache | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from x (B, T, D) to context (B, S, D), or to x itself; mask is bool, True = may attend.

        rope rotates queries and keys by their positions (self-attention only); cache holds the keys and values of
        earlier positions: the new ones are appended and x's T queries attend to all of them. context_kv, the
        context's keys and values from `context_kv(context)`, replaces the context: a decoder projects its encoder's
        output once per sentence, not once per generated token.
        """
        B, T, D = x.shape
        if rope is not None and (context is not None or context_kv is not None):
            raise ValueError("rotary positions apply to self-attention only; pass rope=None with a context")
        hs = D // self.n_heads
        if context_kv is not None or context is not None:
            q = self.q_proj(x).reshape(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
            k, v = context_kv if context_kv is not None else self.context_kv(context)  # each (B, nh, S, hs)
            S = k.size(2)
        else:
            # Self-attention: q, k and v in one matmul over the stacked weights (15% faster forward + backward at
            # width 288 and 38% at 128 on a 2-core CPU than two matmuls), the parameters staying two modules, so
            # checkpoints and Muon's per-matrix orthogonalisation are unchanged.
            S = T
            if isinstance(self.q_proj, nn.Linear) and isinstance(self.kv_proj, nn.Linear):
                weight = torch.cat([self.q_proj.weight, self.kv_proj.weight])  # (3D, D)
                bias = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.kv_proj.bias])
                q, k, v = F.linear(x, weight, bias).split(D, dim=-1)  # each (B, T, D)
            else:  # projections swapped for int8 modules (attnlab.serving.quantize), which hold no float weight
                q, (k, v) = self.q_proj(x), self.kv_proj(x).split(D, dim=-1)  # each (B, T, D)
            q = q.reshape(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
            k = k.view(B, S, self.n_heads, hs).transpose(1, 2)  # (B, nh, S, hs)
            v = v.view(B, S, self.n_heads, hs).transpose(1, 2)  # (B, nh, S, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # each (B, nh, past + S, hs)
            S = k.size(2)
        if is_causal and cache is not None and T == 1:
            is_causal = False  # the one new query is the newest position: it may see every cached key

        if mask is not None and mask.dtype != torch.bool:
            # A float mask would be *added* to the scores by SDPA, so a 0/1 mask would silently mask nothing.
            raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
        if is_causal and (mask is not None or past > 0):
            # SDPA refuses attn_mask with is_causal, and aligns its causal mask top-left; after `past` cached
            # positions the T queries are positions past..past+T-1, so query i may see keys up to past + i.
            causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, S)
            mask = causal if mask is None else mask & causal
            is_causal = False

        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads side by side again
        return self.out_proj(y)

    def weights(self, x: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights (B, nh, T, S) of queries from x (B, T, D) over a context's keys, written out (the
        forward pass never forms them: SDPA fuses them away). For figures."""
        B, T, D = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        scores = q @ context_kv[0].transpose(-2, -1) / math.sqrt(D // self.n_heads)  # (B, nh, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (B, nh, S, hs) each that queries read from a context (B, S, D)."""
        B, S, D = context.shape
        k, v = self.kv_proj(context).split(D, dim=-1)  # each (B, S, D)
        k = k.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, nh, S, hs)
        return k, v


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> activation -> Linear -> Dropout."""

    def __init__(
        self, *, d_model: int, d_ff: int, dropout: float = 0.0, activation: Activation = "gelu", bias: bool = True
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_ACTIVATIONS)}")
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward network (Shazeer, 2020): fc2(silu(gate) * value) with gate, value = fc1(x) -> Dropout."""

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.fc1 = nn.Linear(d_model, 2 * d_ff, bias=bias)  # gate and value projections, fused
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D)."""
        gate, value = self.fc1(x).split(self.d_ff, dim=-1)  # each (B, T, d_ff)
        return self.drop(self.fc2(F.silu(gate) * value))


def swiglu_hidden(d_model: int) -> int:
    """SwiGLU width with the parameters of a 4 * d_model MLP: 8/3 * d_model, rounded up to a multiple of 32."""
    return 32 * math.ceil(8 * d_model / 3 / 32)


def feed_forward(
    *, d_model: int, d_ff: int, dropout: float = 0.0, activation: FeedForward = "gelu", bias: bool = True
) -> nn.Module:
    """A block's feed-forward network: the plain MLP with a gelu/relu activation, or SwiGLU."""
    if activation not in _FEED_FORWARDS:
        raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(_FEED_FORWARDS)}")
    if activation == "swiglu":
        return SwiGLU(d_model=d_model, d_ff=d_ff, dropout=dropout, bias=bias)
    return MLP(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation, bias=bias)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each on a residual branch."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: FeedForward = "gelu",
        bias: bool = True,
        attn_dropout: float | None = None,
    ) -> None:
        """`attn_dropout`: dropout on the attention weights (None: `dropout`). Any above 0 sends CPU training off
        SDPA's fused kernel onto the one that writes out the (T, T) weights (a BERT-Tiny step at 512 tokens: 1.34x)."""
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, bias=bias,
                                       dropout=dropout if attn_dropout is None else attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = feed_forward(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: Rope | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D); rope and cache go to the self-attention (see MultiHeadAttention)."""
        x = x + self.drop(self.attn(self.ln1(x), mask=mask, is_causal=is_causal, rope=rope, cache=cache))
        x = x + self.mlp(self.ln2(x))
        return x


class PostNormBlock(Block):
    """Post-norm transformer block ('Attention Is All You Need'): LayerNorm after each residual sum, same weights."""

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: Rope | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D); each output is normalised, so a stack of them needs no final LayerNorm."""
        x = self.ln1(x + self.drop(self.attn(x, mask=mask, is_causal=is_causal, rope=rope, cache=cache)))
        return self.ln2(x + self.mlp(x))


class DecoderBlock(nn.Module):
    """Pre-norm encoder-decoder block: causal self-attention, cross-attention to the encoder's output, then MLP."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: FeedForward = "gelu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, dropout=dropout, bias=bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.cross_attn = MultiHeadAttention(d_model=d_model, n_heads=n_heads, dropout=dropout, bias=bias)
        self.drop = nn.Dropout(dropout)
        self.ln3 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = feed_forward(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation, bias=bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of the encoder's output (B, S, D): computed once per sentence."""
        return self.cross_attn.context_kv(memory)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        *,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Map the target positions x (B, T, D) to (B, T, D), reading the encoder through `memory_kv(memory)`.

        memory_mask (B, 1, 1, S) is True at the source positions to attend to; cache holds the self-attention's
        earlier positions, and x continues them.
        """
        x = x + self.drop(self.attn(self.ln1(x), is_causal=True, cache=cache))
        x = x + self.drop(self.cross_attn(self.ln2(x), mask=memory_mask, context_kv=memory_kv))
        return x + self.mlp(self.ln3(x))


class PostNormDecoderBlock(DecoderBlock):
    """Post-norm encoder-decoder block ('Attention Is All You Need'): LayerNorm after each residual sum."""

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        *,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Map (B, T, D) to (B, T, D); see DecoderBlock.forward."""
        x = self.ln1(x + self.drop(self.attn(x, is_causal=True, cache=cache)))
        x = self.ln2(x + self.drop(self.cross_attn(x, mask=memory_mask, context_kv=memory_kv)))
        return self.ln3(x + self.mlp(x))


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

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        """Map (B, T, D), the positions offset..offset+T-1, to (B, T, D)."""
        _check_length(offset + x.size(1), self.max_len)
        return x + self.pos[offset : offset + x.size(1)]  # (T, D) broadcasts over the batch


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

    def forward(self, x: torch.Tensor, *, offset: int = 0) -> torch.Tensor:
        """Map (B, T, D), the positions offset..offset+T-1, to (B, T, D)."""
        _check_length(offset + x.size(1), self.max_len)
        return x + self.pe[offset : offset + x.size(1)].to(x.dtype)


class RotaryPositions(nn.Module):
    """Rotary position embedding (RoPE, Su et al., 2021): cos/sin tables that rotate queries and keys by position.

    Attention scores then depend on positions only through their difference. The tables are handed to every
    attention layer (see MultiHeadAttention's rope); nothing is added to the token embeddings.
    """

    def __init__(self, *, max_len: int, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary positions need an even head size, got {head_dim}; change d_model or n_heads")
        self.max_len = max_len
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hs/2)
        # Not persistent: pure functions of (max_len, head_dim, base), so checkpoints need not carry them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, T: int, *, offset: int = 0) -> Rope:
        """The (cos, sin) tables of positions offset..offset+T-1, each (T, hs/2)."""
        _check_length(offset + T, self.max_len)
        return self.cos[offset : offset + T], self.sin[offset : offset + T]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) by the angles of its T positions; pairs are (i, i + hs/2), as in GPT-NeoX and LLaMA."""
    x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, hs/2) broadcasts over batch and heads
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, nh, T, hs)
