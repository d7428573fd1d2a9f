"""Hydra takes sweepers only from the `hydra_plugins` namespace: attnlab's Optuna sweeper is declared here and
lives in `attnlab.sweeps.optuna_sweeper`. Hydra imports this module at every start (`--cfg job` too), so it imports
Hydra's Sweeper base only and loads the implementation (and optuna) when a sweep builds the sweeper."""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Optuna search with failed trials recorded, resume, pruning and several objectives; see
    attnlab.sweeps.optuna_sweeper."""

    def __init__(self, **config: Any) -> None:
        from attnlab.sweeps.optuna_sweeper import OptunaSweeper as Implementation

        self.sweeper = Implementation(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
