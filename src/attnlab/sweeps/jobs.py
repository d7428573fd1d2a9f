"""Sweeps: read a sweep directory's jobs, fold seeds into mean ± std per configuration, rank configurations,
and decide what a sweep resumed in place does with each job. The summary files are written by sweeps/summary.py.

    <sweep>/<n>/              one job: a run directory (manifest.json, metrics.json, history.csv, ...)
    <sweep>/<n>/.hydra/       Hydra's record of the job, overrides.yaml included

A configuration is a job's overrides less `seed=` (and `resume=`). The std is the sample standard deviation
(ddof=1) over the completed seeds of a configuration; with one seed there is none.
Pure Python: no torch or Lightning here, so summaries and plots are cheap.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnlab import runs
from attnlab.config import metric_mode
from attnlab.errors import ConfigError, RunError

log = logging.getLogger("attnlab")
_FOLDED = ("seed", "resume", "optuna_trial", "data.fold", "data.repeat")  # replicates, not new configurations (k-fold: data.fold)
_NOT_MAIN = re.compile(r"(^epoch$|^lr-|/lr(/|$)|_class/|per_sec|time|_step$|_epoch$)")


@dataclass
class Job:
    """One job of a sweep as its directory records it."""

    num: int
    dir: Path
    overrides: list[str]
    status: str  # completed | pruned | failed | interrupted | running (or cut off) | pending (no manifest yet)
    seed: Any = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def params(self) -> dict[str, str]:
        """The job's overrides as {key: value}, less seed and resume."""
        pairs = (o.split("=", 1) for o in self.overrides if "=" in o)
        return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in _FOLDED}


@dataclass
class Row:
    """One configuration of a sweep: its jobs, seeds folded."""

    params: dict[str, str]
    jobs: list[Job]

    def by_status(self, *statuses: str) -> list[Job]:
        return [j for j in self.jobs if j.status in statuses]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "(defaults)"

    def stats(self, metric: str) -> tuple[float, float | None, int]:
        """(mean, sample std or None, n) of a final metric over the completed jobs that logged it."""
        values = [j.metrics[metric] for j in self.by_status("completed") if j.metrics.get(metric) is not None]
        if not values:
            return math.nan, None, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def _read_overrides(job_dir: Path, manifest: dict[str, Any]) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        return [str(o) for o in OmegaConf.load(path)]
    return [str(o) for o in manifest.get("overrides") or []]


def _error_line(error: Any) -> str | None:
    if not error:
        return None
    text = f"{error.get('type', 'Error')}: {error.get('message', '')}" if isinstance(error, dict) else str(error)
    return " ".join(text.split())[:300]


def read_job(job_dir: Path) -> Job:
    """A job from its directory; a job that has not written its manifest yet is `pending`."""
    manifest: dict[str, Any] = {}
    if (job_dir / runs.MANIFEST).is_file():
        try:
            manifest = runs.read_json(job_dir / runs.MANIFEST)
        except RunError as err:  # being rewritten right now, or damaged
            log.warning("%s", err)
    metrics = runs.read_json(job_dir / runs.METRICS) if (job_dir / runs.METRICS).is_file() else {}
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, str)}  # numbers only; a signature is no metric
    overrides = _read_overrides(job_dir, manifest)
    seed = manifest.get("seed", next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), None))
    return Job(
        num=int(job_dir.name),
        dir=job_dir,
        overrides=overrides,
        status=manifest.get("status", "pending"),
        seed=seed,
        metrics={k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float))},
        error=_error_line(manifest.get("error")),
    )


def collect(sweep_dir: str | Path) -> list[Job]:
    """Every job of a sweep (its numbered sub-directories), in job order; works while the sweep runs."""
    path = Path(sweep_dir).expanduser().resolve()
    if not path.is_dir():
        raise RunError(f"sweep directory {path} does not exist; pass a folder under results/sweeps/")
    jobs = [read_job(p) for p in sorted(path.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
            if p.is_dir() and p.name.isdigit()]
    if not jobs:
        raise RunError(f"{path} holds no jobs (numbered folders); pass the directory a multirun (-m) wrote")
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (seed excluded), in first-seen order."""
    keys: dict[str, None] = {}
    for job in jobs:
        keys.update(dict.fromkeys(job.params))
    return [k for k in keys if len({job.params.get(k, "") for job in jobs}) > 1]


def aggregate(jobs: list[Job]) -> list[Row]:
    """One row per configuration (the swept overrides), seeds folded, in order of first job."""
    keys = swept_keys(jobs)
    rows: dict[tuple[str, ...], Row] = {}
    for job in jobs:
        params = {k: job.params.get(k, "") for k in keys}
        rows.setdefault(tuple(params.values()), Row(params=params, jobs=[])).jobs.append(job)
    return list(rows.values())


def _sweep_config(sweep_dir: Path, jobs: list[Job]) -> DictConfig:
    """A job's resolved config.yaml (objective, monitor), with the sweeper's direction from multirun.yaml."""
    cfg = OmegaConf.create({})
    config_path = next((j.dir / runs.CONFIG for j in jobs if (j.dir / runs.CONFIG).is_file()), None)
    if config_path is not None:
        cfg = OmegaConf.load(config_path)
    if (sweep_dir / "multirun.yaml").is_file():
        try:  # an interpolation (`${attnlab_direction:${objective}}`) resolves against multirun.yaml's own monitor
            direction = OmegaConf.select(OmegaConf.load(sweep_dir / "multirun.yaml"), "hydra.sweeper.direction", default=None)
        except OmegaConfBaseException:
            direction = None  # the task states no direction: the job's config says what is known
        if isinstance(direction, (str, ListConfig)):
            cfg.sweeper_direction = direction
    return cfg


def objective(sweep_dir: Path, jobs: list[Job]) -> tuple[str | None, str | None]:
    """(metric, 'max' | 'min' | None) that ranks configurations: `objective` if set (the first of a list), else the
    monitored metric's best.

    The direction is the sweeper's (`hydra.sweeper.direction`) if it states one, else the task's: `monitor.mode`
    for the monitored metric, `monitor.modes` for the others. None: the task states no direction for the metric,
    and the summary says so rather than guess from the name.
    """
    return (objectives(sweep_dir, jobs) or [(None, None)])[0]


def objectives(sweep_dir: Path, jobs: list[Job]) -> list[tuple[str, str | None]]:
    """(metric, direction) of every objective: several for a multi-objective search (`objective: [a, b]`)."""
    cfg = _sweep_config(sweep_dir, jobs)
    monitor = OmegaConf.select(cfg, "monitor.metric", default=None)
    metric = OmegaConf.select(cfg, "objective", default=None)
    stated = cfg.get("sweeper_direction")
    if isinstance(metric, ListConfig):
        directions = list(stated) if isinstance(stated, ListConfig) else [None] * len(metric)
        return [(str(m), _mode(cfg, str(m), d)) for m, d in zip(metric, directions)]
    if not metric and monitor:
        logged = {m for j in jobs for m in j.metrics}
        metric = f"{monitor}_best" if f"{monitor}_best" in logged else monitor
    return [(metric, _mode(cfg, metric, stated))] if metric else []


def _mode(cfg: DictConfig, metric: str, stated: Any) -> str | None:
    """A metric's direction: the sweeper's stated one, else the task's (see `objective`)."""
    if isinstance(stated, str) and stated:
        return "max" if stated.startswith("max") else "min"
    monitor = OmegaConf.select(cfg, "monitor.metric", default=None)
    if monitor and metric.removesuffix("_best") == monitor:
        mode = OmegaConf.select(cfg, "monitor.mode", default=None)
        return str(mode) if mode in ("min", "max") else None
    return metric_mode(metric, OmegaConf.select(cfg, "monitor.modes", default=None))


def pareto_front(rows: list[Row], goals: list[tuple[str, str | None]]) -> list[Row]:
    """The configurations no other one beats on every objective (mean over completed seeds) and on one strictly;
    rows missing an objective, or goals of unknown direction, leave nothing to compare."""
    if not goals or any(mode is None for _, mode in goals):
        return []
    signs = [1.0 if mode == "max" else -1.0 for _, mode in goals]
    scored = [(row, [s * row.stats(m)[0] for s, (m, _) in zip(signs, goals)]) for row in rows]
    scored = [(row, score) for row, score in scored if all(math.isfinite(v) for v in score)]
    return [row for row, score in scored if not any(_dominates(other, score) for _, other in scored)]


def _dominates(a: list[float], b: list[float]) -> bool:
    """a is at least as good as b everywhere and better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def main_metrics(rows: list[Row], objective_metric: str | None) -> list[str]:
    """The metrics worth a column: the objective, then val/ and test/ ones (no per-class, lr or timing)."""
    logged = sorted({m for row in rows for j in row.jobs for m in j.metrics})
    picked = [m for m in logged if m.split("/")[0] in ("val", "test") and not _NOT_MAIN.search(m)]
    picked.sort(key=lambda m: (not m.startswith("val/"), m))
    if objective_metric:
        picked = [objective_metric] + [m for m in picked if m != objective_metric]
    return picked


def best(rows: list[Row], metric: str | None, mode: str | None) -> Row | None:
    """The configuration with the best mean objective over its completed seeds; None if the direction is unknown."""
    scored = [(row.stats(metric)[0], row) for row in rows] if metric and mode else []
    scored = [(value, row) for value, row in scored if math.isfinite(value)]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda pair: pair[0])[1]


def ranked(rows: list[Row], metric: str | None, mode: str | None) -> list[Row]:
    """Best first by mean objective; configurations without a completed seed last, in sweep order (all of them
    when the direction is unknown)."""
    if not metric or not mode:
        return list(rows)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.stats(metric)[2] == 0, sign * r.stats(metric)[0] if r.stats(metric)[2] else 0.0))


# ---- resuming a grid sweep in place (`-m ... hydra.sweep.dir=<sweep> resume=true`)


def _comparable(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not o.lstrip("+~").startswith("resume="))


def resume_action(job_dir: Path, overrides: list[str] | None) -> str:
    """'skip' a completed job, 'continue' one with a last checkpoint, else 'fresh'; the job must be the same job
    (its saved overrides equal `overrides`, less resume=; None skips the check)."""
    if not (job_dir / runs.MANIFEST).is_file():
        return "fresh"
    manifest = runs.read_json(job_dir / runs.MANIFEST)
    saved = manifest.get("overrides")
    if saved is not None and overrides is not None and _comparable(saved) != _comparable(overrides):
        raise ConfigError(
            f"resume=true: job {job_dir.name} of {job_dir.parent} ran with [{' '.join(_comparable(saved))}], this sweep "
            f"gives it [{' '.join(_comparable(overrides))}]; rerun with the sweep's overrides in the same order, "
            "or start a new sweep (drop hydra.sweep.dir)"
        )
    if manifest.get("status") == "completed":
        return "skip"
    return "continue" if (job_dir / runs.CHECKPOINTS / "last.ckpt").is_file() else "fresh"


def clear_partial(job_dir: Path) -> None:
    """Drop what a failed or cut-off attempt of a job left (history, metrics), so the new attempt starts clean."""
    for name in (runs.HISTORY, runs.METRICS):
        (job_dir / name).unlink(missing_ok=True)


def stored_objective(job_dir: Path, metric: Any) -> float | list[float] | None:
    """A completed job's objective from its metrics.json (None without an objective; NaN if not logged); a list of
    values for a list of metrics."""
    if not metric:
        return None
    metrics = runs.read_json(job_dir / runs.METRICS) if (job_dir / runs.METRICS).is_file() else {}
    if not isinstance(metric, str):
        return [_stored(metrics, str(m)) for m in metric]
    return _stored(metrics, metric)


def _stored(metrics: dict[str, Any], metric: str) -> float:
    value = metrics.get(metric)
    return float(value) if value is not None else math.nan
