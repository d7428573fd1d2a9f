"""The sweep summary: summary.csv (machine-readable) and summary.md (for people) in the sweep directory, written
by a Hydra callback when a multirun ends and by `viz/plot.py sweep=<dir>` at any time (running or cut-off sweeps too).

    summary.csv   one row per configuration: swept values, jobs, seeds, failures, pruned jobs, errors,
                  `<metric>.mean/.std/.n` of every final metric; `pareto` (true/false) for a multi-objective search
    summary.md    `mean ± std` of the main metrics, best configuration first, the Pareto front of a multi-objective
                  search, and the jobs that did not complete (pruned ones counted apart from failed ones)
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from attnlab.sweeps.jobs import (Job, Row, aggregate, best, collect, main_metrics, objective, objectives, pareto_front,
                                 ranked, swept_keys)

log = logging.getLogger("attnlab")
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"


def _fmt(mean: float, std: float | None, n: int) -> str:
    if n == 0:
        return "–"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _short(value: str) -> str:
    """A swept value for people: sampled floats to 4 significant digits, anything else as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 else value


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_csv(path: Path, rows: list[Row], metrics: list[str], keys: list[str], front: list[Row] | None = None) -> None:
    """summary.csv: swept values, counts, errors, `<metric>.mean/.std/.n` for every final metric, and whether a
    configuration is on the Pareto front (`front`; None: a single-objective sweep, no column)."""
    header = [*keys, "config", "jobs", "seeds", "n_seeds", "n_failed", "n_pruned", "n_running", "errors"]
    header += [] if front is None else ["pareto"]
    header += [f"{m}.{s}" for m in metrics for s in ("mean", "std", "n")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            done = row.by_status("completed")
            errors = sorted({j.error for j in row.by_status("failed", "interrupted") if j.error})
            cells: list[Any] = [*row.params.values(), row.label, " ".join(str(j.num) for j in row.jobs),
                                " ".join(str(j.seed) for j in done), len(done), len(row.by_status("failed", "interrupted")),
                                len(row.by_status("pruned")), len(row.by_status("running", "pending")), " | ".join(errors)]
            cells += [] if front is None else [any(row is r for r in front)]
            for metric in metrics:
                mean, std, n = row.stats(metric)
                cells += ["" if n == 0 else mean, "" if std is None else std, n]
            writer.writerow(cells)


def _objective_line(metric: str | None, mode: str | None) -> str:
    if not metric:
        return "- objective: none (nothing ranks the rows: e.g. a validation sweep); rows are in sweep order"
    if metric and mode is None:
        return (f"- objective: `{metric}`, direction unknown: the task states none for it (conf/task/*.yaml "
                "`monitor.modes`) and the sweep set no `hydra.sweeper.direction`; rows are in sweep order")
    return f"- objective: `{metric}` ({mode})"


def _pareto_lines(rows: list[Row], goals: list[tuple[str, str | None]]) -> list[str]:
    """The '## Pareto front' section of a multi-objective search: its configurations with every objective."""
    names = ", ".join(f"`{m}` ({mode or 'direction unknown'})" for m, mode in goals)
    lines = ["", "## Pareto front", "", f"Configurations no other beats on every objective: {names}.", ""]
    front = pareto_front(rows, goals)
    if not front:
        return lines + ["none yet (no completed job logged every objective, or a direction is unknown)"]
    lines += ["| configuration | jobs | " + " | ".join(m for m, _ in goals) + " |", "|---|---|" + "---|" * len(goals)]
    for row in front:
        label = " ".join(f"{k}={_short(v)}" for k, v in row.params.items()) or "(defaults)"
        cells = [label, ",".join(str(j.num) for j in row.by_status("completed")), *(_fmt(*row.stats(m)) for m, _ in goals)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render_md(sweep_dir: Path, jobs: list[Job], rows: list[Row], metric: str | None, mode: str | None,
              goals: list[tuple[str, str | None]] | None = None) -> str:
    """summary.md: the table people read; `goals` (several objectives) adds the Pareto front."""
    keys = list(rows[0].params) if rows else []
    shown = main_metrics(rows, metric)
    statuses = ("completed", "pruned", "failed", "interrupted", "running", "pending")
    counts = {s: sum(j.status == s for j in jobs) for s in statuses}
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"- directory: `{sweep_dir}`",
             f"- jobs: {len(jobs)} (" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")",
             _objective_line(metric, mode),
             "- cells are mean ± sample std (ddof=1) over completed seeds; one seed shows its value",
             f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    lines += ["| " + " | ".join([*keys, "jobs", "seeds", "n", "failed", *shown]) + " |", "|" + "---|" * (len(keys) + 4 + len(shown))]
    for row in ranked(rows, metric, mode):
        cells = [*(_short(v) for v in row.params.values()), ",".join(str(j.num) for j in row.jobs),
                 ",".join(str(j.seed) for j in row.by_status("completed")) or "–",
                 len(row.by_status("completed")), len(row.by_status("failed", "interrupted"))]
        cells += [_fmt(*row.stats(m)) for m in shown]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    top = best(rows, metric, mode)
    lines += [""]
    if top is not None:
        mean, std, n = top.stats(metric)
        label = " ".join(f"{k}={_short(v)}" for k, v in top.params.items()) or "(defaults)"
        lines.append(f"**Best configuration** by `{metric}` ({mode}): `{label}`: {_fmt(mean, std, n)} over {n} seed(s) "
                     f"(jobs {', '.join(str(j.num) for j in top.by_status('completed'))})")
    elif metric and mode is None:
        lines.append("**Best configuration**: none (the objective's direction is unknown)")
    elif metric:
        lines.append("**Best configuration**: none yet (no completed job logged the objective)")
    if goals and len(goals) > 1:
        lines += _pareto_lines(rows, goals)
    unfinished = [j for j in jobs if j.status != "completed"]
    if unfinished:
        lines += ["", "## Jobs not completed", "", "| job | configuration | seed | status | error |", "|---|---|---|---|---|"]
        for job in unfinished:
            label = " ".join(f"{k}={_short(job.params.get(k, ''))}" for k in keys) or "(defaults)"
            lines.append(f"| {job.num} | {_cell(label)} | {job.seed} | {job.status} | {_cell(job.error or '')} |")
        if any(j.status == "running" for j in unfinished):
            lines += ["", "`running`: still running, or cut off (a killed job cannot record its end)."]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write summary.csv and summary.md into the sweep directory; works for a running or cut-off sweep."""
    path = Path(sweep_dir).expanduser().resolve()
    jobs = collect(path)
    rows = aggregate(jobs)
    metric, mode = objective(path, jobs)
    goals = objectives(path, jobs)
    shown = main_metrics(rows, metric)
    shown += [m for m, _ in goals if m not in shown]
    others = sorted({m for j in jobs for m in j.metrics} - set(shown))
    front = pareto_front(rows, goals) if len(goals) > 1 else None
    write_csv(path / SUMMARY_CSV, rows, shown + others, swept_keys(jobs), front)
    (path / SUMMARY_MD).write_text(render_md(path, jobs, rows, metric, mode, goals))
    failed, pruned = (sum(j.status == s for j in jobs) for s in ("failed", "pruned"))
    log.info("sweep summary: %s (%d jobs, %d configurations, %d failed, %d pruned)", path / SUMMARY_MD, len(jobs),
             len(rows), failed, pruned)
    return path / SUMMARY_CSV, path / SUMMARY_MD


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends; a failure here never fails the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            log.info("dry run: every job composed and built; no summary")
            return
        try:
            write_summary(str(config.hydra.sweep.dir))
        except Exception as err:  # the jobs' results are on disk; viz/plot.py sweep=<dir> writes it again
            log.warning("could not write the sweep summary: %s: %s", type(err).__name__, err)
