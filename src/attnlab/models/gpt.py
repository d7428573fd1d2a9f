"""A GPT-style decoder-only language model (Radford et al., 2019), built from the shared pre-norm blocks of layers.py.

Choices: learned or rotary positions, a GELU (GPT-2) or SwiGLU (LLaMA) feed-forward, token embedding tied to the
output head, GPT-2's initialisation. `generate` decodes with a key/value cache, and falls back to recomputing the
last max_len tokens once the text outgrows the context (see `generate`).

Named sizes (parameters with a 4096-token vocabulary, max_len 256, learned positions, GELU, tied weights); the
first three have heads of 32 and train on a CPU, gpt_small is GPT-2 small's shape (heads of 64), a GPU size:
    gpt_nano   d_model 128, 4 layers, 4 heads     1.35M
    gpt_micro  d_model 192, 6 layers, 6 heads     3.51M
    gpt_mini   d_model 256, 6 layers, 8 heads     5.85M
    gpt_small  d_model 768, 12 layers, 12 heads  88.40M
"""

import math
from typing import Literal

import torch
from torch import nn

from attnlab.models.layers import Block, FeedForward, KVCache, LearnedPositions, RotaryPositions, swiglu_hidden
from attnlab.models.sampling import Streamer, decode

Positions = Literal["learned", "rotary"]
_POSITIONS = ("learned", "rotary")
# The projections that end a residual branch: GPT-2 scales their init by 1/sqrt(2 * n_layers), so the residual
# stream's variance does not grow with depth (each block adds two branches).
_RESIDUAL_PROJECTIONS = ("attn.out_proj.weight", "mlp.fc2.weight")


class GPT(nn.Module):
    """Token embedding (+ learned positions) -> causal pre-norm blocks -> final LayerNorm -> tied LM head."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        d_model: int = 256,
        n_layers: int = 6,
        n_heads: int = 8,
        d_ff: int | None = None,
        dropout: float = 0.0,
        positions: Positions = "learned",
        activation: FeedForward = "gelu",
        tie_weights: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if positions not in _POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; choose one of: {', '.join(_POSITIONS)}")
        if d_ff is None:
            # SwiGLU has three matrices where the MLP has two: 8/3 * d_model keeps the parameter count.
            d_ff = swiglu_hidden(d_model) if activation == "swiglu" else 4 * d_model
        self.max_len = max_len
        self.tok_embed = nn.Embedding(vocab_size, d_model)
        # Learned positions are added to the embeddings; rotary ones rotate q and k inside every attention layer.
        self.pos = LearnedPositions(max_len=max_len, d_model=d_model) if positions == "learned" else None
        self.rotary = RotaryPositions(max_len=max_len, head_dim=d_model // n_heads) if positions == "rotary" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff, dropout=dropout, activation=activation, bias=bias)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            # One matrix reads tokens in and scores them out (Press & Wolf, 2017): fewer parameters, better small LMs.
            self.lm_head.weight = self.tok_embed.weight
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2's init: N(0, 0.02) weights and embeddings, zero biases, residual projections scaled by depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.pos is not None:
            nn.init.normal_(self.pos.pos, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(_RESIDUAL_PROJECTIONS):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))

    def output_layer(self) -> nn.Module:
        """The module that produces the logits (its weight is the token embedding when tied)."""
        return self.lm_head

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache, one per block, for `forward(..., cache=...)`."""
        return [KVCache(max_len=self.max_len) for _ in self.blocks]

    def forward(self, x: torch.Tensor, *, cache: list[KVCache] | None = None) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, V); with a cache, x continues the cached positions."""
        return self.lm_head(self._hidden(x, cache))  # (B, T, V)

    def _hidden(self, x: torch.Tensor, cache: list[KVCache] | None) -> torch.Tensor:
        """The final, normalised hidden states (B, T, D) of token ids (B, T)."""
        B, T = x.shape
        offset = 0 if cache is None else cache[0].length
        if offset + T > self.max_len:
            cached = f" after {offset} cached positions" if offset else ""
            raise ValueError(
                f"sequence length {T}{cached} exceeds max_len {self.max_len}; "
                f"crop the input to its last {self.max_len - offset} tokens or build the model with a larger max_len"
            )
        h = self.tok_embed(x)  # (B, T, D)
        if self.pos is not None:
            h = self.pos(h, offset=offset)
        rope = self.rotary(T, offset=offset) if self.rotary is not None else None  # (cos, sin), each (T, hs/2)
        h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, is_causal=True, rope=rope, cache=None if cache is None else cache[i])
        return self.ln_f(h)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
    ) -> torch.Tensor:
        """Continue the prompts idx (B, T0) by up to max_new_tokens sampled tokens; returns (B, T0 + n).

        Sampling follows attnlab.models.sampling: temperature 0 is greedy, top_k / top_p (nucleus) keep the likeliest
        tokens, random draws come from `generator` alone when one is given; with eos_id, a row that produced it keeps
        producing eos_id, and decoding stops once every row has. Without the cache every step recomputes the last
        max_len tokens; with it the prompt is run once and each step feeds only the newest token. Once the text is
        longer than max_len, cached keys cannot be reused (their positions would shift), so the remaining steps
        recompute the last max_len tokens: exactly the uncached result, at the uncached speed.
        """
        cache = self.new_cache() if use_cache else None

        def step(tokens: torch.Tensor) -> torch.Tensor:
            if cache is not None and tokens.size(1) <= self.max_len:
                h = self._hidden(tokens[:, cache[0].length :], cache)  # the prompt first, then one token a step
            else:
                h = self._hidden(tokens[:, -self.max_len :], None)  # (B, T, D) over the cropped context
            return self.lm_head(h[:, -1])  # (B, V): only the last position is sampled from

        return decode(self, step, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      eos_id=eos_id, generator=generator, streamer=streamer)


def gpt_nano(**kw) -> GPT:
    """GPT-nano: d_model 128, 4 layers, 4 heads (1.35M parameters at vocab 4096, max_len 256)."""
    return GPT(**{"d_model": 128, "n_layers": 4, "n_heads": 4, **kw})


def gpt_micro(**kw) -> GPT:
    """GPT-micro: d_model 192, 6 layers, 6 heads (3.51M parameters at vocab 4096, max_len 256)."""
    return GPT(**{"d_model": 192, "n_layers": 6, "n_heads": 6, **kw})


def gpt_mini(**kw) -> GPT:
    """GPT-mini: d_model 256, 6 layers, 8 heads (5.85M parameters at vocab 4096, max_len 256)."""
    return GPT(**{"d_model": 256, "n_layers": 6, "n_heads": 8, **kw})


def gpt_small(**kw) -> GPT:
    """GPT-small, GPT-2 small's shape: d_model 768, 12 layers, 12 heads (88.40M parameters at vocab 4096, max_len 256)."""
    return GPT(**{"d_model": 768, "n_layers": 12, "n_heads": 12, **kw})
