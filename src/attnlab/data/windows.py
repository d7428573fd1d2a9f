"""Windows over a token stream for language modelling: random training windows drawn by (seed, epoch), fixed
validation windows; a batch is one vectorised gather from the (memory-mapped) stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


class TokenWindows(Dataset):
    """Windows of max_len + 1 tokens of a token stream; a batch is (x, y), int64 (B, max_len) each, y = x shifted by one.

    Item i is the window starting at token starts[i] (fixed windows), or at token i when starts is None (every
    start; a sampler draws them).
    """

    def __init__(self, tokens: np.ndarray, *, max_len: int, starts: np.ndarray | None = None) -> None:
        if len(tokens) < max_len + 1:
            raise ValueError(f"{len(tokens)} tokens hold no window of max_len + 1 = {max_len + 1}")
        self.tokens, self.max_len, self.starts = tokens, max_len, starts
        self.span = np.arange(max_len + 1)

    def __len__(self) -> int:
        return len(self.starts) if self.starts is not None else len(self.tokens) - self.max_len

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = np.asarray(indices, dtype=np.int64)
        starts = self.starts[index] if self.starts is not None else index  # (B,)
        windows = torch.from_numpy(np.asarray(self.tokens[starts[:, None] + self.span], dtype=np.int64))  # (B, T + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes reopen the memory map; pickling it would copy the whole stream.
        state = dict(self.__dict__)
        if isinstance(self.tokens, np.memmap):
            state["tokens"] = (str(self.tokens.filename), self.tokens.dtype.str, len(self.tokens))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["tokens"], tuple):
            filename, dtype, n = state["tokens"]
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=(n,))
        self.__dict__.update(state)


class RandomWindowSampler(DistributedSampler):
    """`num_samples` window starts an epoch, uniform over [0, n_starts), from a generator seeded by (seed, epoch).

    Rank r of world_size takes every world_size-th draw: the ranks share one epoch of draws, the same number each.
    A DistributedSampler by type only: Lightning leaves one in place under DDP (as make_loader's own), where it
    would wrap any other sampler, listing every epoch's draws in memory and sharding them a second time.
    """

    def __init__(self, n_starts: int, *, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n_starts < 1 or num_samples < 1:
            raise ValueError(f"n_starts and num_samples must be >= 1, got {n_starts}, {num_samples}")
        super().__init__(range(n_starts), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n_starts = n_starts
        self.num_samples = -(-num_samples // world_size)  # per rank (ceil)
        self.total_size = self.num_samples * world_size

    def __iter__(self) -> Iterator[int]:
        # A generator function: the draws are made at the first next(), after any set_epoch.
        generator = np.random.default_rng([self.seed, self.epoch])
        block = 8192 * self.num_replicas  # drawn block by block: memory does not grow with the epoch
        for first in range(0, self.total_size, block):
            draws = generator.integers(0, self.n_starts, size=min(block, self.total_size - first))
            yield from draws[self.rank :: self.num_replicas].tolist()


def fixed_starts(n_tokens: int, max_len: int, limit: int | None = None) -> np.ndarray:
    """Starts of the windows at stride max_len (each token but the first is predicted once), or `limit` evenly spaced."""
    starts = np.arange((n_tokens - 1) // max_len, dtype=np.int64) * max_len
    if limit is not None and limit < len(starts):
        starts = starts[np.linspace(0, len(starts) - 1, limit).round().astype(np.int64)]
    return starts
