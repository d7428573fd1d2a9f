"""Predictions of a trained classifier on new inputs: `python app/predict.py run=<run dir> input=<...> [output=...]`
and `load_model(run).predict(inputs)`.

Prediction dispatches on the run's preprocessing object, never on model names: each classifier family's
preprocessing has

    to_batch(inputs: Sequence[Any]) -> model input

turning a list of raw inputs into one model batch exactly as training did (text: strings, or dict rows holding the
text column -> {"input_ids", "attention_mask"}; images: file paths, PIL images or uint8 arrays -> (B, C, H, W); a
tabular preprocessing: dict rows of column -> value, one per CSV/JSONL row). A bad input is a DataError naming it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.data.images import IMAGE_SUFFIXES
from attnlab.data.sources import TABLE_SUFFIXES, iter_rows
from attnlab.errors import ConfigError, DataError, RunError
from attnlab.tasks import CLASSIFIER_TASKS, task_name

log = logging.getLogger("attnlab")

OUTPUT_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Predictions:
    """Labels and class probabilities of N inputs, in input order."""

    class_names: list[str]
    probs: np.ndarray  # (N, C) float32, rows sum to 1

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.probs.argmax(1)]

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """For each input, its k most probable classes with their probabilities, most probable first."""
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(p[j])) for j in row] for p, row in zip(self.probs, order)]


def check_classifier(loaded: Any) -> None:
    """A RunError unless the run is a classifier whose preprocessing can batch raw inputs."""
    task = task_name(loaded.cfg)
    if task not in CLASSIFIER_TASKS or "class_names" not in loaded.facts:
        raise RunError(f"{loaded.run_dir} is a {task or 'task-less'} run, not a classifier; predict takes runs of "
                       "task=classification (text, image or tabular)")
    if not hasattr(loaded.preprocess, "to_batch"):
        raise RunError(f"{loaded.run_dir}: its preprocessing ({type(loaded.preprocess).__name__}) cannot turn raw "
                       "inputs into a batch (no to_batch); predict supports text, image-folder, MNIST and tabular runs")


def predict(loaded: Any, inputs: Sequence[Any], *, batch_size: int = 64, progress: bool = False) -> Predictions:
    """Class probabilities of raw inputs (see the module docstring), batched; texts go in length-sorted batches
    (a batch pads to its longest text), the outputs in input order."""
    check_classifier(loaded)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(inputs, (str, bytes, Path)):
        inputs = [inputs]
    if not len(inputs):
        raise DataError("no inputs to predict")
    n = len(inputs)
    for i, item in enumerate(inputs):
        if isinstance(item, str) and not item.strip():
            raise DataError(f"input {i + 1} is an empty or missing text; a text classifier needs some text")
    order = list(range(n))
    if all(isinstance(x, str) for x in inputs) and not all(_looks_like_file(x) for x in inputs):
        order.sort(key=lambda i: len(inputs[i]))
    probs = np.zeros((n, len(loaded.facts["class_names"])), dtype=np.float32)
    model = loaded.model
    estimator = not isinstance(model, torch.nn.Module)  # a classical run's scikit-learn estimator: its probabilities
    dtype = torch.float32 if estimator else next((p.dtype for p in model.parameters()), torch.float32)
    bar = _progress(n) if progress else None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = loaded.preprocess.to_batch([inputs[i] for i in index])
            if estimator:
                probs[index] = _estimator_probs(model, batch.numpy(), len(loaded.facts["class_names"]))
                if bar is not None:
                    bar.update(len(index))
                continue
            if isinstance(batch, dict):
                logits = model(**batch)
            else:
                logits = model(batch.to(dtype))
            probs[index] = torch.softmax(logits.float(), dim=-1).numpy()
            if bar is not None:
                bar.update(len(index))
    if bar is not None:
        bar.close()
    return Predictions(list(loaded.facts["class_names"]), probs)


def _looks_like_file(text: str) -> bool:
    return text.lower().endswith(IMAGE_SUFFIXES) and Path(text).is_file()


class _progress:
    """A rich progress bar over `total` inputs (on stderr, gone when done)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("predict", total=total)
        self.bar.start()

    def update(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def close(self) -> None:
        self.bar.stop()


def read_inputs(source: str) -> tuple[list[Any], list[str]]:
    """(raw inputs, their ids) of predict's `input=`: a table (.csv/.tsv/.jsonl[.gz]: one input per row, a dict of
    columns), an image file, a folder of images (recursively, sorted), else the text itself."""
    if not isinstance(source, str) or not source.strip():
        raise DataError("input= is empty; give a text, an image file, a .csv/.tsv/.jsonl file or a folder of images")
    path = Path(source).expanduser()
    looks_like_path = path.suffix.lower() in (*IMAGE_SUFFIXES, ".csv", ".tsv", ".jsonl", ".gz") or os.sep in source
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [str(p) for p in files], [str(p.relative_to(path)) for p in files]
    if path.name.lower().endswith(TABLE_SUFFIXES):
        rows = list(iter_rows(path))  # a missing file is a DataError naming it
        if not rows:
            raise DataError(f"{path} holds no rows")
        return rows, [str(i) for i in range(1, len(rows) + 1)]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"no such image file: {path}")
        return [str(path)], [path.name]
    if looks_like_path and len(source) < 4096 and not path.exists() and " " not in source.strip():
        raise DataError(f"no such file or folder: {path}; for a text with no spaces, quote it as a sentence")
    return [source], ["input"]


def write_predictions(path: Path, ids: Sequence[str], predictions: Predictions, *, top_k: int) -> None:
    """One line per input: its id, label, top-k classes and probabilities (and every class's probability), as CSV or
    JSON Lines; written beside the file and renamed, so a failure leaves no half-written output."""
    kind = next((s for s in OUTPUT_SUFFIXES if path.name.lower().endswith(s)), None)
    if kind is None:
        raise ConfigError(f"output={path}: write .csv or .jsonl")
    if not path.parent.is_dir():
        raise ConfigError(f"output={path}: the folder {path.parent} does not exist")
    names = predictions.class_names
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f) if kind == ".csv" else None
            if writer is not None:
                writer.writerow(["id", "label", "top"] + [f"p_{n}" for n in names])
            for i, (label, top, probs) in enumerate(zip(predictions.labels, predictions.top(top_k), predictions.probs)):
                if writer is not None:
                    writer.writerow([ids[i], label, ";".join(f"{n}:{p:.6f}" for n, p in top)]
                                    + [f"{p:.6f}" for p in probs])
                else:
                    f.write(json.dumps({"id": ids[i], "label": label, "top": [[n, round(p, 6)] for n, p in top],
                                        "probs": {n: round(float(p), 6) for n, p in zip(names, probs)}}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_predict(*, run: str, input: str, output: str | None, top_k: int, batch_size: int, ckpt: str,
                progress: bool) -> Predictions:
    """What app/predict.py does: load the run, read the inputs, predict, write or print."""
    from attnlab.runs import load_model

    if not run:
        raise ConfigError("say which run: python app/predict.py run=<run dir> input=<text|image|csv|jsonl|folder>")
    if input is None:
        raise ConfigError("say what to predict: input=<a text | an image file | a .csv/.jsonl file | a folder of images>")
    if output:
        out = Path(output).expanduser()
        write_predictions_check(out)
    loaded = load_model(run, ckpt)
    check_classifier(loaded)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    items, ids = read_inputs(str(input))
    import time

    start = time.perf_counter()
    predictions = predict(loaded, items, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    log.info("predicted %d input(s) in %.2f s (%.1f inputs/s)", len(items), seconds, len(items) / seconds)
    k = min(top_k, len(predictions.class_names))
    if output:
        write_predictions(out, ids, predictions, top_k=k)
        log.info("wrote %s", out)
    else:
        for i, top in zip(ids, predictions.top(k)):
            log.info("%s: %s", i, "  ".join(f"{n} {p:.4f}" for n, p in top))
    return predictions


def write_predictions_check(path: Path) -> None:
    """Refuse a bad output= before any work."""
    if not path.name.lower().endswith(OUTPUT_SUFFIXES):
        raise ConfigError(f"output={path}: write .csv or .jsonl")
    if not path.parent.is_dir():
        raise ConfigError(f"output={path}: the folder {path.parent} does not exist")


def _estimator_probs(model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities of a scikit-learn classifier (one-hot of its prediction when it has no predict_proba), in
    the run's class order (the estimator was fitted on class ids, so its classes_ are ids)."""
    probs = np.zeros((len(x), num_classes), dtype=np.float32)
    if hasattr(model, "predict_proba"):
        probs[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(x)
    else:
        probs[np.arange(len(x)), np.asarray(model.predict(x), dtype=np.int64)] = 1.0
    return probs
