"""Sweep summaries on hand-made job folders: seeds folded into mean ± std, failures, best configuration, resume
decisions, sweep plots; and the sweep-related configs (Optuna search, launchers) compose."""

import csv
import json
import math
import statistics

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from attnlab import sweeps
from attnlab.sweeps import summary as sweep_summary
from attnlab.config import conf_dir
from attnlab.errors import ConfigError

# Hand-computed: lr=1e-3 -> val/acc 0.90, 0.92, 0.94: mean 0.92, sample std sqrt((0.02² + 0 + 0.02²) / 2) = 0.02.
#                lr=3e-3 -> val/acc 0.50, 0.70 (seed 3 failed): mean 0.60, sample std sqrt(2 * 0.1² / 1) = 0.141421...
ACC = {("1e-3", 1): 0.90, ("1e-3", 2): 0.92, ("1e-3", 3): 0.94, ("3e-3", 1): 0.50, ("3e-3", 2): 0.70}


def make_job(sweep, num, overrides, *, status="completed", metrics=None, error=None, seed=None, history=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if status != "pending":
        manifest = {"status": status, "seed": seed, "overrides": overrides, "error": error}
        (job / "manifest.json").write_text(json.dumps(manifest))
        OmegaConf.save(OmegaConf.create({"objective": None, "monitor": {"metric": "val/acc", "mode": "max"}}), job / "config.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if history:
        rows = ["step,metric,value"] + [f"{step},{metric},{value}" for metric, points in history.items() for step, value in points]
        (job / "history.csv").write_text("\n".join(rows) + "\n")
    return job


@pytest.fixture
def sweep(tmp_path):
    """2 learning rates x 3 seeds: five completed, one failed; plus a running and a pending job of a third lr."""
    root = tmp_path / "sweep"
    num = 0
    for lr in ("1e-3", "3e-3"):
        for seed in (1, 2, 3):
            overrides = [f"optimizer.lr={lr}", f"seed={seed}", "trainer.max_epochs=1"]
            acc = ACC.get((lr, seed))
            if acc is None:
                make_job(root, num, overrides, status="failed", seed=seed, error={"type": "ValueError", "message": "loss is nan"})
            else:
                metrics = {"val/acc": acc, "val/acc_best": acc + 0.01, "val/loss": 1 - acc, "test/acc": acc, "train/lr/decay": 0.1}
                history = {"val/acc": [(10, acc - 0.1), (20, acc)], "val/loss": [(10, 1.2 - acc), (20, 1 - acc)]}
                make_job(root, num, overrides, metrics=metrics, seed=seed, history=history)
            num += 1
    make_job(root, num, ["optimizer.lr=1e-2", "seed=1", "trainer.max_epochs=1"], status="running", seed=1)
    make_job(root, num + 1, ["optimizer.lr=1e-2", "seed=2", "trainer.max_epochs=1"], status="pending")
    return root


def test_seeds_fold_into_mean_and_sample_std(sweep):
    jobs = sweeps.collect(sweep)
    assert [j.num for j in jobs] == list(range(8)) and jobs[-1].status == "pending" and jobs[5].error == "ValueError: loss is nan"
    assert sweeps.swept_keys(jobs) == ["optimizer.lr"]  # seed folds, trainer.max_epochs never varies
    rows = {row.params["optimizer.lr"]: row for row in sweeps.aggregate(jobs)}
    assert list(rows) == ["1e-3", "3e-3", "1e-2"]
    mean, std, n = rows["1e-3"].stats("val/acc")
    assert (mean, std, n) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    assert std == pytest.approx(statistics.stdev([0.90, 0.92, 0.94]))
    mean, std, n = rows["3e-3"].stats("val/acc")
    assert (mean, std, n) == (pytest.approx(0.60), pytest.approx(math.sqrt(0.02)), 2)
    assert len(rows["3e-3"].by_status("failed")) == 1
    mean, std, n = rows["1e-2"].stats("val/acc")
    assert n == 0 and math.isnan(mean) and std is None


def test_summary_files(sweep):
    csv_path, md_path = sweep_summary.write_summary(sweep)
    with csv_path.open() as f:
        table = {row["optimizer.lr"]: row for row in csv.DictReader(f)}
    assert float(table["1e-3"]["val/acc.mean"]) == pytest.approx(0.92) and float(table["1e-3"]["val/acc.std"]) == pytest.approx(0.02)
    assert table["3e-3"]["n_seeds"] == "2" and table["3e-3"]["n_failed"] == "1" and "loss is nan" in table["3e-3"]["errors"]
    assert table["1e-2"]["n_running"] == "2" and table["1e-2"]["val/acc.mean"] == ""
    assert "train/lr/decay.mean" in table["1e-3"]  # the csv keeps every metric; the table shows the main ones
    md = md_path.read_text()
    assert "| 1e-3 | 0,1,2 | 1,2,3 | 3 | 0 | 0.93 ± 0.02 | 0.92 ± 0.02 |" in md  # objective val/acc_best first
    assert "train/lr" not in md and "test/acc" in md
    assert "**Best configuration** by `val/acc_best` (max): `optimizer.lr=1e-3`" in md
    assert "| 5 | optimizer.lr=3e-3 | 3 | failed | ValueError: loss is nan |" in md
    assert "| 6 | optimizer.lr=1e-2 | 1 | running |" in md and "| 7 | optimizer.lr=1e-2 | 2 | pending |" in md


def test_one_seed_has_no_std_and_objective_direction(tmp_path):
    make_job(tmp_path, 0, ["optimizer.lr=1"], metrics={"val/acc": 0.5, "val/loss": 2.0}, seed=1)
    make_job(tmp_path, 1, ["optimizer.lr=2"], metrics={"val/acc": 0.7, "val/loss": 1.0}, seed=1)
    jobs = sweeps.collect(tmp_path)
    assert sweeps.aggregate(jobs)[0].stats("val/acc") == (0.5, None, 1)
    assert sweeps.objective(tmp_path, jobs) == ("val/acc", "max")  # no val/acc_best logged: the monitor itself
    monitor = {"metric": "val/acc", "mode": "max", "modes": {"acc": "max", "loss": "min"}}
    OmegaConf.save(OmegaConf.create({"objective": "val/loss", "monitor": monitor}), tmp_path / "0" / "config.yaml")
    assert sweeps.objective(tmp_path, jobs) == ("val/loss", "min")  # the task's stated direction
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"direction": "maximize"}}}), tmp_path / "multirun.yaml")
    assert sweeps.objective(tmp_path, jobs) == ("val/loss", "max")  # the sweeper's direction wins
    _, md = sweep_summary.write_summary(tmp_path)
    assert "| 2 | 1 | 1 | 1 | 0 | 1 | 0.7 |" in md.read_text()


def test_summary_callback_never_fails_the_sweep(tmp_path, caplog):
    cfg = OmegaConf.create({"dry_run": False, "hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})
    sweep_summary.SweepSummary().on_multirun_end(config=cfg)
    assert "could not write the sweep summary" in caplog.text


def test_resume_decisions(tmp_path):
    overrides = ["optimizer.lr=1e-3", "seed=1"]
    job = make_job(tmp_path, 0, overrides, metrics={"val/acc_best": 0.9}, seed=1)
    assert sweeps.resume_action(job, [*overrides, "resume=true"]) == "skip"
    assert sweeps.stored_objective(job, "val/acc_best") == 0.9 and sweeps.stored_objective(job, None) is None
    with pytest.raises(ConfigError, match="ran with \\[optimizer.lr=1e-3 seed=1\\], this sweep gives it \\[optimizer.lr=3e-3 seed=1\\]"):
        sweeps.resume_action(job, ["optimizer.lr=3e-3", "seed=1", "resume=true"])
    cut = make_job(tmp_path, 1, overrides, status="running", seed=1)
    assert sweeps.resume_action(cut, overrides) == "fresh"  # killed before its first checkpoint
    (cut / "checkpoints").mkdir()
    (cut / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert sweeps.resume_action(cut, overrides) == "continue"
    assert sweeps.resume_action(tmp_path / "9", overrides) == "fresh"


def test_sweep_plots(sweep, tmp_path):
    from attnlab.sweeps.plots import plot_sweep

    written = {p.name for p in plot_sweep(sweep)}
    assert {"summary.md", "summary.csv", "sweep_optimizer.lr.png", "curves_val_acc.png", "curves_val_loss.png"} <= written
    assert all((sweep / "plots" / name).stat().st_size > 1000 for name in written if name.endswith(".png"))


def test_optuna_history_plot(tmp_path):
    import optuna

    from attnlab.sweeps.plots import optuna_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for value in (0.3, None, 0.5, 0.4):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, value, state=optuna.trial.TrialState.COMPLETE if value else optuna.trial.TrialState.FAIL)
    path = optuna_history(tmp_path / "optuna.db", tmp_path / "history.png", "val/acc_best")
    assert path is not None and path.stat().st_size > 1000
    pareto = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path / 'pareto.db'}", directions=["maximize", "minimize"])
    pareto.tell(pareto.ask(), [0.9, 0.1])
    assert optuna_history(tmp_path / "pareto.db", tmp_path / "pareto.png") is None  # the front is in summary.md


def composed(overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/attnlab-compose", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg


def test_optuna_search_config():
    cfg = composed(["experiment=mnist_cnn", "hparams_search=mnist_optuna", "hydra.sweep.dir=/tmp/sweeps/search"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.attnlab_optuna.OptunaSweeper"
    assert sweeper.storage == "sqlite:////tmp/sweeps/search/optuna.db" and sweeper.sampler.seed == 1234
    assert sweeper.sampler.name == "tpe" and sweeper.pruner.name == "none"
    assert sweeper.direction == "maximize" and sweeper.n_jobs == 1
    assert cfg.objective == "val/acc_best" and cfg.hydra.mode.name == "MULTIRUN"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout", "data.batch_size"}


@pytest.mark.parametrize("experiment", ["imdb_lstm", "imdb_bilstm", "imdb_gru", "imdb_bert", "imdb_roberta", "imdb_distilbert"])
def test_imdb_search_params_exist_in_every_imdb_experiment(experiment):
    cfg = composed([f"experiment={experiment}", "hparams_search=imdb_optuna", "hydra.sweep.dir=/tmp/sweeps/imdb"])
    assert cfg.hydra.sweeper.study_name == "imdb_optuna" and cfg.objective == "val/acc_best"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key  # an override of a missing key would fail every trial


def test_launcher_presets_compose():
    joblib = composed(["hydra/launcher=local_parallel"]).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2
    slurm = composed(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1 and slurm.partition == "gpu"
    cfg = composed(["trainer=gpu", "trainer.devices=[${attnlab_job_gpu:4}]"])
    assert OmegaConf.to_container(cfg.trainer.devices, resolve=True) == [0]  # job 0 outside a sweep
    assert cfg.dry_run is False and cfg.torch_threads is None


def test_a_job_outcome_becomes_the_trials_state(tmp_path):
    """NaN (a failed job) is FAIL with the job's error, a manifest saying pruned is PRUNED, a number COMPLETE."""
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from attnlab.sweeps.optuna_sweeper import trial_outcome

    State = optuna.trial.TrialState
    make_job(tmp_path, 0, ["optimizer.lr=-1"], status="failed", error={"type": "ValueError", "message": "Invalid learning rate: -1"})
    make_job(tmp_path, 1, ["optimizer.lr=1"], status="pruned")
    make_job(tmp_path, 2, ["optimizer.lr=2"])
    ret = lambda value: JobReturn(status=JobStatus.COMPLETED, _return_value=value)  # noqa: E731
    state, values, error = trial_outcome(ret(float("nan")), tmp_path / "0", 1)
    assert state == State.FAIL and values is None and "ValueError: Invalid learning rate: -1" in error
    assert trial_outcome(ret(None), tmp_path / "1", 1) == (State.PRUNED, None, None)
    assert trial_outcome(ret(0.9), tmp_path / "2", 1) == (State.COMPLETE, [0.9], None)
    assert trial_outcome(ret([0.9, 0.1]), tmp_path / "2", 2) == (State.COMPLETE, [0.9, 0.1], None)
    assert trial_outcome(ret(0.9), tmp_path / "2", 2)[0] == State.FAIL  # one value for two objectives


def test_search_space_parses_hydras_sweep_syntax_to_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from attnlab.sweeps.search import SearchSpace

    params = {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.dropout": "interval(0.0, 0.5)",
              "data.batch_size": "choice(64, 128, 256)", "model.n_layers": "range(1, 7, 2)", "trainer.max_epochs": 3,
              "model.d_model": "interval(16, 64)"}
    space = SearchSpace(params, ["seed=5", "model.dropout=0.1,0.2", "+tags=[a]"])
    assert space.distributions == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True), "model.dropout": CategoricalDistribution([0.1, 0.2]),
        "data.batch_size": CategoricalDistribution([64, 128, 256]), "model.n_layers": IntDistribution(1, 5, step=2),
        "model.d_model": FloatDistribution(16, 64)}  # Hydra reads interval bounds as floats
    assert space.fixed == ["trainer.max_epochs=3", "seed=5", "+tags=[a]"]  # the command line after the config
    assert space.job_overrides({"model.dropout": 0.2, "data.batch_size": 64}) == [*space.fixed, "model.dropout=0.2", "data.batch_size=64"]
    assert SearchSpace({}, ["+extra=choice(1,2)"]).job_overrides({"extra": 2}) == ["+extra=2"]
    nested = SearchSpace({"model.dropout": "interval(0.0, 0.5)", "model": {"dropout": "interval(0, 0.1)"}}, [])
    assert nested.distributions == {"model.dropout": FloatDistribution(0, 0.1)}  # +hydra.sweeper.params.model.dropout=...


def test_grid_sampler_takes_its_grid_from_choices_and_ranges():
    from attnlab.sweeps.search import SearchSpace, build_sampler

    space = SearchSpace({"data.batch_size": "choice(64, 128)", "model.n_layers": "range(1, 4)"}, [])
    assert space.grid() == {"data.batch_size": [64, 128], "model.n_layers": [1, 2, 3]}
    assert type(build_sampler({"name": "grid", "seed": 1}, space)).__name__ == "GridSampler"
    with pytest.raises(ConfigError, match="sampler grid needs choice.*model.dropout is an interval"):
        build_sampler({"name": "grid"}, SearchSpace({"model.dropout": "interval(0, 0.5)"}, []))


@pytest.mark.parametrize("name, cls", [("tpe", "TPESampler"), ("random", "RandomSampler"), ("gp", "GPSampler"),
                                       ("cmaes", "CmaEsSampler"), ("nsgaii", "NSGAIISampler"), ("grid", "GridSampler")])
def test_every_sampler_builds_by_name_with_its_seed(name, cls):
    import optuna

    from attnlab.sweeps.search import SearchSpace, build_sampler

    space = SearchSpace({"x": "choice(1, 2, 3)"}, [])
    sampler = build_sampler(OmegaConf.create({"name": name, "seed": 7}), space, reseed=3)
    assert type(sampler).__name__ == cls
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda trial: float(trial.suggest_categorical("x", [1, 2, 3])), n_trials=2)
    assert len(study.trials) == 2


def test_a_sampler_or_pruner_option_is_checked_with_one_line_naming_the_choices():
    from attnlab.sweeps.search import SearchSpace, build_pruner, build_sampler

    space = SearchSpace({}, [])
    with pytest.raises(ConfigError, match="unknown sampler 'bayes'; choose one of: tpe, random, gp, cmaes, nsgaii, grid"):
        build_sampler({"name": "bayes"}, space)
    with pytest.raises(ConfigError, match="unknown option 'n_startup' for sampler tpe; choose from: .*n_startup_trials"):
        build_sampler({"name": "tpe", "n_startup": 3}, space)
    assert build_sampler({"name": "tpe", "n_startup_trials": 3, "seed": 1}, space)._n_startup_trials == 3
    with pytest.raises(ConfigError, match="unknown pruner 'early'; choose one of: none, median, percentile, hyperband"):
        build_pruner({"name": "early"})
    median = build_pruner({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    assert type(median).__name__ == "MedianPruner" and median._n_startup_trials == 2 and median._n_warmup_steps == 1
    assert type(build_pruner({"name": "hyperband", "n_startup_trials": None})).__name__ == "HyperbandPruner"  # null: default
    assert type(build_pruner(None)).__name__ == "NopPruner"


class FakeLauncher:
    """Hydra's launcher, in-process and instant: a job's value is x + y of its overrides, NaN (failed) when x=3."""

    def __init__(self):
        self.jobs = []

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        returns = []
        for overrides in job_overrides:
            params = dict(o.lstrip("+").split("=", 1) for o in overrides)
            self.jobs.append(params)
            value = math.nan if params["x"] == "3" else float(params["x"]) + float(params["y"])
            returns.append(JobReturn(status=JobStatus.COMPLETED, _return_value=value))
        return returns


def sweeper_on(tmp_path, *, n_trials, sampler, params):
    from attnlab.sweeps.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
                            n_trials=n_trials, n_jobs=2, sampler=sampler, params=params)
    sweeper.config = OmegaConf.create({"objective": "val/acc", "dry_run": False, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.dry_run, sweeper.launcher = False, FakeLauncher()
    return sweeper


def test_grid_search_runs_its_grid_once_and_a_failed_job_is_a_failed_trial(tmp_path):
    import optuna

    sweeper = sweeper_on(tmp_path, n_trials=10, sampler={"name": "grid", "seed": 0}, params={"x": "choice(1, 3)"})
    sweeper.sweep(["y=range(0, 2)", "z=5"])  # 4 grid points, though 10 trials were asked for
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert sorted((t.params["x"], t.params["y"]) for t in study.trials) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert {t.state.name for t in study.trials if t.params["x"] == 3} == {"FAIL"} and study.best_value == 2.0
    assert all(job["z"] == "5" and job["optuna_trial"].isdigit() for job in sweeper.launcher.jobs)
    again = sweeper_on(tmp_path, n_trials=10, sampler={"name": "grid"}, params={"x": "choice(1, 3)"})
    again.sweep(["y=range(0, 2)"])
    assert again.launcher.jobs == []  # the grid is run: nothing owed


def test_a_resumed_search_runs_only_the_trials_owed_with_a_reseeded_sampler(tmp_path):
    first = sweeper_on(tmp_path, n_trials=3, sampler={"name": "random", "seed": 1}, params={"x": "interval(0, 1)"})
    first.sweep(["y=0"])
    more = sweeper_on(tmp_path, n_trials=5, sampler={"name": "random", "seed": 1}, params={"x": "interval(0, 1)"})
    more.sweep(["y=0"])
    assert len(first.launcher.jobs) == 3 and len(more.launcher.jobs) == 2
    drawn = [job["x"] for job in first.launcher.jobs + more.launcher.jobs]
    assert len(set(drawn)) == 5  # reseeded with seed + 3: no replay of the first three


def test_pareto_front_of_a_two_objective_sweep(tmp_path):
    """acc up, loss down: configuration 2 is beaten by 0 on both; 0 and 1 trade one for the other."""
    for num, (acc, loss) in enumerate(((0.9, 0.3), (0.8, 0.2), (0.85, 0.35))):
        job = make_job(tmp_path, num, [f"optimizer.lr={num}"], metrics={"val/acc_best": acc, "val/loss": loss}, seed=1)
        OmegaConf.save(OmegaConf.create({"objective": ["val/acc_best", "val/loss"], "monitor": {"metric": "val/acc"}}),
                       job / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"direction": ["maximize", "minimize"]}}}), tmp_path / "multirun.yaml")
    jobs = sweeps.collect(tmp_path)
    goals = sweeps.objectives(tmp_path, jobs)
    assert goals == [("val/acc_best", "max"), ("val/loss", "min")]
    assert [r.params["optimizer.lr"] for r in sweeps.pareto_front(sweeps.aggregate(jobs), goals)] == ["0", "1"]
    csv_path, md_path = sweep_summary.write_summary(tmp_path)
    md = md_path.read_text()
    front = md[md.index("## Pareto front"):]
    assert "| optimizer.lr=0 | 0 | 0.9 | 0.3 |" in front and "| optimizer.lr=1 | 1 | 0.8 | 0.2 |" in front
    assert "optimizer.lr=2" not in front
    with csv_path.open() as f:
        assert [row["pareto"] for row in csv.DictReader(f)] == ["True", "True", "False"]


def resolved_task_config(task: str, data: str) -> dict:
    """The monitor part of a job's saved config.yaml for a real task config (as train saves it: resolved)."""
    cfg = composed([f"task={task}", f"data={data}", "model=gpt" if task == "language_modeling" else "model=cnn"])
    return {"objective": None, "monitor": OmegaConf.to_container(cfg.monitor, resolve=True)}


@pytest.mark.parametrize("objective", ["val/bpb", "val/ppl", "test/bpb", "val/loss_best"])
def test_lm_objectives_rank_lowest_first(tmp_path, objective):
    """Language-model metrics are better when lower: the direction comes from the task's config, not the name."""
    config = {**resolved_task_config("language_modeling", "tinystories_sample"), "objective": objective}
    for num, value in enumerate((1.4, 1.1, 1.7)):
        job = make_job(tmp_path, num, [f"optimizer.lr={num}"], metrics={objective: value, "val/loss": value}, seed=1)
        OmegaConf.save(OmegaConf.create(config), job / "config.yaml")
    jobs = sweeps.collect(tmp_path)
    assert sweeps.objective(tmp_path, jobs) == (objective, "min")
    rows = sweeps.aggregate(jobs)
    assert [r.params["optimizer.lr"] for r in sweeps.ranked(rows, objective, "min")] == ["1", "0", "2"]
    md = sweep_summary.write_summary(tmp_path)[1].read_text()
    assert f"**Best configuration** by `{objective}` (min): `optimizer.lr=1`" in md


def test_an_objective_of_unknown_direction_is_not_ranked(tmp_path):
    """val/nll is no metric the LM task states a direction for: the summary says so instead of guessing."""
    config = {**resolved_task_config("language_modeling", "tinystories_sample"), "objective": "val/nll"}
    for num, value in enumerate((1.4, 1.1, 1.7)):
        job = make_job(tmp_path, num, [f"optimizer.lr={num}"], metrics={"val/nll": value}, seed=1)
        OmegaConf.save(OmegaConf.create(config), job / "config.yaml")
    jobs = sweeps.collect(tmp_path)
    assert sweeps.objective(tmp_path, jobs) == ("val/nll", None)
    md = sweep_summary.write_summary(tmp_path)[1].read_text()
    assert "direction unknown" in md and "hydra.sweeper.direction" in md and "**Best configuration**: none" in md
    assert md.index("| 0 |") < md.index("| 1 |") < md.index("| 2 |")  # sweep order, no claim of best
    OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"direction": "minimize"}}}), tmp_path / "multirun.yaml")
    assert sweeps.objective(tmp_path, jobs) == ("val/nll", "min")  # the sweeper's stated direction


@pytest.mark.parametrize("task, data, metric, mode", [
    ("classification", "mnist", "val/loss", "min"), ("classification", "mnist", "test/f1", "max"),
    ("classification", "mnist", "val/acc_best", "max"), ("reconstruction", "mnist", "test/psnr", "max"),
    ("reconstruction", "mnist", "val/loss", "min"), ("language_modeling", "tinystories_sample", "val/bpb", "min"),
])
def test_every_task_states_its_metrics_directions(tmp_path, task, data, metric, mode):
    config = {**resolved_task_config(task, data), "objective": metric}
    make_job(tmp_path, 0, ["optimizer.lr=1"], metrics={metric: 1.0}, seed=1)
    OmegaConf.save(OmegaConf.create(config), tmp_path / "0" / "config.yaml")
    assert sweeps.objective(tmp_path, sweeps.collect(tmp_path)) == (metric, mode)


def test_optuna_direction_follows_the_tasks_objective(tmp_path):
    """hparams_search states the objective; the sweeper's direction comes from the task, also in the summary."""
    cfg = composed(["experiment=mnist_ae", "hparams_search=mnist_optuna", "objective=val/mse", "hydra.sweep.dir=/tmp/s"])
    assert cfg.hydra.sweeper.direction == "minimize"
    assert composed(["experiment=mnist_cnn", "hparams_search=mnist_optuna", "hydra.sweep.dir=/tmp/s"]).hydra.sweeper.direction == "maximize"
    OmegaConf.save(cfg, tmp_path / "multirun.yaml")  # as the sweeper saves it: unresolved
    job = make_job(tmp_path, 0, ["optimizer.lr=1"], metrics={"val/mse": 0.1}, seed=1)
    OmegaConf.save(OmegaConf.create({"objective": "val/mse", "monitor": {"metric": "val/acc", "mode": "max"}}), job / "config.yaml")
    assert sweeps.objective(tmp_path, sweeps.collect(tmp_path)) == ("val/mse", "min")  # the sweeper's, resolved
    with pytest.raises(Exception, match="add hydra.sweeper.direction=maximize or minimize"):
        composed(["experiment=mnist_cnn", "hparams_search=mnist_optuna", "objective=val/nll", "hydra.sweep.dir=/tmp/s"]).hydra.sweeper.direction


def test_table_search_minimises_val_rmse_over_keys_the_experiment_has():
    cfg = composed(["experiment=california_gbt", "hparams_search=california_gbt_optuna", "hydra.sweep.dir=/tmp/s"])
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.objective == "val/rmse_best" and cfg.refit is False
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key
