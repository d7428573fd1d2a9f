"""Text batching shared by text data modules: truncation of encoded texts, dynamic padding, length buckets, the disk cache.

Encoded texts live in memory as one flat id tensor plus offsets, text i being ids[offsets[i]:offsets[i + 1]]:
no Python list per text, and a batch is padded to its own longest text with one gather.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from attnlab.data.loading import ShardedSampler
from attnlab.errors import ConfigError, DataError

Truncation = Literal["head", "head_tail"]
TRUNCATIONS = ("head", "head_tail")


def truncate(
    ids: np.ndarray,
    offsets: np.ndarray,
    *,
    index: np.ndarray | None = None,
    max_len: int,
    mode: Truncation = "head",
    head_fraction: float = 0.25,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The texts at `index` (default: all), each cut to fit `max_len` with `prefix` + text + `suffix`: new (ids, offsets).

    Vectorised over all texts at once.

    head: the first tokens. head_tail: the first `head_fraction` of the room and the last tokens for the rest
    (Sun et al., 2019: a review's end often carries its verdict).
    """
    if mode not in TRUNCATIONS:
        raise ConfigError(f"unknown truncation {mode!r}; choose one of: {', '.join(TRUNCATIONS)}")
    room = max_len - len(prefix) - len(suffix)
    if room < 1:
        raise ConfigError(f"max_len={max_len} leaves no room for text beside {len(prefix) + len(suffix)} special tokens")
    starts, ends = offsets[:-1], offsets[1:]
    if index is not None:
        starts, ends = starts[index], ends[index]
    kept = np.minimum(ends - starts, room)  # (N,)
    head = kept if mode == "head" else np.minimum(kept, round(room * head_fraction))  # (N,) tokens from the start
    out_len = kept + len(prefix) + len(suffix)
    out_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(out_len, out=out_offsets[1:])
    text = np.repeat(np.arange(len(kept)), out_len)  # (total,) which text each output position belongs to
    p = np.arange(out_offsets[-1]) - out_offsets[:-1][text] - len(prefix)  # position inside the text part
    k = kept[text]
    out = np.empty(out_offsets[-1], dtype=ids.dtype)
    body = (p >= 0) & (p < k)
    # Position p < head reads start + p; later positions read from the end: the last (k - p) tokens.
    src = np.where(p < head[text], starts[text] + p, ends[text] - (k - p))
    out[body] = ids[src[body]]
    if len(prefix):
        out[p < 0] = np.asarray(prefix, dtype=ids.dtype)[(p + len(prefix))[p < 0]]
    if len(suffix):
        out[p >= k] = np.asarray(suffix, dtype=ids.dtype)[(p - k)[p >= k]]
    return out, out_offsets


class TokenizedDataset(Dataset):
    """Encoded texts and labels; a batch is ({"input_ids": (B, T), "attention_mask": (B, T) bool}, labels (B,)),
    T being the longest text of the batch (dynamic padding)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray, *, pad_id: int) -> None:
        if len(offsets) != len(labels) + 1:
            raise ValueError(f"{len(labels)} labels for {len(offsets) - 1} texts")
        # A trailing pad keeps every gather index valid, even for a batch of empty texts.
        self.ids = torch.from_numpy(np.append(ids, pad_id).astype(np.int32))
        self.offsets = torch.from_numpy(offsets.astype(np.int64))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]  # (N,)

    def __getitems__(self, indices: Sequence[int]) -> tuple[dict[str, Tensor], Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        starts = self.offsets[index]  # (B,)
        lengths = self.offsets[index + 1] - starts  # (B,)
        positions = torch.arange(max(1, int(lengths.max())))  # (T,)
        mask = positions < lengths[:, None]  # (B, T) True = real token
        src = torch.where(mask, starts[:, None] + positions, len(self.ids) - 1)  # (B, T) padding reads the pad
        return {"input_ids": self.ids[src].long(), "attention_mask": mask}, self.labels[index]

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        inputs, labels = self.__getitems__([i])
        return {k: v[0] for k, v in inputs.items()}, labels[0]


class BucketSampler(ShardedSampler):
    """Indices in batches of similar length, so little padding is computed.

    Each epoch: shuffle (a generator seeded with `seed + epoch`), cut into chunks of `bucket_size` batches, sort
    each chunk by length, cut it into batches and shuffle the order of the full batches (a short last batch goes
    last, so the loader's slices of `batch_size` stay aligned with the buckets). Without shuffle: longest first.
    Under DDP the ranks deal these batches out in turn; without shuffle they deal out texts, so each rank's batches
    are still of similar length and no rank is left without a batch (see ShardedSampler for rank, world_size, even).
    """

    def __init__(self, lengths: Tensor, *, batch_size: int, seed: int, shuffle: bool = True, bucket_size: int = 100,
                 rank: int = 0, world_size: int = 1, even: bool = True) -> None:
        if batch_size < 1 or bucket_size < 1:
            raise ValueError(f"batch_size and bucket_size must be >= 1, got {batch_size}, {bucket_size}")
        super().__init__(len(lengths), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, even=even)
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.bucket_size = bucket_size

    def __len__(self) -> int:
        if not self.shuffle:
            return len(self._share(range(len(self.lengths))))
        full, rest = divmod(len(self.lengths), self.batch_size)
        return sum(self._share([self.batch_size] * full + ([rest] if rest else [])))

    def _batches(self) -> list[Tensor]:
        """The epoch's batches, the same on every rank: full ones, then a short one if any."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=generator)
        chunk = self.batch_size * self.bucket_size
        batches: list[Tensor] = []
        for start in range(0, len(perm), chunk):
            part = perm[start : start + chunk]
            part = part[torch.argsort(self.lengths[part], descending=True, stable=True)]
            batches.extend(part.split(self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        order = torch.randperm(len(full), generator=generator).tolist()
        return [full[i] for i in order] + short

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from self._share(torch.argsort(self.lengths, descending=True, stable=True).tolist())
            return
        # A generator function: the batches are drawn at the first next(), after any set_epoch. The short batch,
        # last of the epoch, is also last on its rank (padding goes to the ranks that have fewer batches).
        batches = self._share(self._batches())
        yield from torch.cat(list(batches)).tolist() if batches else []


def digest(settings: Any) -> str:
    """A short stable hash of JSON-able settings: the name of a cache entry."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stamps(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(name, size, mtime in ns) of each file: changes when a file is replaced or edited."""
    stamps = []
    for path in paths:
        st = path.stat()
        stamps.append((path.name, st.st_size, st.st_mtime_ns))
    return stamps


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it becomes `final` in one rename.

    Readers never see a half-written cache entry, and when two processes build the same entry at once
    (DDP ranks, parallel sweep jobs) the second simply discards its copy.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as err:
        raise DataError(
            f"cannot write the cache under {final.parent} ({err.strerror}); "
            "set paths.cache_dir (or ATTNLAB_CACHE_DIR) to a writable folder"
        ) from None
    try:
        yield tmp
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
