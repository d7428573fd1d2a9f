"""Regression: MSE or Huber loss on the scaled target; MSE, RMSE, MAE and R² in the target's own units.

The data module scales the target (optionally log, then standardise) so networks train well on any unit; the task
undoes it (`target_mean`, `target_std`, `log_target` are facts of the data) before every metric and figure.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, MinMetric, R2Score

from attnlab.tasks.base import Stage, Task

Loss = Literal["mse", "huber"]


def regression_metrics(round_accuracy: bool = False) -> MetricCollection:
    """The metrics of a regression split, shared by the networks' task and the classical estimators' runs."""
    metrics: dict[str, Any] = {"mse": MeanSquaredError(), "rmse": MeanSquaredError(squared=False),
                               "mae": MeanAbsoluteError(), "r2": R2Score()}
    if round_accuracy:  # an ordinal target (wine quality) read as classes: the prediction rounded is right
        metrics["acc_rounded"] = MeanMetric()
    return MetricCollection(metrics)


def update_metrics(metrics: MetricCollection, pred: Tensor, target: Tensor) -> None:
    for name, metric in metrics.items():
        if name == "acc_rounded":
            metric.update((pred.round() == target.round()).float())
        else:
            metric.update(pred, target)


class RegressionTask(Task):
    """Any model that maps a batch to (B, 1) or (B,) values of the scaled target."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        loss: Loss = "mse",
        huber_delta: float = 1.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        log_target: bool = False,
        round_accuracy: bool = False,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if loss not in ("mse", "huber"):
            raise ValueError(f"unknown loss {loss!r}; choose one of: mse, huber")
        self.loss, self.huber_delta = loss, huber_delta
        self.target_mean, self.target_std, self.log_target = target_mean, target_std, log_target
        self.val_metrics = regression_metrics(round_accuracy)
        self.test_metrics = regression_metrics(round_accuracy)
        self.val_rmse_best = MinMetric()
        self.test_outputs: list[tuple[Tensor, Tensor]] = []

    def decode(self, scaled: Tensor) -> Tensor:
        """Scaled target -> the target's own units."""
        value = scaled.double() * self.target_std + self.target_mean
        return value.expm1() if self.log_target else value

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        pred = self._forward(x).reshape(len(y))  # (B,)
        if self.loss == "mse":
            loss = F.mse_loss(pred, y)
        else:
            loss = F.huber_loss(pred, y, delta=self.huber_delta)
        self.log_loss(stage, loss, len(y))
        if stage != "train":
            pred_units, y_units = self.decode(pred.detach()), self.decode(y)
            metrics = getattr(self, f"{stage}_metrics")
            update_metrics(metrics, pred_units, y_units)
            for name, metric in metrics.items():
                self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "rmse")
            if stage == "test":
                self.test_outputs.append((y_units.cpu(), pred_units.cpu()))
        return loss

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_rmse_best(self.val_metrics["rmse"].compute())
        self.log("val/rmse_best", self.val_rmse_best.compute())

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def on_test_epoch_end(self) -> None:
        if not self.test_outputs or not self.trainer.is_global_zero:
            return
        actual = torch.cat([a for a, _ in self.test_outputs]).numpy()
        predicted = torch.cat([p for _, p in self.test_outputs]).numpy()
        regression_figures(actual, predicted, self.figure_path, self.publish_figure)


def regression_figures(actual: Any, predicted: Any, figure_path: Callable[[str], Any], publish: Callable[..., None] | None = None) -> None:
    """predicted_vs_actual.png and residuals.png of a test split (networks and estimators alike)."""
    from attnlab import plots

    for key, draw in (("predicted_vs_actual", plots.predicted_vs_actual), ("residuals", plots.residuals)):
        path = figure_path(f"{key}.png")
        if path is not None:
            draw(actual, predicted, path)
            if publish is not None:
                publish(f"test/{key}", path)
