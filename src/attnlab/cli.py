"""Command-line entry points (`attnlab-train`, `attnlab-validate`, `attnlab-plot`).

This module imports Hydra and OmegaConf only: `--help` and `--cfg job` must not pay for torch or Lightning
(about 5 s), so the heavy modules are imported inside the job functions.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attnlab.config import conf_dir, config_help, is_multirun
from attnlab.errors import AttnlabError

log = logging.getLogger("attnlab")
# Lightning-internal deprecation noise a user cannot act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _guarded(job: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn user-fixable errors into one clear line and exit code 2; in a sweep, record any failure and go on.

    Hydra's sweepers re-raise a failed job's exception after its batch, which stops the sweep and skips the
    summary; so in a multirun a job that raises returns NaN instead (the job's manifest records the error, and
    the Optuna sweeper marks the trial failed). A dry run (`dry_run=true`) is meant to fail loudly: it re-raises.
    """

    def wrapper(cfg: DictConfig) -> Any:
        try:
            return job(cfg)
        except Exception as err:
            if is_multirun():
                return _failed_job(cfg, err)
            if not isinstance(err, AttnlabError):
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)  # one line, no traceback; runs also record it
            sys.exit(2)

    wrapper.__name__ = job.__name__
    wrapper.__doc__ = job.__doc__
    return wrapper


def _failed_job(cfg: DictConfig, err: Exception) -> float:
    """A sweep job raised: log it (traceback unless the user can fix it from the message), record it, return NaN."""
    job = HydraConfig.get().job
    overrides = " ".join(HydraConfig.get().overrides.task)
    if isinstance(err, AttnlabError):
        log.error("job %s failed [%s]: %s", job.num, overrides, err)
    else:
        log.error("job %s failed [%s]: %s: %s", job.num, overrides, type(err).__name__, err, exc_info=err)
    if cfg.get("dry_run"):
        raise err
    from attnlab import runs

    runs.record_failure(Path(HydraConfig.get().runtime.output_dir), err, overrides=list(HydraConfig.get().overrides.task))
    return float("nan")


@_guarded
def _train_job(cfg: DictConfig) -> float | None:
    from attnlab.train import train as run_training

    return run_training(cfg)


@_guarded
def _validate_job(cfg: DictConfig) -> None:
    from attnlab.validate import validate as run_validation

    run_validation(cfg)


@_guarded
def _generate_job(cfg: DictConfig) -> None:
    from attnlab.generate import generate as run_generation

    run_generation(cfg)


@_guarded
def _plot_job(cfg: DictConfig) -> None:
    from attnlab.errors import RunError

    if bool(cfg.get("run")) == bool(cfg.get("sweep")):
        raise RunError("say what to plot, one of: python viz/plot.py run=<run dir>   or   python viz/plot.py sweep=<sweep dir>")
    out = Path(cfg.out) if cfg.get("out") else None
    if cfg.get("sweep"):
        from attnlab.sweeps.plots import plot_sweep

        written = plot_sweep(Path(cfg.sweep), out)
    else:
        from attnlab import runs
        from attnlab.plots import plot_run

        written = plot_run(runs.require_run(cfg.run), out)
    for path in written:
        log.info("wrote %s", path)


def _prog() -> str:
    """How the user called this command: `python app/train.py` or `attnlab-train`."""
    script = sys.argv[0]
    return f"python {os.path.relpath(script)}" if script.endswith(".py") else Path(script).name


def _main(job: Callable[[DictConfig], Any], config_name: str) -> Callable[[], Any]:
    hydra_main = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(job)

    def main() -> Any:
        if {"--help", "-h"} & set(sys.argv[1:]):
            # Before Hydra: its --help composes the config, then deep-copies it once per option of every group.
            print(config_help(config_name, prog=_prog()))
            return None
        return hydra_main()

    return main


def train() -> Any:
    """`attnlab-train` / app/train.py."""
    return _main(_train_job, "train")()


def validate() -> Any:
    """`attnlab-validate` / val/validate.py."""
    return _main(_validate_job, "validate")()


def plot() -> Any:
    """`attnlab-plot` / viz/plot.py."""
    return _main(_plot_job, "plot")()


def generate() -> Any:
    """`attnlab-generate` / app/generate.py."""
    return _main(_generate_job, "generate")()
