"""The LightningModule all tasks share: optimizer and schedule wiring, one `_step` for every stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

Stage = Literal["train", "val", "test"]


class Task(L.LightningModule):
    """A thin wrapper around a pure-torch model: losses and metrics live here, never in the model."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Where test-time figures go (set by training and validation); None writes none.
        self.figures_dir: Path | None = None
        # Values that are not scalars (a confusion matrix, ...), filled at test time for the caller to save.
        self.test_artifacts: dict[str, Any] = {}

    def forward(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        return self._forward(x)

    def _forward(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Run the model on a batch's inputs: a tensor (images), or a dict of tensors passed as keyword arguments
        (text: `input_ids`, `attention_mask`). Tasks call this, so they never depend on the kind of input."""
        return self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)

    def _step(self, batch: Any, stage: Stage) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(param_groups(self.model))
        if self.scheduler_factory is None:
            return optimizer
        schedule = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def figure_path(self, name: str) -> Path | None:
        if self.figures_dir is None:
            return None
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / name

    def publish_figure(self, key: str, path: Path) -> None:
        """Send a saved figure to the trackers."""
        from attnlab.tracking import log_figure

        if self.trainer.is_global_zero:
            log_figure(list(self.loggers), key, path)


# Modules whose 2-D (and up) weights multiply activations: Muon's "hidden matrices".
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.MultiheadAttention)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Three named groups: "decay" (weight matrices inside the network), "embedding" (embedding and position
    tables, the output layer: weight-decayed like matrices) and "no_decay" (biases and norm gains, which decaying
    only hurts, as in nanoGPT). AdamW and SGD treat the first two alike; Muon (tasks/muon.py) orthogonalises only
    "decay". The output layer is the last nn.Linear the model registers; a tied head is the embedding itself."""
    matmul = {id(p) for m in model.modules() if isinstance(m, _MATMUL_MODULES) for p in m.parameters(recurse=False)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        matmul.discard(id(linears[-1].weight))
    embedding_tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) tensors appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) in matmul and id(p) not in embedding_tables],
         "name": "decay"},
        {"params": [p for p in params if p.dim() >= 2 and (id(p) not in matmul or id(p) in embedding_tables)],
         "name": "embedding"},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def first_n(tensors: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
    """Detached CPU copies of the first n rows, for figures."""
    return tuple(t[:n].detach().float().cpu() for t in tensors)
