"""In-memory batching: a dataset that serves whole batches, epoch-seeded samplers sharded over DDP ranks, the loader.

Randomness in a batch (augmentation, noise) comes from a generator seeded by (run seed, the batch's sample indices),
never from a process's global RNG: the same batch gets the same draws in the main process or in any loader worker,
in a fresh run or a resumed one, and every epoch reshuffles, so the draws differ from epoch to epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

# (batch tensors, the batch's private generator) -> transformed batch tensors
BatchTransform = Callable[[tuple[Tensor, ...], torch.Generator], tuple[Tensor, ...]]


def batch_generator(seed: int, index: Tensor) -> torch.Generator:
    """A CPU generator seeded by (seed, the batch's sample indices in order): a batch's draws depend on nothing else."""
    key = seed.to_bytes(8, "little", signed=True)
    digest = hashlib.blake2b(index.numpy().astype(np.int64).tobytes(), digest_size=8, key=key).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class BatchedTensorDataset(Dataset):
    """Tensors sharing their first dim, served a batch at a time with one index op and an optional batch transform.

    The transform draws its randomness from `batch_generator(seed, indices)`.
    """

    def __init__(self, *tensors: Tensor, transform: BatchTransform | None = None, seed: int = 0) -> None:
        if not tensors:
            raise ValueError("BatchedTensorDataset needs at least one tensor")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise ValueError(f"all tensors must have the same first dim; got shapes {shapes}")
        self.tensors = tensors
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        """Return the batch at `indices`; DataLoader calls this once per batch when the dataset defines it."""
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = tuple(t[index] for t in self.tensors)
        if self.transform is None:
            return batch
        return self.transform(batch, batch_generator(self.seed, index))

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([i]))


def collate(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Collate for BatchedTensorDataset: `__getitems__` already returns the batched tuple, so pass it through."""
    return batch


def shard(trainer: Any) -> tuple[int, int]:
    """(rank, world size) of this process in the trainer's job; (0, 1) without a trainer."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return 0, 1
    return trainer.global_rank, trainer.world_size


class ShardedSampler(DistributedSampler):
    """Base of the epoch samplers: an order drawn from (seed, epoch), the same on every rank, of which rank r of
    world_size takes every world_size-th item.

    even=True (training): the order is padded with its first items until every rank has as many (DDP ranks must
    step together). even=False (evaluation): every item exactly once, so metrics synced over the ranks are the
    single process's. A DistributedSampler by type only: Lightning leaves one in place under DDP, where it would
    wrap any other sampler in a DistributedSampler of its own (which pads evaluation with repeated samples).
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1, even: bool = True) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.n = n
        self.even = even

    def _share(self, items: Sequence[Any]) -> Sequence[Any]:
        """This rank's items of the epoch's `items` (the same list on every rank)."""
        world = self.num_replicas
        if self.even and len(items) % world:
            total = -(-len(items) // world) * world
            items = (list(items) * -(-total // len(items)))[:total]  # cyclic: a list shorter than the ranks too
        return items[self.rank :: world]


class EpochShuffleSampler(ShardedSampler):
    """Indices 0..n-1, shuffled by a private generator seeded with `seed + epoch` (never the global RNG); see
    ShardedSampler for rank, world_size and even."""

    def __init__(self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, even: bool = True) -> None:
        super().__init__(n, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, even=even)

    def __len__(self) -> int:
        return len(self._share(range(self.n)))

    def __iter__(self) -> Iterator[int]:
        # A generator function: the order is drawn at the first next(), so a set_epoch made after
        # iter(sampler) but before the first batch still applies.
        if not self.shuffle:
            yield from self._share(range(self.n))
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from self._share(torch.randperm(self.n, generator=generator).tolist())


class EpochLoader(DataLoader):
    """A DataLoader whose iterator starts at the first batch, not at `iter()`, so a later `set_epoch` still applies.

    With workers, torch's iterator hands the first batches' indices to them as soon as it exists; Lightning creates
    it before it sets the sampler's epoch when a run resumes, which would replay epoch 0's order in the resumed epoch.
    """

    def __iter__(self) -> Iterator[Any]:
        return _Deferred(self)


class _Deferred:
    """An iterator over `loader` that creates torch's own at the first `next()`."""

    def __init__(self, loader: EpochLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> _Deferred:
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = DataLoader.__iter__(self.loader)
        return next(self.iterator)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    trainer: Any = None,
    drop_last: bool = False,
    sampler: ShardedSampler | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch) and that never draws from the global torch RNG.

    shuffle=True makes a training loader (under DDP: ranks padded to equal shares), shuffle=False an evaluation
    loader (in order; under DDP every sample exactly once). `sampler` replaces the default EpochShuffleSampler
    (e.g. text's BucketSampler); under DDP it must be sharded over the trainer's ranks (see `shard`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = shard(trainer)
    if sampler is None:
        sampler = EpochShuffleSampler(len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, even=shuffle)
    elif getattr(sampler, "num_replicas", 1) != world_size or getattr(sampler, "rank", 0) != rank:
        raise ValueError(
            f"{type(sampler).__name__} is not sharded over this job's processes (rank={rank}, world_size={world_size}); "
            "build it with rank and world_size from attnlab.data.loading.shard(trainer)"
        )
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        # Each new iterator draws its workers' base seed from this, not from the global RNG; batches' draws come
        # from batch_generator, so they do not depend on it.
        generator=torch.Generator().manual_seed(seed),
    )
