"""MNIST: IDX file reading and writing, a learnable fake for tests, and the LightningDataModule."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from attnlab.data.denoise import DenoisedImages, Denoiser
from attnlab.data.images import ImageNormalization
from attnlab.data.loading import BatchedTensorDataset, make_loader
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGE_SIZE = 28
NUM_CLASSES = 10
_MAGIC = {0x00000801: 1, 0x00000803: 3}  # uint8 labels (N,), uint8 images (N, rows, cols)
_FIX = "delete it and re-run to download it again, or copy the standard file from the MNIST distribution"
TARGETS = ("label", "image")
PIXELS = ImageNormalization(channels=1, image_size=IMAGE_SIZE)  # uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]


def read_idx(path: Path) -> np.ndarray:
    """Read a uint8 IDX file (gzip'd when the name ends in .gz): images (N, rows, cols) or labels (N,)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"missing MNIST file {path}; copy the standard file from the MNIST distribution") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated gzip is an EOFError
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); {_FIX}") from None
    if len(data) < 8:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes); {_FIX}")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in _MAGIC:
        raise DataError(
            f"{path} has magic 0x{magic:08x}, expected 0x00000803 (uint8 images) or 0x00000801 (uint8 labels); {_FIX}"
        )
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} ends inside its header ({len(data)} bytes); {_FIX}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its header {dims} implies {expected}; {_FIX}")
    # copy(): frombuffer views the read-only bytes, and torch warns on non-writable arrays
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array of shape (N,) or (N, rows, cols) as IDX, gzip'd when the name ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"write_idx takes uint8 arrays of 1 or 3 dims; got {array.dtype} with shape {array.shape}")
    payload = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + np.ascontiguousarray(array).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # write then rename, so an interrupted write leaves no half file
    with open(tmp, "wb") as raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:  # mtime=0: same bytes every time
                f.write(payload)
        else:
            raw.write(payload)
    tmp.replace(path)


def write_fake_mnist(root: Path, *, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """Write the four MNIST files with learnable fakes: class k is a bright square at a position set by k."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.uint8)
        # Class k: a 7x7 square centred on a 2 x 5 grid of positions, jittered by up to 1 pixel.
        cy = 8 + 12 * (labels // 5) + rng.integers(-1, 2, size=n)  # (n,)
        cx = 4 + 5 * (labels % 5) + rng.integers(-1, 2, size=n)  # (n,)
        grid = np.arange(IMAGE_SIZE)
        rows = np.abs(grid[None, :] - cy[:, None]) <= 3  # (n, 28)
        cols = np.abs(grid[None, :] - cx[:, None]) <= 3  # (n, 28)
        square = rows[:, :, None] & cols[:, None, :]  # (n, 28, 28)
        images = rng.integers(0, 40, size=(n, IMAGE_SIZE, IMAGE_SIZE))  # faint background noise
        images = np.where(square, rng.integers(180, 256, size=images.shape), images).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def random_shift(images: Tensor, max_shift: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of a (B, H, W) or (B, C, H, W) batch by its own random offsets in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return images
    squeeze = images.dim() == 3
    x = images.unsqueeze(1) if squeeze else images  # (B, C, H, W)
    B, C, H, W = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s)).flatten(2)  # (B, C, (H+2s)*(W+2s)), zero fill
    dy, dx = torch.randint(-s, s + 1, (2, B), generator=generator)
    rows = torch.arange(H) + (s - dy)[:, None]  # (B, H): output row i reads padded row i + s - dy
    cols = torch.arange(W) + (s - dx)[:, None]  # (B, W)
    index = rows[:, :, None] * (W + 2 * s) + cols[:, None, :]  # (B, H, W) flat positions in the padded image
    out = padded.gather(2, index.view(B, 1, H * W).expand(B, C, H * W)).view(B, C, H, W)
    return out.squeeze(1) if squeeze else out


@dataclass(frozen=True)
class MNISTBatch:
    """Batch transform: uint8 images (+ labels, + fixed noise) -> float inputs in [0, 1] and targets."""

    target: str = "label"
    noise_std: float = 0.0
    max_shift: int = 0  # 0: no augmentation

    def __call__(self, batch: tuple[Tensor, ...], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        images, labels, *fixed = batch  # (B, 28, 28) uint8, (B,) int64, optional (B, 28, 28) float32 N(0, 1)
        images = random_shift(images, self.max_shift, generator=generator)
        clean = PIXELS(images)  # (B, 1, 28, 28)
        x = clean
        if self.noise_std > 0:
            noise = fixed[0].unsqueeze(1) if fixed else torch.randn(clean.shape, generator=generator)
            x = (clean + self.noise_std * noise).clamp_(0, 1)
        # For an autoencoder without noise, input and target are the same tensor; tasks must not modify inputs in place.
        return (x, labels) if self.target == "label" else (x, clean)


class MNISTDataModule(L.LightningDataModule):
    """MNIST from the four IDX files in `data_dir` (downloaded from the hub when missing), held in memory."""

    def __init__(
        self,
        *,
        data_dir: str,
        seed: int,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        split_seed: int = 1234,
        target: Literal["label", "image"] = "label",
        noise_std: float = 0.0,
        test_noise_std: float | None = None,
        denoise_with: str | None = None,
        augment: bool = False,
        max_shift: int = 2,
        num_workers: int = 0,
        hub_id: str = "ylecun/mnist",
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ConfigError(f"unknown MNIST target {target!r}; choose one of: {', '.join(TARGETS)}")
        if val_size < 0 or noise_std < 0 or (test_noise_std or 0) < 0 or max_shift < 0 or num_workers < 0:
            raise ConfigError("MNISTDataModule: val_size, noise_std, test_noise_std, max_shift and num_workers must be >= 0")
        self.data_dir = Path(data_dir)
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.target = target
        self.noise_std = noise_std
        self.test_noise_std = noise_std if test_noise_std is None else test_noise_std  # None: as at training
        # Checked now (before any training), loaded on first use.
        self.denoiser = None if not denoise_with else Denoiser.check(denoise_with, channels=1, image_size=IMAGE_SIZE)
        self.augment = augment
        self.max_shift = max_shift
        self.num_workers = num_workers
        self.hub_id = hub_id
        self.train_set: BatchedTensorDataset | None = None
        self.val_set: BatchedTensorDataset | None = None
        self.test_set: BatchedTensorDataset | None = None

    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once."""
        return {
            "in_channels": 1,
            "image_size": IMAGE_SIZE,
            "num_classes": NUM_CLASSES,
            "class_names": [str(k) for k in range(NUM_CLASSES)],
        }

    def preprocessing(self) -> ImageNormalization | DenoisedImages:
        """What turns raw images into the model's input (fixed: nothing of it is learned from the data); with
        `denoise_with`, the autoencoder's output of them."""
        return PIXELS if self.denoiser is None else DenoisedImages(PIXELS, self.denoiser)

    def lineage(self) -> list[dict[str, Any]]:
        """The runs this data depends on (the manifest's `parents`)."""
        return [] if self.denoiser is None else [self.denoiser.lineage()]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With `denoise_with`: the inputs, on the batch's device, replaced by the autoencoder's output of them."""
        if self.denoiser is None:
            return batch
        x, target = batch
        return self.denoiser(x), target

    def example_inputs(self, n: int = 8) -> tuple[dict[str, Tensor], Tensor] | None:
        """For a denoised run's figure: the first `n` test digits as noisy input, denoised input and clean digit
        (each (n, 1, 28, 28) in [0, 1]) and their labels; None without `denoise_with`."""
        if self.denoiser is None or self.test_set is None:
            return None
        images, labels, *noise = (t[:n] for t in self.test_set.tensors)
        noisy, _ = MNISTBatch(noise_std=self.test_noise_std)((images, labels, *noise))
        return {"noisy input": noisy, "denoised": self.denoiser(noisy), "clean": PIXELS(images)}, labels

    def _path(self, key: str) -> Path:
        """The file for `key`: the .gz name, or the uncompressed name when only that exists."""
        gz = self.data_dir / FILES[key]
        plain = gz.with_suffix("")
        return plain if not gz.exists() and plain.exists() else gz

    def _missing(self) -> list[str]:
        return [FILES[k] for k in FILES if not self._path(k).exists()]

    def prepare_data(self) -> None:
        """Download MNIST from the hub into `data_dir` as the four IDX files, unless they are already there."""
        if not self._missing():
            return
        try:
            _download(self.hub_id, self.data_dir)
        except Exception as e:  # offline, no `datasets`, network or hub errors all end the same way
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise DataError(
                f"no MNIST files under {self.data_dir} (looked for {', '.join(FILES.values())}) and the hub "
                f"download of {self.hub_id!r} failed ({reason}); copy the four MNIST idx .gz files there, "
                "or set paths.data_dir (or ATTNLAB_DATA_DIR) to a folder that has mnist/ inside"
            ) from e

    def setup(self, stage: str | None = None) -> None:
        """Read all splits into memory once; split train/val by `split_seed`, independent of the run seed."""
        if self.train_set is not None:
            return
        if missing := self._missing():
            raise DataError(
                f"no MNIST files under {self.data_dir} (missing {', '.join(missing)}); call prepare_data() "
                "(trainer.fit does), copy the four MNIST idx .gz files there, or set paths.data_dir"
            )
        train_x, train_y = self._read("train")
        test_x, test_y = self._read("test")
        n = len(train_x)
        if self.val_size >= n:
            raise DataError(f"val_size={self.val_size} leaves no training images out of {n}; set val_size below {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
        eval_tf = MNISTBatch(target=self.target, noise_std=self.noise_std)
        test_tf = MNISTBatch(target=self.target, noise_std=self.test_noise_std)
        train_tf = MNISTBatch(
            target=self.target, noise_std=self.noise_std, max_shift=self.max_shift if self.augment else 0
        )
        val_extra, test_extra = [], []
        # Evaluation noise is drawn once, from generators that depend only on split_seed, so every evaluation of
        # every run sees the same inputs (at any test_noise_std: the same draws, scaled). Test noise does not depend
        # on val_size.
        if self.noise_std > 0:
            gen_val = torch.Generator().manual_seed(self.split_seed + 1)
            val_extra = [torch.randn((len(val_idx), IMAGE_SIZE, IMAGE_SIZE), generator=gen_val)]
        if self.test_noise_std > 0:
            gen_test = torch.Generator().manual_seed(self.split_seed + 2)
            test_extra = [torch.randn((len(test_x), IMAGE_SIZE, IMAGE_SIZE), generator=gen_test)]
        # The run seed keys the training batches' shifts and noise (see attnlab.data.loading.batch_generator).
        self.train_set = BatchedTensorDataset(train_x[train_idx], train_y[train_idx], transform=train_tf, seed=self.seed)
        self.val_set = BatchedTensorDataset(train_x[val_idx], train_y[val_idx], *val_extra, transform=eval_tf)
        self.test_set = BatchedTensorDataset(test_x, test_y, *test_extra, transform=test_tf)
        log.info("MNIST from %s: train %d, val %d, test %d", self.data_dir, len(train_idx), len(val_idx), len(test_x))

    def _read(self, split: str) -> tuple[Tensor, Tensor]:
        """Images (N, 28, 28) uint8 and labels (N,) int64 of one split, checked against each other."""
        images_path, labels_path = self._path(f"{split}_images"), self._path(f"{split}_labels")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{images_path} holds shape {images.shape}, expected (N, 28, 28) images; {_FIX}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{labels_path} holds shape {labels.shape}, expected ({len(images)},) labels; {_FIX}")
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DataError(f"{labels_path} has label {labels.max()}, expected 0..9; {_FIX}")
        return torch.from_numpy(images), torch.from_numpy(labels).long()

    def _loader(self, dataset: BatchedTensorDataset | None, *, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("MNISTDataModule: call setup() before asking for a dataloader")
        return make_loader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            trainer=self.trainer,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, batch_size=self.eval_batch_size, shuffle=False)


def _download(hub_id: str, data_dir: Path) -> None:
    """Fetch MNIST with `datasets` (cached under data_dir/hf_cache) and write its splits as the four IDX files."""
    import datasets  # optional: only needed when the files are missing

    log.info("MNIST files missing under %s; downloading %r from the hub", data_dir, hub_id)
    splits = datasets.load_dataset(hub_id, cache_dir=str(data_dir / "hf_cache"))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in splits[split]["image"]])  # (N, 28, 28)
        labels = np.asarray(splits[split]["label"], dtype=np.uint8)  # (N,)
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", labels)
    log.info("wrote MNIST idx files to %s", data_dir)
