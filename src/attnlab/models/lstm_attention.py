"""An LSTM encoder-decoder with attention (Bahdanau et al., 2015; Luong et al., 2015), the recurrent baseline for
TransformerSeq2Seq.

The encoder is a stacked bidirectional LSTM that reads each source within its own length (the method of rnn.py:
padding never reaches a real token's state, with no packed sequences, whose backward pass is slow on CPU). The
decoder is a stacked LSTM started from the encoder's final states; after each step its top state queries the
encoder's outputs (additive 'bahdanau' or multiplicative 'luong' general score), and the attentional vector
tanh(W [context; state]) both scores the next token and is fed to the next step with its token (Luong's input
feeding). Input feeding makes training a loop over target positions; its body is one LSTM cell per layer and one
attention read, with the key projection and the embeddings computed once for the whole batch.

Recurrent, it reads and writes any length: it takes no max_src_len or max_tgt_len (decoding is capped by the caller).
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.rnn import _without_onednn, reverse_within_length

Attention = Literal["bahdanau", "luong"]


class AdditiveAttention(nn.Module):
    """Bahdanau's score v . tanh(W_k key + W_q query)."""

    def __init__(self, *, d_query: int, d_key: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(d_key, d_query, bias=False)
        self.query_proj = nn.Linear(d_query, d_query)
        self.v = nn.Linear(d_query, 1, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """What the scores read of the keys (B, S, d_key), computed once per sentence: (B, S, d_query)."""
        return self.key_proj(keys)

    def forward(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """Scores (B, S) of a query (B, d_query) against prepared keys (B, S, d_query)."""
        return self.v(torch.tanh(prepared + self.query_proj(query)[:, None])).squeeze(-1)


class GeneralAttention(nn.Module):
    """Luong's 'general' score query . W key."""

    def __init__(self, *, d_query: int, d_key: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(d_key, d_query, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """W key for keys (B, S, d_key), computed once per sentence: (B, S, d_query)."""
        return self.key_proj(keys)

    def forward(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """Scores (B, S) of a query (B, d_query) against prepared keys (B, S, d_query)."""
        return torch.bmm(prepared, query[:, :, None]).squeeze(-1)


_ATTENTIONS: dict[str, type[nn.Module]] = {"bahdanau": AdditiveAttention, "luong": GeneralAttention}


@dataclass
class Encoded:
    """The encoder's output for a batch of sources."""

    memory: torch.Tensor  # (B, S, 2H): both directions' states at every source position
    mask: torch.Tensor  # (B, S), True = a source token to attend to
    final: torch.Tensor  # (n_layers, B, 2H): each layer's forward state at the last token, backward at the first


@dataclass
class DecoderState:
    """The decoder's recurrent state and what it attends to."""

    memory: torch.Tensor  # (B, S, 2H)
    keys: torch.Tensor  # (B, S, H): the memory as the attention's score reads it
    mask: torch.Tensor  # (B, S)
    h: list[torch.Tensor]  # per layer (B, H)
    c: list[torch.Tensor]  # per layer (B, H)
    feed: torch.Tensor  # (B, H): the last attentional vector, fed with the next token
    weights: torch.Tensor | None = None  # (B, S): the last step's attention over the source (for figures)


class LSTMAttention(nn.Module):
    """Bidirectional LSTM encoder -> LSTM decoder with attention and input feeding -> logits."""

    def __init__(
        self,
        *,
        src_vocab_size: int,
        tgt_vocab_size: int,
        src_pad_id: int,
        tgt_pad_id: int,
        shared_vocab: bool = False,
        d_embed: int = 256,
        d_hidden: int = 256,
        n_layers: int = 2,
        dropout: float = 0.3,
        attention: Attention = "luong",
        share_embeddings: bool = True,
    ) -> None:
        """share_embeddings applies only where the data has one vocabulary for both sides (shared_vocab, equal sizes
        and pad ids); otherwise the source and target embeddings stay separate."""
        super().__init__()
        if attention not in _ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; choose one of: {', '.join(_ATTENTIONS)}")
        self.src_pad_id = src_pad_id
        self.max_tgt_len = None  # no position table: the caller caps the output length
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_embed, padding_idx=tgt_pad_id)
        one_vocab = shared_vocab and src_vocab_size == tgt_vocab_size and src_pad_id == tgt_pad_id
        if share_embeddings and one_vocab:
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = nn.Embedding(src_vocab_size, d_embed, padding_idx=src_pad_id)
        self.drop = nn.Dropout(dropout)
        # One single-direction LSTM per layer and direction: the backward one reads each source reversed.
        inputs = [d_embed] + [2 * d_hidden] * (n_layers - 1)  # input width of each encoder layer
        self.forward_rnns = nn.ModuleList(nn.LSTM(d, d_hidden, batch_first=True) for d in inputs)
        self.backward_rnns = nn.ModuleList(nn.LSTM(d, d_hidden, batch_first=True) for d in inputs)
        self.bridge = nn.Linear(2 * d_hidden, d_hidden)  # an encoder layer's final states -> its decoder layer's h0
        self.cells = nn.ModuleList(
            nn.LSTMCell(d_embed + d_hidden if i == 0 else d_hidden, d_hidden) for i in range(n_layers)
        )
        self.attention = _ATTENTIONS[attention](d_query=d_hidden, d_key=2 * d_hidden)
        self.combine = nn.Linear(2 * d_hidden + d_hidden, d_hidden, bias=False)  # [context; h] -> attentional vector
        self.out = nn.Linear(d_hidden, tgt_vocab_size)
        for embed in dict.fromkeys([self.src_embed, self.tgt_embed]):  # once when shared
            # Small uniform embeddings, as in the classic recipes (and lstm_lm.py); the pad row stays zero.
            nn.init.uniform_(embed.weight, -0.1, 0.1)
            with torch.no_grad():
                embed.weight[embed.padding_idx].zero_()

    def output_layer(self) -> nn.Module:
        """The module that produces the logits."""
        return self.out

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Map source ids (B, S) and target inputs (B, T) (starting with <sos>) to next-token logits (B, T, V)."""
        state = self.start(self.encode(src))
        emb = self.drop(self.tgt_embed(tgt_in))  # (B, T, E), all positions at once
        feeds = []
        for t in range(tgt_in.size(1)):
            state = self._advance(emb[:, t], state)
            feeds.append(state.feed)
        return self.out(self.drop(torch.stack(feeds, dim=1)))  # (B, T, V)

    @torch.no_grad()
    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """The attention weights (B, T, S) over the source at each target position, teacher-forced (for figures)."""
        state = self.start(self.encode(src))
        emb = self.tgt_embed(tgt_in)  # (B, T, E)
        weights = []
        for t in range(tgt_in.size(1)):
            state = self._advance(emb[:, t], state)
            weights.append(state.weights)
        return torch.stack(weights, dim=1)  # (B, T, S)

    def encode(self, src: torch.Tensor) -> Encoded:
        """Run the encoder over source ids (B, S) padded with src_pad_id at the end."""
        B, S = src.shape
        real = src != self.src_pad_id  # (B, S)
        lengths = real.sum(dim=1).clamp(min=1)  # (B,): an empty source reads one pad token
        mask = real | ~real.any(dim=1, keepdim=True)  # an empty source attends to its padding rather than nothing
        rows = torch.arange(B, device=src.device)
        x = self.drop(self.src_embed(src))  # (B, S, E)
        finals = []
        # oneDNN's CPU LSTM builds a new kernel for every sequence length (see rnn.py); the native one costs nothing.
        with _without_onednn():
            for layer, (forward_rnn, backward_rnn) in enumerate(zip(self.forward_rnns, self.backward_rnns)):
                if layer > 0:
                    x = self.drop(x)
                fwd = forward_rnn(x)[0]  # (B, S, H); past each length it has read padding, and is never read
                bwd = reverse_within_length(backward_rnn(reverse_within_length(x, lengths))[0], lengths)  # (B, S, H)
                finals.append(torch.cat([fwd[rows, lengths - 1], bwd[:, 0]], dim=-1))  # (B, 2H)
                x = torch.cat([fwd, bwd], dim=-1)  # (B, S, 2H)
        return Encoded(memory=x, mask=mask, final=torch.stack(finals))

    def start(self, encoded: Encoded, *, cache: bool = True) -> DecoderState:
        """The decoder's state before its first step (an RNN carries its state: `cache` changes nothing)."""
        h0 = torch.tanh(self.bridge(encoded.final))  # (n_layers, B, H)
        return DecoderState(
            memory=encoded.memory,
            keys=self.attention.prepare(encoded.memory),  # (B, S, H)
            mask=encoded.mask,
            h=list(h0.unbind(0)),
            c=[torch.zeros_like(h) for h in h0.unbind(0)],
            feed=h0.new_zeros(h0.shape[1:]),  # (B, H)
        )

    def _advance(self, emb: torch.Tensor, state: DecoderState) -> DecoderState:
        """One decoder step for the embedded tokens (B, E): new LSTM states and attentional vector."""
        x = torch.cat([emb, state.feed], dim=-1)  # (B, E + H): input feeding
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                x = self.drop(x)
            h, c = cell(x, (state.h[layer], state.c[layer]))
            hs.append(h)
            cs.append(c)
            x = h
        scores = self.attention(x, state.keys).masked_fill(~state.mask, float("-inf"))  # (B, S)
        weights = scores.softmax(dim=-1)  # (B, S)
        context = torch.bmm(weights[:, None], state.memory)[:, 0]  # (B, 2H)
        feed = torch.tanh(self.combine(torch.cat([context, x], dim=-1)))  # (B, H)
        return DecoderState(memory=state.memory, keys=state.keys, mask=state.mask, h=hs, c=cs, feed=feed, weights=weights)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Feed one target token per row (B,); return next-token log-probs (B, V) and the advanced state."""
        state = self._advance(self.drop(self.tgt_embed(tokens)), state)
        return F.log_softmax(self.out(self.drop(state.feed)).float(), dim=-1), state

    def reorder(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Keep (or repeat) the rows `index` (B',) of the state, in that order."""
        return DecoderState(
            memory=state.memory.index_select(0, index),
            keys=state.keys.index_select(0, index),
            mask=state.mask.index_select(0, index),
            h=[h.index_select(0, index) for h in state.h],
            c=[c.index_select(0, index) for c in state.c],
            feed=state.feed.index_select(0, index),
        )
