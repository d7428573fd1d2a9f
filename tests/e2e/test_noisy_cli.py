"""Noisy MNIST as a pipeline of runs, from the command line: an autoencoder run, a classifier behind it
(`experiment=mnist_cnn_denoised data.denoise_with=<run>`), validation at other noise levels as a multirun."""

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]


def newest_run(results: Path, name: str) -> Path:
    return sorted((results / "runs").glob(f"*_{name}_*"))[-1]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_classifier_behind_an_autoencoder_run(cli):
    cli("app/train.py", "experiment=mnist_ae", *SHORT, "test=false", "tracker=none")
    ae = newest_run(cli.results, "mnist_ae")
    cli("app/train.py", "experiment=mnist_cnn_denoised", f"data.denoise_with={ae}", *SHORT, "tracker=csv")
    run = newest_run(cli.results, "mnist_cnn_denoised")
    manifest, metrics = read(run / "manifest.json"), read(run / "metrics.json")
    assert manifest["status"] == "completed"
    assert manifest["parents"] == [{"role": "data.denoise_with", "run_id": read(ae / "manifest.json")["run_id"], "path": str(ae)}]
    assert (run / "plots" / "inputs.png").stat().st_size > 5000  # noisy / denoised / clean rows, predictions under them

    # The link travels with validate: the same test numbers from the run directory alone.
    cli("val/validate.py", f"run={run}", "progress_bar=false")
    report = read(run / "validation" / "test.json")
    assert report["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert report["parents"] == manifest["parents"] and (run / "validation" / "test" / "inputs.png").is_file()


@pytest.mark.heavy
def test_validation_at_other_noise_levels_and_a_wrong_denoise_with(cli):
    cli("app/train.py", "experiment=mnist_cnn_noisy", "trainer.max_epochs=2", "tracker=none")
    run = newest_run(cli.results, "mnist_cnn_noisy")
    trained_acc = read(run / "metrics.json")["test/acc"]

    # The robustness curve: one validation job per test noise level, and the sweep summary over them.
    out = cli("val/validate.py", "-m", f"run={run}", "+data.test_noise_std=0,0.3,0.8", "progress_bar=false")
    (sweep,) = list((run / "validation" / "sweeps").iterdir())
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["data.test_noise_std"] for r in rows] == ["0", "0.3", "0.8"], out.stdout[-2000:]
    accs = [float(r["test/acc.mean"]) for r in rows]
    assert accs[1] == pytest.approx(trained_acc, abs=1e-6) and accs[1] > 0.3, accs  # its own test; chance is 0.1
    assert len({r["test/loss.mean"] for r in rows}) == 3, rows  # each level its own inputs
    assert "test/acc" in (sweep / "summary.md").read_text()
    assert read(run / "validation" / "test_test_noise_std=0.8.json")["metrics"]["test/acc"] == accs[2]

    # A classification run is no denoiser: one clear line, exit 2, before any training.
    out = cli("app/train.py", "experiment=mnist_cnn_denoised", f"data.denoise_with={run}", *SHORT, expect=2)
    assert "not a reconstruction run" in out.stderr and "Traceback" not in out.stderr
    failed = newest_run(cli.results, "mnist_cnn_denoised")
    assert read(failed / "manifest.json")["status"] == "failed" and not list((failed / "checkpoints").glob("*.ckpt"))
    out = cli("app/train.py", "experiment=mnist_cnn_denoised", *SHORT, expect=2)
    assert "data.denoise_with must be given" in out.stderr
