"""`data.denoise_with=<run dir>`: an autoencoder run as a frozen preprocessing step of the MNIST data module, and
`data.test_noise_std`. Small runs are trained in this process on fake MNIST (as app/train.py does)."""

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from attnlab import runs
from attnlab.data.denoise import DenoisedImages, Denoiser
from attnlab.data.mnist import PIXELS, MNISTDataModule, read_idx, write_fake_mnist
from attnlab.errors import ConfigError
from test_load_model import train_in_process

SMALL = ["data.val_size=64", "data.batch_size=32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("fake") / "mnist", n_train=256, n_test=64)


def trained(tmp_path_factory, data_dir: Path, name: str, overrides: list[str]) -> Path:
    root = tmp_path_factory.mktemp(name)
    (root / "data").mkdir()
    (root / "data" / "mnist").symlink_to(data_dir)
    return train_in_process(root, [*SMALL, *overrides])


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, data_dir) -> Path:
    return trained(tmp_path_factory, data_dir, "ae", ["experiment=mnist_ae"])


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, data_dir) -> Path:
    return trained(tmp_path_factory, data_dir, "cnn", ["experiment=mnist_cnn"])


def datamodule(data_dir: Path, **kw) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), seed=0, val_size=64, batch_size=32, **kw)
    dm.setup()
    return dm


def autoencoder(run: Path) -> torch.nn.Module:
    return runs.load_model(run).model


def test_denoised_inputs_are_the_autoencoders_output_on_the_same_noisy_batch(data_dir, ae_run):
    dm = datamodule(data_dir, noise_std=0.3, denoise_with=str(ae_run))
    noisy, labels = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = autoencoder(ae_run)(noisy)
    denoised, same_labels = dm.on_after_batch_transfer((noisy, labels), 0)
    assert torch.equal(denoised, expected) and torch.equal(same_labels, labels)
    assert not torch.equal(denoised, noisy) and not denoised.requires_grad
    # Serving and load_model: raw uint8 digits -> pixels -> the autoencoder: what the classifier read.
    pre = dm.preprocessing()
    assert isinstance(pre, DenoisedImages) and (pre.channels, pre.image_size) == (1, 28)
    raw = torch.from_numpy(read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[:4])
    with torch.no_grad():
        assert torch.equal(pre(raw), autoencoder(ae_run)(PIXELS(raw)))
    assert dm.lineage() == [{"role": "data.denoise_with", "run_id": runs.read_json(ae_run / "manifest.json")["run_id"],
                             "path": str(ae_run)}]


class Inputs(L.Callback):
    """What the task's training steps received, after the data module's hooks."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch[0].clone())


def test_training_sees_denoised_inputs_and_leaves_the_autoencoder_as_it_was(data_dir, ae_run, cnn_run):
    from attnlab import build

    cfg = runs.load_config(cnn_run)
    cfg.data.noise_std = 0.3
    cfg.data.denoise_with = str(ae_run)
    cfg.data.augment = False
    dm, task = build.assemble(cfg)
    dm.setup("fit")
    first_noisy, _ = next(iter(dm.train_dataloader()))  # epoch 0's first batch, as the trainer will draw it
    ae_before = {k: v.clone() for k, v in autoencoder(ae_run).state_dict().items()}
    cnn_before = {k: v.clone() for k, v in task.model.state_dict().items()}
    seen = Inputs()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[seen])
    trainer.fit(task, datamodule=dm)
    with torch.no_grad():
        assert torch.equal(seen.batches[0], autoencoder(ae_run)(first_noisy))
    used = dm.denoiser.model(torch.device("cpu"))
    assert not used.training and not any(p.requires_grad for p in used.parameters())
    assert all(torch.equal(v, ae_before[k]) for k, v in used.state_dict().items())  # the autoencoder did not learn
    assert not all(torch.equal(v, cnn_before[k]) for k, v in task.model.state_dict().items())  # the classifier did
    assert not any(p is q for p in task.parameters() for q in used.parameters())  # and is no part of the task


def test_a_wrong_denoise_with_is_a_clear_error_before_anything_is_read(data_dir, cnn_run, ae_run, tmp_path):
    with pytest.raises(ConfigError, match=r"data.denoise_with=.* is a run of ClassificationTask, not a reconstruction run"):
        MNISTDataModule(data_dir=str(data_dir), seed=0, denoise_with=str(cnn_run))
    with pytest.raises(ConfigError, match=r"data.denoise_with=.*nowhere: run directory .*nowhere does not exist"):
        MNISTDataModule(data_dir=str(data_dir), seed=0, denoise_with=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"reads images of 1 channel\(s\) at 28x28; this data has 3 channel\(s\) at 32x32"):
        Denoiser.check(ae_run, channels=3, image_size=32)  # what a 32x32 colour image data module asks
    no_ckpt = shutil.copytree(ae_run, tmp_path / "ae")
    shutil.rmtree(no_ckpt / "checkpoints")
    with pytest.raises(ConfigError, match="no checkpoint"):
        MNISTDataModule(data_dir=str(data_dir), seed=0, denoise_with=str(no_ckpt))
    other = shutil.copytree(ae_run, tmp_path / "ae_other")
    cfg = OmegaConf.load(other / "config.yaml")
    cfg.data.target = "label"  # its data module stays MNIST: only the task decides
    OmegaConf.save(cfg, other / "config.yaml")
    assert Denoiser.check(other, channels=1, image_size=28).run_dir == other


def test_test_noise_std_changes_the_test_split_only_with_the_same_draws(data_dir):
    def first(dm, split):
        return next(iter(getattr(dm, f"{split}_dataloader")()))[0]

    trained_at = datamodule(data_dir, noise_std=0.3)
    clean_test = datamodule(data_dir, noise_std=0.3, test_noise_std=0.0)
    louder = datamodule(data_dir, noise_std=0.3, test_noise_std=0.6)
    plain = datamodule(data_dir)
    assert torch.equal(first(clean_test, "test"), first(plain, "test"))
    assert torch.equal(first(clean_test, "val"), first(trained_at, "val"))  # validation keeps the training noise
    assert torch.equal(first(louder, "val"), first(trained_at, "val"))
    clean = first(plain, "test")
    delta_03, delta_06 = first(trained_at, "test") - clean, first(louder, "test") - clean
    inside = (first(louder, "test") > 0) & (first(louder, "test") < 1) & (first(trained_at, "test") > 0) & (first(trained_at, "test") < 1)
    assert inside.float().mean() > 0.1
    torch.testing.assert_close(delta_06[inside], 2 * delta_03[inside], rtol=1e-4, atol=1e-5)  # the same noise, scaled
    with pytest.raises(ConfigError, match="test_noise_std"):
        MNISTDataModule(data_dir=str(data_dir), seed=0, test_noise_std=-0.1)
