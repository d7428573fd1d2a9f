"""A count-based n-gram language model with interpolated modified Kneser-Ney smoothing (Chen & Goodman, 1998).

For an order-N model and a context h of k-1 tokens (h' = h without its first token):

    p_k(w | h) = max(a(h w) - D_k(a(h w)), 0) / A(h)  +  gamma(h) / A(h) * p_{k-1}(w | h')
    gamma(h)   = D_k1 * N1(h .) + D_k2 * N2(h .) + D_k3+ * N3+(h .),    A(h) = sum_w a(h w)

a(.) is the raw count at the highest order N and the continuation count N1+(. g) (the number of distinct
tokens seen before g) at every lower order; N_j(h .) counts the tokens w with a(h w) = j (3+: >= 3). A context
never seen at order k hands over to p_{k-1}(w | h') whole. The bottom level interpolates with the uniform
p_0(w) = 1/V, so every token keeps a probability > 0. The three discounts of each order come from the
count-of-counts n_j of that order's a(.) (see `kn_discounts`).

History: position t of an input x (B, T) conditions on x[:, max(0, t-N+2) : t+1] only, so the first N-2 positions
of a row read a shorter context and use the lower-order distribution p_k with k = t+2 (what an n-gram toolkit does
when queried with a short state). The counts are sparse tensors (sorted context keys + CSR arrays of next tokens),
buffers of the module, so a fitted model saves and loads as a state_dict.
"""

import numpy as np
import torch
from torch import nn

from attnlab.models.sampling import Streamer, decode

MIN_DISCOUNT = 0.1  # keeps gamma(h) > 0, so unseen tokens after a seen context keep some mass
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # when n1, n2 or n3 is zero the estimate is undefined (tiny or saturated counts)
_CHUNK_ENTRIES = 2**22  # forward handles (positions x V) blocks of at most this many entries at a time
DENSE_BIGRAM_MAX_VOCAB = 8192  # up to here the bigram level is one cached (V, V) float32 table (256 MB at 8192)


def kn_discounts(counts: np.ndarray) -> np.ndarray:
    """Modified Kneser-Ney discounts (D1, D2, D3+) of one order, from the count-of-counts of its counts."""
    n1, n2, n3, n4 = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(np.float64)
    if min(n1, n2, n3) == 0:
        d = np.array(FALLBACK_DISCOUNTS)
    else:
        y = n1 / (n1 + 2 * n2)
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    return np.clip(d, MIN_DISCOUNT, [1.0, 2.0, 3.0])  # D_j <= j: a count never goes negative


def _ngram_keys(stream: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """The int64 key sum_i w_i * V^(n-1-i) of every n-gram of the stream (first token most significant)."""
    keys = np.zeros(len(stream) - n + 1, dtype=np.int64)
    for i in range(n):
        keys = keys * vocab_size + stream[i : len(stream) - n + 1 + i]
    return keys


class _Level(nn.Module):
    """The counts of one order: sorted context keys (C,), CSR offsets (C+1,), next tokens and counts (E,), discounts."""

    _SIZED = ("ctx", "ptr", "word", "count")  # buffers whose size depends on the data

    def __init__(self) -> None:
        super().__init__()
        long = dict(dtype=torch.long)
        self.register_buffer("ctx", torch.zeros(0, **long))
        self.register_buffer("ptr", torch.zeros(1, **long))
        self.register_buffer("word", torch.zeros(0, **long))
        self.register_buffer("count", torch.zeros(0, **long))
        self.register_buffer("discounts", torch.zeros(3, dtype=torch.float64))
        # Derived from the counts (rebuilt after fit and load, never saved).
        self.register_buffer("disc", torch.zeros(0), persistent=False)  # (E,) max(a - D(a), 0)
        self.register_buffer("total", torch.zeros(0), persistent=False)  # (C,) A(h)
        self.register_buffer("gamma", torch.zeros(0), persistent=False)  # (C,) gamma(h)

    def set_counts(self, keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> None:
        """Store sorted unique n-gram keys (E,) and their counts (E,)."""
        context = keys // vocab_size  # sorted, since keys are: each context's next tokens are contiguous
        start = np.concatenate([[0], np.flatnonzero(np.diff(context)) + 1]).astype(np.int64)  # (C,) first entry of each
        device = self.ctx.device
        self.ctx = torch.from_numpy(context[start]).to(device)
        self.ptr = torch.from_numpy(np.append(start, len(keys)).astype(np.int64)).to(device)
        self.word = torch.from_numpy(keys % vocab_size).to(device)
        self.count = torch.from_numpy(counts.astype(np.int64)).to(device)
        self.discounts = torch.from_numpy(kn_discounts(counts)).to(device)
        self.derive()

    def derive(self) -> None:
        """Discounted counts, context totals A(h) and back-off masses gamma(h) from the stored counts."""
        counts = self.count.double()
        d = self.discounts[self.count.clamp(min=1, max=3) - 1]  # (E,) D(a) of each entry; D(a) <= a by construction
        self.disc = (counts - d).float()

        def per_context(values: torch.Tensor) -> torch.Tensor:  # (E,) -> (C,) sums over each context's entries
            cum = torch.cat([values.new_zeros(1), values.cumsum(0)])  # (E+1,)
            return (cum[self.ptr[1:]] - cum[self.ptr[:-1]]).float()

        self.total = per_context(counts)
        self.gamma = per_context(d)

    def lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions (S,) whose context key (of keys (P,); -1: none) was seen, and those contexts' indices (S,)."""
        C = self.ctx.numel()
        i = torch.searchsorted(self.ctx, keys).clamp(max=max(C - 1, 0))  # (P,)
        pos = (self.ctx[i] == keys).nonzero().squeeze(1) if C else keys.new_zeros(0)
        return pos, i[pos]

    def backoff(self, contexts: torch.Tensor) -> torch.Tensor:
        """gamma(h) / A(h) (S,): the weight of the lower order's distribution after each context."""
        return self.gamma[contexts] / self.total[contexts]

    def scatter(self, probs: torch.Tensor, pos: torch.Tensor, contexts: torch.Tensor, weight: torch.Tensor) -> None:
        """Add weight * max(a(h w) - D, 0) / A(h) to probs (P, V) at [pos, w] for every next token w seen after h."""
        chunk = max(1, _CHUNK_ENTRIES // probs.size(1))  # positions at a time: at most V entries each
        for s in range(0, pos.numel(), chunk):
            p, c, w = pos[s : s + chunk], contexts[s : s + chunk], weight[s : s + chunk]
            start, n = self.ptr[c], self.ptr[c + 1] - self.ptr[c]  # (s,) each context's slice of the entries
            row = torch.repeat_interleave(torch.arange(p.numel(), device=p.device), n)  # (e,) which position
            entry = torch.arange(row.numel(), device=p.device) + torch.repeat_interleave(start - (n.cumsum(0) - n), n)
            value = self.disc[entry] * (w / self.total[c])[row]  # (e,)
            probs.index_put_((p[row], self.word[entry]), value, accumulate=True)

    def mix(self, probs: torch.Tensor, keys: torch.Tensor) -> None:
        """Turn probs (P, V) = p_{k-1}(. | h') into p_k(. | h) in place where the context key (P,) was seen."""
        pos, contexts = self.lookup(keys)
        probs[pos] *= self.backoff(contexts)[:, None]
        self.scatter(probs, pos, contexts, torch.ones_like(pos, dtype=probs.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:  # type: ignore[override]
        # Fitted counts have data-dependent sizes: resize the buffers to the incoming tensors, then copy as usual.
        for name in self._SIZED:
            if prefix + name in state_dict:
                old = self._buffers[name]
                self._buffers[name] = torch.empty(state_dict[prefix + name].shape, dtype=old.dtype, device=old.device)
        error_msgs = args[-1]
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if len(error_msgs) == n_errors and all(prefix + name in state_dict for name in self._SIZED):
            self.derive()


class NGramLM(nn.Module):
    """An order-N Kneser-Ney n-gram LM: `fit(tokens)` counts a token stream; forward gives log-probs (B, T, V)."""

    def __init__(self, *, vocab_size: int, order: int = 3) -> None:
        super().__init__()  # no max_len: an n-gram model reads any length
        if not 2 <= order <= 5:
            raise ValueError(f"order must be 2, 3, 4 or 5; got {order}")
        if vocab_size**order >= 2**63:
            fits = max(n for n in range(1, order) if vocab_size**n < 2**63)
            raise ValueError(
                f"{order}-gram keys over {vocab_size} tokens overflow int64 (V^order >= 2^63); use order <= {fits}"
            )
        self.vocab_size, self.order = vocab_size, order
        self.levels = nn.ModuleList(_Level() for _ in range(order))  # levels[k-1] holds the k-gram counts
        self.register_buffer("spec", torch.tensor([vocab_size, order]))
        self.register_buffer("n_tokens", torch.zeros((), dtype=torch.long))
        # p_2(w | v) for every v, built on first use: common tokens have thousands of next tokens each, and
        # scattering those per position costs far more than reading rows of a table.
        self.register_buffer("bigram", torch.zeros(0), persistent=False)

    @property
    def fitted(self) -> bool:
        return bool(self.n_tokens > 0)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, order={self.order}, fitted={self.fitted}"

    def output_layer(self) -> None:
        """None: the log-probabilities come from counts, not from a trained layer."""
        return None

    def fit(self, tokens: np.ndarray | torch.Tensor) -> "NGramLM":
        """Count the n-grams of a 1-D token stream (replacing any earlier counts); returns self."""
        stream = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        if stream.ndim != 1 or len(stream) < self.order:
            raise ValueError(f"fit takes a 1-D token stream of at least {self.order} tokens; got shape {stream.shape}")
        stream = stream.astype(np.int64)
        if stream.min() < 0 or stream.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got [{stream.min()}, {stream.max()}]")
        V = self.vocab_size
        keys, counts = np.unique(_ngram_keys(stream, self.order, V), return_counts=True)  # raw N-gram counts
        for k in range(self.order, 0, -1):
            self.levels[k - 1].set_counts(keys, counts, V)
            if k > 1:
                # Continuation counts of the (k-1)-grams: how many distinct k-grams (distinct left tokens) end in each.
                keys, counts = np.unique(keys % V ** (k - 1), return_counts=True)
        self.n_tokens.fill_(len(stream))
        self.bigram = torch.zeros(0, device=self.n_tokens.device)  # stale: rebuilt on first use
        return self

    def _unigram(self, device: torch.device) -> torch.Tensor:
        """p_1 (1, V): continuation counts interpolated with the uniform distribution."""
        probs = torch.full((1, self.vocab_size), 1.0 / self.vocab_size, device=device)  # p_0
        self.levels[0].mix(probs, torch.zeros(1, dtype=torch.long, device=device))  # the empty context has key 0
        return probs

    def _bigram_rows(self, x: torch.Tensor) -> torch.Tensor:
        """p_2(. | x_t) (P, V) for token ids x (P,)."""
        V = self.vocab_size
        if V > DENSE_BIGRAM_MAX_VOCAB:
            probs = self._unigram(x.device).expand(x.numel(), V).clone()
            self.levels[1].mix(probs, x)
            return probs
        if self.bigram.numel() == 0:
            table = self._unigram(x.device).expand(V, V).clone()  # (V, V): row v is p_2(. | v)
            self.levels[1].mix(table, torch.arange(V, device=x.device))
            self.bigram = table
        return self.bigram[x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to log-probabilities (B, T, V) of the next token, from the history inside x."""
        if not self.fitted:
            raise RuntimeError("NGramLM is not fitted: call model.fit(train_tokens) (it counts; it has no parameters)")
        B, T = x.shape
        V = self.vocab_size
        x = x.long()
        # Unrolled, p_N = r_N + s_N (r_{N-1} + s_{N-1} (... + s_3 p_2)): r_k the sparse discounted counts of level k
        # (zero where its context is unseen) and s_k = gamma / A (1 where unseen). So one dense pass scales the
        # bigram rows by s_N...s_3, and each higher level adds its few entries weighted by the s of the levels above.
        keys, levels = x, []  # keys (B, T): key of the 1-token context ending at each position
        weight = torch.ones(B * T, device=x.device)  # s_N ... s_{k+1} at each position
        for k in range(3, self.order + 1):
            # Extend each context by the token before it; -1 (never a key) where the row has too little history.
            prev = keys[:, :-1]
            keys = torch.cat([torch.full_like(keys[:, :1], -1), torch.where(prev >= 0, prev * V + x[:, 1:], -1)], dim=1)
            levels.append((self.levels[k - 1], *self.levels[k - 1].lookup(keys.reshape(-1))))
        parts = []
        for level, pos, contexts in reversed(levels):  # from the top order down
            parts.append((level, pos, contexts, weight[pos]))
            weight = weight.index_put((pos,), weight[pos] * level.backoff(contexts))
        probs = self._bigram_rows(x.reshape(-1))  # (B*T, V): every position has at least its own token as history
        probs *= weight[:, None]
        for level, pos, contexts, w in parts:
            level.scatter(probs, pos, contexts, w)
        return probs.log().view(B, T, V)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:  # type: ignore[override]
        spec = state_dict.get(prefix + "spec")
        if spec is not None and spec.tolist() != self.spec.tolist():
            args[-1].append(  # error_msgs: load_state_dict raises with it
                f"the state dict holds an order-{int(spec[1])} model over {int(spec[0])} tokens; "
                f"this NGramLM is order {self.order} over {self.vocab_size}: build it with those settings"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.bigram = torch.zeros(0, device=self.n_tokens.device)  # stale: rebuilt on first use

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + n); see attnlab.models.sampling."""
        def step(tokens: torch.Tensor) -> torch.Tensor:
            return self(tokens[:, -(self.order - 1) :])[:, -1]  # (B, V): the last order-1 tokens are the whole history

        return decode(self, step, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      eos_id=eos_id, generator=generator, streamer=streamer)
