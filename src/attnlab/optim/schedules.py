"""Learning-rate schedules (`scheduler=` group).

Each builder takes the optimizer and `total_steps` (known only once the trainer has the data) from the task,
the rest from YAML, and returns a Lightning lr-scheduler dict. The peak learning rate is the optimizer's
`lr`: stated once, in the optimizer config.

Continuing a run past its planned length (`ckpt_path=<run>/checkpoints/last.ckpt trainer.max_epochs=<more>`) works
with every schedule. Epoch-based ones (`step`, `plateau`), `inverse_sqrt` and `none` simply go on. Step-based ones (`cosine`,
`onecycle`) are planned over the run's `total_steps`: a checkpoint restores the step reached, not the old plan, so the
run continues on the schedule planned over the new length, from that step, as a run of that length would have been
at that step; the learning rate jumps there (a warning says from where to where). To start a fresh schedule on
trained weights instead, start a new run from them.

A run stopped by `trainer.max_time` before max_epochs ends its cosine decay early unless `schedule_within_max_time=true`
(attnlab.callbacks.ScheduleWithinMaxTime) re-plans it over the steps that fit in the time (`_Cosine.replan`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau, StepLR

Schedule = dict[str, Any]
log = logging.getLogger("attnlab")


class _KeepsThisRunsPlan(LRScheduler):
    """Mixin for a step-based scheduler: loading a checkpoint restores the step, and keeps the plan (`_plan`) that
    this run's `total_steps` gave (a checkpoint's own plan would end the schedule early)."""

    _plan: tuple[str, ...] = ("total_steps",)
    total_steps: int

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = {key: self.__dict__[key] for key in self._plan}
        saved_total = state_dict.get("total_steps", self.total_steps)  # absent from older cosine checkpoints
        super().load_state_dict(state_dict)
        self.__dict__.update(plan)
        if saved_total == self.total_steps:
            return  # a resume: nothing changes
        # The optimizer came back with the old plan's lr for this step: take the new plan's.
        before = self.optimizer.param_groups[0]["lr"]
        self.last_epoch -= 1
        self.step()
        log.warning(
            "learning-rate schedule planned over %d steps, continued over %d: from step %d it follows the new plan "
            "(lr %.3g -> %.3g)", saved_total, self.total_steps, self.last_epoch, before, self.get_last_lr()[0],
        )


class _Cosine(_KeepsThisRunsPlan, LambdaLR):
    def __init__(self, optimizer: Optimizer, factor: Callable[[int], float], *, total_steps: int) -> None:
        self.total_steps = total_steps  # saved in checkpoints (the lambda is not), to tell a re-planned run
        super().__init__(optimizer, factor)

    def replan(self, total_steps: int) -> None:
        """Plan over `total_steps` from the step reached (warm-up and decay as a run of that length has them; the lr
        moves to that plan's at the next step): attnlab.callbacks.ScheduleWithinMaxTime sets it to the steps that fit in
        trainer.max_time."""
        self.total_steps = max(int(total_steps), self.last_epoch + 1)


class _OneCycle(_KeepsThisRunsPlan, OneCycleLR):
    _plan = ("total_steps", "_schedule_phases")  # torch stores the phase boundaries in steps as well


def cosine(optimizer: Optimizer, *, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0) -> Schedule:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to `min_lr_ratio` x lr (step-based)."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    planned: list[_Cosine] = []  # the scheduler, once made: its total_steps may be re-planned (`_Cosine.replan`)

    def factor(step: int) -> float:
        total = planned[0].total_steps if planned else total_steps
        warmup = int(warmup_fraction * total)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = _Cosine(optimizer, factor, total_steps=total_steps)
    planned.append(scheduler)
    return {"scheduler": scheduler, "interval": "step", "name": "train/lr"}


def onecycle(
    optimizer: Optimizer, *, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4
) -> Schedule:
    """One-cycle policy peaking at the optimizer's lr (step-based)."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    scheduler = _OneCycle(
        optimizer,
        max_lr=max_lr,
        # torch divides by zero when a phase is under two steps; only tiny debug runs are that short.
        total_steps=max(total_steps, math.ceil(2 / min(pct_start, 1 - pct_start)) + 1),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=False,  # AdamW's betas stay as configured
    )
    return {"scheduler": scheduler, "interval": "step", "name": "train/lr"}


def inverse_sqrt(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 4000) -> Schedule:
    """Linear warm-up over `warmup_steps` to the optimizer's lr, then decay as 1/sqrt(step) (Vaswani et al., 2017,
    with the peak stated as lr). Not planned over the run's length, so a continued run simply goes on."""
    del total_steps  # the schedule does not depend on it
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")

    def factor(step: int) -> float:
        step += 1
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step", "name": "train/lr"}


def step(optimizer: Optimizer, *, total_steps: int, step_size: int = 10, gamma: float = 0.1) -> Schedule:
    """Multiply the lr by `gamma` every `step_size` epochs."""
    del total_steps  # epoch-based
    return {"scheduler": StepLR(optimizer, step_size=step_size, gamma=gamma), "interval": "epoch", "name": "train/lr"}


def plateau(
    optimizer: Optimizer,
    *,
    total_steps: int,
    monitor: str,
    mode: Literal["min", "max"],
    factor: float = 0.1,
    patience: int = 3,
) -> Schedule:
    """Reduce the lr when the monitored validation metric stops improving."""
    del total_steps
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor, "name": "train/lr"}
