"""Figures for a sweep: metric vs each swept hyperparameter (error bars over seeds), all jobs' learning curves,
and an Optuna study's optimisation history. `viz/plot.py sweep=<dir>` draws them; they work on a running sweep.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from attnlab import runs, sweeps
from attnlab.plots import _save, plt
from attnlab.sweeps.summary import write_summary

log = logging.getLogger(__name__)
MAX_PANELS = 6


def _as_numbers(values: list[str]) -> list[float] | None:
    """The values as floats, or None when one is not a number (a categorical axis then)."""
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _series(rows: list[sweeps.Row], key: str) -> tuple[dict[str, list[sweeps.Row]], bool]:
    """(rows grouped by the other swept keys' values, whether to join points): one line per group of a grid;
    one unjoined cloud when no group repeats (a search, where every trial is its own point)."""
    groups: dict[str, list[sweeps.Row]] = {}
    for row in rows:
        label = " ".join(f"{k}={v}" for k, v in row.params.items() if k != key)
        groups.setdefault(label, []).append(row)
    if len(groups) > 1 and max(len(g) for g in groups.values()) == 1:
        return {"": rows}, False
    return groups, True


def metric_vs_param(rows: list[sweeps.Row], key: str, metrics: list[str], path: Path) -> Path:
    """One panel per metric: mean ± std over seeds against one swept hyperparameter."""
    values = [row.params[key] for row in rows]
    numbers = _as_numbers(values)
    categories = list(dict.fromkeys(values))
    n = min(len(metrics), MAX_PANELS)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.3 * ((n + cols - 1) // cols)), squeeze=False)
    groups, join = _series(rows, key)
    for ax, metric in zip(axes.flat, metrics[:n]):
        for label, group in groups.items():
            points = []
            for row in group:
                mean, std, count = row.stats(metric)
                if count:
                    x = float(row.params[key]) if numbers else categories.index(row.params[key])
                    points.append((x, mean, std or 0.0))
            if not points:
                continue
            points.sort()
            xs, ys, errs = zip(*points)
            ax.errorbar(xs, ys, yerr=errs, fmt="o-" if join else "o", capsize=3, ms=4, label=label or None)
        ax.set(xlabel=key, ylabel=metric, title=metric)
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 20:
            ax.set_xscale("log")
        elif numbers:
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        if not numbers:
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        ax.grid(alpha=0.3)
        if any(label for label in groups):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{key}: mean ± std over seeds", fontsize=10)
    return _save(fig, path)


def learning_curves(rows: list[sweeps.Row], metric: str, path: Path) -> Path | None:
    """`metric` against the step for every job, one colour per configuration (seeds share it)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    drawn = 0
    for i, row in enumerate(rows):
        color = plt.get_cmap("tab10")(i % 10)
        labelled = False
        for job in row.jobs:
            history_path = job.dir / "history.csv"
            if not history_path.is_file():
                continue
            series = runs.read_history(history_path).get(metric)
            if not series:
                continue
            steps, values = zip(*series)
            ls = "-" if job.status == "completed" else "--"
            ax.plot(steps, values, ls, marker="o", ms=3, lw=1.2, color=color, alpha=0.8, label=None if labelled else row.label)
            labelled, drawn = True, drawn + 1
    if not drawn:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel=metric, title=f"{metric}, every job (dashed: not completed)")
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, path)


def optuna_history(db: Path, path: Path, objective: str | None = None) -> Path | None:
    """Objective per trial with the best-so-far line, from the study's sqlite file; failed and pruned trials marked.
    None for a multi-objective study: its Pareto front is in summary.md (and optuna-dashboard draws it)."""
    import optuna

    storage = f"sqlite:///{db}"
    summaries = optuna.get_all_study_summaries(storage=storage)
    if not summaries:
        return None
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    if len(study.directions) > 1:
        return None
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    failed = [t for t in trials if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in failed)
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if done:
        ax.plot([t.number for t in done], [t.value for t in done], "o", ms=5, label="trial")
        best, line = -math.inf if maximize else math.inf, []
        for t in done:
            best = max(best, t.value) if maximize else min(best, t.value)
            line.append(best)
        ax.step([t.number for t in done], line, where="post", color="tab:red", label="best so far")
    if failed:
        bottom = min((t.value for t in done), default=0.0)
        ax.plot([t.number for t in failed], [bottom] * len(failed), "x", color="gray", ms=7, label="failed / interrupted / pruned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"Optuna {study.study_name}: {len(done)} complete, {len(failed) - pruned} failed, {pruned} pruned"
    ax.set(xlabel="trial", ylabel=objective or "objective", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sweep(sweep_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Summary files and every sweep figure; returns the paths written."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    written = list(write_summary(sweep_dir))
    jobs = sweeps.collect(sweep_dir)
    rows = sweeps.aggregate(jobs)
    objective, _ = sweeps.objective(sweep_dir, jobs)
    metrics = sweeps.main_metrics(rows, objective)
    out = out_dir or sweep_dir / "plots"
    if metrics:
        for key in sweeps.swept_keys(jobs):
            written.append(metric_vs_param(rows, key, metrics, out / f"sweep_{key.replace('/', '_')}.png"))
    base = objective.removesuffix("_best") if objective else None
    for metric in dict.fromkeys(m for m in (base, "val/loss", "train/loss_step") if m):  # val: per epoch; train: per step
        curve = learning_curves(rows, metric, out / f"curves_{metric.replace('/', '_')}.png")
        written += [curve] if curve else []
    if (sweep_dir / "optuna.db").is_file():
        history = optuna_history(sweep_dir / "optuna.db", out / "optuna_history.png", objective)
        written += [history] if history else []
    return written
