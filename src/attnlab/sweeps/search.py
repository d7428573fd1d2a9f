"""What an Optuna search is made of, read from the sweeper's config: the search space (Hydra's override syntax
turned into Optuna distributions), the sampler and the pruner by name, and the trial a sweep job belongs to.

    params:   choice(a, b) / a,b -> categorical; range(lo, hi[, step]) -> int (float) steps, hi excluded as in
              Python; interval(lo, hi) -> uniform; tag(log, interval(lo, hi)) -> log-uniform; a plain value is fixed
    sampler:  {name: tpe | random | gp | cmaes | nsgaii | grid, seed: ..., <any option of the Optuna class>}
    pruner:   {name: none | median | percentile | hyperband | successive_halving, <options of the Optuna class>}

An option set to null is left to Optuna's default, so the sweeper's yaml can name options without choosing them.
optuna is imported inside the functions: Hydra imports the sweeper plugin at every start.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, OverrideType, RangeSweep
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from attnlab.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "gp": "GPSampler", "cmaes": "CmaEsSampler",
            "nsgaii": "NSGAIISampler", "grid": "GridSampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
           "hyperband": "HyperbandPruner", "successive_halving": "SuccessiveHalvingPruner"}
_PREFIX = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}


class SweepConfigError(ConfigError, CompactHydraException):
    """A sweeper setting to fix (unknown sampler, option, bad param); a compact Hydra error, so the command line
    reports it as one `error:` line (attnlab.cli) rather than a traceback."""


class SearchSpace:
    """The swept params as Optuna distributions, the fixed overrides every job gets, and each param's `+` prefix."""

    def __init__(self, params: Mapping[str, Any] | None, arguments: list[str]) -> None:
        parser = OverridesParser.create()
        lines = [f"{key}={_as_text(value)}" for key, value in _flat(params or {}).items()]
        chosen: dict[str, Override] = {}
        for override in [*parser.parse_overrides(lines), *parser.parse_overrides(arguments)]:  # command line wins
            key = override.key_or_group + (f"@{override.package}" if override.package else "")  # no +/++ prefix
            chosen[key] = override
        self.sweeps = {key: o for key, o in chosen.items() if o.is_sweep_override()}
        self.fixed = [o.input_line or f"{key}={o.get_value_element_as_str()}" for key, o in chosen.items()
                      if not o.is_sweep_override()]
        self.distributions = {key: distribution(o) for key, o in self.sweeps.items()}

    def job_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's sampled params as a job's overrides, after the fixed ones."""
        sampled = [f"{_PREFIX.get(self.sweeps[k].type, '')}{k}={_as_text(v)}" for k, v in params.items()]
        return [*self.fixed, *sampled]

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: every value of each choice/range param."""
        intervals = [k for k, o in self.sweeps.items() if isinstance(o.value(), IntervalSweep)]
        if intervals:
            raise SweepConfigError(f"sampler grid needs choice(...) or range(...) params; {', '.join(intervals)} "
                              "is an interval: make it a choice or pick another sampler")
        return {key: list(o.sweep_iterator()) for key, o in self.sweeps.items()}


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """params as {dotted key: value}. The yaml writes `model.dropout: ...`, while the command line
    `+hydra.sweeper.params.model.dropout=...` nests it as {model: {dropout: ...}}; the later one wins."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (DictConfig, dict)):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_text(value: Any) -> str:
    """A config value as an override's right-hand side (YAML gives numbers and lists, the command line strings)."""
    if OmegaConf.is_list(value) or isinstance(value, list):
        raise SweepConfigError(f"hydra.sweeper.params: {value!r} is no override value; write choice(...), range(...), "
                          "interval(a, b), tag(log, interval(a, b)), a,b or a plain value")
    return str(value).lower() if isinstance(value, bool) else str(value)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (see the module docstring for the mapping)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    log = "log" in (sweep.tags or set())
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(low, high, step=int(step))
        return FloatDistribution(low, high, step=step)
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(sweep.start, sweep.end, log=log)
    raise SweepConfigError(f"{override.input_line}: unsupported sweep; use choice, range, interval or tag(log, interval)")


def _options(kind: str, name: str, cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options for an Optuna class, null ones dropped; an unknown one is a ConfigError that lists the valid ones."""
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "search_space")]
    chosen = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(chosen) - set(accepted))
    if unknown:
        raise SweepConfigError(f"unknown option {unknown[0]!r} for {kind} {name}; choose from: {', '.join(accepted)}")
    return chosen


def _named(kind: str, table: dict[str, str], config: Mapping[str, Any] | None, default: str) -> tuple[str, dict[str, Any]]:
    """(name, other options) of a `{name: ..., ...}` node, the name checked against `table`."""
    options = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config or {})
    name = str(options.pop("name", None) or default)
    if name not in table:
        raise SweepConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(table)}")
    return name, options


def build_sampler(config: Mapping[str, Any] | None, space: SearchSpace, *, reseed: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler `config` names (tpe by default), its seed shifted by `reseed` so a resumed study draws anew."""
    import optuna

    name, options = _named("sampler", SAMPLERS, config, "tpe")
    cls = getattr(optuna.samplers, SAMPLERS[name])
    options = _options("sampler", name, cls, options)
    if "seed" in options:
        options["seed"] = int(options["seed"]) + reseed
    if name == "grid":
        return cls(space.grid(), **options)
    return cls(**options)


def build_pruner(config: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """The pruner `config` names; none (never prune) by default."""
    import optuna

    name, options = _named("pruner", PRUNERS, config, "none")
    cls = getattr(optuna.pruners, PRUNERS[name])
    return cls(**_options("pruner", name, cls, options))


def load_trial(storage: str, study_name: str, number: int, pruner: optuna.pruners.BasePruner) -> optuna.Trial:
    """Trial `number` of a stored study, as a sweep job (maybe in another process) sees it to report and prune."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())  # the job samples nothing
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)
