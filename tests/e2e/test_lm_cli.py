"""Language modelling from the command line on a small generated story corpus: every LM experiment under
fast_dev_run, then train -> validate -> generate -> plot with a GPT, and a count-based n-gram run."""

import json
from pathlib import Path

import pytest

EXPERIMENTS = ["tinystories_gpt", "tinystories_lstm", "tinystories_ngram", "tinystories_hf_gpt2"]
pytestmark = pytest.mark.slow


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def samples_of(stdout: str) -> str:
    return stdout[stdout.index("--- sample 1"):]


def test_every_lm_experiment_fast_dev_run(lm_cli):
    lm_cli("app/train.py", "-m", f"experiment={','.join(EXPERIMENTS)}", "trainer.fast_dev_run=true")
    (sweep,) = list((lm_cli.results / "sweeps").iterdir())
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == len(EXPERIMENTS)
    for job, experiment in zip(jobs, EXPERIMENTS):
        manifest = read(job / "manifest.json")
        assert manifest["status"] == "completed", (experiment, manifest.get("error"))
        metrics = read(job / "metrics.json")
        assert {"test/loss", "test/ppl", "test/bpb"} <= set(metrics), experiment  # values: tests/tasks/test_lm_metrics.py


def test_gpt_train_validate_generate_plot(lm_cli):
    lm_cli("app/train.py", "experiment=tinystories_gpt", "trainer.max_epochs=2", "+model.n_layers=2", "+model.d_model=64")
    (run,) = list((lm_cli.results / "runs").iterdir())
    metrics = read(run / "metrics.json")
    assert metrics["val/ppl"] < 300 / 2  # two short epochs already beat half of a uniform guess over 300 tokens
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    samples = (run / "plots" / "samples.md").read_text()
    assert samples.count("## epoch") == 2 and "Once upon a time" in samples

    lm_cli("val/validate.py", f"run={run}", "progress_bar=false")
    report = read(run / "validation" / "test.json")
    assert report["metrics"]["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert report["metrics"]["test/bpb"] == pytest.approx(metrics["test/bpb"], rel=1e-5)

    args = [f"run={run}", "prompt=Lily saw", "max_new_tokens=12", "num_samples=2", "seed=3"]
    first = samples_of(lm_cli("app/generate.py", *args).stdout)
    assert first.count("--- sample") == 2 and "Lily saw" in first
    assert samples_of(lm_cli("app/generate.py", *args).stdout) == first  # seeded: the same samples again
    uncached = samples_of(lm_cli("app/generate.py", *args, "use_cache=false").stdout)
    assert uncached == first  # the KV cache changes the speed, never the tokens
    greedy = lm_cli("app/generate.py", f"run={run}", "temperature=0", "max_new_tokens=12").stdout
    assert "--- sample 1 ---" in greedy

    lm_cli("viz/plot.py", f"run={run}")
    assert list((run / "plots").glob("*.png"))


@pytest.mark.heavy
def test_generate_refuses_a_classification_run_and_bad_arguments(cli, lm_cli):
    # A real classification run with a checkpoint (fast_dev_run saves none, which generate would refuse for that).
    cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1", "test=false")
    (run,) = list((cli.results / "runs").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = cli("app/generate.py", f"run={run}", expect=2)
    assert "is not a language-model run" in out.stderr and "CNN" in out.stderr and "Traceback" not in out.stderr
    out = lm_cli("app/generate.py", "run=/nonexistent/run", expect=2)
    assert "does not exist" in out.stderr
    out = lm_cli("app/generate.py", expect=2)
    assert "say which run" in out.stderr
