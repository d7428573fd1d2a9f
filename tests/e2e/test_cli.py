"""The command lines as users run them: train, validate, plot, multirun, resume after SIGKILL, DDP, bad input."""

import datetime
import json
import re
from pathlib import Path

import pytest
import torch

from attnlab import runs
from attnlab.runs import read_history

pytestmark = pytest.mark.slow


def only_run(results: Path) -> Path:
    (run_dir,) = list((results / "runs").iterdir())
    return run_dir


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("experiment, metric", [("mnist_quick", "test/acc"), ("mnist_cnn", "test/acc"), ("mnist_ae", "test/mse"), ("mnist_vit", "test/acc"),
                                                ("mnist_cnn_noisy", "test/acc")])
def test_every_experiment_fast_dev_run(cli, experiment, metric):
    cli("app/train.py", f"experiment={experiment}", "trainer.fast_dev_run=true")
    run_dir = only_run(cli.results)
    assert read(run_dir / "manifest.json")["status"] == "completed"
    assert metric in read(run_dir / "metrics.json")


def test_train_validate_plot_round_trip(cli):
    cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=2", "tracker=[csv,tensorboard]")
    run_dir = only_run(cli.results)
    manifest = read(run_dir / "manifest.json")
    assert manifest["status"] == "completed" and manifest["git"]["commit"] and manifest["versions"]["lightning"]
    assert "app/train.py " in manifest["command"] and " experiment=mnist_cnn" in manifest["command"]
    metrics = read(run_dir / "metrics.json")
    assert metrics["test/acc"] > 0.5, metrics  # the fake digits are learnable: chance is 0.1
    for name in ("config.yaml", "history.csv", "checkpoints/last.ckpt", "plots/confusion_matrix.png", "plots/class_distribution.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.*")) and (run_dir / "csv" / "metrics.csv").is_file()

    out = cli("val/validate.py", f"run={run_dir}")
    report = read(run_dir / "validation" / "test.json")
    # Validation rebuilds everything from config.yaml and the best checkpoint: it must reproduce the test numbers.
    assert report["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert len(report["confusion_matrix"]) == 10 and (run_dir / "validation" / "test" / "confusion_matrix.png").is_file()
    assert "test/acc" in out.stdout
    cli("val/validate.py", f"run={run_dir}", "split=val", "ckpt=last")
    assert "val/acc" in read(run_dir / "validation" / "val.json")["metrics"]

    cli("viz/plot.py", f"run={run_dir}")
    assert (run_dir / "plots" / "curve_loss.png").is_file() and (run_dir / "plots" / "curve_acc.png").is_file()


def test_autoencoder_run_writes_reconstructions(cli):
    cli("app/train.py", "experiment=mnist_ae", "trainer.max_epochs=1", "trainer.limit_train_batches=4")
    run_dir = only_run(cli.results)
    assert read(run_dir / "metrics.json")["test/mse"] < 0.25
    assert (run_dir / "plots" / "reconstructions.png").is_file()
    cli("val/validate.py", f"run={run_dir}")
    assert (run_dir / "validation" / "test" / "reconstructions.png").is_file()


@pytest.mark.heavy
def test_all_trackers_at_once_and_starting_from_a_checkpoint(cli):
    cli("app/train.py", "experiment=mnist_ae", "tracker=all", "trainer.max_epochs=1", "trainer.limit_train_batches=3")
    first = only_run(cli.results)
    assert list((first / "wandb").glob("offline-run-*")), "W&B must write an offline run"
    assert list((first / "tensorboard").glob("events.*")) and (first / "csv" / "metrics.csv").is_file()
    mlflow_runs = [p for p in (cli.results / "mlruns").rglob("meta.yaml") if p.parent.name == read(first / "manifest.json")["trackers"]["mlflow"]]
    assert mlflow_runs, "MLflow must record the run in the local store"
    assert set(read(first / "manifest.json")["trackers"]) == {"wandb", "mlflow"}

    cli("app/train.py", "experiment=mnist_ae", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2",
        "trainer.limit_train_batches=3", "tracker=none")
    second = next(p for p in (cli.results / "runs").iterdir() if p != first)
    history = read_history(second / "history.csv")
    assert "val/mse" in history and read(second / "manifest.json")["status"] == "completed"
    assert min(value for _, value in history["epoch"]) == 1.0  # it went on from epoch 1, not from scratch


@pytest.mark.heavy
def test_init_from_fine_tunes_a_classifier_with_a_new_head(cli, tmp_path):
    short = ["experiment=mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false"]
    cli("app/train.py", *short)
    source = only_run(cli.results)
    weights = runs.model_weights(runs.load_checkpoint(runs.find_checkpoint(source, "best")))
    head = {"head.2.weight": ([64, 3136], [128, 3136]), "head.2.bias": ([64], [128]), "head.5.weight": ([10, 64], [10, 128])}

    out = cli("app/train.py", *short, f"init_from={source}", "model.hidden=64", expect=2)  # strict by default
    for name, (mine, theirs) in head.items():  # hidden 128 -> 64: the head's shapes differ
        assert f"{name}: shape {mine} here, {theirs} in the source" in out.stderr
    assert "init_from_strict=false" in out.stderr and "Traceback" not in out.stderr

    initial = tmp_path / "initial.pt"  # the fine-tuned model's weights as training starts
    cli("app/train.py", *short, f"init_from={source}", "model.hidden=64", "init_from_strict=false",
        "+callbacks.snapshot._target_=snapshot.InitialWeights", f"+callbacks.snapshot.path={initial}")
    others = {p: read(p / "manifest.json") for p in (cli.results / "runs").iterdir() if p != source}
    assert sorted(m["status"] for m in others.values()) == ["completed", "failed"]  # the refused run says why it failed
    tuned, manifest = next((p, m) for p, m in others.items() if m["status"] == "completed")
    assert manifest["init_from"]["checkpoint"].startswith(str(source))
    assert sorted(line.split(":")[0] for line in manifest["init_from"]["not_loaded"]) == sorted(head)
    start = torch.load(initial, weights_only=True)
    features = [k for k in weights if k.startswith("features.")]
    assert features and all(torch.equal(start[k], weights[k]) for k in features)  # the features came from the source
    assert torch.equal(start["head.5.bias"], weights["head.5.bias"])  # same name and shape: loaded too
    assert all(list(start[k].shape) == mine for k, (mine, _) in head.items())  # the new head: its own shapes and values


def test_multirun_writes_one_sweep_with_four_jobs(cli):
    cli("app/train.py", "-m", "model=cnn,mlp", "seed=1,2", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false")
    (sweep,) = list((cli.results / "sweeps").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    manifests = [read(j / "manifest.json") for j in jobs]
    assert all(m["status"] == "completed" and m["group"] == sweep.name for m in manifests)
    assert len({m["run_id"] for m in manifests}) == 4


@pytest.mark.parametrize("optimizer", ["adamw", pytest.param("muon", marks=pytest.mark.heavy)])  # Muon: conv kernels as matrices, its state in the checkpoint
def test_resume_after_sigkill_matches_an_uninterrupted_run(cli, tmp_path, optimizer):
    # The output layer negated when the third epoch starts makes an earlier epoch the best, and the kill comes after
    # it: a running best (val/acc_best) that forgot the epochs before the resume would show.
    common = ["experiment=mnist_cnn", f"optimizer={optimizer}", "trainer.max_epochs=3", "trainer.deterministic=true",
              "~callbacks.early_stopping", "+callbacks.worse._target_=worsen.NegateHeadAt", "+callbacks.worse.epoch=2"]
    cli("app/train.py", *common, "name=straight")
    # 384 train images / batch 32 = 12 steps per epoch: step 30 is the middle of the third epoch.
    killed = cli("app/train.py", *common, "name=killed", "tracker=wandb",
                 "+callbacks.killer._target_=killer.SigkillAtStep", "+callbacks.killer.step=30",
                 f"+callbacks.killer.marker={tmp_path / 'killed'}", expect=None)
    assert killed.returncode == -9, killed.stderr[-3000:]
    runs_by_name = {p.name.split("_")[2]: p for p in (cli.results / "runs").iterdir()}
    straight, interrupted = runs_by_name["straight"], runs_by_name["killed"]
    assert read(interrupted / "manifest.json")["status"] == "running"  # SIGKILL: nothing could record it
    wandb_id = read(interrupted / "manifest.json")["trackers"]["wandb"]
    val_acc = [value for _, value in read_history(straight / "history.csv")["val/acc"]]
    assert len(val_acc) == 3 and max(val_acc[:2]) > val_acc[2], val_acc  # the best epoch precedes the kill

    cli("app/train.py", f"resume={interrupted}")
    manifest = read(interrupted / "manifest.json")
    assert manifest["status"] == "completed" and manifest["resumes"][0]["previous_status"] == "running"
    assert manifest["trackers"]["wandb"] == wandb_id  # the same W&B run continues
    expected, got = read(straight / "metrics.json"), read(interrupted / "metrics.json")
    assert set(got) == set(expected) and expected["val/acc_best"] == max(val_acc)
    clock = {k for k in expected if k.endswith(("_per_sec", "_time_s"))}  # wall-clock measurements differ
    for key in sorted(set(expected) - clock):  # every other final metric, the running bests included
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert len(list((cli.results / "runs").iterdir())) == 2  # resumed in place


@pytest.mark.heavy
def test_a_refused_resume_leaves_the_run_as_it_was(cli, tmp_path):
    cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false")
    run_dir = only_run(cli.results)
    last = run_dir / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    not_tensors = tmp_path / "not_tensors.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "written": datetime.date(2024, 1, 1)}, not_tensors)  # a pickled object

    def recorded() -> dict[Path, bytes]:
        """The run's files, less Hydra's own record of each invocation (.hydra/, train.log), written before attnlab runs."""
        return {p: p.read_bytes() for p in sorted(run_dir.rglob("*"))
                if p.is_file() and ".hydra" not in p.parts and p.name != "train.log"}

    for damaged in (good[: len(good) // 2], not_tensors.read_bytes()):
        last.write_bytes(damaged)
        before = recorded()
        out = cli("app/train.py", f"resume={run_dir}", expect=2)
        assert f"error: cannot load checkpoint {last}" in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert recorded() == before  # manifest.json (status completed), metrics.json, history.csv, ... untouched
    assert read(run_dir / "manifest.json")["status"] == "completed"


@pytest.mark.heavy
def test_a_diverging_run_stops_at_the_first_non_finite_loss(cli):
    tiny = ["experiment=mnist_cnn", "trainer.max_epochs=3", "trainer.limit_train_batches=6", "tracker=none"]
    out = cli("app/train.py", *tiny, "optimizer.lr=1e6", expect=2)
    assert re.search(r"error: training loss is (nan|inf) at step \d+ .*learning rate too high", out.stderr), out.stderr[-3000:]
    run_dir = only_run(cli.results)
    manifest = read(run_dir / "manifest.json")
    assert manifest["status"] == "failed" and manifest["error"]["type"] == "DivergedError"
    assert not (run_dir / "metrics.json").exists()

    # In a sweep, the diverged job fails and the sweep goes on to the next one and to its summary.
    cli("app/train.py", "-m", *tiny, "optimizer.lr=1e6,3e-3", "test=false")
    (sweep,) = list((cli.results / "sweeps").iterdir())
    assert [read(sweep / str(n) / "manifest.json")["status"] for n in range(2)] == ["failed", "completed"]
    assert "- jobs: 2 (1 completed, 1 failed)" in (sweep / "summary.md").read_text()


@pytest.mark.heavy
def test_a_run_continued_with_more_epochs_follows_the_longer_one_cycle(cli):
    cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1", "test=false", "tracker=none")
    first = only_run(cli.results)
    out = cli("app/train.py", "experiment=mnist_cnn", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
              "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "test=false", "tracker=none")
    # 12 steps per epoch: the one-cycle schedule planned over 12 steps now runs over 36, from step 12.
    assert "schedule planned over 12 steps, continued over 36: from step 12" in out.stdout + out.stderr
    second = next(p for p in (cli.results / "runs").iterdir() if p != first)
    assert read(second / "manifest.json")["status"] == "completed"
    lrs = dict(read_history(second / "history.csv")["train/lr/decay"])  # {step: lr} of the weight matrices
    assert min(lrs) == 12 and lrs[12] > 2e-3 and lrs[35] < 1e-5  # near the longer cycle's peak, then annealed


def test_ctrl_c_records_an_interrupted_run(cli):
    out = cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1",
              "+callbacks.stop._target_=killer.SigintAtStep", "+callbacks.stop.step=3", expect=None)
    assert out.returncode != 0
    (run,) = (cli.results / "runs").iterdir()
    manifest = read(run / "manifest.json")
    assert manifest["status"] == "interrupted", manifest.get("error")


def test_ddp_on_two_cpu_processes(cli):
    cli("app/train.py", "trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2", "test=false", timeout=600)
    run_dir = only_run(cli.results)  # the second process joined the first one's run directory
    assert read(run_dir / "manifest.json")["status"] == "completed"
    assert "val/acc" in read(run_dir / "metrics.json")


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=vitt"], "Could not find 'model/vitt'"),
        (["model.channels=abc"], "model.channels: expected"),
        (["+model.widht=3"], "model.widht is not an argument of attnlab.models.cnn.CNN"),
        (["model=vit", "model.patch_size=5"], "patch_size"),
        (["data.data_dir=/nonexistent/mnist"], "no MNIST files under /nonexistent/mnist"),
        (["resume=/tmp"], "is not an attnlab run directory"),
        (["resume=true"], "resume=true resumes a sweep in place"),
    ],
)
def test_bad_training_input_gives_a_clear_error(cli, args, message):
    out = cli("app/train.py", *args, expect=None)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert "Traceback" not in out.stderr or args == ["model=vitt"]


def test_bad_validation_input_gives_a_clear_error(cli, tmp_path):
    out = cli("val/validate.py", f"run={tmp_path}", expect=2)
    assert "is not an attnlab run directory" in out.stderr
    cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false")
    run_dir = only_run(cli.results)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:500])
    out = cli("val/validate.py", f"run={run_dir}", f"ckpt={corrupt}", expect=2)
    assert "cannot load checkpoint" in out.stderr
    out = cli("val/validate.py", f"run={run_dir}", "split=train", expect=2)
    assert "unknown split 'train'" in out.stderr
