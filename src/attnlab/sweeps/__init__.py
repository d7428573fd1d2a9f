"""Sweeps: a multirun's jobs read back, folded over seeds and ranked; the summary files, the sweep figures and
attnlab's Optuna sweeper.

    jobs.py            read a sweep directory's jobs; mean ± std per configuration; ranking; resuming in place
    summary.py         summary.csv / summary.md, and the Hydra callback that writes them when a multirun ends
    plots.py           metric vs each swept value, every job's learning curve, Optuna's history
    search.py          an Optuna search's space (Hydra's sweep syntax as distributions), sampler and pruner by name
    optuna_sweeper.py  attnlab's Hydra sweeper on Optuna: failed trials recorded, resume, pruning, several objectives

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
    objectives,
    pareto_front,
    ranked,
    read_job,
    resume_action,
    stored_objective,
    swept_keys,
)

__all__ = [
    "Job", "Row", "aggregate", "best", "clear_partial", "collect", "main_metrics", "objective", "objectives",
    "pareto_front", "ranked", "read_job", "resume_action", "stored_objective", "swept_keys",
]
