"""Hydra set-up shared by every command: where the configs live, the resolvers they use, the multirun test, `--help`.

Imports Hydra and OmegaConf only, so `--help` and `--cfg job` stay fast; train, cli and sweeps import it.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf


def repo_root() -> Path:
    """The checkout that holds conf/: the package's own (an editable install, or src/ on the path), else the working
    directory when it is one (a plain `pip install .` copies the package away from conf/)."""
    own = Path(__file__).resolve().parents[2]
    if not (own / "conf" / "train.yaml").is_file() and (Path.cwd() / "conf" / "train.yaml").is_file():
        return Path.cwd().resolve()
    return own


def conf_dir() -> Path:
    """Where the Hydra configs live: $ATTNLAB_CONF_DIR or <repo>/conf."""
    path = Path(os.environ.get("ATTNLAB_CONF_DIR", repo_root() / "conf"))
    if not (path / "train.yaml").is_file():
        raise SystemExit(
            f"attnlab: no configs at {path} (looked for train.yaml); run from the attnlab checkout, install it "
            "editable (pip install -e .) or set ATTNLAB_CONF_DIR to its conf/ folder"
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


def metric_mode(metric: str, modes: Any) -> str | None:
    """'min' | 'max' for a metric (`val/bpb`, `test/acc`, `val/acc_best`, `test/acc_class/cat`) from a task's
    `monitor.modes` ({name: direction}, stage prefix dropped); None when the task states none (never guessed)."""
    parts = metric.split("/")
    name = parts[1 if len(parts) > 1 else 0].removesuffix("_best")
    mode = (modes or {}).get(name)
    return str(mode) if mode in ("min", "max") else None


def _monitor_mode(metric: str, *, _root_: DictConfig) -> str:
    """`${attnlab_mode:${monitor.metric}}`: the monitored metric's direction from the task's `monitor.modes`."""
    modes = OmegaConf.select(_root_, "monitor.modes", default=None)
    mode = metric_mode(metric, modes)
    if mode is None:
        stated = ", ".join(sorted(modes or {})) or "none"
        raise ValueError(f"monitor.metric={metric}: the task states no direction for it (monitor.modes has {stated}); "
                         "add monitor.mode=min or monitor.mode=max")
    return mode


def _objective_direction(metric: Any, *, _root_: DictConfig) -> str | list[str]:
    """`${attnlab_direction:${objective}}`: 'maximize' | 'minimize' for a sweeper, from the task's stated directions;
    a list of them for a list of metrics (a multi-objective search), in the same order."""
    if isinstance(metric, (list, tuple, ListConfig)):
        return [_metric_direction(str(m), _root_) for m in metric]
    return _metric_direction(str(metric), _root_)


def _metric_direction(metric: str, _root_: DictConfig) -> str:
    if metric.removesuffix("_best") == OmegaConf.select(_root_, "monitor.metric", default=None):
        mode = OmegaConf.select(_root_, "monitor.mode", default=None)
    else:
        mode = metric_mode(metric, OmegaConf.select(_root_, "monitor.modes", default=None))
    if mode not in ("min", "max"):
        raise ValueError(f"objective={metric}: the task states no direction for it (monitor.modes); "
                         "add hydra.sweeper.direction=maximize or minimize")
    return "maximize" if mode == "max" else "minimize"


def _base(value: Any) -> Any:
    """`${attnlab_base:${base}}`: a fine-tuning base as `from_pretrained` takes it. A run directory of this project
    (an hf_causal_lm run, e.g. pretrain_gpt2) becomes its exported HF folder `<run>/hf` (written once, from the best
    checkpoint); a hub name or a HF folder stays as it is; null builds from scratch."""
    if value is None or value == "":
        return None
    path = Path(str(value)).expanduser()
    if (path / "config.yaml").is_file():
        from attnlab.runs.loading import export_hf  # torch and the models: only when a run is the base

        return str(export_hf(path))
    return str(value)


def _required(message: str) -> Any:
    """`${attnlab_required:"add init_from=<run dir of ...>"}`: a value the command line must give (OmegaConf's ??? is
    no use for a key the base config already sets: merging ??? over a value keeps the value)."""
    from attnlab.errors import ConfigError

    raise ConfigError(message)


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
        "attnlab_mode": (_monitor_mode, False),
        "attnlab_direction": (_objective_direction, False),
        "attnlab_base": (_base, True),
        "attnlab_required": (_required, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()


def is_multirun() -> bool:
    """True inside a job of a Hydra multirun (a sweep)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# `- /tokenizer@tokenizer: word` in a group's file: that group is chosen inside this one's package.
_NESTED_CHOICE = re.compile(r"^\s*-\s*/(\w+)@([\w.]+)\s*:", re.MULTILINE)
_DEFAULTS_ENTRY = re.compile(r"^\s+-\s*(\w+)\s*:", re.MULTILINE)  # `  - model: cnn` in a defaults list


def _options(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))


def _group_lines(conf: Path) -> list[str]:
    """`group: option, ...` for every folder of conf/ (hydra's own under hydra/), named as the command line selects it."""
    folders = sorted(p for p in conf.iterdir() if p.is_dir() and p.name != "hydra")
    nested = {}
    for folder in folders:
        for path in folder.glob("*.yaml"):
            for group, package in _NESTED_CHOICE.findall(path.read_text()):
                nested.setdefault(group, f"{group}@{folder.name}.{package}")
    lines = [f"{nested.get(f.name, f.name)}: {_options(f)}" for f in folders]
    hydra_groups = sorted(p for p in (conf / "hydra").glob("*") if p.is_dir())
    return lines + [f"hydra/{f.name}: {_options(f)}" for f in hydra_groups]


def _top_level_keys(text: str) -> list[str]:
    """The config file's own `key: value  # comment` lines, without its defaults list and hydra block."""
    return [line.rstrip() for line in text.splitlines()
            if re.match(r"[A-Za-z_]\w*\s*:", line) and not line.startswith(("defaults:", "hydra:"))]


def config_help(config_name: str, *, prog: str) -> str:
    """The `--help` text of a command, read from the conf/ folder without composing anything.

    Hydra's own --help composes the config and then builds a config repository (deep-copying every loaded config)
    once per option of every group: 3 s here, and more with every file added. This reads file names and the
    command's own config file, so it costs the same however many options there are.
    """
    conf = conf_dir()
    text = (conf / f"{config_name}.yaml").read_text()
    usage = [re.sub(r"\s*\([^)]*--help[^)]*\)", "", line.lstrip("# ").rstrip())
             for line in text.splitlines() if line.startswith("# python")]  # the file's usage comments
    out = ["usage: " + (usage[0] if usage else f"{prog} [key=value ...]"), *("       " + u for u in usage[1:]), ""]
    folders = {p.name for p in conf.iterdir() if p.is_dir()}
    if any(group in folders and group != "hydra" for group in _DEFAULTS_ENTRY.findall(text)):  # it chooses groups
        out += ["== Config groups: group=option (e.g. experiment=mnist_vit) ==", *("  " + g for g in _group_lines(conf)), ""]
        keys_title = "== Keys: key=value; any group's key too (model.dropout=0.1), +group.key=value adds one its file lacks =="
    else:
        keys_title = "== Keys: key=value =="
    out += [keys_title, *("  " + k for k in _top_level_keys(text)), ""]
    out += [
        "== More ==",
        f"  {prog} [overrides] --cfg job    the whole config these overrides compose",
        f"  {prog} [overrides] --info       where configs are searched, the defaults tree",
        f"  {prog} --hydra-help             Hydra's own flags (-m/--multirun for sweeps, --config-dir, ...)",
    ]
    return "\n".join(out)
