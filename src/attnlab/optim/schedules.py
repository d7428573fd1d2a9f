"""Learning-rate schedules (`scheduler=` group).

Each builder takes the optimizer and `total_steps` (known only once the trainer has the data) from the task,
the rest from YAML, and returns a Lightning lr-scheduler dict. The peak learning rate is the optimizer's
`lr`: stated once, in the optimizer config.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR

Schedule = dict[str, Any]


def cosine(optimizer: Optimizer, *, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0) -> Schedule:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to `min_lr_ratio` x lr."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step", "name": "train/lr"}


def onecycle(
    optimizer: Optimizer, *, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4
) -> Schedule:
    """One-cycle policy peaking at the optimizer's lr."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    scheduler = OneCycleLR(
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
