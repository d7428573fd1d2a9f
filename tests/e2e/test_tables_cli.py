"""Tables from the command line: every table experiment on generated files laid out as ../shared/data's (one
multirun, networks under fast_dev_run, estimators fitted on the small table), validate reproducing a classical and a
neural run, a k-fold sweep's summary, and bad tables refused with the column or file named."""

import json
from pathlib import Path

import numpy as np
import pytest

from attnlab.config import conf_dir

pytestmark = pytest.mark.slow
TABLE_EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml")
                           if p.stem.startswith(("wine_", "california_", "boston_")))


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def jobs(sweep_root: Path) -> dict[str, Path]:
    """{experiment name: job dir} of every job under the results' sweeps."""
    found = {}
    for manifest in sweep_root.glob("sweeps/*/*/manifest.json"):
        config = (manifest.parent / "config.yaml").read_text()
        name = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("name:"))
        found[name] = manifest.parent
    return found


def test_every_table_experiment_runs_and_validates(table_cli):
    """All table experiments in one multirun (one process): networks one batch (fast_dev_run), estimators fitted; each
    records its metrics, figures and feature importance; a classical and a neural run validate to the same metrics."""
    assert len(TABLE_EXPERIMENTS) == 12
    table_cli("app/train.py", "-m", f"experiment={','.join(TABLE_EXPERIMENTS)}", "trainer.fast_dev_run=true",
              timeout=1200)
    found = jobs(table_cli.results)
    assert sorted(found) == TABLE_EXPERIMENTS
    for name, job in found.items():
        assert read(job / "manifest.json")["status"] == "completed", name
        metrics = read(job / "metrics.json")
        wanted = ("test/acc", "test/f1") if name.startswith("wine_") else ("test/rmse", "test/mae", "test/r2")
        assert all(np.isfinite(metrics[m]) for m in wanted), (name, metrics)
        assert (job / "tabular" / "preprocessor.skops").is_file() and (job / "plots" / "feature_importance.png").is_file()
        figures = ("confusion_matrix.png",) if name.startswith("wine_") else ("predicted_vs_actual.png", "residuals.png")
        assert all((job / "plots" / f).is_file() for f in figures), name
    assert (found["wine_rf"] / "model.skops").is_file() and not (found["wine_mlp"] / "model.skops").exists()
    assert "impurity" in read(found["california_rf"] / "plots" / "feature_importance.json")
    wine_rf = read(found["wine_rf"] / "metrics.json")
    assert wine_rf["test/acc"] > 0.6 and "test/precision_class/5" in wine_rf  # learnable: chance is about 0.3

    for a, b, words in (("wine_rf", "wine_gbt", "both right"), ("california_rf", "california_gbt", "errors correlate")):
        table_cli("viz/plot.py", f"compare=[{found[a]},{found[b]}]")
        report = (found[a] / "comparison" / found[b].name / "comparison.md").read_text()
        assert words in report and "## Feature importance" in report, report
        assert ("median_income" in report) == (a == "california_rf")  # the importance table names the columns

    # predict: a CSV of raw rows (feature columns by name, as text) through each run's own preprocessing, the labels
    # those of the run's own predictor on the same rows
    from attnlab import runs
    from attnlab.classical import predictor
    from attnlab.data.tabular import TabularDataModule

    for name in ("wine_rf", "wine_mlp"):
        loaded = runs.load_model(found[name])
        dm = TabularDataModule(**{k: v for k, v in loaded.cfg.data.items() if k != "_target_"})
        frame, _ = dm.raw("test")
        rows = table_cli.results.parent / f"{name}_rows.csv"
        frame.to_csv(rows, index=False)
        out = table_cli.results.parent / f"{name}_pred.csv"
        table_cli("app/predict.py", f"run={found[name]}", f"input={rows}", f"output={out}")
        lines = out.read_text().splitlines()
        assert len(lines) == len(frame) + 1
        expected = [loaded.facts["class_names"][i] for i in predictor(loaded)(frame)]
        got = [line.split(",")[1] for line in lines[1:]]
        assert got == expected, name

    for name in ("wine_rf", "california_mlp"):
        table_cli("val/validate.py", f"run={found[name]}")
        recorded, report = read(found[name] / "metrics.json"), read(found[name] / "validation" / "test.json")
        for key in ("test/acc", "test/f1") if name == "wine_rf" else ("test/rmse", "test/r2"):
            assert report["metrics"][key] == pytest.approx(recorded[key], rel=1e-5), (name, key)


def test_kfold_sweep_summary_and_bad_tables(table_cli):
    table_cli("app/train.py", "-m", "experiment=california_gbt", "data.folds=3", "data.fold=0,1,2", "model.max_iter=30")
    (sweep,) = (table_cli.results / "sweeps").iterdir()
    summary = (sweep / "summary.md").read_text()
    assert "test/rmse" in summary and "±" in summary  # three folds folded into mean ± std

    out = table_cli("app/train.py", "experiment=california_gbt", "data.target=price", expect=2)
    assert "data.target='price': no such column" in out.stderr and "median_house_value" in out.stderr
    out = table_cli("app/train.py", "experiment=california_gbt", "data.target=ocean_proximity", expect=2)
    assert "is not numeric" in out.stderr and "data.kind=regression" in out.stderr
    empty = table_cli.results.parent / "empty.csv"
    empty.write_text("")
    out = table_cli("app/train.py", "experiment=boston_mlp", f"data.files=[{empty}]", expect=2)
    assert "empty.csv is empty" in out.stderr


def test_wine_quality_read_as_ordinal_regression(table_cli):
    """The dataset paper's reading: quality as a number, the rounded prediction's accuracy beside RMSE and MAE."""
    table_cli("app/train.py", "experiment=wine_mlp", "data.kind=regression", "task=regression",
              "task.round_accuracy=true", "trainer.max_epochs=2")
    (run,) = (table_cli.results / "runs").iterdir()
    metrics = read(run / "metrics.json")
    assert 0 <= metrics["test/acc_rounded"] <= 1 and metrics["test/mae"] > 0 and "test/f1" not in metrics
