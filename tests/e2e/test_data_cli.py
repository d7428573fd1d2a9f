"""Data under the command line: a resume with loader workers, and DDP evaluation that sees every sample once."""

import json
import math
from pathlib import Path

import pytest

from attnlab.data.mnist import write_fake_mnist

pytestmark = pytest.mark.slow

TIMING = ("train/samples_per_sec", "train/epoch_time_s", "train/tokens_per_sec")  # wall-clock: differs between runs


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.heavy
def test_resume_with_loader_workers_matches_an_uninterrupted_run(cli, tmp_path):
    """Augmentation drawn in two loader workers: a run SIGKILLed mid-epoch and resumed ends with the same metrics."""
    common = ["experiment=mnist_cnn", "data.augment=true", "data.num_workers=2", "trainer.max_epochs=2",
              "trainer.deterministic=true", "~callbacks.early_stopping"]
    cli("app/train.py", *common, "name=straight")
    # 384 train images / batch 32 = 12 steps an epoch: step 18 is the middle of the second epoch.
    killed = cli("app/train.py", *common, "name=killed", "+callbacks.killer._target_=killer.SigkillAtStep",
                 "+callbacks.killer.step=18", f"+callbacks.killer.marker={tmp_path / 'killed'}", expect=None)
    assert killed.returncode == -9, killed.stderr[-3000:]
    runs_by_name = {p.name.split("_")[2]: p for p in (cli.results / "runs").iterdir()}
    cli("app/train.py", f"resume={runs_by_name['killed']}")
    expected, got = read(runs_by_name["straight"] / "metrics.json"), read(runs_by_name["killed"] / "metrics.json")
    assert set(got) == set(expected)
    differ = {k: (got[k], expected[k]) for k in set(expected) - set(TIMING) if not math.isclose(got[k], expected[k], abs_tol=1e-6)}
    assert not differ


@pytest.mark.heavy
def test_ddp_test_metrics_equal_single_process_validation(cli, tmp_path):
    """Two gloo processes test on 75 images in batches of 16 (75 is no multiple of 2 x 16, so a padded sampler
    would count some images twice): the DDP run's test metrics equal validate.py's single-process ones."""
    data = write_fake_mnist(tmp_path / "data" / "mnist", n_train=256, n_test=75)
    cli("app/train.py", f"data.data_dir={data}", "data.val_size=64", "data.eval_batch_size=16", "trainer=ddp_cpu",
        "trainer.max_epochs=1")
    (run_dir,) = (cli.results / "runs").iterdir()
    trained = {k: v for k, v in read(run_dir / "metrics.json").items() if k.startswith("test/")}
    cli("val/validate.py", f"run={run_dir}")
    validated = read(run_dir / "validation" / "test.json")["metrics"]
    assert set(trained) == set(validated) and "test/acc" in trained
    assert 0.05 < trained["test/acc"] < 0.95  # a half-trained model: a counted-twice image would move the numbers
    differ = {k: (trained[k], validated[k]) for k in trained if not math.isclose(trained[k], validated[k], abs_tol=1e-3)}
    assert not differ  # test/loss included: a sample-weighted mean gathered from both ranks (Task.log_loss)
