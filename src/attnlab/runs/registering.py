"""Writing to the model registry and reading it back as tables: `register` a run as a new version, `promote` a version
to an alias (with the audit trail in its tags), `version_rows` for `list`, `compare` two or more versions.
Resolving `models:/` addresses and the store are in attnlab.runs.registry."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from attnlab.errors import ConfigError, RunError
from attnlab.runs import registry
from attnlab.runs.directory import CHECKPOINTS, CONFIG, MANIFEST, METRICS, read_json, require_run
from attnlab.tasks import task_name

log = logging.getLogger("attnlab")
AUDIT = "audit"  # a version's tag: the JSON list of its promotions (alias, by, at, the version that held it before)


def register(run_dir: str | Path, name: str, *, alias: str | None = None, store: str | None = None) -> dict[str, Any]:
    """Log the run's files to an MLflow run and register them as a new version of `name`; returns its row."""
    from attnlab.runs.loading import load_model

    registry.check_name(name)
    if alias:
        registry.check_alias(alias)
    run = require_run(run_dir)
    manifest = read_json(run / MANIFEST)
    if manifest.get("status") != "completed":
        raise RunError(f"{run} has status {manifest.get('status')!r}; register a completed run (a failed or interrupted "
                       "one has no final checkpoint and metrics)")
    metrics = read_json(run / METRICS) if (run / METRICS).is_file() else {}
    loaded = load_model(run)  # a run that does not load is refused here, not when it is served
    files, best = registry.run_files(run)
    uri = registry.store_uri(store)
    mlflow = registry.client(store)
    git = manifest.get("git") or {}
    cfg = loaded.cfg
    test = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}
    tags = {
        "run_id": str(manifest.get("run_id") or run.name), "run_dir": str(run), "git_commit": str(git.get("commit")),
        "git_dirty": str(git.get("dirty")), "seed": str(manifest.get("seed")), "experiment": str(cfg.get("name")),
        "task": task_name(cfg), "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
        "checkpoint": best.name if best else registry.ESTIMATOR, "registered_by": registry.user(), "registered_at": registry.now(),
        **{f"data.{k}": registry.tag_value(v, 500) for k, v in sorted(loaded.facts.items())},
        **{k: repr(float(v)) for k, v in test.items()},
        **{f"lineage.{k}": registry.tag_value(v) for k, v in registry.lineage(run).items()},
    }
    ml_run = mlflow.create_run(registry._experiment_id(mlflow, uri), run_name=run.name,
                               tags={"attnlab.run_dir": str(run), "attnlab.registered_as": name,
                                     "mlflow.user": registry.user()})
    run_id = ml_run.info.run_id
    try:
        for key, value in test.items():
            mlflow.log_metric(run_id, key, float(value))
        mlflow.log_param(run_id, "seed", manifest.get("seed"))
        mlflow.log_param(run_id, "experiment", cfg.get("name"))
        if best is not None:  # the best checkpoint only, under its own name
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / CHECKPOINTS).mkdir()
                shutil.copy2(best, Path(tmp) / CHECKPOINTS / best.name)
                mlflow.log_artifacts(run_id, str(Path(tmp)), registry.ARTIFACT_PATH)
        for path in files:
            if path.is_dir():
                mlflow.log_artifacts(run_id, str(path), f"{registry.ARTIFACT_PATH}/{path.name}")
            else:
                mlflow.log_artifact(run_id, str(path), registry.ARTIFACT_PATH)
    except Exception:
        mlflow.set_terminated(run_id, "FAILED")
        raise
    mlflow.set_terminated(run_id)
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(name)
    except MlflowException as err:
        if not registry._missing(err):
            raise
        mlflow.create_registered_model(name, description="attnlab runs registered with python app/registry.py")
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{registry.ARTIFACT_PATH}"
    version = mlflow.create_model_version(name, source, run_id=run_id, tags=tags)
    log.info("registered %s as version %s of %r in %s", run, version.version, name, uri)
    if alias:
        promote(name, int(version.version), alias, store=store)
    return _row(registry.resolve(registry.ModelRef(name, version=int(version.version)), store=store))


def promote(name: str, version: int, alias: str, *, store: str | None = None) -> dict[str, Any]:
    """Point `alias` at the version; who and when go into the version's tags (`promoted.<alias>` and `audit`)."""
    registry.check_alias(alias)
    mlflow = registry.client(store)
    target = registry.resolve(registry.ModelRef(registry.check_name(name), version=int(version)), store=store, mlflow=mlflow)
    previous = next((v.version for v in registry.versions(name, mlflow=mlflow, store=store) if alias in v.aliases), None)
    entry = {"alias": alias, "by": registry.user(), "at": registry.now(), "previous": previous}
    audit = json.loads(target.tags.get(AUDIT, "[]"))
    audit = (audit + [entry])[-20:]  # a tag holds at most a few thousand characters
    mlflow.set_registered_model_alias(name, alias, str(version))
    mlflow.set_model_version_tag(name, str(version), f"promoted.{alias}", f"{entry['by']} at {entry['at']}")
    mlflow.set_model_version_tag(name, str(version), AUDIT, json.dumps(audit))
    log.info("%s: alias %r now points at version %s (was %s), by %s", name, alias, version,
             f"version {previous}" if previous else "unset", entry["by"])
    return entry


def _row(version: Any) -> dict[str, Any]:
    import datetime

    tags = version.tags
    created = datetime.datetime.fromtimestamp(version.creation_timestamp / 1000).astimezone()
    return {
        "version": int(version.version), "aliases": sorted(version.aliases), "created": created.strftime("%Y-%m-%d %H:%M:%S"),
        "run_id": tags.get("run_id"), "git_commit": tags.get("git_commit"), "seed": tags.get("seed"),
        "metrics": {k: float(v) for k, v in sorted(tags.items()) if k.startswith("test/")},
        "lineage": {k.removeprefix("lineage."): v for k, v in sorted(tags.items()) if k.startswith("lineage.")},
        "promotions": json.loads(tags.get(AUDIT, "[]")),
    }


def version_rows(name: str, *, store: str | None = None) -> list[dict[str, Any]]:
    """One row per version, oldest first: aliases, creation time, run id, test metrics, lineage, promotions."""
    return [_row(v) for v in registry.versions(name, store=store)]


def parse_versions(text: Any) -> list[int]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        numbers = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or len(set(numbers)) != len(numbers):
        raise ConfigError(f"versions={text}: give two or more different version numbers, e.g. versions=1,3")
    return numbers


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def compare(name: str, numbers: list[int], *, store: str | None = None) -> dict[str, Any]:
    """The versions' config settings that differ (paths left out: they name where, not what) and their test metrics,
    side by side: {"versions": [...], "config": {key: [value per version]}, "metrics": {key: [...]}}."""
    import mlflow as mlflow_module

    client = registry.client(store)
    found = [registry.resolve(registry.ModelRef(registry.check_name(name), version=n), store=store, mlflow=client)
             for n in numbers]
    configs, metrics = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for version in found:
            folder = Path(tmp) / str(version.version)
            try:
                for file in (CONFIG, METRICS):
                    mlflow_module.artifacts.download_artifacts(artifact_uri=f"{version.source}/{file}", dst_path=str(folder),
                                                               tracking_uri=registry.store_uri(store))
            except Exception as err:
                raise RunError(f"version {version.version} of {name!r}: cannot read its {file} from {version.source} "
                               f"({registry._short(err)}); register the run again") from None
            configs.append(_flat(OmegaConf.to_container(OmegaConf.load(folder / CONFIG))))
            metrics.append(read_json(folder / METRICS))
    homes = [v.tags.get("run_dir") or "\0" for v in found]

    def where(key: str) -> bool:  # paths.*, and settings that name the run's own folder (checkpoint dirpath, ...)
        return key.startswith("paths.") or all(str(c.get(key)).startswith(h) for c, h in zip(configs, homes))

    keys = sorted({k for c in configs for k in c if not where(k)})
    differ = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1}
    metric_keys = sorted({k for m in metrics for k in m if k.startswith(("test/", "val/"))})
    return {"versions": [int(v.version) for v in found], "config": differ,
            "metrics": {k: [m.get(k) for m in metrics] for k in metric_keys}}


# -- the command line: python app/registry.py register|list|compare|promote ----------------------------------------------
COMMANDS = {  # command: (its keys, the required ones)
    "register": (("run", "name", "alias", "store"), ("run", "name")),
    "list": (("name", "store"), ("name",)),
    "compare": (("name", "versions", "store"), ("name", "versions")),
    "promote": (("name", "version", "alias", "store"), ("name", "version", "alias")),
}
SHOWN = 4  # test metrics in a `list` table: the first few overall ones (test/acc, not test/acc_class/3)


def run_command(command: str, args: dict[str, str]) -> Any:
    """One registry command with its checked key=value arguments; prints its table."""
    store = args.get("store") or None
    name = registry.check_name(args["name"])
    if command == "register":
        register(args["run"], name, alias=args.get("alias") or None, store=store)
        print_versions(name, version_rows(name, store=store), registry.store_uri(store))
    elif command == "list":
        print_versions(name, version_rows(name, store=store), registry.store_uri(store))
    elif command == "compare":
        print_comparison(name, compare(name, parse_versions(args["versions"]), store=store))
    elif command == "promote":
        if not args["version"].isdigit():
            raise ConfigError(f"version={args['version']}: a version number, e.g. version=2 (python app/registry.py "
                              f"list name={name} shows them)")
        promote(name, int(args["version"]), args["alias"], store=store)
        print_versions(name, version_rows(name, store=store), registry.store_uri(store))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def print_versions(name: str, rows: list[dict[str, Any]], store: str) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = sorted({k for r in rows for k in r["metrics"] if k.count("/") == 1})[:SHOWN]
    table = Table(title=f"{name} ({store})")
    for column in ("version", "aliases", "created", "run", "commit", *metrics, "lineage", "promoted"):
        table.add_column(column, justify="right" if column in metrics or column == "version" else "left",
                         no_wrap=column in ("run", "created"))
    for r in rows:
        lineage = "; ".join(f"{k}: {v}" for k, v in r["lineage"].items()) or "-"
        promoted = "; ".join(f"{p['alias']}: {p['by']}, {p['at'][:16].replace('T', ' ')}"
                             + (f" (was v{p['previous']})" if p.get("previous") else "") for p in r["promotions"]) or "-"
        table.add_row(str(r["version"]), ", ".join(r["aliases"]) or "-", r["created"], str(r["run_id"]),
                      str(r["git_commit"])[:8], *(_number(r["metrics"].get(m)) for m in metrics), lineage, promoted)
    Console(width=max(200, Console().width)).print(table)


def print_comparison(name: str, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    for title, values in (("config settings that differ", result["config"]), ("metrics", result["metrics"])):
        table = Table(title=f"{name}: {title}")
        table.add_column("key")
        for v in result["versions"]:
            table.add_column(f"v{v}", justify="right")
        for key, row in values.items():
            table.add_row(key, *(_number(v) for v in row))
        if not values:
            table.add_row("(none)", *("" for _ in result["versions"]))
        console.print(table)
