"""Sweeps as users run them: a failing job, a grid resumed in place after a kill, an Optuna search killed and resumed,
Optuna pruning and a two-objective search, the dry run, parallel jobs, and the sweep plots. Every job is tiny: fake MNIST, 2 training batches."""

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false", "tracker=none"]


def killer(tmp_path: Path, job: int, step: int = 0) -> list[str]:
    """Overrides that SIGKILL the sweep in job `job` at training step `step`, once (see tests/helpers/killer.py)."""
    return ["+callbacks.killer._target_=killer.SigkillInJob", f"+callbacks.killer.job={job}",
            f"+callbacks.killer.step={step}", f"+callbacks.killer.marker={tmp_path / 'killed'}"]


def manifest(job_dir: Path) -> dict:
    return json.loads((job_dir / "manifest.json").read_text())


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(cli):
    out = cli("app/train.py", "-m", *TINY, "tracker=wandb", "optimizer.lr=1e-3,-1", "seed=1,2")
    (sweep,) = list((cli.results / "sweeps").iterdir())
    assert [manifest(sweep / str(n))["status"] for n in range(4)] == ["completed", "completed", "failed", "failed"]
    for n in range(4):  # every job its own W&B run in the sweep's group, though all ran in one process
        (wandb_run,) = list((sweep / str(n) / "wandb").glob(f"offline-run-*-{sweep.name}-{n}"))
        group = bytes([0x32, len(sweep.name)]) + sweep.name.encode()  # RunRecord.run_group: protobuf field 6, a string
        assert group in next(wandb_run.glob("*.wandb")).read_bytes()
    assert manifest(sweep / "2")["error"]["message"] == "Invalid learning rate: -1"
    assert "job 2 failed" in out.stdout and "ValueError: Invalid learning rate: -1" in out.stdout
    md = (sweep / "summary.md").read_text()
    assert "- jobs: 4 (2 completed, 2 failed)" in md
    assert "| 0.001 | 0,1 | 1,2 | 2 | 0 |" in md and "| -1 | 2,3 | – | 0 | 2 |" in md  # mean ± std cells follow
    assert "| 3 | optimizer.lr=-1 | 2 | failed | ValueError: Invalid learning rate: -1 |" in md
    assert "**Best configuration** by `val/acc_best` (max): `optimizer.lr=0.001`" in md

    cli("viz/plot.py", f"sweep={sweep}")
    for name in ("sweep_optimizer.lr.png", "curves_val_acc.png", "curves_val_loss.png"):
        assert (sweep / "plots" / name).stat().st_size > 1000, name


def test_grid_sweep_resumes_in_place_after_a_kill(cli, tmp_path):
    sweep = cli.results / "sweeps" / "grid"
    # 2 steps per epoch: step 3 is in the second epoch of job 1, after its first last.ckpt.
    args = ["-m", *TINY, "trainer.max_epochs=2", "seed=1,2,3", f"hydra.sweep.dir={sweep}", *killer(tmp_path, job=1, step=3)]
    killed = cli("app/train.py", *args, expect=None)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert manifest(sweep / "0")["status"] == "completed" and manifest(sweep / "1")["status"] == "running"
    assert not (sweep / "2").exists() and not (sweep / "summary.md").exists()  # the kill skipped the summary too
    first_end = manifest(sweep / "0")["end"]

    out = cli("app/train.py", *args, "resume=true")
    assert "resume: job 0 already completed; skipped" in out.stdout
    assert manifest(sweep / "0")["end"] == first_end and manifest(sweep / "0")["resumes"] == []
    job1 = manifest(sweep / "1")
    assert job1["status"] == "completed" and job1["resumes"][0]["previous_status"] == "running"
    assert manifest(sweep / "2")["status"] == "completed"
    assert "- jobs: 3 (3 completed)" in (sweep / "summary.md").read_text()


@pytest.mark.heavy
def test_optuna_search_killed_and_resumed_completes_its_trial_budget(cli, tmp_path):
    import optuna

    sweep = cli.results / "sweeps" / "search"
    # lr=-1 fails (torch: "Invalid learning rate"). With sampler seed 26 the first run draws lr -1 (trial 0) and 1e-3
    # (trial 1, killed); the resumed run, reseeded with 26 + 2 trials, draws 1e-3, 1e-3, -1 (trials 2, 3, 4).
    args = ["hparams_search=mnist_optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=26",
            "optimizer.lr=choice(0.001,-1)", *TINY, f"hydra.sweep.dir={sweep}"]
    killed = cli("app/train.py", *args, *killer(tmp_path, job=1), expect=None)
    assert killed.returncode == -9, killed.stderr[-3000:]
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    states = [t.state.name for t in optuna.load_study(study_name="mnist_optuna", storage=storage).trials]
    assert states == ["FAIL", "RUNNING"]

    out = cli("app/train.py", *args, *killer(tmp_path, job=1))
    assert "trial 1 was cut off by the interruption" in out.stdout and "1 trials finished, 3 to run" in out.stdout
    trials = optuna.load_study(study_name="mnist_optuna", storage=storage).trials
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == 4 and [t.number for t in trials if t.user_attrs.get("interrupted")] == [1]
    assert [(t.state.name, t.params["optimizer.lr"]) for t in trials] == [
        ("FAIL", -1), ("FAIL", 0.001), ("COMPLETE", 0.001), ("COMPLETE", 0.001), ("FAIL", -1)]
    assert all(t.value is None for t in trials if t.state.name == "FAIL")  # a failed job is no silent 0
    assert len({t.params["optimizer.weight_decay"] for t in trials}) == 5  # the resumed sampler did not replay
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3", "4"]  # job = trial number
    assert manifest(sweep / "1")["status"] == "interrupted" and manifest(sweep / "0")["status"] == "failed"
    md = (sweep / "summary.md").read_text()
    assert "- jobs: 5 (" in md and "1 interrupted" in md

    again = cli("app/train.py", *args)
    assert "has all its trials; nothing to run" in again.stdout
    assert len(optuna.load_study(study_name="mnist_optuna", storage=storage).trials) == 5

    cli("viz/plot.py", f"sweep={sweep}")
    assert (sweep / "plots" / "optuna_history.png").is_file() and (sweep / "plots" / "sweep_optimizer.weight_decay.png").is_file()


def test_pruning_stops_hopeless_trials(cli):
    """lr log-uniform over 1e-6..1e-1: the median pruner stops trials whose val/acc trails the others' at an epoch."""
    import optuna

    sweep = cli.results / "sweeps" / "pruned"
    cli("app/train.py", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=3",
        "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=2", "optimizer.lr=tag(log,interval(1e-6,1e-1))",
        "optimizer.weight_decay=0", "model.dropout=0", "data.batch_size=32", *TINY, "trainer.max_epochs=3", f"hydra.sweep.dir={sweep}")
    trials = optuna.load_study(study_name="mnist_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    pruned = [t.number for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(manifest(sweep / str(n))["status"] == "pruned" for n in pruned), [t.state.name for t in trials]
    assert all(t.intermediate_values for t in trials)  # every trial reported its val/acc per epoch
    assert all(manifest(sweep / str(t.number))["status"] == "completed" for t in trials if t.state.name == "COMPLETE")
    md = (sweep / "summary.md").read_text()
    assert f"{len(pruned)} pruned" in md and "failed" not in md.split("\n")[3]  # the jobs line counts them apart
    assert f"| {pruned[0]} | " in md.split("## Jobs not completed")[1]


@pytest.mark.heavy
def test_pruning_with_jobs_in_other_processes(cli):
    """joblib runs each job in a worker process: the job finds its trial in the sqlite storage. Trials 0 and 1 run
    in full (n_startup_trials=2), so the pruner judges trials 2 and 3 against finished ones only: deterministic."""
    import optuna

    sweep = cli.results / "sweeps" / "pruned_joblib"
    cli("app/train.py", "hparams_search=mnist_optuna", "hydra/launcher=local_parallel", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=3", "hydra.sweeper.pruner.name=median",
        "hydra.sweeper.pruner.n_startup_trials=2", "optimizer.lr=tag(log,interval(1e-6,1e-1))", "optimizer.weight_decay=0",
        "model.dropout=0", "data.batch_size=32", *TINY, "trainer.max_epochs=3", f"hydra.sweep.dir={sweep}")
    trials = optuna.load_study(study_name="mnist_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "COMPLETE"]
    pruned = [t.number for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(manifest(sweep / str(n))["status"] == "pruned" for n in pruned)
    assert all(len(t.intermediate_values) < 3 for t in trials if t.state.name == "PRUNED")  # stopped before the last epoch


def test_optuna_dry_run_and_a_bad_sampler(cli):
    sweep = cli.results / "sweeps" / "dry"
    out = cli("app/train.py", "hparams_search=mnist_optuna", "dry_run=true", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}")
    assert len(re.findall(r"dry run ok: mnist_cnn \[.*optimizer\.lr=", out.stdout)) == 2
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]  # no study stored, no run recorded
    bad = cli("app/train.py", "hparams_search=mnist_optuna", "hydra.sweeper.sampler.name=bayes", f"hydra.sweep.dir={sweep}2", expect=2)
    assert bad.stderr.strip() == "error: unknown sampler 'bayes'; choose one of: tpe, random, gp, cmaes, nsgaii, grid"


def test_two_objective_search_writes_its_pareto_front(cli):
    import optuna

    sweep = cli.results / "sweeps" / "pareto"
    cli("app/train.py", "hparams_search=mnist_optuna", "objective=[val/acc_best,val/loss]", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.name=nsgaii", "optimizer.lr=choice(0.01,0.001,0.0001)", *TINY, f"hydra.sweep.dir={sweep}")
    study = optuna.load_study(study_name="mnist_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 and all(len(t.values) == 2 for t in study.trials)
    md = (sweep / "summary.md").read_text()
    front = md.split("## Pareto front")[1].split("##")[0]
    assert "`val/acc_best` (max), `val/loss` (min)" in front
    on_front = {t.number for t in study.best_trials}  # Optuna's front equals the summary's (one seed per configuration)
    assert on_front and all(f"| {','.join([str(n)])} |" in front for n in on_front)
    assert sum(line.startswith("| optimizer.lr=") for line in front.splitlines()) == len(on_front)
    header = (sweep / "summary.csv").read_text().splitlines()[0].split(",")
    assert "pareto" in header


def test_dry_run_catches_a_bad_override_in_seconds(cli):
    start = time.monotonic()
    out = cli("app/train.py", "-m", "dry_run=true", "model.dropout=0.1,abc", expect=1)
    assert time.monotonic() - start < 60
    text = out.stdout + out.stderr
    assert "model.dropout: expected float, got 'abc'" in text
    assert re.search(r"dry run ok: mnist_cnn \[.*model\.dropout=0\.1\]", text)  # the good job was built
    assert not list(cli.results.rglob("manifest.json")) and not list(cli.results.rglob("*.ckpt"))  # no runs recorded


def test_parallel_jobs_with_joblib(cli):
    from joblib import cpu_count

    cli("app/train.py", "-m", "hydra/launcher=local_parallel", *TINY, "seed=1,2")
    (sweep,) = list((cli.results / "sweeps").iterdir())
    assert [manifest(sweep / n)["status"] for n in ("0", "1")] == ["completed", "completed"]
    threads = max(cpu_count() // 2, 1)  # joblib's workers get OMP_NUM_THREADS = cores // n_jobs; torch follows
    assert all(f"torch threads: {threads})" in (sweep / n / "train.log").read_text() for n in ("0", "1"))
    assert "- jobs: 2 (2 completed)" in (sweep / "summary.md").read_text()
