"""Checkpoint averaging (`average_last=N`), the inverse-square-root schedule and signature strings in metrics.json."""

import functools
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnlab import runs
from attnlab.callbacks import AverageCheckpoints
from attnlab.errors import ConfigError
from attnlab.optim.schedules import inverse_sqrt
from attnlab.tasks.classification import ClassificationTask


def _fit(tmp_path, epochs: int, last: int) -> L.Trainer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    task = ClassificationTask(model=nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)),
                              optimizer=functools.partial(torch.optim.SGD, lr=0.5), num_classes=2)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True), AverageCheckpoints(last)])
    trainer.fit(task, DataLoader(data, batch_size=8), weights_only=True)
    return trainer


def test_the_averaged_checkpoint_is_the_mean_of_the_last_epochs_weights(tmp_path):
    _fit(tmp_path, epochs=4, last=3)
    epochs = sorted((tmp_path / "epochs").glob("epoch*.pt"))
    assert [p.name for p in epochs] == ["epoch0001.pt", "epoch0002.pt", "epoch0003.pt"]  # older ones deleted
    states = [torch.load(p, weights_only=True) for p in epochs]
    averaged = runs.load_checkpoint(tmp_path / "averaged.ckpt")
    last = runs.load_checkpoint(tmp_path / "last.ckpt")
    weight = "model.0.weight"
    expected = torch.stack([s[weight] for s in states]).mean(0)
    torch.testing.assert_close(averaged["state_dict"][weight], expected)
    assert not torch.allclose(averaged["state_dict"][weight], last["state_dict"][weight])  # SGD moved the weights
    # Integer buffers come from the last epoch, not a mean.
    assert averaged["state_dict"]["model.1.num_batches_tracked"] == states[-1]["model.1.num_batches_tracked"]
    assert averaged["averaged_epochs"] == [2, 3, 4]
    assert set(averaged) >= set(last) - {"callbacks"}  # a whole Lightning checkpoint: trainer.test can load it


def test_averaging_needs_two_epochs(tmp_path, caplog):
    with pytest.raises(ConfigError, match="average_last"):
        AverageCheckpoints(1)
    _fit(tmp_path, epochs=1, last=2)
    assert not (tmp_path / "averaged.ckpt").exists()


def test_ckpt_averaged_is_found_and_never_taken_for_the_best(tmp_path):
    ckpts = tmp_path / runs.CHECKPOINTS
    ckpts.mkdir()
    for name in ("best-epoch003.ckpt", "last.ckpt", "averaged.ckpt"):
        (ckpts / name).write_bytes(b"x")
    assert runs.find_checkpoint(tmp_path, "best").name == "best-epoch003.ckpt"
    assert runs.find_checkpoint(tmp_path, "averaged").name == "averaged.ckpt"


def test_inverse_sqrt_warms_up_linearly_then_decays_as_one_over_sqrt_step():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = inverse_sqrt(opt, total_steps=0, warmup_steps=4)["scheduler"]
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[15] == pytest.approx(math.sqrt(4 / 16))
    with pytest.raises(ValueError, match="warmup_steps"):
        inverse_sqrt(opt, total_steps=0, warmup_steps=0)


def test_metrics_json_keeps_a_signature_string_beside_the_numbers():
    out = runs.finite_metrics({"test/bleu": torch.tensor(41.5), "test/bleu_signature": "nrefs:1|case:mixed", "x": math.nan})
    assert out == {"test/bleu": 41.5, "test/bleu_signature": "nrefs:1|case:mixed", "x": None}
