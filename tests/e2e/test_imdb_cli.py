"""IMDB from the command line on a small generated corpus: every experiment under fast_dev_run, then train ->
validate (with the run's own tokenizer) -> plot."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = ["imdb_lstm", "imdb_bilstm", "imdb_gru", "imdb_bert", "imdb_roberta", "imdb_distilbert"]
pytestmark = pytest.mark.slow
# 400 fake train reviews: keep 50 for validation; quiet output.
FAST = ["data.val_size=50", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "tracker=csv"]


@pytest.fixture
def text_cli(tmp_path, fake_imdb_root):
    """Run one of the repo's scripts in a subprocess on the fake IMDB, with results and cache under tmp_path."""

    def run(script: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "ATTNLAB_DATA_DIR": str(fake_imdb_root),
            "ATTNLAB_CACHE_DIR": str(tmp_path / "cache"),
            "ATTNLAB_RESULTS_DIR": str(tmp_path / "results"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        extra = FAST if script == "app/train.py" else []
        flags = [a for a in args if a.startswith("-")]  # Hydra's flags (-m) go before the overrides
        overrides = [a for a in args if not a.startswith("-")]
        out = subprocess.run([sys.executable, str(REPO / script), *flags, *extra, *overrides], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        if expect is not None:
            assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return out

    run.results = tmp_path / "results"
    run.cache = tmp_path / "cache"
    return run


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
