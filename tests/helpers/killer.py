"""A callback that SIGKILLs its own process at a given global step: a crash nothing can catch (tests only).

It fires once: the marker file it leaves stops it in the resumed run, which replays the same config.
"""

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SigkillAtStep(Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class SigkillInJob(Callback):
    """SIGKILLs the process running a sweep (the whole sweep, with Hydra's basic launcher) in job `job` at `step`, once."""

    def __init__(self, job: int, marker: str, step: int = 0) -> None:
        self.job = job
        self.marker = Path(marker)
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().job.num == self.job and trainer.global_step >= self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class SigintAtStep(Callback):
    """Sends itself SIGINT (Ctrl-C) at a given global step: Lightning shuts down gracefully and exits."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            # As a terminal's Ctrl-C: a process started in the background by a non-interactive shell inherits
            # SIGINT ignored, so put Python's handler back first.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)
