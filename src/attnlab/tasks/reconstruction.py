"""Reconstruction (autoencoders, denoising): MSE loss; MSE and PSNR metrics; an image grid at test time."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio

from attnlab.tasks.base import Stage, Task, first_n


class ReconstructionTask(Task):
    """Model maps an input batch (possibly noisy) to an estimate of the clean target, pixels in [0, 1]."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        num_images: int = 8,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        self.num_images = num_images
        self.train_mse = MeanSquaredError()
        self.val_mse = MeanSquaredError()
        self.test_mse = MeanSquaredError()
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self._grid: tuple[Tensor, ...] | None = None

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, target = batch
        recon = self._forward(x)  # same shape as target
        loss = F.mse_loss(recon, target)
        self.log_loss(stage, loss, len(x))
        mse = getattr(self, f"{stage}_mse")
        mse(recon.detach(), target)
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True)
        if stage != "train":
            psnr = getattr(self, f"{stage}_psnr")
            psnr(recon.detach().clamp(0, 1), target)
            self.log(f"{stage}/psnr", psnr, on_step=False, on_epoch=True)
        if stage == "test" and self._grid is None:
            self._grid = first_n((x, recon, target), self.num_images)
        return loss

    def on_test_epoch_start(self) -> None:
        self._grid = None

    def on_test_epoch_end(self) -> None:
        if self._grid is None or not self.trainer.is_global_zero:
            return
        path = self.figure_path("reconstructions.png")
        if path is None:
            return
        from attnlab import plots

        inputs, recon, target = self._grid
        plots.image_grid({"input": inputs, "reconstruction": recon, "target": target}, path)
        self.publish_figure("test/reconstructions", path)
