"""Writing and checking run directories (layout: see attnlab.runs). Plain Python and OmegaConf: no torch here."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from attnlab.errors import RunError

CONFIG, MANIFEST, METRICS, HISTORY = "config.yaml", "manifest.json", "metrics.json", "history.csv"
CHECKPOINTS, PLOTS = "checkpoints", "plots"
_PACKAGES = ("attnlab", "torch", "lightning", "torchmetrics", "hydra-core", "omegaconf", "numpy")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a crash mid-write never leaves a half file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"cannot read {path}: {err}") from None


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """history.csv -> {metric: [(step, value), ...]} in logging order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"]) if row["step"] not in ("", "None") else 0
            series.setdefault(row["metric"], []).append((step, float(row["value"])))
    return series


def git_state(root: Path) -> dict[str, Any]:
    """Commit and dirty flag of the checkout, or nulls outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None  # new, un-ignored files count: they may be code
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float | str | None]:
    """Plain floats for JSON (tensors -> float; NaN/inf kept as strings would break readers, so they become None).
    A string (a score's signature, e.g. `test/bleu_signature`) is kept as it is."""
    out: dict[str, Any] = {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, str):
            out[key] = value
            continue
        value = float(value.item() if hasattr(value, "item") else value)
        out[key] = value if math.isfinite(value) else None
    return out


@dataclass
class Run:
    """A run directory being written by training."""

    dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def start(self, cfg: DictConfig, *, run_id: str, group: str | None, root: Path, overrides: list[str] | None = None) -> None:
        """Write config.yaml and a manifest with status `running` (a SIGKILL leaves it so)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / CHECKPOINTS).mkdir(exist_ok=True)
        OmegaConf.save(cfg, self.dir / CONFIG, resolve=True)
        write_json(
            self.manifest_path,
            {
                "run_id": run_id,
                "group": group,
                "status": "running",
                "command": shlex.join([sys.executable, *sys.argv]),
                "overrides": list(overrides or []),  # this job's own overrides (in a sweep: the job's, not the sweep's)
                "cwd": os.getcwd(),
                "git": git_state(root),
                "versions": package_versions(),
                "seed": cfg.get("seed"),
                "host": socket.gethostname(),
                "start": _now(),
                "end": None,
                "resumes": [],
                "trackers": {},
                "error": None,
            },
        )

    def resume(self) -> dict[str, Any]:
        """Mark a resumed run as running again; returns its manifest."""
        manifest = read_json(self.manifest_path)
        manifest["resumes"].append({"time": _now(), "previous_status": manifest["status"], "command": shlex.join(sys.argv)})
        manifest.update(status="running", end=None, error=None)
        write_json(self.manifest_path, manifest)
        return manifest

    def update(self, **fields: Any) -> None:
        manifest = read_json(self.manifest_path)
        manifest.update(fields)
        write_json(self.manifest_path, manifest)

    def finish(self, status: str, *, metrics: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        """Record the final status (`completed`, `pruned` by a search's pruner, `failed`, `interrupted`) and metrics."""
        fields: dict[str, Any] = {"status": status, "end": _now()}
        if error is not None:
            fields["error"] = describe_error(error)
        if metrics is not None:
            write_json(self.dir / METRICS, finite_metrics(metrics))
        self.update(**fields)


def describe_error(error: BaseException) -> dict[str, str]:
    """An exception as the manifest stores it."""
    return {"type": type(error).__name__, "message": str(error), "traceback": "".join(traceback.format_exception(error))[-4000:]}


def record_failure(run_dir: Path, error: BaseException, *, overrides: list[str]) -> None:
    """A sweep job that failed before its run started (no manifest yet) still gets one, saying why."""
    if (run_dir / MANIFEST).is_file():
        return  # training recorded it
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"status": "failed", "overrides": overrides, "start": _now(), "end": _now(), "error": describe_error(error)}
    write_json(run_dir / MANIFEST, manifest)


def require_run(path: str | Path) -> Path:
    """Validate a user-supplied run directory."""
    run_dir = Path(path).expanduser().resolve()
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    missing = [name for name in (CONFIG, MANIFEST) if not (run_dir / name).is_file()]
    if missing:
        raise RunError(
            f"{run_dir} is not an attnlab run directory (missing {', '.join(missing)}); "
            "pass a folder under results/runs/ or a job folder of a sweep"
        )
    return run_dir


def load_config(run_dir: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(run_dir / CONFIG)
    except Exception as err:
        raise RunError(f"cannot read {run_dir / CONFIG}: {err}") from None
    assert isinstance(cfg, DictConfig)
    cfg.paths.output_dir = str(run_dir)  # the run may have been moved since it was written
    return cfg


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """`best`, `last`, `averaged` or a path; checked to exist."""
    ckpt_dir = run_dir / CHECKPOINTS
    if which in ("last", "averaged"):
        path = ckpt_dir / f"{which}.ckpt"  # averaged.ckpt: written by average_last=N (attnlab.callbacks)
    elif which == "best":
        best = sorted(p for p in ckpt_dir.glob("*.ckpt") if p.name not in ("last.ckpt", "averaged.ckpt") and not p.name.startswith("last-"))
        path = best[-1] if best else ckpt_dir / "last.ckpt"
    else:
        path = Path(which).expanduser().resolve()
    if not path.is_file():
        raise RunError(f"no checkpoint {path}; choose ckpt=best, ckpt=last, ckpt=averaged (runs with average_last) or the path of a .ckpt file")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain values only, never code."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RunError(f"cannot load checkpoint {path}: {type(err).__name__}: {str(err)[:300]}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RunError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


_SKOPS_ROOTS = ("sklearn", "numpy", "scipy", "builtins", "collections")


def save_skops(obj: Any, path: Path) -> None:
    """Save a scikit-learn object with skops (a format that loads without executing code), atomically."""
    import skops.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    sio.dump(obj, tmp)
    os.replace(tmp, path)


def load_skops(path: Path) -> Any:
    """Load a skops file, trusting only types of scikit-learn, numpy and scipy: never pickle, never code from a file."""
    import skops.io as sio

    if not path.is_file():
        raise RunError(f"no such file {path}")
    try:
        untrusted = sio.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if t.split(".")[0] not in _SKOPS_ROOTS]
        if foreign:
            raise RunError(f"{path} holds types outside scikit-learn/numpy/scipy ({', '.join(foreign[:5])}); refused")
        return sio.load(path, trusted=untrusted)
    except RunError:
        raise
    except Exception as err:
        raise RunError(f"cannot load {path}: {type(err).__name__}: {str(err)[:300]}") from None
