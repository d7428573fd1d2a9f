"""Another run as a preprocessing step: `data.denoise_with=<run dir of a reconstruction run>` passes an image data
module's (noisy) inputs through that run's autoencoder, frozen, in eval mode and without gradients, on the device the
batch is on, before the model sees them: at training, validation, test, validate, serving alike.

The run is checked when the data module is built (it exists, is a reconstruction run, reads images of this size),
so a wrong directory fails before any training; its weights are loaded with `load_model` on first use. The link is
recorded in the new run's manifest (`parents`) and its config (the resolved path).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.data.images import ImageNormalization
from attnlab.errors import ConfigError, RunError

log = logging.getLogger("attnlab")

RECONSTRUCTION = "attnlab.tasks.reconstruction.ReconstructionTask"


@dataclass
class Denoiser:
    """A reconstruction run's model as a frozen batch transform: float images (B, C, H, W) in [0, 1] -> same shape."""

    run_dir: Path
    run_id: str | None
    key: str = "data.denoise_with"  # the setting that named it, for messages and the manifest
    _model: nn.Module | None = field(default=None, repr=False)
    _device: torch.device | None = field(default=None, repr=False)

    @classmethod
    def check(cls, path: str | Path, *, channels: int, image_size: int, key: str = "data.denoise_with") -> Denoiser:
        """The run at `path`, checked to be a reconstruction run of (channels, image_size) images; reads no weights."""
        from attnlab import build, runs

        try:
            run_dir = runs.require_run(path)
            cfg = runs.load_config(run_dir)
            runs.find_checkpoint(run_dir, "best")
        except RunError as err:
            raise ConfigError(f"{key}={path}: {err}") from None
        target = str(cfg.get("task", {}).get("_target_", ""))
        if target != RECONSTRUCTION:
            raise ConfigError(f"{key}={path} is a run of {target.rsplit('.', 1)[-1] or 'no task'}, not a reconstruction "
                              "run: give the run directory of an autoencoder (experiment=mnist_ae)")
        try:
            facts = build.make_datamodule(cfg).facts()  # constructs the data module only: reads no data
        except Exception as err:  # its data module cannot even be built here: say which run
            raise ConfigError(f"{key}={path}: cannot rebuild that run's data settings: {err}") from None
        theirs = (facts.get("in_channels"), facts.get("image_size"))
        if theirs != (channels, image_size):
            raise ConfigError(f"{key}={path} reads images of {theirs[0]} channel(s) at {theirs[1]}x{theirs[1]}; this data "
                              f"has {channels} channel(s) at {image_size}x{image_size}: give an autoencoder trained on "
                              "images of this size")
        manifest = runs.read_json(run_dir / runs.MANIFEST)
        return cls(run_dir=run_dir, run_id=manifest.get("run_id"), key=key)

    def lineage(self) -> dict[str, Any]:
        """The manifest's record of this link."""
        return {"role": self.key, "run_id": self.run_id, "path": str(self.run_dir)}

    def model(self, device: torch.device) -> nn.Module:
        """The autoencoder on `device`: loaded on first use (best checkpoint, weights_only), frozen, in eval mode."""
        if self._model is None:
            from attnlab import runs

            loaded = runs.load_model(self.run_dir)
            self._model = loaded.model.requires_grad_(False).eval()
            log.info("%s: inputs pass through the autoencoder of %s (%s)", self.key, self.run_dir, loaded.checkpoint.name)
        if self._device != device:
            self._model.to(device)
            self._device = device
        return self._model

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        # Eval mode since loading: it is no submodule of the task, so Lightning's train() never reaches it.
        return self.model(x.device)(x.float()).to(x.dtype)


@dataclass(frozen=True)
class DenoisedImages:
    """A denoised run's preprocessing: uint8 images -> [0, 1] floats -> the autoencoder's output (what the model read)."""

    normalize: ImageNormalization
    denoiser: Denoiser

    @property
    def channels(self) -> int:
        return self.normalize.channels

    @property
    def image_size(self) -> int:
        return self.normalize.image_size

    def __call__(self, images: Tensor) -> Tensor:
        return self.denoiser(self.normalize(images))
