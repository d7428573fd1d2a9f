"""The model registry on MLflow (attnlab.runs.registry, attnlab.runs.registering): two runs of one experiment as
versions 1 and 2 of a model in a local sqlite store, an alias moved with its audit trail, `models:/` addresses loaded
exactly as the run directories, and every bad address a clear error. Offline: the store and the runs live in tmp."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_load_model import train_in_process

from attnlab import runs
from attnlab.data.mnist import read_idx, write_fake_mnist
from attnlab.errors import ConfigError, RunError
from attnlab.runs import registering, registry


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny runs of mnist_cnn, seeds 1 and 2, tested (so they have test metrics), on fake MNIST."""
    root = tmp_path_factory.mktemp("registry_runs")
    write_fake_mnist(root / "data" / "mnist", n_train=256, n_test=64)
    made = []
    for seed in (1, 2):
        (root / f"seed{seed}").mkdir()
        (root / f"seed{seed}" / "data").symlink_to(root / "data")
        made.append(train_in_process(root / f"seed{seed}", ["experiment=mnist_cnn", "data.val_size=64",
                                                             "data.batch_size=32", f"seed={seed}", "test=true"]))
    return made[0], made[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, two_runs) -> str:
    """A sqlite store with model `x`: version 1 = the seed-1 run, version 2 = the seed-2 run, promoted to champion."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    for run in two_runs:
        registering.register(run, "x", store=uri)
    registering.promote("x", 2, "champion", store=uri)
    return uri


@pytest.fixture(autouse=True)
def results(tmp_path, monkeypatch) -> Path:
    """Fetched versions go under this test's own results folder."""
    monkeypatch.setenv("ATTNLAB_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "results"


def outputs(loaded: runs.LoadedRun, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(loaded.preprocess(images))


def test_two_runs_become_versions_1_and_2_with_their_tags_and_the_alias_with_its_audit_trail(two_runs, store):
    rows = registering.version_rows("x", store=store)
    assert [r["version"] for r in rows] == [1, 2] and [r["aliases"] for r in rows] == [[], ["champion"]]
    for row, run in zip(rows, two_runs):
        manifest, metrics = runs.read_json(run / "manifest.json"), runs.read_json(run / "metrics.json")
        assert row["run_id"] == manifest["run_id"] and row["git_commit"] == str(manifest["git"]["commit"])
        assert row["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"]) and row["seed"] == str(manifest["seed"])
    version = registry.resolve("models:/x@champion", store=store)
    assert version.tags["data.num_classes"] == "10" and json.loads(version.tags["data.class_names"])[3] == "3"
    (promotion,) = rows[1]["promotions"]
    assert promotion["alias"] == "champion" and promotion["by"] == registry.user() and promotion["previous"] is None
    assert version.tags["promoted.champion"].startswith(registry.user())


def test_a_promotion_moves_the_alias_and_records_who_when_and_from_which_version(two_runs, store):
    uri = store  # another model in the same store
    for run in two_runs:
        registering.register(run, "m", store=uri, alias="champion")  # each new version takes the alias
    assert [r["aliases"] for r in registering.version_rows("m", store=uri)] == [[], ["champion"]]
    registering.promote("m", 1, "champion", store=uri)  # a rollback
    rows = registering.version_rows("m", store=uri)
    assert [r["aliases"] for r in rows] == [["champion"], []]
    assert [p["previous"] for p in rows[0]["promotions"]] == [None, 2]  # promoted at registration, then back from 2


def test_models_uris_load_exactly_as_the_run_directories_without_them(two_runs, store, results):
    images = torch.from_numpy(read_idx(two_runs[0].parents[1] / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")[:16])
    first, second = runs.load_model(two_runs[0]), runs.load_model(two_runs[1])
    champion = runs.load_model("models:/x@champion", store=store)
    assert torch.equal(outputs(champion, images), outputs(second, images))
    assert not torch.allclose(outputs(first, images), outputs(second, images))  # the two versions are different models
    assert torch.equal(outputs(runs.load_model("models:/x/1", store=store), images), outputs(first, images))
    assert champion.run_dir.is_relative_to(results / "registry_cache" / "x") and registry.label(champion.run_dir) == "x/2"
    assert champion.facts == second.facts and champion.checkpoint.name == second.checkpoint.name

    # fetched once: the copy is reused, and it needs neither the original run directory nor the artifact store
    moved = two_runs[1].with_name("moved")
    two_runs[1].rename(moved)
    try:
        again = runs.load_model("models:/x/2", store=store)
        assert again.run_dir == champion.run_dir and torch.equal(outputs(again, images), outputs(second, images))
    finally:
        moved.rename(two_runs[1])


def test_unknown_names_aliases_and_versions_and_malformed_addresses_are_clear_errors(store):
    cases = {
        "models:/nope@champion": (RunError, "no registered model 'nope'", "registered: "),
        "models:/x@gold": (RunError, "has no alias 'gold'", "champion (v2)"),
        "models:/x/9": (RunError, "has no version 9", "versions: 1, 2"),
        "models:/x": (ConfigError, "models:/<name>@<alias>", ""),
        "models:/../x/1": (ConfigError, "not a registered model's address", ""),
        "models:/x/0": (ConfigError, "models:/<name>/<version>", ""),
    }
    for uri, (error, message, listing) in cases.items():
        with pytest.raises(error) as caught:
            runs.load_model(uri, store=store)
        assert message in str(caught.value) and listing in str(caught.value), (uri, str(caught.value))
    with pytest.raises(ConfigError, match="MLflow reserves"):
        registering.promote("x", 1, "latest", store=store)
    with pytest.raises(ConfigError, match="a model name is"):
        registering.register("/nowhere", "bad/name", store=store)


def test_a_version_whose_files_are_gone_is_refused_and_a_failed_run_is_not_registered(two_runs, store, tmp_path):
    uri = store
    registering.register(two_runs[0], "g", store=uri)
    source = registry.resolve("models:/g/1", store=uri).source
    shutil.rmtree(source.removeprefix("file://"))
    with pytest.raises(RunError, match="register the run again"):
        registry.fetch("models:/g/1", store=uri)

    failed = tmp_path / "failed"
    shutil.copytree(two_runs[0], failed)
    manifest = runs.read_json(failed / "manifest.json")
    runs.write_json(failed / "manifest.json", {**manifest, "status": "failed"})
    with pytest.raises(RunError, match="register a completed run"):
        registering.register(failed, "g", store=uri)


def test_compare_shows_the_settings_that_differ_and_the_metrics_side_by_side(two_runs, store):
    result = registering.compare("x", [1, 2], store=store)
    assert result["versions"] == [1, 2]
    assert result["config"]["seed"] == [1, 2]  # the runs differ in their seed ...
    assert not any(k.startswith(("paths.", "callbacks.model_checkpoint.dirpath")) for k in result["config"])  # ... not where
    metrics = [runs.read_json(run / "metrics.json")["test/acc"] for run in two_runs]
    assert result["metrics"]["test/acc"] == pytest.approx(metrics)
    with pytest.raises(ConfigError, match="two or more"):
        registering.parse_versions("2")


def test_lineage_of_a_run_started_from_another(two_runs, store, tmp_path):
    run = tmp_path / "child"
    shutil.copytree(two_runs[1], run)
    manifest = runs.read_json(run / "manifest.json")
    runs.write_json(run / "manifest.json", {**manifest, "init_from": {"checkpoint": str(two_runs[0] / "checkpoints" / "last.ckpt")}})
    row = registering.register(run, "child", store=store)
    assert row["lineage"] == {"init_from": str(two_runs[0] / "checkpoints" / "last.ckpt")}


@pytest.mark.data
def test_a_classical_run_registers_with_its_estimator_and_table_preprocessing(tmp_path, shared_data, store):
    """A scikit-learn run has no checkpoint: its version holds model.skops and tabular/, and loads as the run does."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wine_quality").symlink_to(shared_data / "wine_quality")
    run = train_in_process(tmp_path, ["experiment=wine_rf", "test=true"])
    row = registering.register(run, "wine", store=store)
    loaded, direct = runs.load_model(f"models:/wine/{row['version']}", store=store), runs.load_model(run)
    assert (loaded.run_dir / "model.skops").read_bytes() == (run / "model.skops").read_bytes()
    assert type(loaded.model) is type(direct.model) and loaded.facts == direct.facts
    assert row["metrics"] and row["metrics"] == pytest.approx({k: v for k, v in runs.read_json(run / "metrics.json").items()
                                                               if k.startswith("test/") and isinstance(v, float)})
