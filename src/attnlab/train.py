"""Training: compose data -> model -> task -> trainer from the config, fit, test, and record the run."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from attnlab import build, runs
from attnlab.callbacks import EpochSeed
from attnlab.cli import is_multirun, repo_root
from attnlab.errors import ConfigError, RunError
from attnlab.tracking import HistoryLogger, tracker_ids

log = logging.getLogger("attnlab")

# In-memory datasets need no loader workers; Lightning's hint says otherwise.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _is_rank_zero() -> bool:
    """True in the launching process; DDP children started by Lightning carry LOCAL_RANK/NODE_RANK."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _resume_target(cfg: DictConfig) -> tuple[DictConfig, Path, Path]:
    """(saved config, run dir, last checkpoint) of the run named by `resume=`."""
    run_dir = runs.require_run(cfg.resume)
    ckpt = runs.find_checkpoint(run_dir, "last")
    ignored = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    if ignored:
        log.warning("resume continues %s with its saved config; ignoring overrides: %s", run_dir, " ".join(ignored))
    return runs.load_config(run_dir), run_dir, ckpt


def _start_checkpoint(cfg: DictConfig) -> Path | None:
    """`ckpt_path=`: checked to exist and to load safely before Lightning touches it."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise RunError(f"ckpt_path={cfg.ckpt_path}: no such file")
    runs.load_checkpoint(path)
    return path


def _run_identity(run_dir: Path, cfg: DictConfig) -> tuple[str, str | None, str]:
    """(run id, sweep group, display name). Jobs of a sweep share the sweep's name as their group."""
    if not is_multirun():
        return run_dir.name, None, str(cfg.name)
    hc = HydraConfig.get()
    overrides = hc.job.override_dirname
    return f"{run_dir.parent.name}-{run_dir.name}", run_dir.parent.name, f"{cfg.name}[{overrides}]" if overrides else str(cfg.name)


def _build_trackers(cfg: DictConfig, run_dir: Path, run_id: str, group: str | None, name: str, previous: dict[str, str]) -> dict[str, Any]:
    trackers = {}
    for key, node in (cfg.get("tracker") or {}).items():
        trackers[key] = build.instantiate(
            node,
            f"tracker.{key}",
            save_dir=str(run_dir),
            name=name,
            run_id=run_id,
            group=group,
            tags=list(cfg.get("tags") or []),
            previous_id=previous.get(key),
        )
    return trackers


def _build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The configured callbacks, less those the trainer switches off (`trainer.enable_progress_bar=false`)."""
    switched_off = tuple(
        kind
        for kind, flag in ((ProgressBar, "enable_progress_bar"), (ModelSummary, "enable_model_summary"))
        if cfg.trainer.get(flag) is False
    )
    callbacks = [build.instantiate(node, f"callbacks.{key}") for key, node in (cfg.get("callbacks") or {}).items() if node]
    return [c for c in callbacks if not isinstance(c, switched_off)] + [EpochSeed(cfg.seed)]


def fit_and_test(cfg: DictConfig, run: runs.Run, *, ckpt_path: Path | None, previous_ids: dict[str, str]) -> dict[str, Any]:
    """Build everything, fit, test; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, task = build.assemble(cfg)
    task.figures_dir = run.dir / runs.PLOTS
    run_id, group, name = _run_identity(run.dir, cfg)
    trackers = _build_trackers(cfg, run.dir, run_id, group, name, previous_ids)
    callbacks = _build_callbacks(cfg)
    loggers = [HistoryLogger(run.dir / runs.HISTORY), *trackers.values()]
    trainer: L.Trainer = build.instantiate(cfg.trainer, "trainer", logger=loggers, callbacks=callbacks)
    if trainer.is_global_zero:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for tracker in trackers.values():
            tracker.log_hyperparams(hparams)
        run.update(trackers=tracker_ids(trackers))

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, Any] = {k: v for k, v in trainer.callback_metrics.items() if not k.startswith("test/")}
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint (fast_dev_run or no validation): testing the final weights")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(results[0] if results else {})
        if trainer.is_global_zero and task.test_artifacts:
            runs.write_json(run.dir / runs.PLOTS / "test_artifacts.json", task.test_artifacts)
    return metrics


def train(cfg: DictConfig) -> float | None:
    """Entry of `app/train.py`; returns the objective (`cfg.objective`) for hyperparameter search."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = _start_checkpoint(cfg)
    resuming = bool(cfg.get("resume"))
    if resuming:
        cfg, run_dir, ckpt_path = _resume_target(cfg)
    run = runs.Run(run_dir)
    previous_ids: dict[str, str] = {}
    if _is_rank_zero():
        if resuming:
            previous_ids = run.resume().get("trackers", {})
        else:
            run_id, group, _ = _run_identity(run_dir, cfg)
            run.start(cfg, run_id=run_id, group=group, root=repo_root())
    log.info("run directory: %s", run_dir)
    try:
        metrics = fit_and_test(cfg, run, ckpt_path=ckpt_path, previous_ids=previous_ids)
    except KeyboardInterrupt as err:
        if _is_rank_zero():
            run.finish("interrupted", error=err)
        raise
    except BaseException as err:
        if _is_rank_zero():
            run.finish("failed", error=err)
        raise
    if _is_rank_zero():
        run.finish("completed", metrics=metrics)
        log.info("final metrics: %s", {k: round(float(v), 5) for k, v in sorted(metrics.items())})
    objective = cfg.get("objective")
    if not objective:
        return None
    if objective not in metrics:
        raise ConfigError(f"objective {objective!r} was not logged; logged: {', '.join(sorted(metrics))}")
    return float(metrics[objective])
