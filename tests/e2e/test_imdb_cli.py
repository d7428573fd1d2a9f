"""IMDB from the command line on a small generated corpus: every experiment under fast_dev_run, then train ->
validate (with the run's own tokenizer) -> plot."""

import json
import shutil
from pathlib import Path

import pytest

EXPERIMENTS = ["imdb_lstm", "imdb_bilstm", "imdb_gru", "imdb_bert", "imdb_roberta", "imdb_distilbert"]
pytestmark = pytest.mark.slow


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_imdb_experiment_fast_dev_run(text_cli):
    # One multirun: one interpreter start for all six (each job ~2 s; a process start costs ~8 s).
    text_cli("app/train.py", "-m", f"experiment={','.join(EXPERIMENTS)}", "trainer.fast_dev_run=true")
    (sweep,) = list((text_cli.results / "sweeps").iterdir())
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == len(EXPERIMENTS)
    for job, experiment in zip(jobs, EXPERIMENTS):
        manifest = read(job / "manifest.json")
        assert manifest["status"] == "completed", (experiment, manifest.get("error"))
        assert "test/acc" in read(job / "metrics.json") and (job / "plots" / "confusion_matrix.png").is_file()
        assert (job / "tokenizer" / "tokenizer.json").is_file() and (job / "tokenizer" / "specials.json").is_file()
    # word (lstm, bilstm, gru, bert, distilbert) and bpe (roberta): two tokenizers, two encodings, shared by all jobs
    assert len(list((text_cli.cache / "imdb").glob("tokenizer-*"))) == 2
    assert len(list((text_cli.cache / "imdb").glob("encoded-*"))) == 2


def test_train_validate_plot_round_trip(text_cli):
    text_cli("app/train.py", "experiment=imdb_bilstm", "trainer.max_epochs=4", "data.batch_size=16",
             "model.d_hidden=32", "model.d_embed=32", "optimizer.lr=1e-2")
    (run_dir,) = list((text_cli.results / "runs").iterdir())
    metrics = read(run_dir / "metrics.json")
    assert metrics["test/acc"] > 0.8, metrics  # the fake reviews are learnable: chance is 0.5
    for name in ("plots/confusion_matrix.png", "plots/class_distribution.png", "tokenizer/tokenizer.json"):
        assert (run_dir / name).is_file(), name

    # Validation must not depend on the cache: it re-encodes with the run's saved tokenizer, trains none.
    shutil.rmtree(text_cli.cache)
    text_cli("val/validate.py", f"run={run_dir}")
    report = read(run_dir / "validation" / "test.json")
    assert report["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert report["class_names"] == ["negative", "positive"] and len(report["confusion_matrix"]) == 2
    assert (run_dir / "validation" / "test" / "confusion_matrix.png").is_file()
    assert not list((text_cli.cache / "imdb").glob("tokenizer-*")) and list((text_cli.cache / "imdb").glob("encoded-*"))

    text_cli("viz/plot.py", f"run={run_dir}")
    assert (run_dir / "plots" / "curve_loss.png").is_file() and (run_dir / "plots" / "curve_acc.png").is_file()
