"""Classification: cross-entropy with optional label smoothing and class weights; accuracy, macro F1, per-class
accuracy, precision, recall and F1, confusion matrix."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from attnlab.tasks.base import Stage, Task


class ClassificationTask(Task):
    """Any model that maps an input batch to logits (B, num_classes)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        num_classes: int,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        class_weights: bool = False,
        class_counts: list[int] | None = None,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.label_smoothing = label_smoothing
        # Inverse-frequency weights ("balanced": n / (k * count)) from the training split's class counts, a data fact.
        weights = None
        if class_weights:
            if not class_counts:
                raise ValueError("class_weights=true needs the data's class counts; this data module states none")
            counts = torch.tensor(class_counts, dtype=torch.float).clamp(min=1)
            weights = counts.sum() / (len(counts) * counts)
        self.register_buffer("class_weight", weights, persistent=False)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        logits = self._forward(x)  # (B, C)
        # Smoothing is a training regulariser; evaluation reports the plain cross-entropy.
        loss = F.cross_entropy(logits, y, weight=self.class_weight if stage == "train" else None,
                               label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        self.log_loss(stage, loss, len(y))
        self.record(stage, logits.argmax(dim=-1), y)
        return loss

    def record(self, stage: Stage, preds: Tensor, y: Tensor) -> None:
        """Update and log the stage's accuracy (and, in evaluation, macro-F1, per-class accuracy, confusion)."""
        acc = getattr(self, f"{stage}_acc")
        acc(preds, y)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train":
            f1 = getattr(self, f"{stage}_f1")
            f1(preds, y)
            self.log(f"{stage}/f1", f1, on_step=False, on_epoch=True)
        if stage == "test":
            self.test_class_acc.update(preds, y)
            self.test_confusion.update(preds, y)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check never counts towards the best; a resume restores it (Task.on_load_checkpoint)
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=False)

    def on_test_epoch_start(self) -> None:
        self.test_class_acc.reset()
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        per_class = self.test_class_acc.compute()
        for name, value in zip(self.class_names, per_class):
            self.log(f"test/acc_class/{name}", value)
        confusion = self.test_confusion.compute().cpu()
        for key, value in per_class_report(confusion, self.class_names).items():
            self.log(f"test/{key}", value)
        self.test_artifacts = {"confusion_matrix": confusion.tolist(), "class_names": self.class_names}
        if not self.trainer.is_global_zero:
            return
        from attnlab import plots

        for key, draw in (("confusion_matrix", plots.confusion_matrix), ("class_distribution", plots.class_distribution)):
            path = self.figure_path(f"{key}.png")
            if path is not None:
                draw(confusion, self.class_names, path)
                self.publish_figure(f"test/{key}", path)
        self._input_figure()

    def _input_figure(self) -> None:
        """plots/inputs.png when the data module shows its inputs' stages (MNIST with data.denoise_with: noisy,
        denoised, clean): one row of digits per stage, the model's prediction under each."""
        examples = getattr(getattr(self.trainer, "datamodule", None), "example_inputs", None)
        found = examples() if callable(examples) else None
        path = self.figure_path("inputs.png") if found is not None else None
        if path is None:
            return
        from attnlab import plots

        stages, labels = found
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            preds = {name: self._forward(x.to(self.device, dtype)).argmax(-1).cpu() for name, x in stages.items()}
        captions = {name: [f"{self.class_names[p]}" + ("" if p == y else " ✗") for p, y in zip(preds[name].tolist(),
                    labels.tolist())] for name in stages}
        plots.image_grid({name: x.float().numpy() for name, x in stages.items()}, path, captions=captions,
                         title=f"labels: {' '.join(self.class_names[y] for y in labels.tolist())}")
        self.publish_figure("test/inputs", path)


def per_class_report(confusion: Tensor, class_names: list[str]) -> dict[str, float]:
    """Precision, recall and F1 of each class from a confusion matrix (rows: true, columns: predicted), named
    `precision_class/<name>`, `recall_class/<name>`, `f1_class/<name>`; 0 where a class is never predicted or seen."""
    cm = confusion.double()
    hits = cm.diagonal()
    precision = hits / cm.sum(0).clamp(min=1)
    recall = hits / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    report = {}
    for kind, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        report.update({f"{kind}_class/{name}": float(v) for name, v in zip(class_names, values)})
    return report
