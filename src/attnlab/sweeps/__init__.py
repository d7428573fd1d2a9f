"""Sweeps: a multirun's jobs read back, folded over seeds and ranked; the summary files, the sweep figures and
the resumable Optuna sweeper.

    jobs.py            read a sweep directory's jobs; mean ± std per configuration; ranking; resuming in place
    summary.py         summary.csv / summary.md, and the Hydra callback that writes them when a multirun ends
    plots.py           metric vs each swept value, every job's learning curve, Optuna's history
    optuna_sweeper.py  hydra-optuna-sweeper subclass that records failed trials and resumes its study

Imports runs, plots and errors; never train or tasks (summaries and plots need no torch or Lightning).
"""

from attnlab.sweeps.jobs import (
    Job,
    Row,
    aggregate,
    best,
    clear_partial,
    collect,
    main_metrics,
    objective,
    ranked,
    read_job,
    resume_action,
    stored_objective,
    swept_keys,
)

__all__ = [
    "Job", "Row", "aggregate", "best", "clear_partial", "collect", "main_metrics", "objective", "ranked", "read_job",
    "resume_action", "stored_objective", "swept_keys",
]
