"""The model registry, on MLflow's: a run registered as a numbered version of a named model, aliases that move
(`champion`), and `models:/<name>@<alias>` or `models:/<name>/<version>` resolved to a local copy of the version's
files, which `load_model` reads exactly as it reads a run directory.

    register  the run's files (config.yaml, manifest.json, metrics.json, history.csv, the best checkpoint, whatever
              else the data module saved: tokenizer/, ...) logged as the artifacts of an MLflow run; a model version
              made from them, tagged with the run id, git commit, data facts, test metrics and lineage
    promote   moves an alias to a version; who and when go into the version's tags (the audit trail)
    fetch     a version's files, downloaded once into <results>/registry_cache/<name>/v<version>-<MLflow run id>

The store is `store=` (any MLflow tracking URI), else $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db. The
files are plain artifacts, not an MLflow flavour (which would pickle the module): a version loads with
torch.load(weights_only=True), as a run does. mlflow is imported inside the functions (about 2 s).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnlab.errors import ConfigError, RunError
from attnlab.runs.directory import CHECKPOINTS, CONFIG, MANIFEST, METRICS, find_checkpoint, read_json, require_run

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger("attnlab")

PREFIX = "models:/"
EXPERIMENT = "attnlab-registry"  # the MLflow experiment that holds one run per registration
ARTIFACT_PATH = "model"  # the version's files, under the MLflow run's artifacts
SOURCE_FILE = "registry.json"  # in a fetched copy: which version of which model it is
CACHE = "registry_cache"
ESTIMATOR = "model.skops"  # a classical run's fitted estimator (attnlab.runs.loading)
NOT_REGISTERED = {CHECKPOINTS, "plots", "validation", "export", "hf", "wandb", "tensorboard", "mlruns", "csv",
                  "lightning_logs", ".hydra"}  # a run's folders that loading never reads (checkpoints: the best only)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")


@dataclass(frozen=True)
class ModelRef:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`, parsed and checked."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_model_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{what}={name!r}: a model name is letters, digits, '_', '.' and '-' (at most 100, starting "
                          "with a letter or digit), e.g. name=mnist_cnn")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS.fullmatch(alias) or alias == "latest" or re.fullmatch(r"v\d+", alias):
        raise ConfigError(f"alias={alias!r}: an alias is letters, digits, '_' and '-', starting with a letter, and not "
                          "'latest' or v<number> (MLflow reserves those), e.g. alias=champion")
    return alias


def parse(uri: str) -> ModelRef:
    """`models:/<name>@<alias>` or `models:/<name>/<version>`; anything else is a ConfigError saying the forms."""
    rest = uri[len(PREFIX):] if is_model_uri(uri) else None
    forms = "models:/<name>@<alias> (models:/mnist@champion) or models:/<name>/<version> (models:/mnist/3)"
    if rest and "@" in rest:
        name, _, alias = rest.partition("@")
        return ModelRef(check_name(name), alias=check_alias(alias))
    if rest and "/" in rest:
        name, _, version = rest.partition("/")
        if version.isdigit() and int(version) > 0:
            return ModelRef(check_name(name), version=int(version))
    raise ConfigError(f"{uri!r} is not a registered model's address; write {forms}")


# -- the store ----------------------------------------------------------------------------------------------------------
def results_dir() -> Path:
    from attnlab.config import repo_root

    return Path(os.environ.get("ATTNLAB_RESULTS_DIR") or repo_root() / "results")


def store_uri(store: str | None = None) -> str:
    """`store`, else $MLFLOW_TRACKING_URI, else the local sqlite file results/mlflow.db."""
    return store or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results_dir() / 'mlflow.db'}"


def client(store: str | None = None) -> MlflowClient:
    """An MlflowClient on the store (tracking and registry in one); a local sqlite file's folder is made first."""
    uri = store_uri(store)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Running upgrade ..." once per new database
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file would fill the log
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError("the model registry needs MLflow's client: pip install mlflow-skinny (pinned in "
                          "requirements.txt; the trackers extra: pip install -e '.[trackers]')") from None
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as err:
        raise ConfigError(f"store={uri}: MLflow cannot open it ({type(err).__name__}: {_short(err)}); give an MLflow "
                          "tracking URI (sqlite:///path/mlflow.db, http://host:5000) with store= or MLFLOW_TRACKING_URI") from None


def _short(err: BaseException, n: int = 300) -> str:
    return " ".join(str(err).split())[:n]


def _missing(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _experiment_id(mlflow: MlflowClient, uri: str) -> str:
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # beside the database, not in ./mlruns of whatever folder the command ran in
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(EXPERIMENT, artifact_location=location)


# -- resolving ------------------------------------------------------------------------------------------------------------
def versions(name: str, *, store: str | None = None, mlflow: MlflowClient | None = None) -> list[ModelVersion]:
    """Every version of a registered model, oldest first; an unknown name is a RunError listing the known ones."""
    mlflow = mlflow or client(store)
    check_name(name)
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(name)
    except MlflowException as err:
        if not _missing(err):
            raise RunError(f"the registry at {store_uri(store)} failed: {_short(err)}") from None
        known = sorted(m.name for m in mlflow.search_registered_models(max_results=1000))
        raise RunError(f"no registered model {name!r} in {store_uri(store)}; registered: {', '.join(known) or 'none'} "
                       "(python app/registry.py register run=<run dir> name=<name>)") from None
    found = mlflow.search_model_versions(f"name = '{name}'", max_results=10000)
    # a search leaves out the aliases: each version again, with them
    return [mlflow.get_model_version(name, str(v.version)) for v in sorted(found, key=lambda v: int(v.version))]


def resolve(ref: ModelRef | str, *, store: str | None = None, mlflow: MlflowClient | None = None) -> ModelVersion:
    """The model version an address names; unknown name, alias or version: a RunError listing what there is."""
    ref = parse(ref) if isinstance(ref, str) else ref
    mlflow = mlflow or client(store)
    known = versions(ref.name, store=store, mlflow=mlflow)
    for version in known:
        if (ref.alias and ref.alias in version.aliases) or (ref.version and int(version.version) == ref.version):
            return version
    if ref.alias:
        aliases = [f"{a} (v{v.version})" for v in known for a in v.aliases]
        raise RunError(f"{ref}: model {ref.name!r} has no alias {ref.alias!r}; its aliases: {', '.join(aliases) or 'none'} "
                       f"(python app/registry.py promote name={ref.name} version=<n> alias={ref.alias})")
    raise RunError(f"{ref}: model {ref.name!r} has no version {ref.version}; its versions: "
                   f"{', '.join(str(v.version) for v in known) or 'none'}")


def fetch(uri: str, *, store: str | None = None, cache_dir: Path | None = None) -> Path:
    """A local copy of the version's files (a run directory as load_model reads it), downloaded once."""
    mlflow = client(store)
    version = resolve(uri, store=store, mlflow=mlflow)
    name = check_name(version.name)
    cache = Path(cache_dir) if cache_dir else results_dir() / CACHE
    run_id = re.sub(r"[^A-Za-z0-9]", "", str(version.run_id or ""))[:32]  # from the store: never a path of its own
    target = cache / name / f"v{int(version.version)}-{run_id}"
    if (target / SOURCE_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version.version}-", dir=target.parent))
    try:
        import mlflow as mlflow_module

        try:
            mlflow_module.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp),
                                                       tracking_uri=store_uri(store))
        except Exception as err:
            raise RunError(f"{uri} (version {version.version} of {name!r}): its files cannot be read from {version.source} "
                           f"({type(err).__name__}: {_short(err)}); register the run again") from None
        files = tmp / ARTIFACT_PATH if (tmp / ARTIFACT_PATH).is_dir() else tmp
        lost = [p for p in (CONFIG, MANIFEST) if not (files / p).is_file()]
        if lost or not (any((files / CHECKPOINTS).glob("*.ckpt")) or (files / ESTIMATOR).is_file()):
            raise RunError(f"{uri} (version {version.version} of {name!r}): files missing at {version.source}: "
                           f"{', '.join(lost) or 'no checkpoint'}; register the run again")
        (files / SOURCE_FILE).write_text(json.dumps({"name": name, "version": int(version.version), "run_id":
                                                     version.run_id, "source": version.source, "store": store_uri(store),
                                                     "run": version.tags.get("run_id")}, indent=2) + "\n")
        if target.exists():  # another process fetched it meanwhile
            return target
        files.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: version %s of %s fetched into %s", uri, version.version, name, target)
    return target


def source_of(run_dir: Path) -> dict[str, Any] | None:
    """For a fetched copy: {name, version, run_id, source, store, run}; None for a plain run directory."""
    path = Path(run_dir) / SOURCE_FILE
    return read_json(path) if path.is_file() else None


def label(run_dir: Path) -> str:
    """How answers and metrics name what produced them: `<name>/<version>` for a registered model, else the run's
    folder name."""
    source = source_of(run_dir)
    return f"{source['name']}/{source['version']}" if source else Path(run_dir).name


def validation_dir(run_dir: Path) -> Path:
    """Where validate writes its report: the run's validation/, or for a registered model (whose copy is a cache)
    <results>/validation/<name>-v<version>/."""
    source = source_of(run_dir)
    return results_dir() / "validation" / f"{source['name']}-v{source['version']}" if source else Path(run_dir) / "validation"


# -- tags -----------------------------------------------------------------------------------------------------------------
def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def tag_value(value: Any, limit: int = 4000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_files(run_dir: Path) -> tuple[list[Path], Path | None]:
    """(the run's files and folders a version holds, its best checkpoint: None for a classical run, whose fitted
    estimator is the file model.skops among the others)."""
    run = require_run(run_dir)
    files = [p for p in sorted(run.iterdir()) if p.name not in NOT_REGISTERED and not p.name.endswith((".tmp", ".log"))]
    return files, None if (run / ESTIMATOR).is_file() else find_checkpoint(run, "best")


def lineage(run_dir: Path) -> dict[str, Any]:
    """What a run descends from: init_from (another run's weights), parents (runs its data goes through, such as
    data.denoise_with), a teacher (distillation)."""
    from attnlab.runs.directory import load_config

    manifest = read_json(Path(run_dir) / MANIFEST)
    cfg = load_config(Path(run_dir))
    out: dict[str, Any] = {}
    if manifest.get("init_from"):
        out["init_from"] = manifest["init_from"].get("checkpoint")
    if manifest.get("parents"):
        out["parents"] = manifest["parents"]
    teacher = cfg.get("task", {}).get("teacher") if hasattr(cfg.get("task", {}), "get") else None
    if teacher:
        out["teacher"] = str(teacher)
    return out
