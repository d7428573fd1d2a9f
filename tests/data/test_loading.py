"""Tests for the in-memory batching pieces: BatchedTensorDataset, EpochShuffleSampler, make_loader."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from attnlab.data.loading import BatchedTensorDataset, EpochShuffleSampler, batch_generator, collate, make_loader


class CountingDataset(BatchedTensorDataset):
    """Counts how the DataLoader fetches: whole batches or single items."""

    def __init__(self, *tensors, **kw):
        super().__init__(*tensors, **kw)
        self.batch_calls = 0
        self.item_calls = 0

    def __getitems__(self, indices):
        self.batch_calls += 1
        return super().__getitems__(indices)

    def __getitem__(self, i):
        self.item_calls += 1
        return super().__getitem__(i)


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * 3).view(n, 3), torch.arange(n)


def _double(batch, generator):
    x, y = batch
    return x * 2, y


def test_dataset_item_and_batch():
    x, y = _data()
    ds = BatchedTensorDataset(x, y, transform=_double)
    assert len(ds) == 50
    xi, yi = ds[7]
    assert torch.equal(xi, x[7] * 2) and yi.item() == 7
    xb, yb = ds.__getitems__([3, 1, 4])
    assert torch.equal(xb, x[[3, 1, 4]] * 2) and yb.tolist() == [3, 1, 4]


def _noisy(batch, generator):
    x, y = batch
    return x + torch.rand(x.shape, generator=generator), y


def test_transform_draws_depend_on_seed_and_batch_only():
    x, y = _data()
    ds = BatchedTensorDataset(x.float(), y, transform=_noisy, seed=5)
    first = ds.__getitems__([3, 1, 4])[0]
    torch.manual_seed(0)  # the global RNG takes no part
    assert torch.equal(ds.__getitems__([3, 1, 4])[0], first)
    assert not torch.equal(ds.__getitems__([1, 3, 4])[0], first[[1, 0, 2]])  # another batch, other draws
    assert not torch.equal(BatchedTensorDataset(x.float(), y, transform=_noisy, seed=6).__getitems__([3, 1, 4])[0], first)
    assert batch_generator(-1, torch.tensor([0, 1])).initial_seed() != batch_generator(1, torch.tensor([0, 1])).initial_seed()


def test_dataset_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="same first dim"):
        BatchedTensorDataset(torch.zeros(3, 2), torch.zeros(4))


def test_collate_passes_batch_through():
    batch = (torch.zeros(2, 3), torch.ones(2))
    assert collate(batch) is batch


def test_loader_fetches_one_batch_per_call():
    x, y = _data(50)
    ds = CountingDataset(x, y, transform=_double)
    loader = make_loader(ds, batch_size=16, shuffle=True, seed=0)
    batches = list(loader)
    assert ds.batch_calls == len(batches) == 4 and ds.item_calls == 0
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(50))
    for xb, yb in batches:
        assert torch.equal(xb, x[yb] * 2)


def test_loader_drop_last():
    loader = make_loader(BatchedTensorDataset(*_data(50)), batch_size=16, shuffle=False, seed=0, drop_last=True)
    assert len(loader) == 3 and sum(len(b[1]) for b in loader) == 48


def test_sampler_is_permutation_and_depends_on_seed_and_epoch():
    s = EpochShuffleSampler(100, seed=3)
    first = list(s)
    assert sorted(first) == list(range(100)) and first != list(range(100))
    assert list(s) == first  # same (seed, epoch): same order
    s.set_epoch(1)
    second = list(s)
    assert sorted(second) == list(range(100)) and second != first
    again = EpochShuffleSampler(100, seed=3)
    again.set_epoch(1)
    assert list(again) == second  # a fresh sampler (e.g. after resume) at the same epoch agrees
    assert list(EpochShuffleSampler(100, seed=4)) != first
    assert list(EpochShuffleSampler(10, seed=3, shuffle=False)) == list(range(10))


def test_sampler_draws_order_when_iteration_starts():
    s = EpochShuffleSampler(30, seed=0)
    it = iter(s)  # Lightning may create the iterator before calling set_epoch
    s.set_epoch(5)
    expected = EpochShuffleSampler(30, seed=0)
    expected.set_epoch(5)
    assert list(it) == list(expected)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_draws_order_at_first_batch(num_workers):
    """A resumed run: Lightning creates the iterator, then sets the epoch; the batches are still that epoch's."""
    loader = make_loader(BatchedTensorDataset(*_data(40)), batch_size=8, shuffle=True, seed=11, num_workers=num_workers)
    it = iter(loader)
    loader.sampler.set_epoch(3)
    expected = EpochShuffleSampler(40, seed=11)
    expected.set_epoch(3)
    assert torch.cat([b[1] for b in it]).tolist() == list(expected)


def test_loader_order_is_deterministic_per_epoch():
    def order(epoch: int) -> list[int]:
        loader = make_loader(BatchedTensorDataset(*_data(40)), batch_size=8, shuffle=True, seed=11)
        loader.sampler.set_epoch(epoch)
        return torch.cat([b[1] for b in loader]).tolist()

    assert order(0) == order(0) and order(1) == order(1) and order(0) != order(1)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_leaves_global_rng_alone(num_workers):
    loader = make_loader(
        BatchedTensorDataset(*_data(40)), batch_size=8, shuffle=True, seed=0, num_workers=num_workers
    )
    state = torch.get_rng_state()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
    assert torch.equal(torch.get_rng_state(), state)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(40))


def _ddp(rank: int, world_size: int = 2) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, global_rank=rank)  # what make_loader reads of a DDP trainer


@pytest.mark.parametrize("n, world_size", [(41, 2), (40, 3), (7, 2), (45, 4)])
def test_evaluation_under_ddp_sees_every_sample_exactly_once(n, world_size):
    """No padding: a metric synced over the ranks is the single process's (41 is no multiple of 2 x 8)."""
    seen = []
    for rank in range(world_size):
        loader = make_loader(BatchedTensorDataset(*_data(n)), batch_size=8, shuffle=False, seed=0, trainer=_ddp(rank, world_size))
        assert isinstance(loader.sampler, DistributedSampler)  # so Lightning leaves it in place
        labels = torch.cat([b[1] for b in loader]).tolist()
        assert len(labels) == len(loader.sampler)
        seen += labels
    assert sorted(seen) == list(range(n))


def test_training_under_ddp_shares_one_epoch_equally():
    """Ranks must step together: equal shares, together the single process's order, padded with its first samples."""
    single = make_loader(BatchedTensorDataset(*_data(41)), batch_size=8, shuffle=True, seed=5)
    single.sampler.set_epoch(2)
    order = list(single.sampler)
    shares = []
    for rank in (0, 1):
        loader = make_loader(BatchedTensorDataset(*_data(41)), batch_size=8, shuffle=True, seed=5, trainer=_ddp(rank))
        loader.sampler.set_epoch(2)
        shares.append(torch.cat([b[1] for b in loader]).tolist())
        assert len(loader) == 3 and len(shares[-1]) == len(loader.sampler) == 21
    assert [i for pair in zip(*shares) for i in pair] == order + order[:1]


def test_a_sampler_not_sharded_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="world_size=2"):
        make_loader(BatchedTensorDataset(*_data(40)), batch_size=8, shuffle=True, seed=5, trainer=_ddp(0),
                    sampler=EpochShuffleSampler(40, seed=5))
    single = make_loader(BatchedTensorDataset(*_data(40)), batch_size=8, shuffle=True, seed=5, trainer=_ddp(0, 1))
    assert isinstance(single.sampler, EpochShuffleSampler) and len(single.sampler) == 40
