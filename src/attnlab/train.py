"""Training: compose data -> model -> task -> trainer from the config, fit, test, and record the run."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from attnlab import build, classical, runs, sweeps
from attnlab.adapters import ADAPTER_DIR, is_peft, parameter_counts, save_adapter
from attnlab.callbacks import (AverageCheckpoints, EpochSeed, ScheduleWithinMaxTime, TrialPruning, trial_pruning,
                               without_validation)
from attnlab.config import is_multirun, repo_root
from attnlab.errors import ConfigError, RunError
from attnlab.tracking import HistoryLogger, finish_tracker_runs, tracker_ids

log = logging.getLogger("attnlab")

# In-memory datasets need no loader workers; Lightning's hint says otherwise.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _is_rank_zero() -> bool:
    """True in the process that records the run: global rank 0 as Lightning reads it, before any Trainer exists."""
    # Lightning's order (RANK, LOCAL_RANK, SLURM_PROCID, JSM_NAMESPACE_RANK) covers torchrun, its own DDP children,
    # SLURM tasks and LSF; NODE_RANK marks the launching process of a later node, whose LOCAL_RANK is unset.
    return (_get_rank() or 0) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _resume_target(cfg: DictConfig) -> tuple[DictConfig, Path, Path]:
    """(saved config, run dir, last checkpoint) of the run named by `resume=`; checked before the run is touched."""
    run_dir = runs.require_run(cfg.resume)
    ckpt = _loadable(runs.find_checkpoint(run_dir, "last"))
    ignored = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    if ignored:
        log.warning("resume continues %s with its saved config; ignoring overrides: %s", run_dir, " ".join(ignored))
    return runs.load_config(run_dir), run_dir, ckpt


def _loadable(ckpt: Path) -> Path:
    """A checkpoint that loads safely (weights_only), else RunError: checked before a resumed run is marked running,
    so a refused resume leaves the run's manifest, metrics and status as they were."""
    runs.load_checkpoint(ckpt)
    return ckpt


def _start_checkpoint(cfg: DictConfig) -> Path | None:
    """`ckpt_path=`: checked to exist and to load safely before Lightning touches it."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(cfg.ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise RunError(f"ckpt_path={cfg.ckpt_path}: no such file")
    runs.load_checkpoint(path)
    return path


def _init_source(cfg: DictConfig) -> Path | None:
    """`init_from=`: the checkpoint whose model weights a new run starts from, checked to exist."""
    try:
        if OmegaConf.is_missing(cfg, "init_from"):
            raise MissingMandatoryValue("init_from")
        value = cfg.get("init_from")
    except (MissingMandatoryValue, InterpolationResolutionError) as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):  # ${attnlab_required:...}: its own message
            raise ConfigError(f"experiment {cfg.name}: {cause}") from None
        raw = OmegaConf.to_container(cfg, resolve=False).get("init_from")  # type: ignore[union-attr]
        given = raw[2:-1] if isinstance(raw, str) and raw.startswith("${") else "init_from"
        raise ConfigError(f"experiment {cfg.name} starts from another run's weights: add {given}=<run directory> "
                          "(the experiment file says which run)") from None
    if not value:
        return None
    if cfg.get("ckpt_path"):
        raise ConfigError("init_from and ckpt_path both given: ckpt_path continues a run (weights, optimizer and loop "
                          "state), init_from starts a new one from another run's weights only; choose one")
    return runs.resolve_init_from(cfg.init_from)


def _weights_from(cfg: DictConfig, source: Path | None, loaded: list[runs.WeightMatch]) -> Callable[[Any], None] | None:
    """build.assemble's `init`: load `source`'s weights into the plain model, keeping what matched in `loaded`."""
    if source is None:
        return None
    layers = cfg.get("init_from_layers")
    layers = list(layers) if layers is not None and not isinstance(layers, str) else layers
    return lambda model: loaded.append(runs.init_weights(model, source, strict=bool(cfg.get("init_from_strict", True)),
                                                         layers=layers))


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
    """The configured callbacks, less those the trainer switches off (`trainer.enable_progress_bar=false`) and those
    that follow a validation metric when validation is off (see `callbacks.without_validation`)."""
    switched_off = tuple(
        kind
        for kind, flag in ((ProgressBar, "enable_progress_bar"), (ModelSummary, "enable_model_summary"))
        if cfg.trainer.get(flag) is False
    )
    callbacks = [build.instantiate(node, f"callbacks.{key}") for key, node in without_validation(cfg).items()]
    averaging = [AverageCheckpoints(int(cfg.average_last))] if cfg.get("average_last") else []
    if cfg.get("schedule_within_max_time") and not cfg.trainer.get("max_time"):
        raise ConfigError("schedule_within_max_time=true plans the decay over trainer.max_time; set it, e.g. "
                          'trainer.max_time="00:01:00:00"')
    within = [ScheduleWithinMaxTime()] if cfg.get("schedule_within_max_time") else []
    kept = [c for c in callbacks if not isinstance(c, switched_off)]
    return kept + [EpochSeed(cfg.seed), *averaging, *within, *trial_pruning(cfg)]


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); None where that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def _warn_emulated_bf16(trainer: L.Trainer) -> None:
    """bf16 on a CPU without bf16 matrix units is emulated: far slower than fp32, so say so before the run starts."""
    if "bf16" in str(trainer.precision) and trainer.accelerator.__class__.__name__ == "CPUAccelerator":
        if cpu_has_native_bf16() is False:
            log.warning("trainer.precision=%s on a CPU without bf16 matrix units (no avx512_bf16 or amx_bf16 in "
                        "/proc/cpuinfo): bf16 is emulated and many times slower than fp32 here (README: Speed); "
                        "use trainer.precision=32-true", trainer.precision)


def fit_and_test(
    cfg: DictConfig, run: runs.Run, *, ckpt_path: Path | None, previous_ids: dict[str, str], init_from: Path | None = None
) -> tuple[dict[str, Any], str]:
    """Build everything (the model from `init_from`'s weights when given), fit, test; returns the final metrics and
    the run's status: `completed`, or `pruned` when a search's pruner stopped it (then it is not tested)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if classical.is_estimator(cfg):  # a scikit-learn estimator: fitted on the table's arrays, no Lightning loop
        return _fit_estimator(cfg, run, previous_ids), "completed"
    if cfg.get("refit"):
        raise ConfigError("refit=true is for scikit-learn estimators; a network keeps its best validation checkpoint")
    # A resumed run reuses the data artifacts (a trained tokenizer) it saved; a new run saves them.
    loaded: list[runs.WeightMatch] = []
    # A new run from another run's weights reads its data through that run's tokenizer (its own, once it saved one).
    datamodule, task = build.assemble(cfg, artifacts=run.dir, init=_weights_from(cfg, init_from, loaded),
                                      tokenizer_from=runs.run_of_checkpoint(init_from) if init_from is not None else None)
    if loaded and _is_rank_zero():
        run.update(init_from={"checkpoint": str(init_from), "strict": bool(cfg.get("init_from_strict", True)),
                              "loaded": len(loaded[0].matched), "not_loaded": loaded[0].not_loaded()})
    if _is_rank_zero() and hasattr(datamodule, "save_artifacts"):
        datamodule.save_artifacts(run.dir)
    if _is_rank_zero() and getattr(datamodule, "lineage", None) and (parents := datamodule.lineage()):
        run.update(parents=parents)  # runs this one's data goes through (data.denoise_with)
    task.figures_dir = run.dir / runs.PLOTS
    run_id, group, name = _run_identity(run.dir, cfg)
    trackers = _build_trackers(cfg, run.dir, run_id, group, name, previous_ids)
    callbacks = _build_callbacks(cfg)
    loggers = [HistoryLogger(run.dir / runs.HISTORY), *trackers.values()]
    trainer: L.Trainer = build.instantiate(cfg.trainer, "trainer", logger=loggers, callbacks=callbacks)
    _warn_emulated_bf16(trainer)
    if trainer.is_global_zero:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for tracker in trackers.values():
            tracker.log_hyperparams(hparams)
        run.update(trackers=tracker_ids(trackers))

    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, Any] = {k: v for k, v in trainer.callback_metrics.items() if not k.startswith("test/")}
    if pruned(trainer):
        return metrics, "pruned"
    if cfg.get("peft"):  # what fine-tuning trained, beside its scores
        counts = parameter_counts(task.model)
        metrics.update(trainable_params=counts["trainable_params"], total_params=counts["total_params"])
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint (fast_dev_run or no validation): testing the final weights")
        results = trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        for per_loader in results:  # one dict per test set (a translation data module has several)
            metrics.update(per_loader)
        metrics.update(task.test_labels)
        if trainer.is_global_zero and task.test_artifacts:
            runs.write_json(run.dir / runs.PLOTS / "test_artifacts.json", task.test_artifacts)
        if trainer.is_global_zero and is_peft(task.model):  # the tested (best) adapter, in peft's own format
            log.info("adapter (peft format) saved to %s", save_adapter(task.model, run.dir / ADAPTER_DIR))
        if trainer.is_global_zero and hasattr(datamodule, "raw"):  # a table: which columns the model relies on
            classical.importance(classical.network_predict(task.model, datamodule.preprocessing()), datamodule,
                                 run.dir / runs.PLOTS)
        averaged = run.dir / runs.CHECKPOINTS / AverageCheckpoints.AVERAGED
        if cfg.get("average_last") and averaged.is_file():  # the same test on the averaged weights, beside the best's
            task.figures_dir = run.dir / runs.PLOTS / "averaged"
            results = trainer.test(task, datamodule=datamodule, ckpt_path=averaged, weights_only=True)
            metrics.update({f"averaged/{k}": v for per_loader in results for k, v in per_loader.items()})
    return metrics, "completed"


def pruned(trainer: L.Trainer) -> bool:
    """True when the search's pruner stopped this run (see callbacks.TrialPruning)."""
    return any(isinstance(c, TrialPruning) and c.pruned_epoch is not None for c in trainer.callbacks)


def _fit_estimator(cfg: DictConfig, run: runs.Run, previous_ids: dict[str, str]) -> dict[str, Any]:
    """classical.fit, its config and final metrics sent to the run's history.csv and trackers as a network's are."""
    trackers = _build_trackers(cfg, run.dir, *_run_identity(run.dir, cfg), previous_ids)
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for tracker in trackers.values():
        tracker.log_hyperparams(hparams)
    run.update(trackers=tracker_ids(trackers))
    metrics = classical.fit(cfg, run)
    for logger in (HistoryLogger(run.dir / runs.HISTORY), *trackers.values()):
        logger.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
        logger.finalize("success")
    return metrics


def dry_run(cfg: DictConfig) -> None:
    """`dry_run=true`: build data module, model, task, callbacks and trainer, then stop: no fit, no run recorded.

    Trackers are left out (they would create runs) and no data is read, so a bad override fails in seconds.
    """
    if classical.is_estimator(cfg):  # its facts (the table's columns) need the data: check the keys only
        build.check(cfg.data, "data")
        log.info("dry run ok: %s (a scikit-learn estimator; its arguments are checked when it is fitted)", cfg.name)
        return
    source = _init_source(cfg)
    build.assemble(cfg, tokenizer_from=runs.run_of_checkpoint(source) if source is not None else None,
                   init=_weights_from(cfg, source, []))
    build.instantiate(cfg.trainer, "trainer", logger=False, callbacks=_build_callbacks(cfg))
    overrides = " ".join(HydraConfig.get().overrides.task)
    log.info("dry run ok: %s%s", cfg.name, f" [{overrides}]" if overrides else "")


def _sweep_job_plan(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, Path, Path | None, str]:
    """A job of a sweep resumed in place (`-m ... hydra.sweep.dir=<sweep> resume=true`): skip, continue or start it."""
    # DDP children of a job rerun its saved config (no overrides of their own): they follow the job's decision.
    overrides = list(HydraConfig.get().overrides.task) if _is_rank_zero() else None
    action = sweeps.resume_action(run_dir, overrides)
    if action == "skip":
        log.info("resume: job %s already completed; skipped", run_dir.name)
        return cfg, run_dir, None, "skip"
    if action == "continue":
        log.info("resume: job %s continues from its last checkpoint", run_dir.name)
        return runs.load_config(run_dir), run_dir, _loadable(runs.find_checkpoint(run_dir, "last")), "resume"
    log.info("resume: job %s of %s has no earlier completed run or checkpoint; starting it", run_dir.name, run_dir.parent)
    if _is_rank_zero():
        sweeps.clear_partial(run_dir)
    return cfg, run_dir, _start_checkpoint(cfg), "start"


def _plan(cfg: DictConfig) -> tuple[DictConfig, Path, Path | None, str]:
    """(config, run directory, checkpoint to start from, 'start' | 'resume' | 'skip') for this job."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.get("resume")
    if resume is True and (is_multirun() or not _is_rank_zero()):
        return _sweep_job_plan(cfg, run_dir)
    if resume is True:
        raise ConfigError(
            "resume=true resumes a sweep in place: add -m and hydra.sweep.dir=<sweep dir> to the sweep's command; "
            "to continue one run, pass its directory: resume=results/runs/<run>"
        )
    if resume and is_multirun():
        raise ConfigError(f"resume={resume} in a sweep: resume a sweep in place with resume=true and hydra.sweep.dir=<sweep dir>")
    if resume:
        saved, run_dir, ckpt_path = _resume_target(cfg)
        return saved, run_dir, ckpt_path, "resume"
    return cfg, run_dir, _start_checkpoint(cfg), "start"


def train(cfg: DictConfig) -> float | list[float] | None:
    """Entry of `app/train.py`; returns the objective (`cfg.objective`: a value, or a list for a list of metrics)
    for hyperparameter search."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("dry_run"):
        return dry_run(cfg)
    cfg, run_dir, ckpt_path, action = _plan(cfg)
    if action == "skip":
        return sweeps.stored_objective(run_dir, cfg.get("objective"))
    init_from = _init_source(cfg) if action == "start" else None  # once, when a run starts; a resume has its weights
    run = runs.Run(run_dir)
    previous_ids: dict[str, str] = {}
    if _is_rank_zero():
        if action == "resume":
            previous_ids = run.resume().get("trackers", {})
        else:
            run_id, group, _ = _run_identity(run_dir, cfg)
            run.start(cfg, run_id=run_id, group=group, root=repo_root(), overrides=list(HydraConfig.get().overrides.task))
    log.info("run directory: %s (torch threads: %d)", run_dir, torch.get_num_threads())
    try:
        metrics, status = fit_and_test(cfg, run, ckpt_path=ckpt_path, previous_ids=previous_ids, init_from=init_from)
    except BaseException as err:
        finish_tracker_runs(ok=False)
        if _is_rank_zero():
            run.finish("interrupted" if _is_interrupt(err) else "failed", error=err)
        raise
    finish_tracker_runs(ok=True)
    if _is_rank_zero():
        run.finish(status, metrics=metrics)
        log.info("final metrics: %s", {k: round(float(v), 5) for k, v in sorted(metrics.items()) if not isinstance(v, str)})
    return None if status == "pruned" else _objective(cfg, metrics)  # the sweeper reads `pruned` from the manifest


def _is_interrupt(err: BaseException) -> bool:
    """Ctrl-C (Lightning reports it as SystemExit(1) raised while handling it) or SIGTERM (a scheduler's preemption)."""
    if isinstance(err, SystemExit) and err.__context__ is not None:
        err = err.__context__
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "SIGTERMException"


def _objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | list[float] | None:
    """The objective's value, or its values in order for a list of metrics (a multi-objective search)."""
    objective = cfg.get("objective")
    if not objective:
        return None
    names = [str(m) for m in objective] if isinstance(objective, ListConfig) else [str(objective)]
    missing = [m for m in names if m not in metrics]
    if missing:
        raise ConfigError(f"objective {missing[0]!r} was not logged; logged: {', '.join(sorted(metrics))}")
    values = [float(metrics[m]) for m in names]
    return values if isinstance(objective, ListConfig) else values[0]
