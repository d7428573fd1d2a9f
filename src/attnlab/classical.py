"""Classical estimators as runs: a scikit-learn model fitted on a table's preprocessed arrays, no Lightning loop.

It shares everything else with the networks: the data module (split and preprocessing), the metric code
(torchmetrics, tasks.classification.per_class_report, tasks.regression.regression_metrics), the figures, the run
directory (config, manifest, metrics.json, plots) and validate. The estimator is saved as `model.skops` (skops loads
without executing code). Feature importance (permutation on the validation split, impurity beside it for forests) is
computed for every tabular run, network or estimator.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from attnlab import build, runs
from attnlab.errors import ConfigError

log = logging.getLogger("attnlab")
ESTIMATOR = "model.skops"  # in a run directory: the fitted estimator


def is_estimator(cfg: DictConfig) -> bool:
    """Whether cfg.model builds a scikit-learn estimator (a class of sklearn or one of attnlab.models.estimators)."""
    target = build._import_target(cfg.model, "model")
    if inspect.isclass(target):
        from sklearn.base import BaseEstimator

        return issubclass(target, BaseEstimator)
    return getattr(target, "__module__", "") == "attnlab.models.estimators"


def is_estimator_run(run_dir: Path) -> bool:
    return (Path(run_dir) / ESTIMATOR).is_file()


def _table(datamodule: Any) -> None:
    if not hasattr(datamodule, "arrays"):
        raise ConfigError(f"a scikit-learn estimator trains on a table ({type(datamodule).__name__} is none): "
                          "choose a tabular data config, e.g. data=wine_quality or data=california_housing")


def fit(cfg: DictConfig, run: runs.Run) -> dict[str, Any]:
    """Fit the estimator on the training split, evaluate val and test, save it and its figures; the final metrics.

    `refit=true`: after the val metrics (of the model fitted on train), a clone is fitted on train + val, and that
    model is tested and saved (the feature importance stays that of the model fitted on train, on val).
    """
    datamodule = build.make_datamodule(cfg)
    _table(datamodule)
    facts = datamodule.facts()
    estimator = build.instantiate(cfg.model, "model", facts)
    datamodule.save_artifacts(run.dir)
    x, y = datamodule.arrays("train")
    seconds = _fit(estimator, x, y)
    metrics: dict[str, Any] = {"fit_seconds": seconds}
    metrics.update(evaluate(estimator, datamodule, "val", None)[0])
    for name in ("val/acc", "val/rmse"):  # one fit is its own best: a sweep's objective ranks it beside the networks
        if name in metrics:
            metrics[f"{name}_best"] = metrics[name]
    # on val, by the model that has not seen it (before a refit)
    importance(lambda frame, fitted=estimator: _estimator_predict(fitted, datamodule.prep, frame), datamodule,
               run.dir / runs.PLOTS, impurity=getattr(estimator, "feature_importances_", None))
    if cfg.get("refit"):  # the settings were chosen on val: the final model also learns from it (GridSearchCV's refit)
        xv, yv = datamodule.arrays("val")
        if len(yv) == 0:
            raise ConfigError("refit=true needs a validation split (data.val_size > 0)")
        from sklearn.base import clone

        estimator = clone(estimator)  # the same settings, unfitted
        metrics["refit_seconds"] = _fit(estimator, np.concatenate([x, xv]), np.concatenate([y, yv]))
        metrics["refit_rows"] = len(y) + len(yv)
    runs.save_skops(estimator, run.dir / ESTIMATOR)
    scores, artifacts = evaluate(estimator, datamodule, "test", run.dir / runs.PLOTS)
    metrics.update(scores)
    if artifacts:
        runs.write_json(run.dir / runs.PLOTS / "test_artifacts.json", artifacts)
    return metrics


def _fit(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Fit in place; the seconds it took. scikit-learn's parameter errors become a ConfigError naming the estimator."""
    log.info("fitting %s on %d rows x %d features", type(estimator).__name__, *x.shape)
    start = time.perf_counter()
    try:
        estimator.fit(x, y)
    except ValueError as err:  # scikit-learn's parameter checks happen at fit
        raise ConfigError(f"model ({type(estimator).__name__}): {err}") from None
    return time.perf_counter() - start


def _estimator_predict(estimator: Any, prep: Any, frame: Any) -> np.ndarray:
    """Raw rows -> predictions: class ids, or values in the target's units."""
    out = estimator.predict(prep.transform(frame))
    return np.asarray(out, dtype=np.int64) if prep.kind == "classification" else prep.decode_target(np.asarray(out, dtype=np.float64))


def evaluate(estimator: Any, datamodule: Any, split: str, figures_dir: Path | None) -> tuple[dict[str, float], dict[str, Any]]:
    """`<split>/...` metrics of an estimator on a split, with the test figures when `figures_dir` is given."""
    prep = datamodule.preprocessing()
    frame, y = datamodule.raw(split)
    if len(y) == 0:
        return {}, {}
    pred = _estimator_predict(estimator, prep, frame)
    if prep.kind == "classification":
        return classification_scores(torch.as_tensor(pred), torch.as_tensor(y), prep.class_names, split, figures_dir)
    return regression_scores(torch.as_tensor(pred), torch.as_tensor(y, dtype=torch.float64), split, figures_dir), {}


def classification_scores(pred: torch.Tensor, y: torch.Tensor, class_names: list[str], split: str,
                          figures_dir: Path | None) -> tuple[dict[str, float], dict[str, Any]]:
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score

    from attnlab.tasks.classification import per_class_report

    k = len(class_names)
    scores = {f"{split}/acc": float(multiclass_accuracy(pred, y, k, average="micro")),
              f"{split}/f1": float(multiclass_f1_score(pred, y, k, average="macro"))}
    confusion = multiclass_confusion_matrix(pred, y, k)
    if split == "test":
        per_class = multiclass_accuracy(pred, y, k, average=None)
        scores.update({f"test/acc_class/{n}": float(v) for n, v in zip(class_names, per_class)})
        scores.update({f"test/{key}": v for key, v in per_class_report(confusion, class_names).items()})
    if figures_dir is not None:
        from attnlab import plots

        plots.confusion_matrix(confusion, class_names, figures_dir / "confusion_matrix.png")
        plots.class_distribution(confusion, class_names, figures_dir / "class_distribution.png")
    return scores, {"confusion_matrix": confusion.tolist(), "class_names": class_names}


def regression_scores(pred: torch.Tensor, y: torch.Tensor, split: str, figures_dir: Path | None) -> dict[str, float]:
    from attnlab.tasks.regression import regression_figures, regression_metrics, update_metrics

    metrics = regression_metrics()
    update_metrics(metrics, pred.double(), y.double())
    scores = {f"{split}/{name}": float(value) for name, value in metrics.compute().items()}
    if figures_dir is not None:
        figures_dir.mkdir(parents=True, exist_ok=True)
        regression_figures(y.numpy(), pred.numpy(), lambda name: figures_dir / name)
    return scores


def network_predict(model: torch.nn.Module, prep: Any) -> Callable[[Any], np.ndarray]:
    """Raw rows -> predictions of a trained network (class ids, or values in the target's units)."""
    model.eval()
    first = next(model.parameters())  # a run trained on a GPU (or in bf16) is still there after its test
    device, dtype = first.device, first.dtype

    def predict(frame: Any) -> np.ndarray:
        x = torch.from_numpy(prep.transform(frame))
        with torch.no_grad():
            out = torch.cat([model(x[i:i + 4096].to(device, dtype)).float().cpu() for i in range(0, len(x), 4096)])
        if prep.kind == "classification":
            return out.argmax(-1).numpy()
        return prep.decode_target(out.reshape(-1).double().numpy())

    return predict


def importance(predict: Callable[[Any], np.ndarray], datamodule: Any, out_dir: Path, *, impurity: Any = None,
               repeats: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Permutation importance of each raw column on the validation split (the drop in accuracy, or the rise in RMSE,
    when the column is shuffled), and impurity importance beside it when the estimator has one (per preprocessed
    feature, summed per column); writes feature_importance.json and .png in out_dir."""
    from sklearn.inspection import permutation_importance

    from attnlab import plots

    prep = datamodule.preprocessing()
    frame, y = datamodule.raw("val")
    if len(y) == 0:
        return {}
    classify = prep.kind == "classification"

    def score(_: Any, X: Any, target: np.ndarray) -> float:
        pred = predict(X)
        return float(np.mean(pred == target)) if classify else -float(np.sqrt(np.mean((pred - target) ** 2)))

    result = permutation_importance(_Fitted(), frame, y, scoring=score, n_repeats=repeats, random_state=seed)
    values = {"permutation": {c: float(v) for c, v in zip(frame.columns, result.importances_mean)}}
    if impurity is not None:
        values["impurity"] = _per_column(np.asarray(impurity), prep)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / "feature_importance.json", {
        "split": "val", "repeats": repeats,
        "permutation_means": "drop in accuracy" if classify else "rise in RMSE (target units)", **values})
    unit = "accuracy drop" if classify else "RMSE rise"
    plots.importances(_normalised(values), out_dir / "feature_importance.png",
                      title=f"feature importance (permutation: {unit}, scaled to the largest)")
    return values


class _Fitted:
    """permutation_importance wants an estimator; our scorer closes over the real predictor."""

    def fit(self, *_: Any) -> _Fitted:
        return self


def _per_column(values: np.ndarray, prep: Any) -> dict[str, float]:
    """Importances per preprocessed feature summed back to the raw columns (a one-hot column's levels together)."""
    names = prep.transformer.get_feature_names_out()
    out: dict[str, float] = {c: 0.0 for c in prep.feature_columns}
    for name, value in zip(names, values):
        part = name.split("__", 1)[1]
        column = next((c for c in sorted(prep.feature_columns, key=len, reverse=True)
                       if part == c or part.startswith(c + "_") or part == f"missingindicator_{c}"), None)
        if column is not None:
            out[column] += float(value)
    return out


def _normalised(values: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    scaled = {}
    for kind, per in values.items():
        top = max((abs(v) for v in per.values()), default=0.0) or 1.0
        scaled[kind] = {k: v / top for k, v in per.items()}
    return scaled


def predictor(loaded: runs.LoadedRun) -> Callable[[Any], np.ndarray]:
    """Raw rows -> predictions (class ids, or target units) of a loaded tabular run, estimator or network."""
    if is_estimator_run(loaded.run_dir):
        return lambda frame: _estimator_predict(loaded.model, loaded.preprocess, frame)
    return network_predict(loaded.model, loaded.preprocess)


def compare(run_a: str | Path, run_b: str | Path, out_dir: Path | None = None) -> Path:
    """Two tabular runs on the same table (a random forest and boosted trees, say): their importances side by side,
    and where their test errors agree and differ; writes comparison.md and figures, returns the markdown's path."""
    from attnlab import plots

    loaded = [runs.load_model(r) for r in (run_a, run_b)]
    names = [f"{lr.cfg.get('name', lr.run_dir.name)} ({lr.run_dir.name})" for lr in loaded]
    data = [build.make_datamodule(lr.cfg, artifacts=lr.run_dir) for lr in loaded]
    if any(not hasattr(d, "raw") for d in data):
        raise ConfigError("compare: both runs must be tabular runs")
    frame, y = data[0].raw("test")
    if not np.array_equal(np.asarray(data[1].raw("test")[1]), np.asarray(y)):
        raise ConfigError(f"compare: {names[0]} and {names[1]} were tested on different rows (another table, split or "
                          "seed of the split); compare runs of one data config")
    preds = [predictor(lr)(frame) for lr in loaded]
    out = Path(out_dir) if out_dir else loaded[0].run_dir / "comparison" / loaded[1].run_dir.name
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {names[0]} against {names[1]}", "", f"Test split: {len(y):,} rows.", ""]
    if loaded[0].preprocess.kind == "classification":
        right = [p == y for p in preds]
        cells = {"both right": right[0] & right[1], f"only {names[0]} right": right[0] & ~right[1],
                 f"only {names[1]} right": ~right[0] & right[1], "both wrong": ~right[0] & ~right[1]}
        same_wrong = int(np.sum(~right[0] & ~right[1] & (preds[0] == preds[1])))
        lines += ["| | rows | share |", "|---|---|---|"] + [f"| {k} | {int(v.sum()):,} | {100 * v.mean():.1f}% |"
                                                          for k, v in cells.items()]
        lines += ["", f"Of the rows both get wrong, {same_wrong:,} get the same wrong class. They agree with each other "
                  f"on {100 * np.mean(preds[0] == preds[1]):.1f}% of the rows."]
    else:
        errors = [p - y for p in preds]
        corr = float(np.corrcoef(errors[0], errors[1])[0, 1])
        big = [np.abs(e) > np.quantile(np.abs(e), 0.9) for e in errors]
        rmse = [float(np.sqrt(np.mean(e ** 2))) for e in errors]
        lines += [f"RMSE {rmse[0]:,.0f} and {rmse[1]:,.0f}; their errors correlate at {corr:.3f}; of each one's 10% "
                  f"largest errors, {100 * np.mean(big[0] & big[1]) / 0.1:.0f}% are the other's too.",
                  f"RMSE of their average: {np.sqrt(np.mean(((preds[0] + preds[1]) / 2 - y) ** 2)):,.0f}."]
        plots.error_scatter(errors[0], errors[1], names, out / "errors.png")
        lines += ["", "![errors](errors.png)"]
    importances = {}
    for name, lr in zip(names, loaded):
        path = lr.run_dir / runs.PLOTS / "feature_importance.json"
        if path.is_file():
            saved = runs.read_json(path)
            importances[f"{name}: permutation"] = saved["permutation"]
            if "impurity" in saved:
                importances[f"{name}: impurity"] = saved["impurity"]
    if importances:
        plots.importances(_normalised(importances), out / "importances.png",
                          title="feature importance (each scaled to its largest)")
        lines += ["", "## Feature importance (validation split)", "", "![importances](importances.png)", "",
                  "| column | " + " | ".join(importances) + " |", "|---|" + "---|" * len(importances)]
        first = next(iter(importances.values()))
        for col in sorted(first, key=lambda c: -first[c]):
            lines.append(f"| {col} | " + " | ".join(f"{imp.get(col, 0.0):.4g}" for imp in importances.values()) + " |")
    report = out / "comparison.md"
    report.write_text("\n".join(lines) + "\n")
    return report
