"""Optuna search that survives failed trials and a killed sweep: a small subclass of hydra-optuna-sweeper.

What it adds to `hydra_plugins.hydra_optuna_sweeper.OptunaSweeper` (1.3), which runs `n_trials` new trials on
every call and crashes on a failed job:

- A failed job (it returns NaN: see `attnlab.cli._guarded`) becomes a FAIL trial with the job's error, and the
  search goes on (`max_failure_rate: 1.0` in the config; the plugin would otherwise crash on NaN).
- Rerun with the same `hydra.sweep.dir` (so the same sqlite storage), it loads the study and runs only the trials
  still owed: `n_trials` minus the finished ones (COMPLETE, PRUNED, FAIL). A trial left RUNNING by a killed
  sweep is marked FAIL with user attribute `interrupted=true` and does not count (the kill was not its result);
  if its job had completed before the kill, the trial is told its stored objective instead. Do not run two
  sweepers on one study at once: the second would take the first one's running trials for dead ones.
- The sampler is reseeded with `seed + number of trials` on resume, so a seeded sampler does not replay the
  suggestions it made before the interruption.
- Job folders are numbered by trial number (`<sweep>/<trial>/`), across resumes.
- `dry_run=true` runs the sampled jobs' dry runs against an in-memory study (the real one is not touched).

Hydra loads sweepers only from the `hydra_plugins` namespace: configs name it as
`hydra_plugins.attnlab_optuna.ResumableOptunaSweeper` (src/hydra_plugins/attnlab_optuna.py), a light wrapper that
imports this module only when a sweep builds its sweeper.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

from attnlab import runs, sweeps

if TYPE_CHECKING:  # optuna is imported when a sweep starts: Hydra imports this module on every start
    import optuna

log = logging.getLogger("attnlab")


class TrialFailed(RuntimeError):
    """The job of a trial failed; its manifest holds the error."""


class _Launcher:
    """Wraps the real launcher: a job that returned NaN (it failed) comes back as a failed job."""

    def __init__(self, launcher: Any, *, dry_run: bool) -> None:
        self.launcher = launcher
        self.dry_run = dry_run

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for ret in returns:
            if ret.status != JobStatus.COMPLETED:
                continue
            if self.dry_run and ret.return_value is None:
                ret.return_value = 0.0  # a placeholder for the in-memory study of a dry run
            elif isinstance(ret.return_value, float) and math.isnan(ret.return_value):
                job_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg else None
                error = sweeps.read_job(job_dir).error if job_dir and job_dir.name.isdigit() else None
                ret.return_value = TrialFailed(f"job {job_dir} failed: {error or 'see its manifest.json'}")
                ret.status = JobStatus.FAILED
        return returns


class ResumableOptunaSweeper(OptunaSweeper):
    """hydra-optuna-sweeper that records failed trials and resumes its study (see the module docstring)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config
        self.dry_run = bool(config.get("dry_run"))
        self.sweeper.launcher = _Launcher(self.sweeper.launcher, dry_run=self.dry_run)

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the sqlite file lives there; the launcher makes it too late
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        if self.dry_run:
            log.info("dry run: %d sampled jobs against an in-memory study; %s is not touched", impl.n_trials, impl.storage)
            impl.storage, impl.max_failure_rate = None, 0.0
        elif impl.storage:
            impl.n_trials = self._resume(sweep_dir)
            if impl.n_trials == 0:
                log.info("study %r has all its trials; nothing to run", impl.study_name)
                return
        try:
            super().sweep(arguments)
        except ValueError as err:  # the plugin asks for the best trial at the end; storages word "none" differently
            if "No trials are completed yet" not in str(err) and "Record does not exist" not in str(err):
                raise
            log.error("every trial of study %r failed; see %s", impl.study_name, sweep_dir / "summary.md")
        if self.dry_run:
            (sweep_dir / "optimization_results.yaml").unlink(missing_ok=True)

    def _resume(self, sweep_dir: Path) -> int:
        """Settle what a killed sweep left, reseed the sampler, number jobs by trial; returns the trials owed."""
        import optuna

        impl = self.sweeper
        directions = impl._get_directions()
        study = optuna.create_study(study_name=impl.study_name, storage=impl.storage, directions=directions, load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._settle(study, trial, sweep_dir / str(trial.number))
        trials = study.get_trials(deepcopy=False)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        done = sum(t.state in finished and not t.user_attrs.get("interrupted") for t in trials)
        if trials:
            seed = OmegaConf.select(self.config, "hydra.sweeper.sampler.seed", default=None)
            if seed is not None and not OmegaConf.select(self.config, "hydra.sweeper.sampler._partial_", default=False):
                impl.sampler = instantiate(self.config.hydra.sweeper.sampler, seed=int(seed) + len(trials))
            log.info("resuming study %r in %s: %d trials finished, %d to run", impl.study_name, sweep_dir, done,
                     max(impl.n_trials - done, 0))
        impl.job_idx = len(trials)  # job folder = trial number
        return max(impl.n_trials - done, 0)

    def _settle(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, job_dir: Path) -> None:
        """A trial still RUNNING when the sweep starts was cut off: keep its result if its job finished, else fail it."""
        metric = self.config.get("objective")
        job = sweeps.read_job(job_dir) if job_dir.is_dir() else None
        value = sweeps.stored_objective(job_dir, metric) if job and job.status == "completed" else None
        if value is not None and math.isfinite(value):
            study.tell(trial.number, value)
            log.info("trial %d had completed before the interruption: told its %s=%.4g", trial.number, metric, value)
            return
        import optuna

        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d was cut off by the interruption: marked failed; it does not count toward n_trials", trial.number)
        if job is not None and job.status == "running":
            runs.Run(job_dir).update(status="interrupted", error={
                "type": "Interrupted", "message": "the sweep was killed during this trial; the resumed sweep ran another in its place"})
