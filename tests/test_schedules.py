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


def test_a_replanned_cosine_decays_over_the_new_length_from_the_step_it_reached():
    from attnlab.optim.schedules import cosine

    def lrs(replan_at: int | None, total: int = 100, steps: int = 40) -> list[float]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = cosine(opt, total_steps=total, warmup_fraction=0.1)["scheduler"]
        out = []
        for step in range(steps):
            if step == replan_at:
                scheduler.replan(steps)
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return out + [opt.param_groups[0]["lr"]]

    planned, shortened, short_from_start = lrs(None), lrs(20), lrs(None, total=40)
    assert shortened[:21] == planned[:21]  # the steps before the change are as planned (the change acts at the next)
    assert shortened[-1] == pytest.approx(0.0, abs=1e-9) and planned[-1] > 0.6  # it ends where the time does
    assert shortened[21:] == pytest.approx(short_from_start[21:])  # from then on: as a plan over 40 steps from 0


@pytest.mark.parametrize(("step", "elapsed", "remaining", "margin", "expected"), [
    (100, 50.0, 50.0, 0.0, 200), (100, 50.0, 25.0, 0.0, 150), (100, 50.0, 50.0, 0.1, 180), (100, 50.0, -1.0, 0.0, 100),
])
def test_the_steps_that_fit_follow_the_pace_so_far(step, elapsed, remaining, margin, expected):
    from attnlab.callbacks import ScheduleWithinMaxTime

    assert ScheduleWithinMaxTime.steps_that_fit(step, elapsed, remaining, margin) == expected


class _Slow(ClassificationTask):
    def training_step(self, batch, batch_idx):
        import time

        time.sleep(0.01)  # a pace the callback measures: about 100 steps a second at most
        return super().training_step(batch, batch_idx)


def test_a_run_stopped_by_max_time_ends_its_cosine_decay_with_schedule_within_max_time():
    from attnlab.callbacks import ScheduleWithinMaxTime

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g)  # 100 steps an epoch: validation is a small part of the time
    data = TensorDataset(x, (x[:, 0] > 0).long())
    peak_and_last = {}
    for within in (False, True):
        task = _Slow(model=nn.Linear(2, 2), optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
                     scheduler=_factory("cosine"), num_classes=2)
        lrs = LearningRates()
        callbacks = [lrs] + ([ScheduleWithinMaxTime(after_steps=10, every_steps=10)] if within else [])
        trainer = L.Trainer(max_epochs=10_000, max_time="00:00:00:04", accelerator="cpu", logger=False,
                            callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=400))
        assert 20 < trainer.global_step < 10_000 * 100  # max_time stopped it
        peak_and_last[within] = (max(lrs.lrs) / 0.01, lrs.lrs[-1] / 0.01)  # of the configured peak, 0.01
    assert peak_and_last[False][0] < 0.2  # planned over 10,000 epochs, 5% warm-up: the time ran out in the warm-up
    assert peak_and_last[True][0] > 0.5 and peak_and_last[True][1] < 0.2  # planned over what fits: up, then down


def test_schedule_within_max_time_is_added_by_the_train_config_and_needs_max_time():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from attnlab.callbacks import ScheduleWithinMaxTime
    from attnlab.errors import ConfigError
    from attnlab.train import _build_callbacks

    conf = Path(__file__).resolve().parents[1] / "conf"

    def built(*overrides: str) -> list:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=["paths.output_dir=/tmp/attnlab-compose", *overrides],
                          return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            return _build_callbacks(cfg)

    assert not any(isinstance(c, ScheduleWithinMaxTime) for c in built())  # off by default
    assert any(isinstance(c, ScheduleWithinMaxTime)
               for c in built("schedule_within_max_time=true", 'trainer.max_time="00:01:00:00"'))
    with pytest.raises(ConfigError, match="max_time"):
        built("schedule_within_max_time=true")
