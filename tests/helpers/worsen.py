"""A callback that makes a model worse at a given epoch (tests only), so that the best epoch is an earlier one."""

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


class NegateHeadAt(Callback):
    """At the start of epoch `epoch` (0-based), negate the output layer (the last nn.Linear): the model then ranks
    the classes upside down and validation accuracy falls far below the earlier epochs' (no randomness involved, so
    a resumed run replays it exactly)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            head = [m for m in pl_module.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                for p in head.parameters():
                    p.neg_()
