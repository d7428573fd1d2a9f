"""Greedy and beam-search decoding for sequence-to-sequence models, batched over sentences and beams.

Any model that keeps the `Seq2SeqModel` protocol below decodes here (TransformerSeq2Seq, LSTMAttention): the loops
call its `encode` once, `start`, then one `step` per target position over every live row of the batch at once, and
`reorder` to follow the surviving beams and to drop the rows of sentences that are done.

Length: a sentence with n source tokens (those that are not src_pad_id) gets at most floor(max_len_a * n) + max_len_b
decoding steps, and at most `max_len` and the model's `max_tgt_len` (its position table); its <eos> counts as one
step. The returned ids carry neither <sos> nor <eos>; a sentence cut at its cap ends without <eos>. Decoding runs
under torch.inference_mode() with the model in eval mode; the model's mode comes back afterwards.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Seq2SeqModel(Protocol):
    """What decoding needs of a model; the states are the model's own objects, with batch-first tensors."""

    src_pad_id: int  # padding in the source batch (source lengths count the other tokens)
    max_tgt_len: int | None  # the most target positions the model can decode; None: no limit of its own
    training: bool

    def train(self, mode: bool = True) -> Any:
        """Set training (dropout on) or eval mode: nn.Module's."""

    def encode(self, src: torch.Tensor) -> Any:
        """The encoder's output for source ids (B, S), padded with src_pad_id at the end."""

    def start(self, encoded: Any, *, cache: bool = True) -> Any:
        """The decoder's state before its first step; cache=False may recompute the whole prefix each step."""

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Feed one target token per row (B,) (<sos> first); return next-token log-probs (B, V) and the new state."""

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """The state of the rows `index` (B',), in that order: rows may be dropped or repeated."""


@dataclass
class Hypothesis:
    """One translation found by beam search."""

    tokens: list[int]  # without <sos> and <eos>
    score: float  # sum of the tokens' log-probs (<eos> included) / GNMT length penalty


@contextmanager
def _decoding(model: Seq2SeqModel) -> Iterator[None]:
    """Eval mode and inference mode for the block; the model's mode comes back afterwards."""
    was_training = model.training
    model.train(False)
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def length_caps(
    model: Seq2SeqModel, src: torch.Tensor, *, max_len_a: float, max_len_b: int, max_len: int | None
) -> torch.Tensor:
    """The most decoding steps (B,) of each source sentence in src (B, S): see the module's docstring."""
    n = (src != model.src_pad_id).sum(dim=1)  # (B,)
    caps = (max_len_a * n).floor().long() + max_len_b
    for limit in (max_len, model.max_tgt_len):
        if limit is not None:
            caps = caps.clamp(max=limit)
    return caps.clamp(min=1)


def greedy(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    sos_id: int,
    eos_id: int,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int | None = None,
    cache: bool = True,
) -> list[list[int]]:
    """The likeliest next token at every step, for each sentence of src (B, S); rows leave the batch at <eos>."""
    with _decoding(model):
        B = src.size(0)
        caps = length_caps(model, src, max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len)  # (B,)
        steps = int(caps.max())
        out = src.new_empty(B, steps)
        lengths = caps.clone()  # tokens kept per sentence: the cap, unless <eos> comes first
        rows = torch.arange(B, device=src.device)  # (b,) the sentence of each live row
        state = model.start(model.encode(src), cache=cache)
        tokens = src.new_full((B,), sos_id)
        for t in range(steps):
            log_probs, state = model.step(tokens, state)  # (b, V)
            tokens = log_probs.argmax(dim=-1)  # (b,)
            out[rows, t] = tokens
            eos = tokens == eos_id
            lengths[rows[eos]] = t
            done = eos | (caps[rows] == t + 1)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)  # (b',)
                state, tokens, rows = model.reorder(state, keep), tokens[keep], rows[keep]
        return [out[b, : lengths[b]].tolist() for b in range(B)]


def beam_search(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    sos_id: int,
    eos_id: int,
    beam_size: int = 5,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int | None = None,
    n_best: int = 1,
    cache: bool = True,
) -> list[list[Hypothesis]]:
    """The n_best best hypotheses (best first) of each sentence of src (B, S), searched with beam_size beams each.

    All live beams of all sentences step as one batch of rows. At each step the 2 * beam_size best extensions of a
    sentence's beams are ranked: those among its first beam_size that end in <eos> become finished hypotheses, scored
    by log-prob / ((5 + length) / 6) ** alpha (GNMT's length penalty, Wu et al., 2016; length counts <eos>), and the
    beam_size best others live on. A sentence is done when its best finished hypothesis scores at least as well as
    every live one (by the same measure, at their current length) or at its length cap, where its beam_size best
    extensions all finish. The search does not depend on n_best: fewer than n_best come back when fewer finished.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size; got beam_size {beam_size}, n_best {n_best}")
    with _decoding(model):
        B, K = src.size(0), beam_size
        caps = length_caps(model, src, max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len)  # (B,)
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        sent = torch.arange(B, device=src.device)  # (b,) the sentence of each group of K rows still searching
        state = model.start(model.encode(src), cache=cache)
        state = model.reorder(state, sent.repeat_interleave(K))  # (B * K) rows: sentence i's beams are rows iK..iK+K-1
        scores = torch.full((B, K), float("-inf"), device=src.device)  # (b, K) log-probs of the live beams
        scores[:, 0] = 0.0  # one live beam at the start: K copies of <sos> would fill the beam with duplicates
        history = src.new_empty(B, K, 0)  # (b, K, t) the live beams' tokens
        best = torch.full((B,), float("-inf"), device=src.device)  # (b,) best finished score of each sentence
        tokens = src.new_full((B * K,), sos_id)
        for t in range(int(caps.max())):
            log_probs, state = model.step(tokens, state)  # (b * K, V)
            b, V = sent.numel(), log_probs.size(-1)
            candidates = (scores[:, :, None] + log_probs.view(b, K, V)).view(b, K * V)  # (b, K * V)
            top, flat = candidates.topk(2 * K, dim=-1)  # (b, 2K), best first
            beam, tok = flat // V, flat % V  # (b, 2K) each: the beam extended, the token appended
            penalty = ((5 + t + 1) / 6) ** alpha
            at_cap = caps[sent] == t + 1  # (b,)
            ends = ((tok == eos_id) | at_cap[:, None]) & (top > float("-inf"))  # (b, 2K)
            ends[:, K:] = False  # an ending ranked past K would not have been in the beam
            if bool(ends.any()):
                g, r = ends.nonzero().unbind(1)
                found = zip(sent[g].tolist(), history[g, beam[g, r]].tolist(), tok[g, r].tolist(),
                            (top[g, r] / penalty).tolist())
                for i, words, last, score in found:
                    finished[i].append(Hypothesis(words if last == eos_id else [*words, last], score))
                best = best.maximum(torch.where(ends, top / penalty, float("-inf")).amax(dim=-1))
            scores, pick = top.masked_fill(tok == eos_id, float("-inf")).topk(K, dim=-1)  # (b, K) live beams
            parent, tok = beam.gather(1, pick), tok.gather(1, pick)  # (b, K) each
            history = torch.cat([history.gather(1, parent[:, :, None].expand(-1, -1, t)), tok[:, :, None]], dim=2)
            done = at_cap | (best >= scores[:, 0] / penalty)  # (b,)
            keep = (~done).nonzero().squeeze(1)  # (b',) groups still searching
            if keep.numel() == 0:
                break
            rows = (keep[:, None] * K + parent[keep]).flatten()  # (b' * K,) the rows the live beams continue
            state = model.reorder(state, rows)
            sent, scores, history, best, tokens = sent[keep], scores[keep], history[keep], best[keep], tok[keep].flatten()
        return [sorted(hyps, key=lambda h: h.score, reverse=True)[:n_best] for hyps in finished]
