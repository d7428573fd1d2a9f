"""Command-line entry points (`attnlab-train`, `attnlab-validate`, `attnlab-plot`).

This module imports Hydra and OmegaConf only: `--help` and `--cfg job` must not pay for torch or Lightning
(about 5 s), so the heavy modules are imported inside the job functions.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attnlab.errors import AttnlabError

log = logging.getLogger("attnlab")
# Lightning-internal deprecation noise a user cannot act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def repo_root() -> Path:
    """The checkout that holds conf/ (the package is installed editable from it)."""
    return Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    """Where the Hydra configs live: $ATTNLAB_CONF_DIR or <repo>/conf."""
    path = Path(os.environ.get("ATTNLAB_CONF_DIR", repo_root() / "conf"))
    if not (path / "train.yaml").is_file():
        raise SystemExit(
            f"attnlab: no configs at {path} (looked for train.yaml); install the package editable from the repo "
            "(pip install -e .) or set ATTNLAB_CONF_DIR to the repo's conf/ folder"
        )
    return path


def _run_dir(resume: Any, fresh: str) -> str:
    """hydra.run.dir: the run being resumed, else a fresh directory."""
    if isinstance(resume, bool):  # `resume=true` names no run; only a sweep resumes in place (checked by train)
        return fresh
    return str(Path(resume).expanduser().resolve()) if resume else fresh


def _choices(*groups: str, _root_: DictConfig) -> str:
    """`${attnlab_choices:data,model}` -> "mnist_cnn": the chosen options, joined.

    Reads the choices from the config root while Hydra's node is in it (a launcher naming a sweep directory),
    else from the running job's HydraConfig.
    """
    node = _root_.get("hydra") if "hydra" in _root_ else None
    choices = node.runtime.choices if node is not None else HydraConfig.get().runtime.choices
    return "_".join(str(choices.get(group)) for group in groups)


def _job_gpu(n_gpus: int) -> int:
    """`${attnlab_job_gpu:4}` -> this sweep job's GPU, job number modulo the GPU count (0 outside a sweep)."""
    job = HydraConfig.get().job if HydraConfig.initialized() else None
    num = job.get("num") if job is not None else None
    return int(num) % int(n_gpus) if isinstance(num, int) else 0


def register_resolvers() -> None:
    """Resolvers the configs use; idempotent, so importing this module anywhere is enough."""
    resolvers: dict[str, tuple[Callable[..., Any], bool]] = {
        "attnlab_root": (lambda: str(repo_root()), True),
        # Cached per config and copied by Hydra to every job of a sweep, so a sweep shares one id while two
        # runs started in the same second never collide.
        "attnlab_uid": (lambda: secrets.token_hex(3), True),
        "attnlab_run_dir": (_run_dir, False),
        "attnlab_choices": (_choices, False),
        "attnlab_job_gpu": (_job_gpu, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()


def is_multirun() -> bool:
    """True inside a job of a Hydra multirun (a sweep)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
    from attnlab.plots import plot_command

    plot_command(cfg)


def _main(job: Callable[[DictConfig], Any], config_name: str) -> Callable[[], Any]:
    return hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(job)


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
