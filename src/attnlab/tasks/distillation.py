"""Knowledge distillation (Hinton et al., 2015; DistilBERT, Sanh et al., 2019): a student classifier learns from a
trained teacher run's soft targets as well as from the labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross_entropy(student, y)

The T^2 keeps the soft term's gradients on the scale of the hard one's as T grows. The teacher (`teacher=<run dir>`)
is loaded with `load_model` when fitting starts, frozen, in eval mode, and run without gradients; it is not part of
the student's checkpoints, so validating or serving a distilled run needs no teacher. DistilBERT's student has half
its teacher's layers, initialised from every other one: `init_from=<teacher run> init_from_layers=every_other` (see
conf/experiment/imdb_distilbert_kd.yaml), which also gives the student the teacher's tokenizer. Evaluation is the
classification task's, unchanged; `val/kl` and `test/kl` say how far the student is from its teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from attnlab.errors import ConfigError
from attnlab.tasks.base import Stage
from attnlab.tasks.classification import ClassificationTask


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over the batch (0 when they are equal)."""
    t = temperature
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * t * t


class DistillationTask(ClassificationTask):
    """ClassificationTask whose training loss mixes the teacher's softened distribution with the labels."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., dict[str, Any]] | None = None,
        num_classes: int,
        class_names: list[str] | None = None,
        class_counts: list[int] | None = None,
        teacher: str | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, num_classes=num_classes,
                         class_names=class_names, label_smoothing=label_smoothing, class_counts=class_counts)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the weight of the teacher's soft targets) must be in [0, 1], got {alpha}")
        self.teacher_dir = teacher
        self.temperature, self.alpha = temperature, alpha
        self._teacher: list[nn.Module] = []  # in a list: not a submodule, so never in the student's state dict

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def set_teacher(self, teacher: nn.Module) -> None:
        """Use a model as the teacher: frozen, in eval mode, on this task's device."""
        teacher.eval().requires_grad_(False)
        self._teacher[:] = [teacher.to(self.device)]

    def setup(self, stage: str) -> None:
        """Load the teacher run when fitting (before a resumed checkpoint is restored into the student)."""
        if stage != "fit" or self.teacher is not None:
            return
        if not self.teacher_dir:
            raise ConfigError("task=distillation needs its teacher: task.teacher=<run dir of a trained classifier>")
        from attnlab.runs import load_model

        loaded = load_model(Path(self.teacher_dir))
        classes = loaded.facts.get("num_classes")
        if classes != self.num_classes:
            raise ConfigError(f"task.teacher={self.teacher_dir}: a teacher with {classes} classes, this data has "
                              f"{self.num_classes}")
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        theirs, ours = loaded.tokenizer, getattr(datamodule, "tokenizer", None)
        if theirs is not None and ours is not None and theirs.fingerprint() != ours.fingerprint():
            raise ConfigError(f"task.teacher={self.teacher_dir} reads its text through another tokenizer than this "
                              "run's data: start the student from the teacher (init_from=<teacher run>), which carries "
                              "its tokenizer")
        self.set_teacher(loaded.model)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self._teacher[0] = self.teacher.to(self.device)

    def _teacher_logits(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        teacher = self.teacher
        assert teacher is not None
        with torch.no_grad():
            return teacher(**x) if isinstance(x, Mapping) else teacher(x)

    def _step(self, batch: tuple[Any, Tensor], stage: Stage) -> Tensor:
        if self.teacher is None:  # validation or test of a saved run: the student alone, as any classifier
            return super()._step(batch, stage)
        x, y = batch
        logits = self._forward(x)  # (B, C)
        kl = distillation_kl(logits, self._teacher_logits(x), self.temperature)
        hard = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        self.record(stage, logits.argmax(dim=-1), y)
        if stage == "train":
            loss = self.alpha * kl + (1 - self.alpha) * hard
            self.log_loss(stage, loss, len(y))
            self.log("train/kl", kl, on_step=False, on_epoch=True, batch_size=len(y))
            return loss
        # Evaluation reports the plain cross-entropy (comparable with any classifier's) and the KL beside it.
        self.log_loss(stage, hard, len(y))
        self.log(f"{stage}/kl", kl, on_step=False, on_epoch=True, batch_size=len(y))
        return hard
