"""Instantiate `_target_` configs with checks that turn config mistakes into errors that name the fix.

Hydra's `instantiate` is the registry; this module adds what it lacks: every YAML key must be an argument of its
target, values must match the target's type hints, and facts that come from the data (`num_classes`,
`vocab_size`, ...) are passed by code and must not also be typed in YAML.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import logging
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from attnlab.config import conf_dir
from attnlab.errors import ConfigError

log = logging.getLogger("attnlab")
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _describe(target: Callable[..., Any]) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _import_target(node: DictConfig, path: str) -> Callable[..., Any]:
    name = node.get("_target_")
    if not name:
        raise ConfigError(f"{path}: no _target_; a config group file must name what it builds with _target_")
    try:
        return hydra.utils.get_object(name)
    except Exception as err:  # ImportError, AttributeError, ...: all mean the same to the user
        raise ConfigError(f"{path}._target_: cannot import '{name}' ({err})") from None


def parameters(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters, type hints, accepts **kwargs) of what `target` builds.

    A named-size builder such as `def vit_tiny(**kw) -> ViT` forwards to its return class, so its accepted
    arguments are that class's (with defaults unknown: the builder may supply the required ones).
    """
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, {}, True
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    params.pop("self", None)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: check names, skip types
        hints = {}
    returned = hints.pop("return", None)
    if var_kw and not inspect.isclass(target) and inspect.isclass(returned):
        inner, inner_hints, inner_var_kw = parameters(returned)
        optional = {n: p.replace(default=None) for n, p in inner.items()}
        return {**optional, **params}, {**inner_hints, **hints}, inner_var_kw
    return params, hints, var_kw


def matches(value: Any, ann: Any) -> bool:
    """Whether a plain config value fits a type hint; unknown hints pass (the target checks them itself)."""
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or ann in (dict, Mapping):
        return isinstance(value, dict)
    return True


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(ann)))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def check(
    node: DictConfig,
    path: str,
    facts: Mapping[str, Any] = types.MappingProxyType({}),
    objects: Mapping[str, Any] = types.MappingProxyType({}),
) -> Callable[..., Any]:
    """Check a `_target_` node's keys and value types against its target; return the target."""
    target = _import_target(node, path)
    params, hints, var_kw = parameters(target)
    missing = [key for key in node if OmegaConf.is_missing(node, key)]
    if missing:
        raise ConfigError(f"{path}.{missing[0]} must be given (it is ??? in the config): add {path}.{missing[0]}=<value>")
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    for key, value in values.items():
        if key in _HYDRA_KEYS:
            continue
        if key in objects:
            raise ConfigError(f"{path}.{key} is built by attnlab and passed in; remove it from the config")
        if key in facts and key in params:
            raise ConfigError(
                f"{path}.{key} comes from the data ({facts[key]!r}); remove it from the config (a fact is stated once)"
            )
        if key not in params:
            if var_kw:
                continue
            valid = ", ".join(sorted(params)) or "(none)"
            raise ConfigError(f"{path}.{key} is not an argument of {_describe(target)}; valid: {valid}")
        if isinstance(value, dict) and "_target_" in value:
            check(node[key], f"{path}.{key}")  # a nested object (a data module's tokenizer): checked the same way
            continue
        ann = hints.get(key, inspect.Parameter.empty)
        if not matches(value, ann):
            raise ConfigError(f"{path}.{key}: expected {_type_name(ann)}, got {value!r} ({type(value).__name__})")
    if not values.get("_partial_"):
        missing = [
            n
            for n, p in params.items()
            if p.default is inspect.Parameter.empty and n not in values and n not in facts and n not in objects
        ]
        if missing:
            raise ConfigError(f"{path}: missing required argument(s) {', '.join(missing)} for {_describe(target)}")
    return target


def _leaves(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values a config sets (its defaults list left out)."""
    if not isinstance(node, dict) or not node:
        return [prefix]
    return [leaf for key, value in node.items() if key != "defaults"
            for leaf in _leaves(value, f"{prefix}.{key}" if prefix else str(key))]


def _experiment_raw(name: str) -> dict[str, Any]:
    """An experiment file as written, merged over the experiments it includes (`- mnist_cnn` in its defaults list),
    with every group pick of them all in its `defaults` (the including file's picks win)."""
    raw = OmegaConf.to_container(OmegaConf.load(conf_dir() / "experiment" / f"{name}.yaml"))
    assert isinstance(raw, dict)
    included = [e for e in raw.get("defaults") or [] if isinstance(e, str) and e != "_self_"]
    if not included:
        return raw
    layers = [_experiment_raw(e) for e in included] + [raw]
    defaults = [entry for layer in layers for entry in layer.get("defaults") or [] if isinstance(entry, dict)]
    merged = OmegaConf.to_container(OmegaConf.merge(*({k: v for k, v in layer.items() if k != "defaults"}
                                                     for layer in layers)))
    assert isinstance(merged, dict)
    return {**merged, "defaults": defaults}


def _experiment_choices(raw: dict[str, Any]) -> dict[str, str]:
    """{group: option} an experiment picks in its defaults list (`- override /optimizer: muon`)."""
    picked = {}
    for entry in raw.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                picked[key.removeprefix("override").strip().lstrip("/")] = value
    return picked


def check_switched_groups(cfg: DictConfig, choices: Mapping[str, Any], overrides: list[str]) -> None:
    """An experiment's values for a group it picks belong to that pick: when the command line picks another option,
    a value the new option cannot take is an error naming the override that fixes it; one it can take is reported.

    `choices`: Hydra's runtime choices of the job; `overrides`: its command-line overrides (values the user typed
    are the user's, never stale).
    """
    experiment = choices.get("experiment")
    if not experiment or not (conf_dir() / "experiment" / f"{experiment}.yaml").is_file():
        return
    raw = _experiment_raw(str(experiment))
    typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    picked = _experiment_choices(raw)
    packages = {group: group.partition("@")[2] or group for group in picked}
    for group, old in picked.items():
        new = choices.get(group)
        if new == old:
            continue
        pkg = packages[group]
        inner = [p for g, p in packages.items() if p.startswith(pkg + ".")]  # another pick's keys (data.tokenizer)
        keys = [k for k in _leaves(raw) if k.startswith(pkg + ".") and k not in typed
                and not any(k.startswith(p + ".") for p in inner)]
        if keys:
            _stale(cfg, f"experiment={experiment}", group, str(old), new, pkg, keys)


def _stale(cfg: DictConfig, source: str, group: str, old: str, new: Any, pkg: str, keys: list[str]) -> None:
    """Raise for the keys `new` cannot take (with the overrides that fix them); log the ones it takes."""
    option = conf_dir() / group.partition("@")[0] / f"{new}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(option)) if new is not None and option.is_file() else {}
    assert isinstance(own, dict)
    target_name = own.get("_target_") if f"{pkg}._target_" in keys else OmegaConf.select(cfg, f"{pkg}._target_")
    params, _, var_kw = parameters(hydra.utils.get_object(target_name)) if target_name else ({}, {}, False)
    fixes, carried = {}, []
    for key in keys:
        first = key[len(pkg) + 1 :].split(".")[0]
        if first == "_target_" and "_target_" in own:
            fixes[key] = f"{key}={own[first]}"  # another class altogether: set back the new option's
        elif first not in params and not var_kw:
            fixes[key] = f"~{key}"
        else:
            carried.append(key)
    if fixes:
        were = "was" if len(fixes) == 1 else "were"
        raise ConfigError(f"{', '.join(fixes)} {were} set by {source} for {group}={old}; for {group}={new}: "
                          + " ".join(fixes.values()))
    log.warning("%s set %s for %s=%s; they apply to %s=%s too (override them if that is not meant)",
                source, ", ".join(carried), group, old, group, new)


def accepted(target: Callable[..., Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `facts` that `target` takes as arguments."""
    params, _, _ = parameters(target)
    return {k: v for k, v in facts.items() if k in params}


def instantiate(node: DictConfig, path: str, facts: Mapping[str, Any] | None = None, **objects: Any) -> Any:
    """Check and build a `_target_` node.

    `facts` are plain values from upstream (the data) passed only where the target accepts them;
    `objects` are built things (a model, an optimizer factory) passed as they are.
    """
    facts = facts or {}
    target = check(node, path, facts, objects)
    try:
        factory = hydra.utils.instantiate(node, _partial_=True, _convert_="all")
    except InstantiationException as err:
        raise ConfigError(f"{path}: {err}") from None
    kwargs = {**accepted(target, facts), **objects}
    if OmegaConf.select(node, "_partial_"):
        return functools.partial(factory, **kwargs)
    try:
        return factory(**kwargs)
    except ValueError as err:  # models check their arguments and say how to fix them
        raise ConfigError(f"{path} ({_describe(target)}): {err}") from err


def make_datamodule(cfg: DictConfig, artifacts: Path | None = None, tokenizer_from: Path | None = None) -> Any:
    """The configured LightningDataModule; reads no data. `artifacts`: a run directory whose saved data artifacts (a
    trained tokenizer, class names) it reuses, if it has `load_artifacts(run_dir)` (see `save_artifacts` in train.py).
    `tokenizer_from`: when `artifacts` held none, the run whose tokenizer alone to use (`init_from`'s: the tokenizer
    travels with the weights, while the classes and the rest stay this data's), if it has `load_tokenizer(run_dir)`."""
    datamodule = instantiate(cfg.data, "data")
    loaded = artifacts is not None and hasattr(datamodule, "load_artifacts") and datamodule.load_artifacts(artifacts)
    if not loaded and tokenizer_from is not None and hasattr(datamodule, "load_tokenizer"):
        datamodule.load_tokenizer(tokenizer_from)
    return datamodule


def make_adapter(cfg: DictConfig) -> Any:
    """The `peft` group's choice (attnlab.adapters), or None when the config has no peft group."""
    return instantiate(cfg.peft, "peft") if cfg.get("peft") else None


def uses_peft(cfg: DictConfig) -> bool:
    """Whether the config wraps its model with a peft adapter (its checkpoints then hold the adapter's tensors only)."""
    adapter = make_adapter(cfg)
    return bool(adapter is not None and adapter.uses_peft)


def transform_model(model: Any, cfg: DictConfig, facts: Mapping[str, Any] | None = None) -> Any:
    """The one place a built model is changed before use: a peft adapter (`peft=`), then `compile`, the same at
    training, validation and loading. Weights of the base are loaded before it, into the plain model; a peft model's
    own tensors (the adapter's) are loaded after it (runs.load_model)."""
    adapter = make_adapter(cfg)
    if adapter is not None:
        from attnlab.adapters import parameter_counts

        try:
            model = adapter.apply(model)
            tokenizer = (facts or {}).get("tokenizer")
            if hasattr(adapter, "init_from_text") and tokenizer is not None:
                adapter.init_from_text(model, tokenizer)
        except ValueError as err:
            raise ConfigError(f"peft ({adapter.method}): {err}") from err
        counts = parameter_counts(model)
        log.info("peft=%s: %s of %s parameters train (%.3f%%)", adapter.method, f"{counts['trainable_params']:,}",
                 f"{counts['total_params']:,}", 100 * counts["trainable_share"])
    if cfg.get("compile"):
        model.compile()  # in place: state_dict keys stay those of the plain model
    return model


def make_model(cfg: DictConfig, facts: Mapping[str, Any], init: Callable[[Any], Any] | None = None) -> Any:
    """cfg.model with the data's facts; `init(model)` loads weights into the plain model, then `transform_model`."""
    model = instantiate(cfg.model, "model", facts)
    if init is not None:
        init(model)
    return transform_model(model, cfg, facts)


def make_task(cfg: DictConfig, model: Any, facts: Mapping[str, Any], *, training: bool = True) -> Any:
    """cfg.task around a built model; `training=False` (evaluation only) builds no optimizer or schedule."""
    factories = optimization(cfg) if training else {"optimizer": None, "scheduler": None}
    return instantiate(cfg.task, "task", facts, model=model, **factories)


def assemble(
    cfg: DictConfig, artifacts: Path | None = None, init: Callable[[Any], Any] | None = None,
    tokenizer_from: Path | None = None,
) -> tuple[Any, Any]:
    """data -> model -> transform -> task, as DESIGN.md draws it: (LightningDataModule, task LightningModule).

    Facts of the data (`num_classes`, `image_size`, `vocab_size`, ...) reach the model and the task from
    `datamodule.facts()`, never from YAML. `artifacts`, `tokenizer_from`: see `make_datamodule`. `init(model)`: weights for the plain
    model before it is transformed (`init_from`).
    """
    datamodule = make_datamodule(cfg, artifacts, tokenizer_from)
    facts = datamodule.facts()
    model = make_model(cfg, facts, init)
    return datamodule, make_task(cfg, model, facts)


def optimization(cfg: DictConfig) -> dict[str, Any]:
    """The task's optimizer and scheduler factories; both None for a task fitted without gradients (a class
    attribute `takes_optimizer = False`, e.g. the count-based LM), which must then be given none."""
    target = _import_target(cfg.task, "task")
    name = getattr(target, "__name__", "the task")
    if not getattr(target, "takes_optimizer", True):
        given = [fix for key, fix in (("optimizer", "~optimizer"), ("scheduler", "scheduler=none")) if cfg.get(key)]
        if given:
            raise ConfigError(f"{name} is fitted by counting and takes no optimizer or scheduler; drop "
                              f"{'them' if len(given) > 1 else 'it'}: {' '.join(given)}")
        return {"optimizer": None, "scheduler": None}
    if not cfg.get("optimizer"):
        raise ConfigError(f"{name} trains by gradient descent: add an optimizer, e.g. optimizer=adamw")
    optimizer = instantiate(cfg.optimizer, "optimizer")
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    return {"optimizer": optimizer, "scheduler": scheduler}
