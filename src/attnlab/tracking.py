"""Trackers (`tracker=` group) and the local metrics history every run keeps.

Every tracker builder takes its YAML arguments plus the same run context from code: `save_dir`, `name`,
`run_id`, `group` (the sweep, if any), `tags` and `previous_id` (the tracker's id in the run being resumed).
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


log = logging.getLogger(__name__)


class HistoryLogger(Logger):
    """Appends every logged value to `<run>/history.csv` as (step, metric, value): crash-safe and tracker-free."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: Any = None
        self._writer: Any = None

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config.yaml already holds them."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._file is None:
            new = not self.path.exists()
            self._file = self.path.open("a", newline="")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["step", "metric", "value"])
        for key, value in metrics.items():
            self._writer.writerow([step, key, float(value)])
        self._file.flush()  # a crash loses nothing that was logged

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _wandb_configured() -> bool:
    """A key or a server is configured: the only case where W&B may use the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_BASE_URL"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def wandb(
    *,
    project: str = "attnlab",
    entity: str | None = None,
    mode: Literal["auto", "offline", "online"] = "auto",
    log_model: bool = False,
    save_dir: str,
    name: str,
    run_id: str,
    group: str | None,
    tags: list[str],
    previous_id: str | None = None,
) -> WandbLogger:
    """W&B; `auto` goes online only when a key or server is configured (and WANDB_MODE does not say offline)."""
    online = mode == "online" or (
        mode == "auto" and _wandb_configured() and os.environ.get("WANDB_MODE", "") not in ("offline", "disabled")
    )
    return WandbLogger(
        project=project,
        entity=entity,
        name=name,
        id=previous_id or run_id,  # the same id on resume continues the same W&B run
        resume="allow",
        group=group,
        tags=list(tags),
        save_dir=save_dir,
        offline=not online,
        log_model=log_model,
    )


def csv_logger(*, save_dir: str, name: str, run_id: str, group: str | None, tags: list[str], previous_id: str | None = None) -> CSVLogger:
    """Lightning's wide-format CSV (`<run>/csv/metrics.csv`)."""
    return CSVLogger(save_dir=save_dir, name="csv", version="")


def tensorboard(
    *, save_dir: str, name: str, run_id: str, group: str | None, tags: list[str], previous_id: str | None = None
) -> TensorBoardLogger:
    """TensorBoard event files in `<run>/tensorboard` (`tensorboard --logdir results`)."""
    return TensorBoardLogger(save_dir=save_dir, name="tensorboard", version="", default_hp_metric=False)


def mlflow(
    *,
    experiment_name: str = "attnlab",
    tracking_uri: str,
    save_dir: str,
    name: str,
    run_id: str,
    group: str | None,
    tags: list[str],
    previous_id: str | None = None,
) -> MLFlowLogger:
    """MLflow with a local store (no server); a sweep becomes its own experiment."""
    if tracking_uri.startswith("file:"):
        # MLflow 3 keeps its plain-file store behind an opt-in; a local store with no server is what we want.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(
        experiment_name=group or experiment_name,
        run_name=name,
        tracking_uri=tracking_uri,
        tags={"attnlab.run_id": run_id, **({"attnlab.group": group} if group else {}), **{t: "" for t in tags}},
        run_id=previous_id,
    )


def finish_tracker_runs(*, ok: bool) -> None:
    """End this process's W&B run: otherwise the next job of a sweep run in the same process logs into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=0 if ok else 1)


def tracker_ids(trackers: Mapping[str, Logger]) -> dict[str, str]:
    """Ids to store in the manifest, so a resume continues the same tracker runs."""
    return {key: str(t.version) for key, t in trackers.items() if isinstance(t, (WandbLogger, MLFlowLogger))}


def log_figure(loggers: list[Logger], key: str, path: Path) -> None:
    """Send a saved PNG to the trackers that show images."""
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)])
            elif isinstance(logger, TensorBoardLogger):
                import numpy as np
                from PIL import Image

                logger.experiment.add_image(key, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=Path(key).parent.as_posix())
        except Exception as err:  # a tracker hiccup must never lose the run
            log.warning("could not send %s to %s: %s", key, type(logger).__name__, err)


def log_text(loggers: list[Logger], key: str, texts: list[str], *, step: int) -> None:
    """Send generated texts to the trackers that show text (W&B table, TensorBoard text, MLflow artifact)."""
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.log_text(key=key, columns=["step", "i", "text"], data=[[step, i, t] for i, t in enumerate(texts)])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(key, "\n\n".join(f"{i}. {t}" for i, t in enumerate(texts)), global_step=step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, "\n\n".join(texts), f"{key}/step_{step:07d}.txt")
        except Exception as err:  # a tracker hiccup must never lose the run
            log.warning("could not send %s to %s: %s", key, type(logger).__name__, err)
