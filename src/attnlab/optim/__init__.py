"""Optimisation: parameter groups, the Muon optimizer and learning-rate schedules (`optimizer=` and `scheduler=`).

Imports torch only (no Lightning, Hydra or OmegaConf): a notebook can build the same optimizer the configs do.
"""

from attnlab.optim.groups import param_groups

__all__ = ["param_groups"]
