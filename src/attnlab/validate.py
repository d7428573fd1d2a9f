"""Standalone validation of a saved run: `python val/validate.py run=<run dir> [ckpt=best|last|<path>] [split=test|val]`;
`run=models:/<name>@<alias>` validates a registered model (its report goes to results/validation/<name>-v<version>/)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from attnlab import build, classical, runs
from attnlab.errors import ConfigError
from attnlab.runs import registry

log = logging.getLogger("attnlab")
SPLITS = ("test", "val")


def _print_table(title: str, metrics: dict[str, float | str | None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, "nan" if value is None else value if isinstance(value, str) else f"{value:.5g}")
    Console().print(table)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Compute the task's metrics on a split, write validation/<split>.json and its figures, print a table."""
    if not cfg.get("run"):
        raise ConfigError("say which run to validate: python val/validate.py run=<run dir>")
    if cfg.split not in SPLITS:
        raise ConfigError(f"unknown split '{cfg.split}'; choose one of: {', '.join(SPLITS)}")
    loaded = runs.load_model(cfg.run, str(cfg.ckpt), store=cfg.get("store"))  # a run directory or models:/<name>@<alias>
    run_cfg, run_dir = loaded.cfg, loaded.run_dir
    if cfg.get("data_dir"):
        node = run_cfg.data.source if "data_dir" in run_cfg.data.get("source", {}) else run_cfg.data  # translation: data.source
        node.data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    for key, value in (cfg.get("task") or {}).items():  # e.g. task.beam_size=1: the run's test decoded greedily
        if key not in run_cfg.task:
            raise ConfigError(f"task.{key}: the run's task ({run_cfg.task._target_}) has no such setting; it has: "
                              f"{', '.join(k for k in run_cfg.task if k != '_target_')}")
        run_cfg.task[key] = value
    for key, value in (cfg.get("data") or {}).items():  # e.g. data.test_noise_std=0.5: the test split at another noise
        run_cfg.data[key] = value
    if cfg.get("data"):
        build.check(run_cfg.data, "data")  # a key the run's data module does not take is one clear line
    # Around the loaded model: the task (its metrics, no optimizer) and the data module of the split evaluated.
    datamodule = build.make_datamodule(run_cfg, artifacts=run_dir)
    out_dir = registry.validation_dir(run_dir)  # a registered model's: results/validation/<name>-v<version>/
    # With changed task settings the report is named after them, beside (never over) the plain one.
    changed = {**(cfg.get("task") or {}), **(cfg.get("data") or {})}
    name = "_".join([cfg.split, *(f"{k}={_file_safe(v)}" for k, v in sorted(changed.items()))])
    if classical.is_estimator_run(run_dir):  # a scikit-learn estimator: the same metric code, no Lightning loop
        metrics, artifacts = classical.evaluate(loaded.model, datamodule, cfg.split, out_dir / name)
        return _report(cfg, run_cfg, out_dir, name, loaded, metrics, artifacts, datamodule)
    task = build.make_task(run_cfg, loaded.model, loaded.facts, training=False)
    task.figures_dir = out_dir / name
    L.seed_everything(run_cfg.seed, verbose=False)
    datamodule.prepare_data()
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        precision=run_cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(cfg.progress_bar),
    )
    # Through the data module's batch hooks (data.denoise_with runs there, on the batch's device), on the chosen split.
    split = _Split(datamodule, loader)
    results = {k: v for per_loader in trainer.test(task, datamodule=split, verbose=False) for k, v in per_loader.items()}
    results.update(task.test_labels)
    # The test loop logs under test/; name the numbers after the split they were computed on.
    metrics = {f"{cfg.split}/{k.split('/', 1)[1]}": v for k, v in results.items()}
    return _report(cfg, run_cfg, out_dir, name, loaded, metrics, task.test_artifacts, datamodule)


def _report(cfg: DictConfig, run_cfg: DictConfig, out_dir: Path, name: str, loaded: runs.LoadedRun,
            metrics: dict[str, Any], artifacts: dict[str, Any], datamodule: Any) -> dict[str, Any]:
    """Write validation/<name>.json (metrics, what was validated, lineage, the task's artifacts) and print a table."""
    metrics = runs.finite_metrics(metrics)
    report = {"run": str(loaded.run_dir), "registered": registry.source_of(loaded.run_dir),
              "checkpoint": str(loaded.checkpoint), "split": cfg.split,
              "seed": run_cfg.get("seed"), "task": dict(cfg.get("task") or {}), "data": dict(cfg.get("data") or {}),
              "metrics": metrics, "parents": datamodule.lineage() if hasattr(datamodule, "lineage") else [], **artifacts}
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / f"{name}.json", report)
    _print_table(f"{registry.label(loaded.run_dir)}: {cfg.split} ({loaded.checkpoint.name})", metrics)
    log.info("wrote %s and figures in %s", out_dir / f"{name}.json", out_dir / name)
    return report


def _file_safe(value: Any) -> str:
    """A setting's value in a report's file name: a path (data.denoise_with=<run dir>) by its last part."""
    text = str(value)
    return Path(text).name if "/" in text or "\\" in text else text


def record_sweep_job(job_dir: Path, report: dict[str, Any], *, overrides: list[str]) -> None:
    """A validation sweep's job directory as the sweep summary reads it: manifest.json (status, overrides, the run
    and checkpoint validated) and metrics.json (the report's metrics)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(job_dir / runs.METRICS, report["metrics"])
    runs.write_json(job_dir / runs.MANIFEST, {"status": "completed", "overrides": overrides, "run": report["run"],
                                              "checkpoint": report["checkpoint"], "split": report["split"], "seed": report["seed"],
                                              "parents": report["parents"], "error": None})


class _Split(L.LightningDataModule):
    """One split's loader as the test loader, with the run's data module's batch hooks (so a data module's
    on-device transform, `data.denoise_with`, runs in validation as in training) and its other attributes."""

    def __init__(self, datamodule: L.LightningDataModule, loader: Any) -> None:
        super().__init__()
        self.datamodule, self.loader = datamodule, loader

    def test_dataloader(self) -> Any:
        return self.loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)

    def __getattr__(self, name: str) -> Any:  # example_inputs, facts, ...: the run's data module's
        if name in ("datamodule", "loader") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.datamodule, name)
