"""Tests for MNIST: IDX reading/writing, errors that name the fix, splits, noise, augmentation and loaders."""

import gzip

import numpy as np
import pytest
import torch

from attnlab.data.mnist import FILES, MNISTBatch, MNISTDataModule, random_shift, read_idx, write_fake_mnist, write_idx
from attnlab.errors import ConfigError, DataError


def _dm(data_dir, **kw) -> MNISTDataModule:
    kw = {"seed": 0, "batch_size": 32, "val_size": 100, **kw}
    dm = MNISTDataModule(data_dir=str(data_dir), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _epoch(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


# --- IDX files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / ("labels-" + name), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / name), images)
    np.testing.assert_array_equal(read_idx(tmp_path / ("labels-" + name)), labels)
    assert read_idx(tmp_path / name).flags.writeable


def test_write_idx_rejects_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x.gz", np.zeros((2, 28, 28), dtype=np.float32))


def test_truncated_gzip_names_file_and_fix(tmp_path):
    good = tmp_path / "good.gz"
    write_idx(good, np.zeros((100, 28, 28), dtype=np.uint8) + 7)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*delete it and re-run"):
        read_idx(bad)


def test_not_gzip_names_file(tmp_path):
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx(bad)


def test_wrong_magic_and_wrong_size(tmp_path):
    wrong_magic = tmp_path / "wrong-magic.gz"
    with gzip.open(wrong_magic, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + b"\x00\x00\x00\x01" * 3 + b"\x00")
    with pytest.raises(DataError, match=r"wrong-magic\.gz has magic 0x00000d03"):
        read_idx(wrong_magic)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + bytes(9))  # header says 10 labels, 9 follow
    with pytest.raises(DataError, match=r"short\.gz holds 17 bytes"):
        read_idx(short)


def test_missing_files_offline_names_expected_files(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), seed=0)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    for name in FILES.values():
        assert name in message
    assert "ylecun/mnist" in message and "paths.data_dir" in message
    with pytest.raises(DataError, match="prepare_data"):
        dm.setup("fit")


def test_hub_download_is_converted_to_idx(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    fake = {  # what load_dataset returns, as far as the conversion looks: split -> column -> values
        split: {"image": list(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)), "label": [k % 10 for k in range(n)]}
        for split, n in (("train", 30), ("test", 12))
    }
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, cache_dir: calls.append(hub_id) or fake)
    dm = _dm(tmp_path, val_size=10)
    assert calls == ["ylecun/mnist"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 10, 12)
    np.testing.assert_array_equal(read_idx(tmp_path / FILES["test_images"]), np.stack(fake["test"]["image"]))
    dm.prepare_data()  # files present now: no second download
    assert len(calls) == 1


def test_uncompressed_files_are_accepted(tmp_path, fake_mnist_dir):
    for name in FILES.values():
        write_idx(tmp_path / name.removesuffix(".gz"), read_idx(fake_mnist_dir / name))
    dm = _dm(tmp_path)
    assert len(dm.test_set) == 128


# --- splits ------------------------------------------------------------------------------------------------------


def test_split_sizes_and_independence_from_run_seed(fake_mnist_dir):
    a = _dm(fake_mnist_dir, seed=0)
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (412, 100, 128)
    b = _dm(fake_mnist_dir, seed=99)
    c = _dm(fake_mnist_dir, seed=0, split_seed=7)
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])
    all_train = torch.cat([a.train_set.tensors[1], a.val_set.tensors[1]]).bincount(minlength=10)
    on_disk = torch.from_numpy(read_idx(fake_mnist_dir / FILES["train_labels"])).long()
    assert torch.equal(all_train, on_disk.bincount(minlength=10))


def test_val_size_too_large_and_bad_target(fake_mnist_dir):
    with pytest.raises(DataError, match="val_size=512"):
        _dm(fake_mnist_dir, val_size=512)
    with pytest.raises(ConfigError, match="choose one of: label, image"):
        MNISTDataModule(data_dir=str(fake_mnist_dir), seed=0, target="pixels")


def test_setup_is_idempotent(fake_mnist_dir):
    dm = _dm(fake_mnist_dir)
    train = dm.train_set
    dm.setup("validate")
    assert dm.train_set is train


# --- batches -----------------------------------------------------------------------------------------------------


def test_train_order_depends_on_seed_and_epoch(fake_mnist_dir):
    a, b = _dm(fake_mnist_dir, seed=1), _dm(fake_mnist_dir, seed=1)
    ya0 = torch.cat([y for _, y in _epoch(a.train_dataloader(), 0)])
    yb0 = torch.cat([y for _, y in _epoch(b.train_dataloader(), 0)])
    xa1, ya1 = zip(*_epoch(a.train_dataloader(), 1))
    xb1, _ = zip(*_epoch(b.train_dataloader(), 1))
    assert torch.equal(ya0, yb0) and torch.equal(torch.cat(xa1), torch.cat(xb1))
    assert not torch.equal(ya0, torch.cat(ya1))
    y_other = torch.cat([y for _, y in _epoch(_dm(fake_mnist_dir, seed=2).train_dataloader(), 0)])
    assert not torch.equal(ya0, y_other)


def test_eval_noise_is_fixed_across_instances_and_epochs(fake_mnist_dir):
    a = _dm(fake_mnist_dir, seed=0, noise_std=0.5, target="image")
    b = _dm(fake_mnist_dir, seed=5, noise_std=0.5, target="image")
    torch.manual_seed(1)
    xa = torch.cat([x for x, _ in _epoch(a.val_dataloader(), 0)])
    torch.manual_seed(2)
    xa2 = torch.cat([x for x, _ in _epoch(a.val_dataloader(), 3)])
    xb = torch.cat([x for x, _ in _epoch(b.val_dataloader(), 1)])
    assert torch.equal(xa, xa2) and torch.equal(xa, xb)
    clean = torch.cat([t for _, t in _epoch(a.val_dataloader())])
    assert not torch.equal(xa, clean)
    xt = torch.cat([x for x, _ in _epoch(a.test_dataloader())])
    assert torch.equal(xt, torch.cat([x for x, _ in _epoch(b.test_dataloader())]))


@pytest.mark.parametrize("target", ["label", "image"])
@pytest.mark.parametrize("noise_std", [0.0, 0.3])
def test_batch_shapes_dtypes_ranges(fake_mnist_dir, target, noise_std):
    dm = _dm(fake_mnist_dir, target=target, noise_std=noise_std, eval_batch_size=64)
    for loader, size in ((dm.train_dataloader(), 32), (dm.val_dataloader(), 64), (dm.test_dataloader(), 64)):
        x, t = next(iter(loader))
        assert x.shape == (size, 1, 28, 28) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5
        if target == "label":
            assert t.shape == (size,) and t.dtype == torch.int64 and 0 <= t.min() and t.max() <= 9
        else:
            assert t.shape == x.shape and t.dtype == torch.float32
            assert torch.equal(x, t) == (noise_std == 0)
            # the target is the clean image: multiples of 1/255
            assert torch.allclose(t * 255, (t * 255).round(), atol=1e-4)


def test_eval_batches_are_the_stored_images(fake_mnist_dir):
    dm = _dm(fake_mnist_dir)
    x, y = next(iter(dm.test_dataloader()))
    expected = torch.from_numpy(read_idx(fake_mnist_dir / FILES["test_images"])[:32]).float() / 255
    assert torch.allclose(x[:, 0], expected)
    assert torch.equal(y, torch.from_numpy(read_idx(fake_mnist_dir / FILES["test_labels"])[:32]).long())


def test_augment_shifts_train_only(fake_mnist_dir):
    plain, aug = _dm(fake_mnist_dir), _dm(fake_mnist_dir, augment=True, max_shift=2)
    torch.manual_seed(0)
    xp, yp = _epoch(plain.train_dataloader())[0]
    xa, ya = _epoch(aug.train_dataloader())[0]
    assert xa.shape == xp.shape and torch.equal(ya, yp) and not torch.equal(xa, xp)
    assert torch.equal(next(iter(aug.val_dataloader()))[0], next(iter(plain.val_dataloader()))[0])


def test_random_shift_moves_each_image_within_bounds():
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, 14, 10] = 255
    torch.manual_seed(0)
    out = random_shift(images, 3)
    assert out.shape == images.shape and out.dtype == torch.uint8
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert (out.flatten(1).sum(1) == 255).all()  # the pixel moved, nothing else appeared
    assert rows.sub(14).abs().max() <= 3 and cols.sub(10).abs().max() <= 3
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets differ per image
    four_d = random_shift(torch.rand(4, 3, 8, 8), 1)
    assert four_d.shape == (4, 3, 8, 8)


def test_augmented_autoencoder_target_matches_input_shift():
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    batch = (images, torch.zeros(16, dtype=torch.long))
    x, target = MNISTBatch(target="image", noise_std=0.2, max_shift=2)(batch, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)  # the shift is drawn first, then the noise
    shifted = random_shift(images, 2, generator=replay).unsqueeze(1).float() / 255
    noisy = (shifted + 0.2 * torch.randn(shifted.shape, generator=replay)).clamp(0, 1)
    assert torch.equal(target, shifted) and torch.allclose(x, noisy)


def test_worker_loader_matches_in_process(fake_mnist_dir):
    """With augmentation on, 0, 1 and 2 loader workers give the same batches: a batch's random draws depend on the
    run's seed and the batch's samples only, never on the process that makes it or the global RNG."""
    loaders = [_dm(fake_mnist_dir, num_workers=n, augment=True).train_dataloader() for n in (0, 1, 2)]
    torch.manual_seed(123)  # the global RNG takes no part
    reference = _epoch(loaders[0], 2)
    assert not torch.equal(reference[0][0], _epoch(_dm(fake_mnist_dir).train_dataloader(), 2)[0][0])  # it augments
    for loader in loaders[1:]:
        torch.manual_seed(7)
        batches = _epoch(loader, 2)
        assert len(batches) == len(reference)
        for (xa, ya), (xb, yb) in zip(batches, reference):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_does_not_depend_on_earlier_epochs(fake_mnist_dir, num_workers):
    """What resume needs: epoch 2 of a fresh loader (a resumed run) equals epoch 2 after epochs 0 and 1, augmented."""
    loader = _dm(fake_mnist_dir, num_workers=num_workers, augment=True, noise_std=0.1).train_dataloader()
    for epoch in (0, 1):
        _epoch(loader, epoch)
    after = _epoch(loader, 2)
    torch.manual_seed(99)
    fresh = _epoch(_dm(fake_mnist_dir, num_workers=num_workers, augment=True, noise_std=0.1).train_dataloader(), 2)
    assert len(after) == len(fresh) == 13
    for (xa, ya), (xb, yb) in zip(after, fresh):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_facts(fake_mnist_dir):
    facts = MNISTDataModule(data_dir=str(fake_mnist_dir), seed=0).facts()
    assert facts == {"in_channels": 1, "image_size": 28, "num_classes": 10, "class_names": [str(k) for k in range(10)]}


def test_fake_mnist_is_learnable(tmp_path):
    """A linear classifier gets far above chance (10%) on the fakes within a few dozen steps."""
    dm = _dm(write_fake_mnist(tmp_path, n_train=512, n_test=256, seed=1), batch_size=64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(5):
        for x, y in _epoch(dm.train_dataloader(), epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        acc = torch.cat([(model(x).argmax(1) == y).float() for x, y in dm.test_dataloader()]).mean()
    assert acc > 0.8


# --- the real files ----------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_mnist(shared_data):
    dm = _dm(shared_data / "mnist", val_size=5000)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    train_counts = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]]).bincount()
    assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert dm.test_set.tensors[1].bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 1, 28, 28) and 0 <= y.min() and y.max() <= 9
