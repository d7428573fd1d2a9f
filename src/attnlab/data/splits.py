"""Seeded stratified splits, shared by the data modules that carve validation or test sets out of a training set."""

from __future__ import annotations

import numpy as np
import torch

from attnlab.errors import ConfigError, DataError


def held_out_count(size: float, n: int, *, name: str) -> int:
    """`size` as a number of rows out of n: a share when below 1, else a count."""
    if size < 0:
        raise ConfigError(f"{name} must be >= 0 (a share below 1 or a count), got {size}")
    count = round(size * n) if size < 1 else int(size)
    if count >= n:
        raise DataError(f"{name}={size} leaves no training rows out of {n}; set {name} below {n} (or a share like 0.1)")
    return count


def stratified_split(labels: np.ndarray, size: float, *, seed: int, name: str = "val_size") -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted row indices: each class gives its share (by largest remainder, so the counts add up
    to `size`), every class with two or more rows keeps one on each side. The draw depends on `seed` only."""
    labels = np.asarray(labels)
    n = len(labels)
    count = held_out_count(size, n, name=name)
    if count == 0:
        return np.arange(n), np.arange(0)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * count / n
    take = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - take), kind="stable")[: count - take.sum()]:  # largest remainders get one more
        take[k] += 1
    take = np.where(sizes >= 2, np.clip(take, 1, sizes - 1), 0)
    while take.sum() > count and take.max() > 1:  # a rare class's one row is paid for by the largest share
        take[np.argmax(take)] -= 1
    generator = torch.Generator().manual_seed(seed)
    held = []
    for cls, k in zip(classes, take):
        rows = np.flatnonzero(labels == cls)
        held.append(rows[torch.randperm(len(rows), generator=generator).numpy()[:k]])
    held_idx = np.sort(np.concatenate(held))
    kept = np.ones(n, dtype=bool)
    kept[held_idx] = False
    return np.flatnonzero(kept), held_idx
