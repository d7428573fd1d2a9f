"""A callback that saves the model's weights as training starts, before any step (tests only): what `init_from` loaded."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class InitialWeights(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.path.exists():  # the first start only: a resumed run starts from its checkpoint
            torch.save({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}, self.path)
