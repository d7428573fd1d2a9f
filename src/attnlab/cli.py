"""Command-line entry points (`attnlab-train`, `attnlab-validate`, `attnlab-plot`, `attnlab-predict`,
`attnlab-registry`, ...).

This module imports Hydra and OmegaConf only: `--help` and `--cfg job` must not pay for torch or Lightning
(about 5 s), so the heavy modules are imported inside the job functions.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, ConfigCompositionException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

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
            if not isinstance(err, (AttnlabError, InterpolationResolutionError)):  # the latter: a config value
                raise
            print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)  # no traceback; runs also record it
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
    from attnlab.build import check_switched_groups
    from attnlab.train import train as run_training

    if not cfg.get("resume"):  # a resumed run keeps its saved config
        hc = HydraConfig.get()
        check_switched_groups(cfg, hc.runtime.choices, list(hc.overrides.task))
    return run_training(cfg)


@_guarded
def _validate_job(cfg: DictConfig) -> None:
    from attnlab.validate import record_sweep_job, validate as run_validation

    report = run_validation(cfg)
    if is_multirun():  # `validate -m run=<dir> data.test_noise_std=0,0.1,0.3`: each job's record, for the sweep summary
        hc = HydraConfig.get()
        record_sweep_job(Path(hc.runtime.output_dir), report, overrides=list(hc.overrides.task))


@_guarded
def _generate_job(cfg: DictConfig) -> None:
    from attnlab.generate import generate as run_generation

    run_generation(cfg)


@_guarded
def _translate_job(cfg: DictConfig) -> None:
    from attnlab.translate import translate as run_translation

    run_translation(cfg)


@_guarded
def _serve_job(cfg: DictConfig) -> None:
    from attnlab.serving.server import serve as run_server

    run_server(cfg)


@_guarded
def _plot_job(cfg: DictConfig) -> None:
    from attnlab.errors import RunError

    if cfg.get("compare"):  # two tabular runs: importances side by side, where their errors agree
        from attnlab.classical import compare

        pair = list(cfg.compare)
        if len(pair) != 2:
            raise RunError("compare takes two runs: python viz/plot.py compare=[<run dir>,<run dir>]")
        log.info("wrote %s", compare(pair[0], pair[1], Path(cfg.out) if cfg.get("out") else None))
        return
    if sum(bool(cfg.get(k)) for k in ("run", "sweep", "data")) != 1:
        raise RunError("say what to plot, one of: python viz/plot.py run=<run dir>   or   python viz/plot.py "
                       "sweep=<sweep dir>   or   python viz/plot.py data=<data config>   or   python viz/plot.py "
                       "compare=[<run dir>,<run dir>]")
    out = Path(cfg.out) if cfg.get("out") else None
    if cfg.get("data"):
        from attnlab.data.report import write_report

        name = str(HydraConfig.get().runtime.choices.get("data") or "data")
        command = " ".join([_prog(), *(o for o in HydraConfig.get().overrides.task if not o.startswith("out="))])
        written = [write_report(cfg, out or Path(cfg.paths.results_dir) / "data_reports" / name, title=f"data={name}",
                                command=command)]
    elif cfg.get("sweep"):
        from attnlab.sweeps.plots import plot_sweep

        written = plot_sweep(Path(cfg.sweep), out)
    else:
        from attnlab import runs
        from attnlab.plots import plot_run

        written = plot_run(runs.require_run(cfg.run), out)
    for path in written:
        log.info("wrote %s", path)


@_guarded
def _predict_job(cfg: DictConfig) -> None:
    from attnlab.predict import run_predict

    run_predict(run=cfg.run, input=cfg.input, output=cfg.output, top_k=int(cfg.top_k), batch_size=int(cfg.batch_size),
                ckpt=str(cfg.ckpt), progress=bool(cfg.progress_bar))


def _prog() -> str:
    """How the user called this command: `python app/train.py` or `attnlab-train`."""
    script = sys.argv[0]
    return f"python {os.path.relpath(script)}" if script.endswith(".py") else Path(script).name


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _close(key: str, candidates: list[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(prefix + n for n in near)}?" if near else ""


def _unknown_key(err: ConfigCompositionException) -> str | None:
    """The fix for `group.key=value` where the composed config has no such key (Hydra says only "not in struct")."""
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if not isinstance(cause, OmegaConfBaseException) or not full_key or not str(err).startswith("Could not override"):
        return None
    path, _, key = str(full_key).rpartition(".")
    value = str(err).rpartition("=")[2]  # Hydra's message ends with "+<key>=<value>"
    siblings = [f"{path}.{k}" if path else str(k) for k in (parent.keys() if parent is not None else ())]
    if path == "trainer":
        from attnlab.build import parameters  # imports Lightning: only on this error path

        import lightning

        params = [n for n in parameters(lightning.pytorch.Trainer)[0] if n not in ("logger", "callbacks")]
        if key in params:
            return (f"trainer.{key} is a Lightning Trainer argument attnlab sets no default for; add it with a plus: "
                    f"+trainer.{key}={value}")
        return f"trainer.{key} is no Lightning Trainer argument{_close(key, params, 'trainer.')}"
    return (f"{full_key} is not in the config{_close(str(full_key), siblings)} (a new key takes a plus: "
            f"+{full_key}={value}; python app/train.py --cfg job shows the config)")


def _main(job: Callable[[DictConfig], Any], config_name: str) -> Callable[[], Any]:
    """Hydra's main for `job`; a config Hydra cannot compose is one `error:` line naming the fix, exit 2."""
    app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(job)

    def run() -> Any:
        if {"--help", "-h"} & set(sys.argv[1:]):
            # Before Hydra: its --help composes the config, then deep-copies it once per option of every group.
            print(config_help(config_name, prog=_prog()))
            return None
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return app()  # the user asked for Hydra's own reports, tracebacks included
        # Hydra prints a composition error and exits 1 itself; with HYDRA_FULL_ERROR set it raises it to us instead.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return app()
        except CompactHydraException as err:  # composition: unknown key or option, bad override syntax
            message = _unknown_key(err) if isinstance(err, ConfigCompositionException) else None
            if message is None:  # Hydra's own words (a missing option lists the available ones), as Hydra prints them
                message = str(err) + (f"\n{err.__cause__}" if isinstance(err.__cause__, OmegaConfBaseException) else "")
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)

    return run


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
    _free_text("prompt")
    return _main(_generate_job, "generate")()


def predict() -> Any:
    """`attnlab-predict` / app/predict.py."""
    _free_text("input")
    return _main(_predict_job, "predict")()


def _free_text(*keys: str) -> None:
    """Let `key=<any text>` through Hydra's override grammar, which refuses unquoted `!`, `,`, `(`, ... : quote the
    value (unless it is quoted already), so `text=Stop, thief!` means what it says."""
    for i, arg in enumerate(sys.argv[1:], start=1):
        key, eq, value = arg.partition("=")
        if eq and key in keys and not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            sys.argv[i] = f"{key}='" + value.replace("'", "\\'") + "'"


def translate() -> Any:
    """`attnlab-translate` / app/translate.py."""
    _free_text("text")
    return _main(_translate_job, "translate")()


def serve() -> Any:
    """`attnlab-serve` / app/serve.py."""
    # `model=models:/x@champion` sets serve.yaml's model_uri: to Hydra, `model=` picks an option of the conf/model/ group
    sys.argv[1:] = [f"model_uri={a[len('model='):]}" if a.startswith("model=") else a for a in sys.argv[1:]]
    return _main(_serve_job, "serve")()


def script_fail(message: str) -> NoReturn:
    """One `error:` line on stderr and exit code 2: how the scripts/ commands refuse bad arguments."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def script_settings(argv: list[str], defaults: dict[str, Any], *, usage: str) -> dict[str, Any]:
    """The key=value arguments of a scripts/ command over `defaults`, each converted to its default's type (a None
    default keeps the text); an unknown key, a value of the wrong type or a missing `run` is one line and exit 2.
    -h / --help prints the script's docstring and its keys with their defaults, and exits 0."""
    if {"-h", "--help"} & set(argv):
        doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
        keys = "\n".join(f"  {key}={'' if value is None else value}" for key, value in defaults.items())
        print(f"{doc or 'usage: ' + usage}\n\nkeys (defaults):\n{keys}")
        raise SystemExit(0)
    args = dict(defaults)
    for item in argv:
        key, eq, value = item.partition("=")
        if not eq or key not in defaults:
            script_fail(f"expected key=value with key one of {', '.join(defaults)}; got {item!r}")
        try:
            args[key] = value if defaults[key] is None else type(defaults[key])(value)
        except ValueError:
            script_fail(f"{key}={value}: expected {type(defaults[key]).__name__}")
    if "run" in defaults and not args["run"]:
        script_fail(f"say which run: {usage}")
    return args


def cpu_name() -> str:
    """lscpu's model name, its widest vector extension and the core count: what the scripts/ benchmarks print."""
    import platform
    import subprocess

    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("Flags")), "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({isa}, {os.cpu_count()} cores)"


def time_rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms per call of each named call: a warm-up each, then rounds that call every one in turn, so load on
    the machine hits them alike (the scripts/ benchmarks' side-by-side timing)."""
    import statistics
    import time

    for call in calls.values():
        call()
    spent: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            spent[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ms) for name, ms in spent.items()}


REGISTRY_USAGE = """usage: python app/registry.py <command> key=value ...   (or attnlab-registry <command> ...)
  register run=<run dir> name=<model> [alias=<alias>]   the run as the model's next version (MLflow model registry)
  list     name=<model>                                  its versions: aliases, creation time, run, test metrics, lineage
  compare  name=<model> versions=1,3                     their config differences and metrics side by side
  promote  name=<model> version=<n> alias=<alias>        point the alias at the version; who and when are recorded
Every command takes store=<MLflow tracking URI> (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/results/mlflow.db).
A registered model is models:/<name>@<alias> or models:/<name>/<version> for val/validate.py run= and app/serve.py model=."""


def registry() -> None:
    """`attnlab-registry` / app/registry.py: register | list | compare | promote, with key=value arguments."""
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(REGISTRY_USAGE)
        return
    from attnlab.runs.registering import COMMANDS

    command, *rest = args
    if command not in COMMANDS:
        script_fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (--help shows their arguments)")
    keys, required = COMMANDS[command]
    values: dict[str, str] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in keys:
            script_fail(f"{command} takes {' '.join(k + '=' for k in keys)}; got {item!r}")
        values[key] = value
    if missing := [k for k in required if not values.get(k)]:
        script_fail(f"{command} needs {' '.join(k + '=' for k in missing)} (python app/registry.py --help)")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", stream=sys.stdout)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from attnlab.runs.registering import run_command

    try:
        run_command(command, values)
    except AttnlabError as err:
        script_fail(_one_line(err))
