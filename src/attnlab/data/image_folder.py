"""Image classification from class folders: `root/<class>/*.png|jpg` (optionally under `train/`, `val/`, `test/`),
read with Pillow, resized, held in memory as uint8, standardised with statistics of the training split.

The decoded images are cached under `cache_dir`, keyed by the files (names, sizes, times) and the settings that shape
them (image size, channels), so a second run, validation, the data report and prediction decode nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from attnlab.data.images import IMAGE_SUFFIXES, StandardizedImages, read_image
from attnlab.data.loading import BatchedTensorDataset, make_loader
from attnlab.data.mnist import random_shift
from attnlab.data.splits import held_out_count, stratified_split
from attnlab.data.text import atomic_dir, digest, file_stamps
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ARTIFACT = "image_folder.json"  # in the run directory: class names, channels, size and normalisation statistics
SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class FolderBatch:
    """Batch transform: uint8 images (B, C, H, W) + labels -> standardised images, optionally shifted (training)."""

    pre: StandardizedImages
    max_shift: int = 0

    def __call__(self, batch: tuple[Tensor, ...], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return self.pre(random_shift(images, self.max_shift, generator=generator)), labels


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder and its subfolders, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolderDataModule(L.LightningDataModule):
    """Labelled images from class folders; validation (and test, without a `test/` folder) carved from training by a
    seeded stratified split."""

    def __init__(
        self,
        *,
        root: str,
        cache_dir: str,
        seed: int,
        image_size: int | None = None,
        channels: Literal[1, 3] | None = None,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 1234,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        augment: bool = False,
        max_shift: int = 2,
        bad_images: Literal["skip", "raise"] = "skip",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={channels}: choose 1 (grayscale), 3 (RGB) or null (from the first image)")
        if bad_images not in ("skip", "raise"):
            raise ConfigError(f"unknown bad_images {bad_images!r}; choose one of: skip, raise")
        if (image_size is not None and image_size < 1) or max_shift < 0 or num_workers < 0:
            raise ConfigError("ImageFolderDataModule: image_size must be >= 1, max_shift and num_workers >= 0")
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.image_size = image_size
        self.channels = channels
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.augment = augment
        self.max_shift = max_shift
        self.bad_images = bad_images
        self.num_workers = num_workers
        self.saved: dict[str, Any] | None = None  # a run's artifact, when loaded
        self._arrays: dict[str, tuple[Tensor, Tensor]] | None = None
        self.datasets: dict[str, BatchedTensorDataset] = {}

    # -- layout ---------------------------------------------------------------------------------------------------
    def _layout(self) -> dict[str, Path]:
        """{source name: folder of class folders}: train/ (+ val/, test/) when root has train/, else root itself."""
        if not self.root.is_dir():
            raise DataError(f"data.root={self.root} is not a folder; point it at a folder of class folders "
                            "(root/<class name>/*.png) or one with train/ (val/, test/) inside")
        if (self.root / "train").is_dir():
            return {s: self.root / s for s in SPLITS if (self.root / s).is_dir()}
        return {"train": self.root}

    def _files(self) -> dict[str, list[tuple[Path, str]]]:
        """{source: [(image file, class name)]}, every class of val/test also in train."""
        found: dict[str, list[tuple[Path, str]]] = {}
        for source, folder in self._layout().items():
            classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            files = {c.name: list_images(c) for c in classes}
            if source == "train":
                if len(files) < 2:
                    raise DataError(f"{folder} holds {len(files)} class folder(s) ({', '.join(files) or 'none'}); "
                                    "image classification needs at least two: root/<class name>/*.png")
                empty = [c for c, f in files.items() if not f]
                if empty:
                    raise DataError(f"class folder(s) with no images under {folder}: {', '.join(empty)} (looked for "
                                    f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
            found[source] = [(path, c) for c, paths in files.items() for path in paths]
        names = {c for _, c in found["train"]}
        for source, rows in found.items():
            unknown = sorted({c for _, c in rows} - names)
            if unknown:
                raise DataError(f"{self.root / source} has class(es) the training folder lacks: {', '.join(unknown)}; "
                                f"training classes: {', '.join(sorted(names))}")
        return found

    def _shape(self, files: dict[str, list[tuple[Path, str]]]) -> tuple[int, int]:
        """(channels, image size): as set, else from the first readable training image (grayscale -> 1, else 3)."""
        if self.channels is not None and self.image_size is not None:
            return self.channels, self.image_size
        from PIL import Image

        for path, _ in files["train"]:
            try:
                with Image.open(path) as image:
                    channels = self.channels or (1 if image.mode in ("1", "L", "I", "I;16", "F") else 3)
                    return channels, self.image_size or max(image.size)
            except OSError:
                continue
        raise DataError(f"no readable image under {self.root}; check the files (Pillow could open none)")

    # -- facts and artifacts -------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        """class_names, channels, image_size: from a run's artifact, else from the folders."""
        if self.saved is not None:
            return self.saved
        files = self._files()
        channels, size = self._shape(files)
        return {"class_names": sorted({c for _, c in files["train"]}), "channels": channels, "image_size": size}

    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once."""
        meta = self._meta()
        return {"in_channels": meta["channels"], "image_size": meta["image_size"],
                "num_classes": len(meta["class_names"]), "class_names": list(meta["class_names"])}

    def save_artifacts(self, run_dir: Path) -> None:
        """Class names, image shape and the training split's normalisation statistics, in the run directory."""
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / ARTIFACT).write_text(json.dumps(self.artifact(), indent=2) + "\n")

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use what a run saved (then facts() and preprocessing() read no images); True if it saved it."""
        path = Path(run_dir) / ARTIFACT
        if not path.is_file():
            return False
        self.saved = json.loads(path.read_text())
        return True

    def artifact(self) -> dict[str, Any]:
        if self.saved is not None:
            return self.saved
        meta = self._meta()
        mean, std = self._stats()
        return {**meta, "mean": mean, "std": std}

    def preprocessing(self) -> StandardizedImages:
        """Raw images -> the model's input: read, converted, resized, standardised with the training statistics."""
        art = self.artifact()
        return StandardizedImages(channels=art["channels"], image_size=art["image_size"], mean=tuple(art["mean"]),
                                  std=tuple(art["std"]))

    # -- decoding (cached) ------------------------------------------------------------------------------------
    def _decoded(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{source: (images (N, C, H, W) uint8, labels (N,))}, decoded once and cached."""
        if self._arrays is not None:
            return self._arrays
        files = self._files()
        meta = self._meta()
        channels, size, names = meta["channels"], meta["image_size"], meta["class_names"]
        key = {"version": _CACHE_VERSION, "root": str(self.root.resolve()), "channels": channels, "size": size,
               "files": {s: [len(rows), digest(file_stamps([p for p, _ in rows]) + [c for _, c in rows])]
                         for s, rows in files.items()}}
        path = self.cache_dir / f"images-{digest(key)}"
        if not (path / "meta.json").is_file():
            with atomic_dir(path) as tmp:
                for source, rows in files.items():
                    images, labels = self._decode(rows, channels, size, names)
                    np.save(tmp / f"{source}_images.npy", images)
                    np.save(tmp / f"{source}_labels.npy", labels)
                (tmp / "meta.json").write_text(json.dumps(key, indent=2) + "\n")
        else:
            log.info("image cache hit: %s", path)
        self._arrays = {s: (torch.from_numpy(np.load(path / f"{s}_images.npy")),
                            torch.from_numpy(np.load(path / f"{s}_labels.npy"))) for s in files}
        return self._arrays

    def _decode(self, rows: list[tuple[Path, str]], channels: int, size: int,
                names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        index = {c: i for i, c in enumerate(names)}
        images, labels, bad = [], [], []
        for path, cls in rows:
            try:
                array, _ = read_image(path, channels=channels, image_size=size)
            except OSError as err:  # not an image, truncated, unreadable
                if self.bad_images == "raise":
                    raise DataError(f"cannot read image {path} ({err}); fix or remove it, or set data.bad_images=skip") from None
                bad.append(f"{path} ({err})")
                continue
            images.append(array)
            labels.append(index[cls])
        if bad:
            log.warning("skipped %d unreadable image(s) (data.bad_images=raise refuses them): %s%s", len(bad),
                        "; ".join(bad[:20]), f"; and {len(bad) - 20} more" if len(bad) > 20 else "")
        if not images:
            raise DataError(f"no readable image among {len(rows)} files under {self.root}")
        log.info("decoded %d images (%d x %d, %d channel(s)) in %.1f s", len(images), size, size, channels,
                 time.perf_counter() - start)
        return np.stack(images), np.asarray(labels, dtype=np.int64)

    def _splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{train, val, test: (images, labels)}: given folders, or carved from train (stratified, by split_seed)."""
        decoded = self._decoded()
        images, labels = decoded["train"]
        out: dict[str, tuple[Tensor, Tensor]] = {}
        rest = np.arange(len(labels))
        for split, size in (("test", self.test_size), ("val", self.val_size)):
            if split in decoded:
                out[split] = decoded[split]
                continue
            count = held_out_count(size, len(labels), name=f"data.{split}_size")  # a share of the whole folder
            keep, held = stratified_split(labels.numpy()[rest], count, seed=self.split_seed + (split == "val"),
                                          name=f"data.{split}_size")
            out[split] = images[rest[held]], labels[rest[held]]
            rest = rest[keep]
        out["train"] = images[rest], labels[rest]
        return out

    def _stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training split's pixels in [0, 1]."""
        images = self._splits()["train"][0]
        total = torch.zeros(images.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for chunk in images.split(4096):
            x = chunk.to(torch.float64).div_(255).transpose(0, 1).flatten(1)  # (C, pixels)
            total += x.sum(1)
            squares += (x * x).sum(1)
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std.clamp_min(1e-3)]

    # -- datasets and loaders -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pre = self.preprocessing()
        for name, (images, labels) in self._splits().items():
            shift = self.max_shift if self.augment and name == "train" else 0
            self.datasets[name] = BatchedTensorDataset(images, labels, transform=FolderBatch(pre, shift),
                                                       seed=self.seed if name == "train" else 0)
        log.info("images from %s: train %d, val %d, test %d; %d classes; mean %s std %s", self.root,
                 *(len(self.datasets[s]) for s in SPLITS), len(self.facts()["class_names"]),
                 list(pre.mean), list(pre.std))

    def _loader(self, name: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError("ImageFolderDataModule: call setup() before asking for a dataloader")
        return make_loader(self.datasets[name], batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, shuffle=False)

    def report(self, out_dir: Path) -> str:
        """Markdown: class balance per split, the normalisation statistics, a grid of samples per class (figure)."""
        from attnlab.data.report import image_report

        self.setup()
        splits = {name: self.datasets[name].tensors for name in ("train", "val", "test") if name in self.datasets}
        return image_report(splits, self.facts()["class_names"], self.preprocessing(), Path(out_dir), source=str(self.root))


def write_fake_folders(root: Path, *, classes: tuple[str, ...] = ("circle", "square", "stripes"), per_class: int = 12,
                       size: int = 16, mode: Literal["L", "RGB"] = "L", seed: int = 0) -> Path:
    """Write learnable generated PNGs, root/<class>/<i>.png: class k is a bright block at a position set by k."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, size=(size, size)).astype(np.uint8)
            y, x = (k * 5) % (size - 4), (k * 3 + i % 2) % (size - 4)
            pixels[y : y + 4, x : x + 4] = 220
            image = Image.fromarray(pixels).convert(mode)
            image.save(Path(root) / name / f"{i:03d}.png")
    return Path(root)
