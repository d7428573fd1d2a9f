"""Loading a trained run: `load_model` for every consumer (validate, generate, serving, export, fine-tuning), and
`init_weights`, which starts a new run from another run's model weights (`init_from=`).

Both rebuild the model from the run's resolved config and the data module's facts, and neither builds an optimizer,
a trainer or trackers, nor reads training data: a data module states its facts from the artifacts the run saved (its
tokenizer) or from constants (MNIST's image size). torch is imported inside the functions, so `attnlab.runs` stays
light for the command line.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from attnlab import build
from attnlab.runs import registry
from attnlab.errors import ConfigError, RunError
from attnlab.runs.directory import CONFIG, find_checkpoint, load_checkpoint, load_config, load_skops, require_run

if TYPE_CHECKING:
    from torch import Tensor, nn

log = logging.getLogger("attnlab")

MODEL_PREFIX = "model."  # a task holds its model as `self.model`, so a checkpoint names the model's tensors model.*


@dataclass
class LoadedRun:
    """A trained run, ready to use: for an image run, `model(preprocess(uint8 images))` is what its task computed."""

    model: nn.Module  # the checkpoint's weights, eval mode, transformed as at training (`compile`); for a classical
    # run the fitted scikit-learn estimator (model.skops), which reads `preprocess.transform(rows)`
    preprocess: Any  # raw input -> what the model reads: an ImageNormalization (images), a ReviewPreprocessing (text
    # classification), the tokenizer (language models), a Translation- or SummarizationPreprocessing
    cfg: DictConfig  # the run's resolved config (paths.output_dir: where the run is now)
    facts: dict[str, Any]  # the data module's facts (num_classes, vocab_size, ...), as training passed them
    checkpoint: Path
    run_dir: Path

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer, or None for a run whose input is not text."""
        if hasattr(self.preprocess, "decode"):
            return self.preprocess
        return getattr(self.preprocess, "tokenizer", None)

    def predict(self, inputs: Any, *, batch_size: int = 64, progress: bool = False) -> Any:
        """A classifier's labels and class probabilities for raw inputs (texts, image files, table rows), through
        this run's own preprocessing: an `attnlab.predict.Predictions` (`.labels`, `.probs`, `.top(k)`)."""
        from attnlab.predict import predict

        return predict(self, inputs, batch_size=batch_size, progress=progress)


def model_weights(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model's tensors of a Lightning checkpoint under the plain model's names (`model.` prefix removed)."""
    state = ckpt["state_dict"]
    return {key[len(MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}


def load_model(run_dir: str | Path, ckpt: str | Path = "best", *, store: str | None = None) -> LoadedRun:
    """The model of a run with a checkpoint's weights (`best`, `last` or a .ckpt path), its preprocessing, config
    and data facts. Reads config.yaml, the checkpoint and the saved data artifacts, nothing else.

    A registered model, `models:/<name>@<alias>` or `models:/<name>/<version>` (MLflow's registry at `store`, see
    attnlab.runs.registry), is fetched once into a local copy of its files and loaded from there the same way."""
    if registry.is_model_uri(run_dir):
        run_dir = registry.fetch(str(run_dir), store=store)
    path = require_run(run_dir)
    cfg = load_config(path)
    if (path / ESTIMATOR).is_file():
        return _load_estimator(path, cfg)
    ckpt_path = find_checkpoint(path, str(ckpt))
    weights = model_weights(load_checkpoint(ckpt_path))
    datamodule = build.make_datamodule(cfg)
    if hasattr(datamodule, "load_artifacts") and not datamodule.load_artifacts(path):
        raise RunError(f"{path} holds no saved data artifacts (the tokenizer/ folder training writes there), so its "
                       "input ids cannot be rebuilt without the training data; copy that folder back into the run")
    facts = datamodule.facts()
    preprocess = datamodule.preprocessing() if hasattr(datamodule, "preprocessing") else None

    def load(model: nn.Module) -> None:
        try:
            model.load_state_dict(weights)  # the model's own rules (an n-gram's count tables vary in size)
        except RuntimeError as err:
            match = match_weights(model.state_dict(), weights)
            why = match.describe() if not match.complete else " ".join(str(err).split())[:600]
            raise RunError(f"{ckpt_path} does not fit the model in {path / CONFIG}: {why}") from None

    if build.uses_peft(cfg):
        # The checkpoint holds the adapter's tensors only (under the peft model's names): build the base as the run
        # did (from its name_or_path), wrap it with the same adapter, then load them.
        model = build.make_model(cfg, facts)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = model.state_dict()
        unknown = sorted(set(weights) - set(state))
        missing = sorted(trainable - set(weights))
        if unknown or missing:
            raise RunError(f"{ckpt_path} does not fit the adapter in {path / CONFIG}: "
                           f"{len(unknown)} tensor(s) it does not have ({unknown[:3]}), {len(missing)} of its own missing "
                           f"({missing[:3]})")
        model.load_state_dict(weights, strict=False)
    else:
        model = build.make_model(cfg, facts, init=load)
    model.eval()
    return LoadedRun(model=model, preprocess=preprocess, cfg=cfg, facts=dict(facts), checkpoint=ckpt_path, run_dir=path)


ESTIMATOR = "model.skops"  # a classical run's fitted estimator (attnlab.classical)


def _load_estimator(path: Path, cfg: DictConfig) -> LoadedRun:
    """A classical run: its estimator (skops, scikit-learn types only) and its table preprocessing."""
    datamodule = build.make_datamodule(cfg)
    if not datamodule.load_artifacts(path):
        raise RunError(f"{path} holds no saved table preprocessing (tabular/); copy that folder back into the run")
    estimator = load_skops(path / ESTIMATOR)
    return LoadedRun(model=estimator, preprocess=datamodule.preprocessing(), cfg=cfg, facts=dict(datamodule.facts()),
                     checkpoint=path / ESTIMATOR, run_dir=path)


HF_DIR = "hf"  # in a run directory: the model exported in Hugging Face's format (a fine-tuning base)


def export_hf(run_dir: str | Path, *, ckpt: str = "best", merge: bool = True) -> Path:
    """The run's model as a HF folder (`save_pretrained`: config, safetensors, tokenizer) in `<run>/hf`, written once
    and reused: what `base=<run dir>` fine-tunes from. A peft run exports its base with the adapter merged in.
    A run whose model is no HF causal LM is a ConfigError."""
    path = require_run(run_dir)
    out = path / HF_DIR
    if (out / "config.json").is_file():
        return out
    loaded = load_model(path, ckpt)
    model = loaded.model
    if not hasattr(model, "save_pretrained") or not hasattr(getattr(model, "model", None), "config"):
        raise ConfigError(f"base={path}: a {type(model).__name__} run, not a Hugging Face causal LM; a base is a run of "
                          "model=hf_causal_lm (experiment=pretrain_gpt2), a hub name or a HF folder")
    from attnlab.adapters import is_peft, merged

    if is_peft(model):
        if not merge:
            raise ConfigError(f"{path} holds a peft adapter; export it merged (merge=true) or use its adapter/ folder")
        try:
            model.model = merged(model)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, loaded.tokenizer)
    if out.exists():  # another process exported it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(out)
    log.info("exported %s (%s) as a Hugging Face folder: %s", path, loaded.checkpoint.name, out)
    return out


# -- init_from: another run's weights in a new model ------------------------------------------------------------------
@dataclass
class WeightMatch:
    """How a source's tensors map onto a model's, by name and shape."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the source: keep their initial values
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # (name, model, source)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def not_loaded(self) -> list[str]:
        """Every tensor that does not match, described in a few words."""
        return ([f"{name}: shape {list(mine)} here, {list(theirs)} in the source" for name, mine, theirs in self.mismatched]
                + [f"{name}: not in the source" for name in self.missing]
                + [f"{name}: in the source only" for name in self.unexpected])

    def describe(self, limit: int = 12) -> str:
        lines = self.not_loaded()
        more = f"; and {len(lines) - limit} more" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


def match_weights(model_state: Mapping[str, Tensor], source: Mapping[str, Tensor]) -> WeightMatch:
    """Match a source's tensors to a model's state_dict by name and shape."""
    match = WeightMatch()
    for name, tensor in model_state.items():
        if name not in source:
            match.missing.append(name)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            match.mismatched.append((name, tuple(tensor.shape), tuple(source[name].shape)))
        else:
            match.matched.append(name)
    match.unexpected = [name for name in source if name not in model_state]
    return match


def resolve_init_from(value: str | Path) -> Path:
    """`init_from=`: a run directory (its best checkpoint) or a .ckpt file, checked to exist."""
    path = Path(value).expanduser().resolve()
    try:
        if path.is_dir():
            return find_checkpoint(require_run(path), "best")
    except RunError as err:
        raise ConfigError(f"init_from={value}: {err}") from None
    if not path.is_file():
        raise ConfigError(f"init_from={value}: no such run directory or .ckpt file")
    return path


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (`<run>/checkpoints/<name>.ckpt`), or None for a loose file."""
    run = Path(path).resolve().parent.parent
    return run if (run / CONFIG).is_file() else None


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def pick_layers(weights: Mapping[str, Tensor], layers: str | Sequence[int]) -> dict[str, Tensor]:
    """A source's tensors with its blocks renumbered: block i of the result is the source's block `layers[i]`
    (`every_other`: 0, 2, 4, ..., DistilBERT's initialisation of a student with half its teacher's layers); blocks
    not picked are dropped, every other tensor kept. Models name their blocks `blocks.<i>.` (encoder, GPT)."""
    found = sorted({int(m.group(1)) for key in weights if (m := _BLOCK.match(key))})
    if not found:
        raise ConfigError("init_from_layers: the source has no blocks.<i>. tensors to pick from")
    if layers == "every_other":
        picked = found[::2]
    elif isinstance(layers, str):
        raise ConfigError(f"init_from_layers={layers!r}: give every_other or a list of the source's block indices")
    else:
        picked = [int(i) for i in layers]
    bad = [i for i in picked if i not in found]
    if bad or not picked:
        raise ConfigError(f"init_from_layers={list(layers) if not isinstance(layers, str) else layers}: the source has "
                          f"blocks {found[0]}..{found[-1]}; {bad or 'none'} picked")
    out = {key: value for key, value in weights.items() if not _BLOCK.match(key)}
    for new, old in enumerate(picked):
        prefix = f"blocks.{old}."
        out.update({f"blocks.{new}.{key[len(prefix):]}": value for key, value in weights.items() if key.startswith(prefix)})
    log.info("init_from_layers: the source's blocks %s become blocks 0..%d", picked, len(picked) - 1)
    return out


def init_weights(model: nn.Module, source: Path, *, strict: bool = True,
                 layers: str | Sequence[int] | None = None) -> WeightMatch:
    """Load a checkpoint's model weights into a freshly built (plain, untransformed) model, matched by name and shape.

    strict: any tensor that does not match is a ConfigError listing them. Not strict: load the ones that match and
    warn about the rest (a new classification head keeps its initial values). layers: see `pick_layers`.
    """
    weights = model_weights(load_checkpoint(source))
    if layers is not None:
        weights = pick_layers(weights, layers)
    match = match_weights(model.state_dict(), weights)
    if not match.matched:
        raise ConfigError(f"init_from={source}: no tensor of it fits this model (names or shapes differ everywhere: "
                          f"{match.describe(6)}); is it a run of the same model?")
    if strict and not match.complete:
        raise ConfigError(f"init_from={source}: {len(match.not_loaded())} tensor(s) do not fit this model: "
                          f"{match.describe()}. Set init_from_strict=false to load the {len(match.matched)} that fit "
                          "and keep the rest as initialised")
    model.load_state_dict({name: weights[name] for name in match.matched}, strict=False)
    log.info("init_from %s: loaded %d of %d tensors", source, len(match.matched), len(match.matched) + len(match.missing)
             + len(match.mismatched))
    if not match.complete:
        log.warning("init_from %s: not loaded (kept as initialised or ignored): %s", source, match.describe(limit=50))
    return match
