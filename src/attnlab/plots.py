"""Matplotlib figures from logged metrics and test outputs; `viz/plot.py` draws them for a run."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attnlab import runs  # noqa: E402
from attnlab.errors import RunError  # noqa: E402

log = logging.getLogger(__name__)
_STAGES = ("train", "val", "test")
_SKIP = re.compile(r"(^epoch$|^lr-|/lr(/|$)|_best$|_class/|per_sec|time)")


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion_matrix(confusion: np.ndarray | Sequence, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    return _save(fig, path)


def class_distribution(confusion: np.ndarray | Sequence, class_names: Sequence[str], path: Path) -> Path:
    """True vs predicted counts per class (the confusion matrix's row and column sums)."""
    cm = np.asarray(confusion, dtype=float)
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(class_names)), 3.2))
    ax.bar(x - 0.2, cm.sum(axis=1), width=0.4, label="true")
    ax.bar(x + 0.2, cm.sum(axis=0), width=0.4, label="predicted")
    ax.set(xticks=x, xticklabels=class_names, ylabel="examples", title="class distribution")
    ax.legend()
    return _save(fig, path)


def image_grid(rows: dict[str, "np.ndarray"], path: Path, captions: dict[str, Sequence[str]] | None = None,
               title: str = "") -> Path:
    """One row per entry (e.g. input / reconstruction / target), images (N, C, H, W) in [0, 1]; `captions`: a text
    under each image of a row (e.g. a classifier's prediction)."""
    names = list(rows)
    n = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(names), n, figsize=(1.2 * n, (1.65 if captions else 1.3) * len(names)), squeeze=False)
    for r, name in enumerate(names):
        images = np.asarray(rows[name]).clip(0, 1)
        for c in range(n):
            img = images[c].transpose(1, 2, 0)  # (H, W, C)
            axes[r, c].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            for side in axes[r, c].spines.values():
                side.set_visible(False)
            if captions and name in captions:
                axes[r, c].set_xlabel(captions[name][c], fontsize=8)
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def attention_map(weights: np.ndarray | Sequence, source: Sequence[str], target: Sequence[str], path: Path, title: str = "") -> Path:
    """A target x source heat map of attention weights (rows: target tokens, each row sums to 1)."""
    w = np.asarray(weights, dtype=float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.32 * len(source), 1.2 + 0.3 * len(target)))
    ax.imshow(w, cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set(xticks=range(len(source)), yticks=range(len(target)), xlabel="source", ylabel="translation", title=title)
    ax.set_xticklabels(source, rotation=90, fontsize=7)
    ax.set_yticklabels(target, fontsize=7)
    return _save(fig, path)


def metric_groups(history: dict[str, list[tuple[int, float]]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{'loss': {'train': [...], 'val': [...]}, 'acc': {...}}: the per-epoch series of each metric by stage."""
    groups: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for key, series in history.items():
        stage, _, name = key.partition("/")
        if stage not in _STAGES or not name or _SKIP.search(key) or name.endswith("_step"):
            continue
        name = name.removesuffix("_epoch")
        groups[name][stage] = series
    return dict(groups)


def curves(history: dict[str, list[tuple[int, float]]], out_dir: Path) -> list[Path]:
    """One PNG per metric with its train and val curves against the training step."""
    written = []
    for name, by_stage in sorted(metric_groups(history).items()):
        if set(by_stage) == {"test"}:
            continue  # a single final number, not a curve
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        step_key = f"train/{name}_step"
        if step_key in history and len(history[step_key]) > 1:
            steps, values = zip(*history[step_key])
            ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8, label="train (step)")
        for stage in ("train", "val"):
            if stage in by_stage:
                steps, values = zip(*by_stage[stage])
                ax.plot(steps, values, marker="o", ms=3, label=stage)
        ax.set(xlabel="step", ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"curve_{name.replace('/', '_')}.png"))
    return written


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Curves of one run from its history.csv."""
    history_path = run_dir / runs.HISTORY
    if not history_path.is_file():
        raise RunError(f"{run_dir} has no {runs.HISTORY} yet (the run logged nothing); train longer or check its manifest")
    written = curves(runs.read_history(history_path), out_dir or run_dir / runs.PLOTS)
    if not written:
        raise RunError(f"{history_path} holds no train/val metrics to plot")
    return written


def predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, path: Path, unit: str = "") -> Path:
    """Predicted against actual values on the diagonal's scale, with the test RMSE and R² in the title."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
    r2 = 1 - float(np.sum((predicted - actual) ** 2) / max(np.sum((actual - actual.mean()) ** 2), 1e-12))
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.scatter(actual, predicted, s=4, alpha=0.35)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set(xlabel=f"actual{unit}", ylabel=f"predicted{unit}", title=f"RMSE {rmse:.4g}, R² {r2:.3f}")
    return _save(fig, path)


def residuals(actual: np.ndarray, predicted: np.ndarray, path: Path, unit: str = "") -> Path:
    """Residuals (predicted - actual) against the prediction, and their histogram."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    res = predicted - actual
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 3.4))
    a.scatter(predicted, res, s=4, alpha=0.35)
    a.axhline(0, color="black", lw=1)
    a.set(xlabel=f"predicted{unit}", ylabel="residual", title="residuals")
    b.hist(res, bins=60)
    b.set(xlabel="residual", ylabel="rows", title=f"mean {res.mean():.3g}, std {res.std():.3g}")
    return _save(fig, path)


def importances(values: dict[str, dict[str, float]], path: Path, title: str = "feature importance") -> Path:
    """Horizontal bars per feature, one colour per kind of importance (permutation, impurity), sorted by the first."""
    kinds = list(values)
    names = sorted(values[kinds[0]], key=lambda n: values[kinds[0]][n])
    y = np.arange(len(names))
    h = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(6.4, 1.0 + 0.3 * len(names)))
    for i, kind in enumerate(kinds):
        ax.barh(y + i * h, [values[kind].get(n, 0.0) for n in names], height=h, label=kind)
    ax.set(yticks=y + h * (len(kinds) - 1) / 2, yticklabels=names, title=title)
    ax.legend()
    return _save(fig, path)


def distributions(frame: Any, path: Path, columns: int = 4) -> Path:
    """A histogram per numeric column, bar counts per categorical one (the 12 most frequent values)."""
    import pandas as pd

    names = list(frame.columns)
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        series = frame[name].dropna()
        if pd.api.types.is_numeric_dtype(series):
            ax.hist(series.to_numpy(dtype=float), bins=40)
        else:
            counts = series.astype(str).value_counts().head(12)
            ax.bar(range(len(counts)), counts.to_numpy())
            ax.set_xticks(range(len(counts)), counts.index, rotation=45, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def histogram(values: np.ndarray, path: Path, title: str = "", log_too: bool = False) -> Path:
    """A value's histogram, and beside it that of log(1 + value) when `log_too`."""
    fig, axes = plt.subplots(1, 2 if log_too else 1, figsize=(8.0 if log_too else 4.4, 3.2), squeeze=False)
    axes[0, 0].hist(values, bins=60)
    axes[0, 0].set(title=title, ylabel="rows")
    if log_too:
        axes[0, 1].hist(np.log1p(values), bins=60)
        axes[0, 1].set(title="log(1 + value)")
    return _save(fig, path)


def error_scatter(a: np.ndarray, b: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Two models' errors on the same rows, one against the other: on the diagonal they err alike."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(a, b, s=4, alpha=0.35)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set(xlabel=f"error of {names[0]}", ylabel=f"error of {names[1]}", title="errors, row by row")
    return _save(fig, path)
