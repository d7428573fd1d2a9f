"""An encoder-decoder transformer for translation ('Attention Is All You Need', Vaswani et al., 2017).

Built from layers.py: the encoder is a stack of self-attention blocks with a key-padding mask on the source, the decoder
a stack of blocks with causal self-attention and cross-attention to the encoder's output. Pre-norm by default (trains
without a long warm-up), post-norm as in the paper; ReLU feed-forwards, as in the paper. Token embeddings are
scaled by sqrt(d_model) (paper, section 3.4) from an init of std d_model**-0.5, so tokens enter at unit size, the size
of the sinusoids added to them (fairseq's recipe; learned positions start at that size too); every Linear has GPT-2's
init. The decoder's embedding is tied to the output layer by default, and the source's to the target's when the data
has one vocabulary for both. A tied output layer reads the hidden state as it is (fairseq's recipe): the untrained
model then scores its own input token ~sqrt(d_model) above the rest and starts several nats above log(vocab_size),
which the first hundred steps undo. `scale_tied_output=True` reads it scaled by d_model**-0.5 instead (as T5 does):
it starts at log(vocab_size), but on Multi30k (width 128) it learned far more slowly: validation loss 5.49 after
the first epoch, where the unscaled output is at 4 (see README).

Decoding (attnlab.models.decoding) drives `encode` / `start` / `step` / `reorder`: the encoder's output is projected
to each layer's cross-attention keys and values once per sentence, and each step feeds one token through a key/value
cache (or, with `cache=False`, recomputes the whole prefix: the reference the cache is tested against).

Named sizes (parameters with separate 8000-token source and target vocabularies, tied output):
    transformer_seq2seq_tiny   d_model 128, 2+2 layers, 4 heads, d_ff 512     3.0M   (tests, quick runs)
    transformer_seq2seq_small  d_model 256, 3+3 layers, 4 heads, d_ff 1024    9.6M   (Multi30k on a CPU)
    transformer_seq2seq_base   d_model 512, 6+6 layers, 8 heads, d_ff 2048   52.3M   (the paper's base; a GPU size)
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.layers import (
    Block,
    DecoderBlock,
    KVCache,
    LearnedPositions,
    PostNormBlock,
    PostNormDecoderBlock,
    SinusoidalPositions,
)

Norm = Literal["pre", "post"]
Positions = Literal["sinusoidal", "learned"]
# (encoder block, decoder block, final LayerNorm after each stack): post-norm blocks end normalised already.
_NORMS: dict[str, tuple[type[nn.Module], type[nn.Module], bool]] = {
    "pre": (Block, DecoderBlock, True),
    "post": (PostNormBlock, PostNormDecoderBlock, False),
}
_POSITIONS: dict[str, type[nn.Module]] = {"sinusoidal": SinusoidalPositions, "learned": LearnedPositions}
# The projections that end a residual branch (cross_attn.out_proj ends with attn.out_proj too): GPT-2 scales their
# init by 1/sqrt(number of branches in the stack), so the residual stream's variance does not grow with depth.
_RESIDUAL_PROJECTIONS = ("attn.out_proj.weight", "mlp.fc2.weight")


@dataclass
class Encoded:
    """The encoder's output for a batch of sources."""

    memory: torch.Tensor  # (B, S, D)
    mask: torch.Tensor | None  # (B, 1, 1, S), True = a source token to attend to; None when nothing is padding


@dataclass
class DecoderState:
    """What the decoder needs for its next step: the source's keys and values, and its own past."""

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder block, (B, nh, S, hs) each
    mask: torch.Tensor | None  # (B, 1, 1, S)
    caches: list[KVCache] | None  # per decoder block; None: recompute the prefix every step
    prefix: torch.Tensor  # (B, t) target tokens fed so far (kept only without caches; else (B, 0))


class TransformerSeq2Seq(nn.Module):
    """Source embedding -> encoder blocks; target embedding -> decoder blocks over the encoder's output -> logits."""

    def __init__(
        self,
        *,
        src_vocab_size: int,
        tgt_vocab_size: int,
        src_pad_id: int,
        tgt_pad_id: int,
        max_src_len: int,
        max_tgt_len: int,
        shared_vocab: bool = False,
        d_model: int = 256,
        n_heads: int = 4,
        n_enc_layers: int = 3,
        n_dec_layers: int = 3,
        d_ff: int | None = None,
        dropout: float = 0.1,
        norm: Norm = "pre",
        positions: Positions = "sinusoidal",
        share_embeddings: bool = True,
        tie_output: bool = True,
        scale_tied_output: bool = False,
    ) -> None:
        """share_embeddings applies only where the data has one vocabulary for both sides (shared_vocab, equal sizes
        and pad ids); otherwise the source and target embeddings stay separate. tie_output makes the output layer's
        weight the target embedding. d_ff defaults to 4 * d_model."""
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(_NORMS)}")
        if positions not in _POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; choose one of: {', '.join(_POSITIONS)}")
        encoder_block, decoder_block, final_norm = _NORMS[norm]
        d_ff = d_ff or 4 * d_model
        self.src_pad_id = src_pad_id
        self.max_tgt_len = max_tgt_len
        self.embed_scale = math.sqrt(d_model)
        self.out_scale = d_model**-0.5 if tie_output and scale_tied_output else 1.0  # see the module's docstring
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=tgt_pad_id)
        one_vocab = shared_vocab and src_vocab_size == tgt_vocab_size and src_pad_id == tgt_pad_id
        if share_embeddings and one_vocab:
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=src_pad_id)
        self.src_pos = _POSITIONS[positions](max_len=max_src_len, d_model=d_model)
        self.tgt_pos = _POSITIONS[positions](max_len=max_tgt_len, d_model=d_model)
        self.drop = nn.Dropout(dropout)
        block = {"d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, "dropout": dropout, "activation": "relu"}
        self.encoder = nn.ModuleList(encoder_block(**block) for _ in range(n_enc_layers))
        self.ln_enc = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.decoder = nn.ModuleList(decoder_block(**block) for _ in range(n_dec_layers))
        self.ln_dec = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.out = nn.Linear(d_model, tgt_vocab_size, bias=False)
        self._init_weights(d_model, n_enc_layers, n_dec_layers)
        if tie_output:
            self.out.weight = self.tgt_embed.weight  # Press & Wolf (2017): one matrix reads and scores tokens

    def _init_weights(self, d_model: int, n_enc_layers: int, n_dec_layers: int) -> None:
        """GPT-2's init for Linear layers; embeddings N(0, d_model**-0.5), pad rows zero; learned positions N(0, 1/2)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=d_model**-0.5)
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, LearnedPositions):
                nn.init.normal_(module.pos, std=0.5**0.5)  # the sinusoids' variance: positions as loud as tokens
        for stack, branches in ((self.encoder, 2 * n_enc_layers), (self.decoder, 3 * n_dec_layers)):
            for name, p in stack.named_parameters():
                if name.endswith(_RESIDUAL_PROJECTIONS):
                    nn.init.normal_(p, std=0.02 / math.sqrt(branches))

    def output_layer(self) -> nn.Module:
        """The module that produces the logits (its weight is the target embedding when tied)."""
        return self.out

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Map source ids (B, S) and target inputs (B, T) (starting with <sos>) to next-token logits (B, T, V)."""
        encoded = self.encode(src)
        memory_kv = [block.memory_kv(encoded.memory) for block in self.decoder]
        return self.out(self._decode(tgt_in, memory_kv, encoded.mask, None) * self.out_scale)  # (B, T, V)

    @torch.no_grad()
    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's cross-attention weights (B, T, S), averaged over heads, teacher-forced (for figures)."""
        encoded = self.encode(src)
        memory_kv = [block.memory_kv(encoded.memory) for block in self.decoder]
        seen: dict[str, torch.Tensor] = {}
        last = self.decoder[-1].cross_attn
        # The query the last cross-attention reads (its input), caught on the way through the decoder.
        hook = last.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
        try:
            self._decode(tgt_in, memory_kv, encoded.mask, None)
        finally:
            hook.remove()
        return last.weights(seen["x"], memory_kv[-1], encoded.mask).mean(dim=1)  # (B, T, S)

    def encode(self, src: torch.Tensor) -> Encoded:
        """Run the encoder over source ids (B, S) padded with src_pad_id (padding never changes the result)."""
        real = src != self.src_pad_id  # (B, S)
        # Without padding in the batch SDPA runs unmasked, which is faster.
        mask = None if bool(real.all()) else real[:, None, None, :]  # (B, 1, 1, S): keys to attend to
        if mask is not None:
            # A source with no real token would attend to nothing (NaN): let it attend to its padding instead.
            mask = mask | ~real.any(dim=1)[:, None, None, None]
        x = self.drop(self.src_pos(self.src_embed(src) * self.embed_scale))  # (B, S, D)
        for block in self.encoder:
            x = block(x, mask=mask)
        return Encoded(memory=self.ln_enc(x), mask=mask)

    def _decode(
        self,
        tokens: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor | None,
        caches: list[KVCache] | None,
    ) -> torch.Tensor:
        """The decoder's final hidden states (B, T, D) for target ids (B, T); with caches, they continue the cached."""
        offset = 0 if caches is None else caches[0].length
        h = self.drop(self.tgt_pos(self.tgt_embed(tokens) * self.embed_scale, offset=offset))  # (B, T, D)
        for i, block in enumerate(self.decoder):
            h = block(h, memory_kv[i], memory_mask=mask, cache=None if caches is None else caches[i])
        return self.ln_dec(h)

    def start(self, encoded: Encoded, *, cache: bool = True) -> DecoderState:
        """The decoder's state before its first step; cache=False recomputes the whole prefix at every step."""
        memory_kv = [block.memory_kv(encoded.memory) for block in self.decoder]
        caches = [KVCache(max_len=self.max_tgt_len) for _ in self.decoder] if cache else None
        prefix = encoded.memory.new_empty(encoded.memory.size(0), 0, dtype=torch.long)  # (B, 0)
        return DecoderState(memory_kv=memory_kv, mask=encoded.mask, caches=caches, prefix=prefix)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Feed one target token per row (B,); return next-token log-probs (B, V) and the advanced state."""
        if state.caches is None:
            state.prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, t + 1)
            h = self._decode(state.prefix, state.memory_kv, state.mask, None)[:, -1]  # (B, D)
        else:
            h = self._decode(tokens[:, None], state.memory_kv, state.mask, state.caches)[:, 0]  # (B, D)
        return F.log_softmax(self.out(h * self.out_scale).float(), dim=-1), state

    def reorder(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Keep (or repeat) the rows `index` (B',) of the state, in that order."""
        for cache in state.caches or []:
            cache.reorder(index)
        return DecoderState(
            memory_kv=[(k.index_select(0, index), v.index_select(0, index)) for k, v in state.memory_kv],
            mask=None if state.mask is None else state.mask.index_select(0, index),
            caches=state.caches,
            prefix=state.prefix.index_select(0, index),
        )


def transformer_seq2seq_tiny(**kw) -> TransformerSeq2Seq:
    """d_model 128, 2 encoder + 2 decoder layers, 4 heads, d_ff 512."""
    return TransformerSeq2Seq(**{"d_model": 128, "n_enc_layers": 2, "n_dec_layers": 2, "n_heads": 4, "d_ff": 512, **kw})


def transformer_seq2seq_small(**kw) -> TransformerSeq2Seq:
    """d_model 256, 3 encoder + 3 decoder layers, 4 heads, d_ff 1024: a Multi30k model for a CPU."""
    return TransformerSeq2Seq(
        **{"d_model": 256, "n_enc_layers": 3, "n_dec_layers": 3, "n_heads": 4, "d_ff": 1024, **kw}
    )


def transformer_seq2seq_base(**kw) -> TransformerSeq2Seq:
    """The paper's base shape: d_model 512, 6 encoder + 6 decoder layers, 8 heads, d_ff 2048."""
    return TransformerSeq2Seq(
        **{"d_model": 512, "n_enc_layers": 6, "n_dec_layers": 6, "n_heads": 8, "d_ff": 2048, **kw}
    )
