"""Tasks: thin LightningModules, one per kind of problem (classification, reconstruction, language modelling).

A task wraps a pure-torch model (attnlab.models) and owns its loss, metrics and test-time figures; the optimizer
and schedule come in as factories from attnlab.optim. Imports models, optim, plots and tracking, never data.
"""

from typing import Any

# The tasks whose runs are classifiers to their users (serve, predict, export): a distilled student is one too.
CLASSIFIER_TASKS = frozenset({"ClassificationTask", "DistillationTask"})


def task_name(cfg: Any) -> str:
    """The class name of a run config's task (`task._target_`'s last part; '' where it has none)."""
    task = cfg.get("task") if hasattr(cfg, "get") else None
    target = task.get("_target_", "") if task is not None and hasattr(task, "get") else ""
    return str(target or "").rsplit(".", 1)[-1]
