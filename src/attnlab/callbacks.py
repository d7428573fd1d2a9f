"""Callbacks of attnlab's own; Lightning's (checkpointing, early stopping, ...) are configured in conf/callbacks."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from attnlab.errors import ConfigError

log = logging.getLogger("attnlab")


class EpochSeed(Callback):
    """Reseed every RNG from (seed, epoch, rank) when a training epoch starts.

    The model's randomness inside an epoch (dropout) then depends on nothing that happened before it, so a run
    resumed from an epoch-end checkpoint replays the interrupted epoch exactly. The data's randomness has its own
    seeds: the shuffling order per (seed, epoch) in the sampler, augmentation per (seed, batch indices) in
    data/loading.py, so it is the same in loader workers.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = (self.seed * 1_000_003 + trainer.current_epoch * 10_007 + trainer.global_rank) % 2**31
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds CUDA


class AverageCheckpoints(Callback):
    """Keep the model weights of the last `last` epochs and, when fitting ends, write their element-wise mean as
    `checkpoints/averaged.ckpt` (the last checkpoint with its model weights averaged; Vaswani et al., 2017).

    The per-epoch weights go to `checkpoints/epochs/` (model only, no optimizer state), so a resumed run averages
    the same epochs an uninterrupted one would. Integer tensors (counters, buffers of ids) are taken from the last."""

    AVERAGED = "averaged.ckpt"

    def __init__(self, last: int) -> None:
        if last < 2:
            raise ConfigError(f"average_last must be 0 (off) or >= 2 epochs, got {last}")
        self.last = last

    def _dir(self, trainer: L.Trainer) -> Path | None:
        ckpt = trainer.checkpoint_callback
        return Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._dir(trainer)
        if folder is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        epochs = folder / "epochs"
        epochs.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, epochs / f"epoch{trainer.current_epoch:04d}.pt")
        for old in sorted(epochs.glob("epoch*.pt"))[: -self.last]:
            old.unlink()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._dir(trainer)
        last = Path(trainer.checkpoint_callback.last_model_path or "") if folder else None
        if folder is None or not trainer.is_global_zero or not last or not last.is_file():
            return
        files = sorted((folder / "epochs").glob("epoch*.pt"))[-self.last :]
        if len(files) < 2:
            log.warning("average_last=%d: only %d epoch(s) of weights; no averaged checkpoint", self.last, len(files))
            return
        states = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        for key, value in states[-1].items():
            if value.is_floating_point():
                value = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            checkpoint["state_dict"][key] = value
        checkpoint["averaged_epochs"] = [int(f.stem.removeprefix("epoch")) + 1 for f in files]
        torch.save(checkpoint, folder / self.AVERAGED)
        log.info("averaged the weights of epochs %s into %s", checkpoint["averaged_epochs"], folder / self.AVERAGED)


def batch_size(batch: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = list(batch.values())
    return batch_size(batch[0])


def batch_tokens(batch: Any) -> int:
    """Token positions in a batch whose inputs are token ids (B, T, ...): their count, padding included; else 0."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()), None)
    if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2 and not inputs.is_floating_point():
        return inputs.numel()
    return 0


class Throughput(Callback):
    """Logs `train/samples_per_sec`, `train/tokens_per_sec` for token inputs (data loading included, validation
    excluded) and `train/epoch_time_s`."""

    def __init__(self) -> None:
        self._start = self._last = 0.0
        self._samples = self._tokens = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._samples = self._tokens = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += batch_size(batch)
        self._tokens += batch_tokens(batch)
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = self._last - self._start
        if self._samples and elapsed > 0:
            pl_module.log("train/samples_per_sec", self._samples / elapsed)
            pl_module.log("train/epoch_time_s", elapsed)
            if self._tokens:
                pl_module.log("train/tokens_per_sec", self._tokens / elapsed)


class ScheduleWithinMaxTime(Callback):
    """With `trainer.max_time` set, a step-based decay (the cosine schedule) is planned over the steps that fit in that
    time on this machine, not over `max_epochs`: a time-budgeted recipe then ends its decay when the time does, on a
    slow CPU and a fast one alike (planned over max_epochs, a run stopped by max_time ends with the learning rate still
    high). From `after_steps` steps on, at every `every_steps` steps and every epoch's end, the steps left are
    estimated from the time per step so far (validation and data loading included) and the plan follows it, never
    past the one max_epochs gives; a run that fits max_time keeps its plan. One log line at the first change and at
    every epoch's end."""

    def __init__(self, after_steps: int = 50, every_steps: int = 50, margin: float = 0.02) -> None:
        if after_steps < 1 or every_steps < 1 or not 0.0 <= margin < 0.5:
            raise ConfigError("schedule_within_max_time: after_steps and every_steps >= 1, margin in [0, 0.5)")
        self.after_steps, self.every_steps, self.margin = after_steps, every_steps, margin
        self._warned = self._replanned = False

    @staticmethod
    def steps_that_fit(step: int, elapsed: float, remaining: float, margin: float = 0.0) -> int:
        """The total steps a run at `step` after `elapsed` seconds reaches in `remaining` more (less margin of all)."""
        per_step = elapsed / max(step, 1)
        return step + int(max(remaining - margin * (elapsed + remaining), 0.0) / per_step) if per_step > 0 else step

    def _scheduler(self, trainer: L.Trainer) -> Any:
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        if scheduler is not None and hasattr(scheduler, "replan"):
            return scheduler
        if not self._warned:
            self._warned = True
            log.warning("schedule_within_max_time: the schedule (%s) cannot be re-planned; only scheduler=cosine can",
                        type(scheduler).__name__ if scheduler is not None else "none")
        return None

    def _timer(self, trainer: L.Trainer) -> Any:
        from lightning.pytorch.callbacks import Timer

        return next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None), None)

    def _replan(self, trainer: L.Trainer, *, say: bool) -> None:
        timer = self._timer(trainer)
        step = trainer.global_step
        if timer is None or step < self.after_steps:
            return
        scheduler = self._scheduler(trainer)
        if scheduler is None:
            return
        planned = int(trainer.estimated_stepping_batches)  # max_epochs' plan, the one the task gave the schedule
        fits = min(self.steps_that_fit(step, timer.time_elapsed("train"), timer.time_remaining("train"), self.margin),
                   planned)
        fits = int(trainer.strategy.broadcast(fits, src=0))  # one plan for every process (DDP: the same lr everywhere)
        if fits == scheduler.total_steps:
            return
        first = fits < planned and not self._replanned
        before = scheduler.total_steps
        scheduler.replan(fits)
        self._replanned = True
        if (first or say) and trainer.is_global_zero:
            log.info("schedule_within_max_time: the decay planned over %d steps now ends at step %d (%d done, the "
                     "rest of max_time at the pace so far)", before, scheduler.total_steps, step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.after_steps or (trainer.global_step > self.after_steps
                                                       and trainer.global_step % self.every_steps == 0):
            self._replan(trainer, say=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replan(trainer, say=True)


class EpochSummary(Callback):
    """One log line per epoch with the epoch's metrics, the time it took and the estimated time left: progress in
    log files, where no progress bar draws."""

    def __init__(self) -> None:
        self._start = self._epoch_start = 0.0
        self._epochs = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._epochs = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        self._epochs += 1
        shown = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith(("train/", "val/")) and not k.endswith("_step") and "/lr" not in k
        }
        text = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
        # The mean epoch so far (validation included) times the epochs left; early stopping may end sooner.
        left = max(trainer.max_epochs - trainer.current_epoch - 1, 0) if trainer.max_epochs and trainer.max_epochs > 0 else 0
        eta = (now - self._start) / self._epochs * left
        log.info("epoch %d/%d  %s  (%s, about %s left)", trainer.current_epoch + 1, trainer.max_epochs, text,
                 _duration(now - self._epoch_start), _duration(eta))


def _duration(seconds: float) -> str:
    """`75.4` -> `1m15s`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def validation_off(trainer: DictConfig) -> str | None:
    """Why the trainer never validates (`limit_val_batches=0`, or `check_val_every_n_epoch` past `max_epochs`), or None."""
    if trainer.get("limit_val_batches") == 0 and not trainer.get("fast_dev_run") and not trainer.get("overfit_batches"):
        return "trainer.limit_val_batches=0"
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if isinstance(every, int) and isinstance(epochs, int) and epochs > 0 and every > epochs:
        return f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}"
    return None


def without_validation(cfg: DictConfig) -> dict[str, DictConfig]:
    """The callback configs by name, with those that follow a validation metric stepped aside when validation is off:
    a checkpoint keeps the latest weights instead of the best, anything else that monitors is left out."""
    nodes = {key: node for key, node in (cfg.get("callbacks") or {}).items() if node}
    reason = validation_off(cfg.trainer)
    if reason is None:
        return nodes
    if OmegaConf.select(cfg, "scheduler.monitor") is not None:
        raise ConfigError(f"scheduler={cfg.scheduler._target_.rpartition('.')[2]} steps on {cfg.scheduler.monitor}, "
                          f"which validation is off to log ({reason}); pick another scheduler (e.g. scheduler=cosine)")
    kept = {}
    for key, node in nodes.items():
        if node.get("monitor") is None:
            kept[key] = node
        elif issubclass(hydra.utils.get_class(node._target_), ModelCheckpoint):
            kept[key] = OmegaConf.merge(node, {"monitor": None})
            log.warning("validation is off (%s): callbacks.%s keeps the latest checkpoint, not the best by %s",
                        reason, key, node.monitor)
        else:
            log.warning("validation is off (%s): callbacks.%s (monitors %s) steps aside", reason, key, node.monitor)
    return kept


class TrialPruning(Callback):
    """Report the monitored validation metric to this job's Optuna trial each validation epoch, and stop training
    when the study's pruner judges the trial hopeless (the sweeper then tells the trial PRUNED)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.metric in trainer.callback_metrics:
            value = float(trainer.callback_metrics[self.metric])
            self.trial.report(value, step=trainer.current_epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):  # every rank stops together
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True
            log.info("trial %d pruned after epoch %d: %s is behind the other trials", self.trial.number,
                     trainer.current_epoch, self.metric)


def trial_pruning(cfg: DictConfig) -> list[Callback]:
    """A TrialPruning for a sweep job whose search prunes (the sweeper passes `+optuna_trial=<number>`); the trial is
    read from the study's storage, so a job in another process (joblib, SLURM) finds it too."""
    from hydra.core.hydra_config import HydraConfig

    from attnlab.sweeps.search import build_pruner, load_trial

    if cfg.get("optuna_trial") is None or not HydraConfig.initialized():
        return []
    sweeper = HydraConfig.get().sweeper
    pruner = build_pruner(sweeper.get("pruner"))
    if type(pruner).__name__ == "NopPruner":
        return []
    trial = load_trial(str(sweeper.storage), str(sweeper.study_name), int(cfg.optuna_trial), pruner)
    return [TrialPruning(trial, str(cfg.monitor.metric))]
