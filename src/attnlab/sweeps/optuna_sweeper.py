"""attnlab's Optuna sweeper: a Hydra sweeper on current Optuna that survives failed trials and a killed sweep,
prunes hopeless trials and searches one objective or several.

- Each batch of `n_jobs` trials is asked from the study, run by Hydra's launcher (basic, joblib, submitit) as
  jobs `<sweep>/<trial number>/`, and told its result. A job gets `+optuna_trial=<number>`; with a pruner on, the
  job reports the monitored metric to its trial each validation epoch through the sqlite storage and stops when
  the pruner says so (attnlab.callbacks.TrialPruning); its manifest says `pruned` and the trial is told PRUNED.
- A failed job (it returns NaN: see `attnlab.cli._guarded`) becomes a FAIL trial with the job's error in the log,
  and the search goes on.
- `objective` names a metric (one direction) or a list of metrics (`direction` a list too: a multi-objective
  study, NSGA-II or TPE; the summary lists its Pareto front). Pruning needs a single objective (Optuna's rule).
- Rerun with the same `hydra.sweep.dir` (so the same `<sweep>/optuna.db`), it loads the study and runs only the
  trials still owed: `n_trials` minus the finished ones (COMPLETE, PRUNED, FAIL). A trial left RUNNING by a killed
  sweep is marked FAIL with user attribute `interrupted=true` and does not count (the kill was not its result);
  if its job had finished before the kill, the trial is told that result instead. Do not run two sweepers on one
  study at once: the second would take the first one's running trials for dead ones.
- The sampler is reseeded with `seed + number of trials` on resume, so a seeded sampler does not replay the
  suggestions it made before the interruption.
- `dry_run=true` runs the sampled jobs' dry runs against an in-memory study (the real one is not touched).

Hydra loads sweepers only from the `hydra_plugins` namespace: configs name it as
`hydra_plugins.attnlab_optuna.OptunaSweeper` (src/hydra_plugins/attnlab_optuna.py), a light wrapper that imports
this module only when a sweep builds its sweeper. Search space, samplers and pruners: sweeps/search.py.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from attnlab import runs, sweeps
from attnlab.sweeps.search import SearchSpace, SweepConfigError, build_pruner, build_sampler

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("attnlab")


class OptunaSweeper:
    """The sweeper Hydra builds from conf/hydra/sweeper/optuna_resumable.yaml (see the module docstring)."""

    def __init__(self, *, study_name: str, storage: str | None, direction: Any, n_trials: int, n_jobs: int = 1,
                 sampler: Mapping[str, Any] | None = None, pruner: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        self.study_name, self.storage = study_name, storage
        self.directions = [str(d) for d in direction] if isinstance(direction, (list, ListConfig)) else [str(direction)]
        self.n_trials, self.n_jobs = int(n_trials), max(int(n_jobs), 1)
        self.sampler, self.pruner, self.params = sampler, pruner, params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.dry_run = bool(config.get("dry_run"))
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the sqlite file lives there; the launcher makes it too late
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        space = SearchSpace(self.params, arguments)
        study = self._study(space)
        owed = self.n_trials if self.dry_run else self._resume(study, space, sweep_dir)
        if type(study.sampler).__name__ == "GridSampler":
            owed = min(owed, _grid_left(study, space))
        if owed == 0:
            log.info("study %r has all its trials; nothing to run", self.study_name)
            return
        while owed > 0:
            batch = min(self.n_jobs, owed)
            self._run_batch(study, space, sweep_dir, batch)
            owed -= batch
        self._report(study, sweep_dir)

    def _study(self, space: SearchSpace) -> optuna.Study:
        """The stored study (created on the first run), or an in-memory one for a dry run."""
        import optuna

        if len(self._metrics()) != len(self.directions):
            raise SweepConfigError(f"objective has {len(self._metrics())} metric(s) but hydra.sweeper.direction has "
                                   f"{len(self.directions)}; give one direction per metric")
        pruner = build_pruner(self.pruner)
        if len(self.directions) > 1 and not isinstance(pruner, optuna.pruners.NopPruner):
            raise SweepConfigError("pruning needs a single objective (Optuna cannot prune a multi-objective trial); "
                                   "set hydra.sweeper.pruner.name=none or one objective")
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # attnlab logs each trial itself
        storage = None if self.dry_run else self.storage
        if self.dry_run:
            log.info("dry run: %d sampled jobs against an in-memory study; %s is not touched", self.n_trials, self.storage)
        return optuna.create_study(study_name=self.study_name, storage=storage, sampler=build_sampler(self.sampler, space),
                                   pruner=pruner, directions=self.directions, load_if_exists=True)

    def _resume(self, study: optuna.Study, space: SearchSpace, sweep_dir: Path) -> int:
        """Settle what a killed sweep left, reseed the sampler; returns the trials owed."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._settle(study, trial, sweep_dir / str(trial.number))
        trials = study.get_trials(deepcopy=False)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        done = sum(t.state in finished and not t.user_attrs.get("interrupted") for t in trials)
        owed = max(self.n_trials - done, 0)
        if trials:
            study.sampler = build_sampler(self.sampler, space, reseed=len(trials))
            log.info("resuming study %r in %s: %d trials finished, %d to run", self.study_name, sweep_dir, done, owed)
        return owed

    def _settle(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, job_dir: Path) -> None:
        """A trial still RUNNING when the sweep starts was cut off: keep its job's result if it finished, else fail it."""
        import optuna

        job = sweeps.read_job(job_dir) if job_dir.is_dir() else None
        if job is not None and job.status == "pruned":
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d had been pruned before the interruption: told PRUNED", trial.number)
            return
        finished = job is not None and job.status == "completed"
        values = _values([job.metrics.get(m, math.nan) for m in self._metrics()]) if finished else None
        if values is not None:
            study.tell(trial.number, values)
            log.info("trial %d had completed before the interruption: told %s=%s", trial.number, self._metrics(), values)
            return
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d was cut off by the interruption: marked failed; it does not count toward n_trials", trial.number)
        if job is not None and job.status == "running":
            runs.Run(job_dir).update(status="interrupted", error={
                "type": "Interrupted", "message": "the sweep was killed during this trial; the resumed sweep ran another in its place"})

    def _metrics(self) -> list[str]:
        """The objective's metric names: one, or several for a multi-objective search."""
        objective = self.config.get("objective")
        return [str(m) for m in objective] if isinstance(objective, ListConfig) else [str(objective)]

    def _run_batch(self, study: optuna.Study, space: SearchSpace, sweep_dir: Path, size: int) -> None:
        """Ask `size` trials, run their jobs (folder = trial number), tell each its outcome."""
        trials = [study.ask(space.distributions) for _ in range(size)]
        # The job's trial, for its pruning callback; a dry run's in-memory study is out of the job's reach.
        overrides = [space.job_overrides(t.params) + ([] if self.dry_run else [f"+optuna_trial={t.number}"]) for t in trials]
        returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
        for trial, ret in zip(trials, returns):
            if self.dry_run:
                ret.return_value  # a dry run fails loudly: this re-raises the job's error
                study.tell(trial, [0.0] * len(self.directions))
                continue
            state, values, error = trial_outcome(ret, sweep_dir / str(trial.number), len(self.directions))
            _tell(study, trial, values, state)
            if error:
                log.warning("trial %d failed: %s", trial.number, error)

    def _report(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Log the best trial (one objective) or the Pareto front's size (several)."""
        if self.dry_run:
            return
        try:
            best = study.best_trials
        except ValueError:  # no completed trial
            best = []
        if not best:
            log.error("no trial of study %r completed; see %s", self.study_name, sweep_dir / "summary.md")
        elif len(self.directions) == 1:
            log.info("best trial %d: %s=%.4g %s", best[0].number, self._metrics()[0], best[0].value, best[0].params)
        else:
            log.info("Pareto front of study %r: trials %s", self.study_name, [t.number for t in best])


def _grid_left(study: optuna.Study, space: SearchSpace) -> int:
    """Grid points no trial has taken yet: a grid search ends when its grid is run, whatever n_trials says."""
    size = math.prod(len(values) for values in space.grid().values())
    return max(size - len(study.get_trials(deepcopy=False)), 0)


def _tell(study: optuna.Study, trial: optuna.Trial, values: list[float] | None, state: Any) -> None:
    """study.tell; the grid sampler's request to stop once its grid is run (Study.stop, which only an optimize()
    loop accepts) is no error here: the sweep counts the grid points itself (`_grid_left`)."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _values(returned: Any) -> list[float] | None:
    """A job's return value as the study's values, or None when it is no finite number (or list of them)."""
    items = list(returned) if isinstance(returned, (list, tuple)) else [returned]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def trial_outcome(ret: JobReturn, job_dir: Path, n_objectives: int) -> tuple[Any, list[float] | None, str | None]:
    """(trial state, values, error line) of a finished job: its manifest says pruned, NaN says failed."""
    import optuna

    State = optuna.trial.TrialState
    if ret.status != JobStatus.COMPLETED:  # raised outside attnlab's guard (rare): the launcher kept the exception
        return State.FAIL, None, f"job {job_dir} raised: {ret._return_value!r}"
    job = sweeps.read_job(job_dir) if job_dir.is_dir() else None
    if job is not None and job.status == "pruned":
        return State.PRUNED, None, None
    values = _values(ret.return_value)
    if values is None or len(values) != n_objectives:
        error = job.error if job is not None and job.error else f"returned {ret.return_value!r}, not {n_objectives} finite value(s)"
        return State.FAIL, None, f"job {job_dir} failed: {error}"
    return State.COMPLETE, values, None
