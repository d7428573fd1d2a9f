"""Learning-rate schedules: every conf/scheduler choice carries a run on past its planned length (a checkpoint
continued with more epochs) and then follows the schedule planned over the new length, as a run of that length would."""

import functools
import logging
from pathlib import Path

import hydra.utils
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnlab.tasks.classification import ClassificationTask

SCHEDULERS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "scheduler").glob("*.yaml"))
STEPS_PER_EPOCH = 10


def _factory(name: str):
    """The partial that `scheduler=<name>` builds (None for `none`), monitoring the classification task's val/loss."""
    node = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "scheduler" / f"{name}.yaml")
    if not node:
        return None
    cfg = OmegaConf.create({"monitor": {"metric": "val/loss", "mode": "min"}, "scheduler": node})
    return hydra.utils.instantiate(cfg.scheduler)


class LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(name: str, max_epochs: int, ckpt_dir: Path | None = None, ckpt_path: Path | None = None) -> list[float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * STEPS_PER_EPOCH, 2, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    task = ClassificationTask(model=nn.Linear(2, 2), optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
                              scheduler=_factory(name), num_classes=2)
    lrs = LearningRates()
    callbacks = [lrs] + ([ModelCheckpoint(dirpath=ckpt_dir, save_last=True)] if ckpt_dir else [])
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                        enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=40), ckpt_path=ckpt_path, weights_only=True)
    assert trainer.global_step == max_epochs * STEPS_PER_EPOCH
    return lrs.lrs


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_run_continued_past_its_planned_length_follows_the_longer_plan(tmp_path, name, caplog):
    assert set(SCHEDULERS) >= {"none", "step", "plateau", "cosine", "onecycle"}
    straight = _fit(name, 3)  # as planned from the start
    _fit(name, 1, ckpt_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        continued = _fit(name, 3, ckpt_path=tmp_path / "last.ckpt")
    assert continued == pytest.approx(straight[STEPS_PER_EPOCH:], rel=1e-6)
    replanned = [r.getMessage() for r in caplog.records if "planned over" in r.getMessage()]
    if name in ("cosine", "onecycle"):  # step-based: re-planned over 30 steps, said once
        assert len(replanned) == 1 and "planned over 10 steps" in replanned[0] and "30" in replanned[0], replanned
    else:
        assert not replanned
