"""Translation as users run it, on generated Multi30k- and Tatoeba-style files: every experiment under fast_dev_run;
train -> validate (the same BLEU, exactly) -> translate; checkpoint averaging; bad input."""

import gzip
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TESTS = ["test_2016_flickr", "test_2017_mscoco"]  # the test sets mt_cli writes (tests/e2e/conftest.py)
# A tiny transformer / LSTM and a 300-token BPE: the generated language is small.
TINY = {
    "multi30k_transformer": ["model._target_=attnlab.models.seq2seq.transformer_seq2seq_tiny", "+model.d_model=32",
                             "+model.n_heads=2", "+model.d_ff=64"],
    "tatoeba_transformer": ["model._target_=attnlab.models.seq2seq.transformer_seq2seq_tiny", "+model.d_model=32",
                            "+model.n_heads=2", "+model.d_ff=64", "data.source.val_size=30", "data.source.test_size=30"],
    "multi30k_lstm_attention": ["model.d_embed=16", "model.d_hidden=32", "model.n_layers=1"],
}


def only_run(results: Path) -> Path:
    (run_dir,) = list((results / "runs").iterdir())
    return run_dir


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("experiment", list(TINY))
def test_every_translation_experiment_fast_dev_run(mt_cli, experiment):
    mt_cli("app/train.py", f"experiment={experiment}", *TINY[experiment], "trainer.fast_dev_run=true")
    run_dir = only_run(mt_cli.results)
    metrics = read(run_dir / "metrics.json")
    assert read(run_dir / "manifest.json")["status"] == "completed"
    sets = TESTS if experiment.startswith("multi30k") else ["test"]
    for name in sets:  # a data set whose one test set is called "test" (Tatoeba's split) logs plain test/bleu
        suffix = "" if name == "test" else f"/{name}"
        assert {f"test/bleu{suffix}", f"test/chrf{suffix}", f"test/loss{suffix}"} <= set(metrics)
    assert metrics["test/bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert (run_dir / "plots" / f"translations_{sets[0]}.txt").is_file()


def test_train_validate_translate_round_trip(mt_cli, tmp_path):
    """Two epochs with averaging; validate reproduces the run's test BLEU exactly; translate reads text and files."""
    mt_cli("app/train.py", "experiment=multi30k_transformer", *TINY["multi30k_transformer"], "trainer.max_epochs=2",
           "average_last=2", "task.beam_size=2")
    run_dir = only_run(mt_cli.results)
    metrics = read(run_dir / "metrics.json")
    assert {f"averaged/test/bleu/{TESTS[0]}", f"test/bleu/{TESTS[1]}", "val/bleu", "val/bleu_best"} <= set(metrics)
    assert (run_dir / "checkpoints" / "averaged.ckpt").is_file() and (run_dir / "plots" / "cross_attention.png").is_file()
    hyps = (run_dir / "plots" / f"translations_{TESTS[0]}.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 30

    mt_cli("val/validate.py", f"run={run_dir}")
    report = read(run_dir / "validation" / "test.json")["metrics"]
    for name in TESTS:
        assert report[f"test/bleu/{name}"] == metrics[f"test/bleu/{name}"]  # exactly: the same decoding, the same text
        assert report[f"test/chrf/{name}"] == metrics[f"test/chrf/{name}"]
    mt_cli("val/validate.py", f"run={run_dir}", "ckpt=averaged")
    assert read(run_dir / "validation" / "test.json")["metrics"][f"test/bleu/{TESTS[0]}"] == metrics[f"averaged/test/bleu/{TESTS[0]}"]
    mt_cli("val/validate.py", f"run={run_dir}", "+task.beam_size=1")
    assert (run_dir / "validation" / "test_beam_size=1.json").is_file()

    # The same sentences through app/translate.py give the run's own test translations (beam 2, as it was tested).
    sources = [line for line in gzip.open(mt_cli.results.parent / "data" / "multi30k_en_fr" / f"{TESTS[0]}.en.gz", "rt",
                                          encoding="utf-8").read().splitlines()]
    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    mt_cli("app/translate.py", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.txt'}",
           "ckpt=best")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == hyps
    one = mt_cli("app/translate.py", f"run={run_dir}", f"text={sources[0]}")
    assert one.stdout.strip().splitlines()[-1] == hyps[0]
    nbest = mt_cli("app/translate.py", f"run={run_dir}", f"text={sources[0]}", "beam_size=3", "n_best=3")
    lines = [line.split("\t") for line in nbest.stdout.strip().splitlines()[-3:]]
    assert [rank for rank, _, _ in lines] == ["0", "1", "2"]
    scores = [float(score) for _, score, _ in lines]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("args, message", [
    (["input=missing.txt"], "does not exist"),
    (["text=hello", "input=x.txt"], "give one of"),
    (["text=hello", "n_best=3", "beam_size=2"], "n_best <= beam_size"),
])
def test_bad_translate_input_gives_a_clear_error(mt_cli, args, message):
    mt_cli("app/train.py", "experiment=multi30k_transformer", *TINY["multi30k_transformer"], "trainer.max_epochs=1",
           "test=false")
    out = mt_cli("app/translate.py", f"run={only_run(mt_cli.results)}", *args, expect=2)
    assert message in out.stderr and "Traceback" not in out.stderr


def test_translate_refuses_a_run_of_another_task(cli):
    cli("app/train.py", "experiment=mnist_quick", "trainer.max_epochs=1", "test=false")
    out = cli("app/translate.py", f"run={only_run(cli.results)}", "text=hello", expect=2)
    assert "not a translation run" in out.stderr


def test_unequal_line_counts_are_refused_before_training(mt_cli):
    data = mt_cli.results.parent / "data" / "multi30k_en_fr"
    with gzip.open(data / "val.fr.gz", "at", encoding="utf-8") as f:
        f.write("Une ligne de trop.\n")
    out = mt_cli("app/train.py", "experiment=multi30k_transformer", *TINY["multi30k_transformer"],
                 "trainer.fast_dev_run=true", expect=2)
    assert "val.fr.gz" in out.stderr and "Traceback" not in out.stderr
