"""Classical (scikit-learn) runs in process: `refit=true` tests and saves a model fitted on train + val, while the
val metrics and the feature importance stay those of the model fitted on train; a network refuses refit."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from attnlab import runs
from attnlab.classical import predictor
from attnlab.data.tabular import TabularDataModule
from attnlab.errors import ConfigError

from test_load_model import train_in_process  # the suite's in-process app/train.py (the run in <root>/run)


def house_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rooms, income = rng.uniform(2, 9, n), rng.uniform(1, 10, n)
    price = 30_000 * income + 10_000 * rooms + rng.normal(0, 5_000, n)
    return pd.DataFrame({"rooms": rooms, "income": income, "price": price.round()})


@pytest.fixture
def houses(tmp_path) -> list[str]:
    path = tmp_path / "houses.csv"
    house_table(n=400).to_csv(path, index=False)
    return ["data=tabular", f"data.files=[{path}]", "data.target=price", "data.kind=regression", "task=regression",
            "model=gbt", "model.max_iter=40", "seed=3", "test=true"]


def test_refit_tests_a_model_fitted_on_train_and_val(tmp_path, houses):
    plain = train_in_process(tmp_path / "plain", houses)
    refit = train_in_process(tmp_path / "refit", [*houses, "refit=true"])
    a = json.loads((plain / "metrics.json").read_text())
    b = json.loads((refit / "metrics.json").read_text())
    loaded = runs.load_model(refit)
    dm = TabularDataModule(**{k: v for k, v in loaded.cfg.data.items() if k != "_target_"})
    n_train, n_val = (len(dm.raw(s)[1]) for s in ("train", "val"))
    assert "refit_rows" not in a and b["refit_rows"] == n_train + n_val
    history = {row[1]: float(row[2]) for row in csv.reader((plain / "history.csv").open()) if row[0] == "0"}
    assert history["test/rmse"] == pytest.approx(a["test/rmse"], rel=1e-4)  # what the trackers received too
    assert b["val/rmse"] == pytest.approx(a["val/rmse"])  # measured before the refit, by the same seeded model
    assert a["val/rmse_best"] == a["val/rmse"]  # what a sweep's objective reads for a regression run
    assert b["test/rmse"] != pytest.approx(a["test/rmse"])  # another model was tested
    importance = lambda run: json.loads((run / "plots" / "feature_importance.json").read_text())
    assert importance(plain) == importance(refit)  # the importance is the train-only model's, on unseen rows

    # the saved model is the refitted one: its test predictions give the recorded test metric
    frame, y = dm.raw("test")
    rmse = float(np.sqrt(np.mean((predictor(loaded)(frame) - y) ** 2)))
    assert rmse == pytest.approx(b["test/rmse"], rel=1e-4)


def test_a_network_refuses_refit(tmp_path, houses):
    network = [o for o in houses if not o.startswith("model")] + ["model=mlp", "trainer.fast_dev_run=true", "refit=true"]
    with pytest.raises(ConfigError, match="refit=true is for scikit-learn estimators"):
        train_in_process(tmp_path / "net", network)
