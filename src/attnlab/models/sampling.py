"""Next-token sampling shared by every language model's `generate`: temperature, top-k and nucleus (top-p) filtering.

The `generate` methods built on it share one contract: `generate(idx (B, T), max_new_tokens, *, temperature=1.0,
top_k=None, top_p=None, eos_id=None, generator=None) -> (B, T + n)` under torch.no_grad(). temperature 0 is greedy;
random draws come only from `generator` when one is given; with `eos_id`, a row that has produced it keeps producing
it, and generation stops early (n < max_new_tokens) once every row has. NaN or +inf logits raise
NonFiniteLogitsError (a ValueError).

`sample_text` puts text around it: prompts in, continuations out, with any tokenizer that has encode, decode and
eos_id (attnlab.data.tokenizers.Tokenizer). The training task's samples and app/generate.py both use it.
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class NonFiniteLogitsError(ValueError):
    """The model produced NaN or +inf logits: its weights or activations are not finite."""


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token id per row (B, 1) from the last position's logits (B, V); temperature 0 takes the argmax."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None; got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None; got {top_p}")
    # Without this check NaN logits give argmax garbage or torch.multinomial's bare "probability tensor contains
    # inf/nan". -inf is allowed: it is how a model masks a token out.
    bad = torch.isnan(logits) | torch.isposinf(logits)  # (B, V)
    if bool(bad.any()):
        rows = bad.any(dim=-1).nonzero().flatten().tolist()
        raise NonFiniteLogitsError(
            f"the model's next-token logits are NaN or +inf (rows {rows[:8]}): its weights are not finite (a diverged "
            "checkpoint?) or its activations overflow (fp16/bf16); check the checkpoint or sample in float32"
        )
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the first is always kept.
        drop = probs.cumsum(dim=-1) - probs >= top_p  # (B, V), in sorted order
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


Step = Callable[[torch.Tensor], torch.Tensor]  # the tokens so far (B, T) -> next-token logits (B, V)
Streamer = Callable[[torch.Tensor], None]  # called with each step's new tokens (B, 1) as they are drawn


@torch.no_grad()
def decode(
    model: nn.Module,
    step: Step,
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
    """The loop behind every `generate`: ask `step` for the next logits, sample, append; returns (B, T + n).

    `step` sees the whole sequence so far and may keep state between calls (a KV cache, an LSTM state) to read only
    what is new. The model is in eval mode (no dropout) while decoding; its mode comes back afterwards. `streamer`
    sees each step's tokens (B, 1) as soon as they are drawn (a server streams them), and changes nothing.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be token ids of shape (B, T0) with T0 >= 1, got shape {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    try:
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,) rows that produced eos_id
        for _ in range(max_new_tokens):
            nxt = sample_next(step(idx), temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_id is not None:
                nxt = nxt.masked_fill(done[:, None], eos_id)  # (B, 1); finished rows keep emitting eos_id
                done |= nxt[:, 0] == eos_id
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            if streamer is not None:
                streamer(nxt)
            if eos_id is not None and bool(done.all()):
                break
        return idx
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_text(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, *, seed: int = 0, **sampling: Any
) -> list[str]:
    """Continue each prompt with `model.generate` (sampling: temperature, top_k, top_p, use_cache, ...).

    A prompt starts after the end-of-text token, as a story does in training. Random draws come from a private
    generator seeded by `seed`, so the samples are reproducible whatever else used the global RNG.
    """
    if not hasattr(model, "generate"):
        raise ValueError(f"{type(model).__name__} has no generate(): it is not a language model")
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_id
    texts = []
    for prompt in prompts:  # one at a time: prompts differ in length and need no padding then
        ids = tokenizer.encode(prompt)
        if eos is not None:
            ids = [eos, *ids]
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T0)
        out = model.generate(idx, max_new_tokens, eos_id=eos, generator=generator, **sampling)  # (1, T0 + n)
        texts.append(prompt + tokenizer.decode(out[0, len(ids):].tolist()))
    return texts
