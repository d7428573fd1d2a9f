"""The tabular data module: splits, preprocessing fitted on train only, missing values and unknown categories, the
target's scaling, artifacts, and the errors bad tables get."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnlab.data.table_prep import TablePreprocessing
from attnlab.data.tabular import TabularDataModule
from attnlab.errors import ConfigError, DataError


def house_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A learnable house-price table: two numeric columns (one with holes), a categorical one, a USD target."""
    rng = np.random.default_rng(seed)
    rooms = rng.uniform(2, 9, n)
    income = rng.uniform(1, 10, n)
    place = rng.choice(["coast", "inland", "bay"], n)
    price = 30_000 * income + 10_000 * rooms + np.where(place == "coast", 80_000, 0) + rng.normal(0, 5_000, n)
    frame = pd.DataFrame({"rooms": rooms, "income": income, "place": place, "price": price.round()})
    frame.loc[rng.choice(n, n // 15, replace=False), "rooms"] = np.nan
    return frame


def wine_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    quality = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.8, 0.8]) + 4  # 4, 5, 6
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "quality": quality})


def module(files, **kw) -> TabularDataModule:
    kw.setdefault("seed", 0)
    return TabularDataModule(files=[str(f) for f in files], **kw)


@pytest.fixture
def house_csv(tmp_path) -> Path:
    path = tmp_path / "houses.csv.gz"
    with gzip.open(path, "wt") as f:
        house_table().to_csv(f, index=False)
    return path


@pytest.fixture
def wine_csv(tmp_path) -> Path:
    path = tmp_path / "wine.csv"
    wine_table().to_csv(path, index=False, header=False)  # no header, as the UCI copies
    return path


def test_a_stratified_split_keeps_every_class_in_proportion(wine_csv):
    dm = module([wine_csv], columns=["a", "b", "c", "quality"], target="quality", kind="classification")
    facts = dm.facts()
    assert facts["num_classes"] == 3 and facts["class_names"] == ["4", "5", "6"] and facts["in_features"] == 3
    dm.setup()
    shares = {s: np.bincount(dm.sets[s].tensors[1].numpy(), minlength=3) / len(dm.sets[s]) for s in ("train", "val", "test")}
    for split in ("val", "test"):
        assert (shares[split] > 0).all()
        assert np.abs(shares[split] - shares["train"]).max() < 0.06
    assert sum(len(dm.sets[s]) for s in ("train", "val", "test")) == 240
    assert sum(facts["class_counts"]) == len(dm.sets["train"])


def test_preprocessing_is_fitted_on_train_only(house_csv, tmp_path):
    """Changing test rows (however wildly) changes nothing the model sees of the training rows."""
    dm = module([house_csv], target="price", kind="regression", log_target=True)
    dm.setup()
    train_x = dm.sets["train"].tensors[0].clone()
    other = module([house_csv], target="price", kind="regression", log_target=True)
    other._read_splits()
    other.frames["test"] = other.frames["test"].assign(rooms=1e9, income=-1e9, price=1.0)
    other.setup()
    assert np.array_equal(other.sets["train"].tensors[0].numpy(), train_x.numpy())
    assert other.facts()["target_mean"] == dm.facts()["target_mean"]
    assert not np.array_equal(other.sets["test"].tensors[0].numpy(), dm.sets["test"].tensors[0].numpy())


def test_missing_values_and_unknown_categories_at_test_time_give_finite_features(house_csv):
    for encoding in ("onehot", "ordinal"):
        dm = module([house_csv], target="price", kind="regression", missing_indicator=True, categorical_encoding=encoding)
        prep = dm.preprocessing()
        rows = [{"rooms": None, "income": 3.0, "place": "mars"}, {"rooms": 4.0, "income": None, "place": None}]
        x = prep.transform(rows)
        assert x.shape == (2, prep.n_features) and np.isfinite(x).all()
        if encoding == "ordinal":  # unknown and missing categories are -1: the model's "unknown" embedding
            assert x[0, -1] == -1 and x[1, -1] == -1 and prep.cardinalities == [3]
        else:  # one-hot: an unknown category is all zeros
            assert x[0, -3:].sum() == 0


def test_log_target_round_trips_to_the_target_units(house_csv):
    dm = module([house_csv], target="price", kind="regression", log_target=True)
    dm.setup()
    _, scaled = dm.arrays("test")
    _, raw = dm.raw("test")
    assert abs(scaled.mean()) < 1.0 and raw.min() > 1000  # scaled for the networks, USD for the metrics
    np.testing.assert_allclose(dm.preprocessing().decode_target(scaled.astype(np.float64)), raw, rtol=1e-4)


def test_kfold_test_folds_partition_the_table(wine_csv):
    seen = []
    for fold in range(4):
        dm = module([wine_csv], columns=["a", "b", "c", "quality"], target="quality", kind="classification", folds=4, fold=fold)
        dm._read_splits()
        seen.append(dm.frames["test"][["a", "b"]].round(9).apply(tuple, axis=1))
    together = pd.concat(seen)
    assert len(together) == 240 and together.is_unique


def test_artifacts_round_trip_through_skops(house_csv, tmp_path):
    dm = module([house_csv], target="price", kind="regression", categorical_encoding="ordinal")
    facts = dm.facts()
    dm.save_artifacts(tmp_path / "run")
    again = module([house_csv], target="price", kind="regression")
    assert again.load_artifacts(tmp_path / "run")
    assert again.facts() == {**facts}
    rows = house_table(5, seed=9)
    np.testing.assert_array_equal(again.preprocessing().transform(rows), dm.preprocessing().transform(rows))
    assert isinstance(again.preprocessing(), TablePreprocessing)


def test_ratio_columns_are_derived_from_the_inputs(house_csv):
    dm = module([house_csv], target="price", kind="regression", ratios={"income_per_room": ["income", "rooms"]})
    prep = dm.preprocessing()
    assert prep.n_features == 2 + 1 + 3 and "income_per_room" not in prep.feature_columns
    x = prep.transform([{"rooms": 0.0, "income": 3.0, "place": "bay"}])  # a zero denominator is imputed, not inf
    assert np.isfinite(x).all()


def test_projections_read_two_columns_along_evenly_spaced_directions(house_csv, tmp_path):
    dm = module([house_csv], target="price", kind="regression", scaler="robust",
                projections={"columns": ["rooms", "income"], "directions": 8})
    prep = dm.preprocessing()
    names = [f"rooms_income_{a:g}deg" for a in (22.5, 45, 67.5, 112.5, 135, 157.5)]  # 0 and 90: the columns themselves
    derived = prep.with_ratios(pd.DataFrame([{"rooms": 3.0, "income": 4.0, "place": "bay"}]))
    assert list(derived.columns[-6:]) == names
    assert derived["rooms_income_45deg"].iloc[0] == pytest.approx(7 / 2 ** 0.5)
    assert derived["rooms_income_135deg"].iloc[0] == pytest.approx(1 / 2 ** 0.5)
    assert prep.n_features == 2 + 6 + 3  # numeric + projections + one-hot place
    dm.save_artifacts(tmp_path / "run")  # the run's directions come back with it
    again = TablePreprocessing.load(tmp_path / "run" / "tabular")
    rows = house_table(5, seed=3)
    np.testing.assert_array_equal(again.transform(rows), prep.transform(rows))
    for bad in ({"columns": ["rooms"], "directions": 8}, {"columns": ["rooms", "place"], "directions": 8},
                {"columns": ["rooms", "income"], "directions": 2}, {"columns": ["rooms", "income"], "angles": 8}):
        with pytest.raises(DataError, match="data.projections"):
            module([house_csv], target="price", kind="regression", projections=bad).facts()


@pytest.mark.parametrize("bad, match", [
    ({"target": "cost"}, r"data.target='cost': no such column .* its columns: rooms, income, place, price"),
    ({"target": "place"}, r"data.target='place' is not numeric \(e.g. '(coast|inland|bay)'\) but data.kind=regression"),
    ({"features": ["rooms", "size"]}, r"column\(s\) size .* not in"),
])
def test_bad_tables_are_named(house_csv, bad, match):
    kw = {"target": "price", "kind": "regression", **bad}
    with pytest.raises(DataError, match=match):
        module([house_csv], **kw).facts()


def test_an_empty_or_missing_file_is_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv is empty"):
        module([empty], target="y", kind="regression").facts()
    with pytest.raises(DataError, match="no such table file .*nowhere.csv"):
        module([tmp_path / "nowhere.csv"], target="y", kind="regression").facts()


def test_columns_that_differ_at_validation_are_named(house_csv):
    prep = module([house_csv], target="price", kind="regression").preprocessing()
    with pytest.raises(DataError, match=r"column\(s\) income missing: this run reads rooms, income, place"):
        prep.transform(pd.DataFrame({"rooms": [3.0], "salary": [2.0], "place": ["bay"]}))
    with pytest.raises(DataError, match="column 'rooms' is numeric in this run but holds 'many'"):
        prep.transform([{"rooms": "many", "income": 2.0, "place": "bay"}])


def test_a_label_unseen_in_training_is_an_error(wine_csv, tmp_path):
    test = tmp_path / "test.csv"
    pd.DataFrame({"a": [0.1], "b": [0.2], "c": [0.3], "quality": [9]}).to_csv(test, index=False, header=False)
    dm = module([wine_csv], columns=["a", "b", "c", "quality"], target="quality", kind="classification", test_file=str(test))
    with pytest.raises(DataError, match=r"label\(s\) 9 not seen in training \(classes: 4, 5, 6\)"):
        dm.setup()


def test_config_mistakes_are_refused():
    with pytest.raises(ConfigError, match="unknown kind 'ranking'"):
        TabularDataModule(files=["x.csv"], target="y", kind="ranking", seed=0)
    with pytest.raises(ConfigError, match="k-fold needs folds >= 2"):
        TabularDataModule(files=["x.csv"], target="y", kind="regression", seed=0, folds=5, fold=5)
    with pytest.raises(ConfigError, match="a positive number, or full"):
        TabularDataModule(files=["x.csv"], target="y", kind="regression", seed=0, batch_size=0)


def test_full_batch_means_one_batch_an_epoch(wine_csv):
    dm = module([wine_csv], columns=["a", "b", "c", "quality"], target="quality", kind="classification", batch_size="full")
    dm.setup()
    assert len(dm.train_dataloader()) == 1


def test_the_quantile_scaler_tames_heavy_tails(house_csv):
    plain = module([house_csv], target="price", kind="regression", ratios={"r": ["income", "rooms"]})
    quantile = module([house_csv], target="price", kind="regression", ratios={"r": ["income", "rooms"]}, scaler="quantile")
    row = [{"rooms": 0.01, "income": 9.0, "place": "bay"}]  # a ratio far beyond anything in training
    assert np.abs(plain.preprocessing().transform(row)).max() > 10
    assert np.abs(quantile.preprocessing().transform(row)).max() < 6


def test_the_report_counts_classes_per_split_and_describes_a_regression_target(wine_csv, house_csv, tmp_path):
    dm = module([wine_csv], columns=["a", "b", "c", "quality"], target="quality", kind="classification")
    report = dm.report(tmp_path / "wine")
    n = {s: len(dm.frames[s]) for s in ("train", "val", "test")}
    assert "## Class balance" in report and f"| **all** | {n['train']:,} | {n['val']:,} | {n['test']:,} |" in report
    balance = report[report.index("## Class balance"):]
    assert 0 < balance.index("| 4 |") < balance.index("| 5 |") < balance.index("| 6 |")  # every score, in order
    assert (tmp_path / "wine" / "class_balance.png").is_file() and (tmp_path / "wine" / "distributions.png").is_file()
    houses = module([house_csv], target="price", kind="regression").report(tmp_path / "houses")
    assert "## Target" in houses and "| place | categorical |" in houses and (tmp_path / "houses" / "target.png").is_file()
