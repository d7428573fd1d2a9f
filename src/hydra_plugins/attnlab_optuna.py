"""Hydra takes sweepers only from the `hydra_plugins` namespace: attnlab's resumable Optuna sweeper is declared
here and lives in `attnlab.sweeps.optuna_sweeper`. Hydra imports this module at every start, so it stays light."""

from attnlab.sweeps.optuna_sweeper import ResumableOptunaSweeper as _ResumableOptunaSweeper


class ResumableOptunaSweeper(_ResumableOptunaSweeper):
    """hydra-optuna-sweeper that records failed trials and resumes its study; see attnlab.sweeps.optuna_sweeper."""
