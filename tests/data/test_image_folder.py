"""data=image_folder: class folders read with Pillow, stratified splits, bad images, training statistics in the run."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data.image_folder import ImageFolderDataModule, write_fake_folders
from attnlab.errors import DataError


def make(root, tmp_path, **kw):
    args = {"root": str(root), "cache_dir": str(tmp_path / "cache"), "seed": 0, "val_size": 0.25, "test_size": 0.25,
            "batch_size": 4, **kw}
    return ImageFolderDataModule(**args)


def test_folders_split_stratified_with_shape_and_statistics_from_training(tmp_path):
    root = write_fake_folders(tmp_path / "imgs", per_class=12, size=16)
    dm = make(root, tmp_path)
    assert dm.facts() == {"in_channels": 1, "image_size": 16, "num_classes": 3,
                          "class_names": ["circle", "square", "stripes"]}
    dm.setup()
    for split, n in (("train", 6), ("val", 3), ("test", 3)):  # every class on every side, in its share
        labels = dm.datasets[split].tensors[1]
        assert np.bincount(labels.numpy(), minlength=3).tolist() == [n] * 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 16, 16) and x.dtype == torch.float32
    train = dm.datasets["train"].tensors[0].float() / 255
    assert dm.preprocessing().mean == pytest.approx((train.mean().item(),), abs=1e-5)
    everything = torch.cat([dm.datasets[s].tensors[0] for s in ("val", "test")]).float() / 255
    assert abs(everything.mean().item() - train.mean().item()) > 0  # statistics are the training split's own


def test_train_val_test_subfolders_resize_and_convert(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        write_fake_folders(tmp_path / "imgs" / split, classes=("a", "b"), per_class=n, size=20, mode="RGB", seed=n)
    dm = make(tmp_path / "imgs", tmp_path, image_size=8, channels=1, val_size=2)
    dm.setup()
    assert {s: len(dm.datasets[s]) for s in ("train", "val", "test")} == {"train": 10, "val": 2, "test": 4}
    assert dm.datasets["test"].tensors[0].shape[1:] == (1, 8, 8)
    assert make(tmp_path / "imgs", tmp_path).facts()["in_channels"] == 3  # RGB files, channels from the first


def test_unreadable_images_are_named_and_skipped_or_refused(tmp_path, caplog):
    root = write_fake_folders(tmp_path / "imgs", per_class=8, size=16)
    good = (root / "circle" / "000.png").read_bytes()
    (root / "circle" / "bad.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "square" / "text.png").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        dm = make(root, tmp_path)
        dm.setup()
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 24
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 2 unreadable image(s)" in warning and "bad.png" in warning and "text.png" in warning
    with pytest.raises(DataError, match=r"cannot read image .*(bad|text)\.png .*data.bad_images=skip"):
        make(root, tmp_path, bad_images="raise", cache_dir=str(tmp_path / "other")).setup()


def test_an_empty_class_folder_or_a_single_class_is_an_error(tmp_path):
    root = write_fake_folders(tmp_path / "imgs", per_class=4, size=8)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder\\(s\\) with no images under .*: empty"):
        make(root, tmp_path).facts()
    one = write_fake_folders(tmp_path / "one", classes=("only",), per_class=4, size=8)
    with pytest.raises(DataError, match="holds 1 class folder\\(s\\) \\(only\\); image classification needs at least two"):
        make(one, tmp_path).facts()
    with pytest.raises(DataError, match="data.root=.*nowhere is not a folder"):
        make(tmp_path / "nowhere", tmp_path).facts()


def test_class_names_and_statistics_survive_save_and_reload(tmp_path):
    root = write_fake_folders(tmp_path / "imgs", per_class=6, size=12)
    dm = make(root, tmp_path)
    dm.save_artifacts(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "image_folder.json").read_text())
    again = make(tmp_path / "gone", tmp_path)  # the folder is gone: the run's artifact says everything
    assert again.load_artifacts(tmp_path / "run")
    assert again.facts()["class_names"] == saved["class_names"] == ["circle", "square", "stripes"]
    assert again.preprocessing() == dm.preprocessing()
    image = Image.open(root / "square" / "001.png")
    x = again.preprocessing().to_batch([image, str(root / "square" / "001.png")])
    assert x.shape == (2, 1, 12, 12) and torch.equal(x[0], x[1])
