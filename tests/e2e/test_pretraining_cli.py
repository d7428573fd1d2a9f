"""The encoders' recipes from the command line on fake IMDB reviews: masked-LM pretraining (BERT's static and
RoBERTa's dynamic masking), fine-tuning from the pretraining run (its weights and its tokenizer), distillation into
a half-depth student; each experiment runs a few batches, and a fine-tuning run without its pretraining run is
refused with a message that names the setting."""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SHORT = ["data.max_len=32", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def by_name(cli) -> dict[str, Path]:
    """Completed run directories by experiment name (<date>_<time>_<name>_<id>)."""
    return {p.name.split("_", 2)[2].rsplit("_", 1)[0]: p for p in (cli.results / "runs").iterdir()
            if (p / "metrics.json").is_file()}


def test_pretrain_fine_tune_distil(imdb_cli):
    cli = imdb_cli
    cli("app/train.py", "experiment=imdb_mlm_bert", *SHORT)
    cli("app/train.py", "experiment=imdb_mlm_roberta", *SHORT)
    runs = by_name(cli)
    for name in ("imdb_mlm_bert", "imdb_mlm_roberta"):
        metrics = read(runs[name] / "metrics.json")
        assert {"test/loss", "test/ppl", "test/acc"} <= set(metrics) and metrics["test/ppl"] > 1, metrics
        specials = read(runs[name] / "tokenizer" / "specials.json")
        assert specials["mask"] == "<mask>"

    out = cli("app/train.py", "experiment=imdb_bert_ft", "data.val_size=50", *SHORT, expect=2)
    assert "add init_from=<run directory of experiment=imdb_mlm_bert>" in out.stderr + out.stdout

    for ft, mlm in (("imdb_bert_ft", "imdb_mlm_bert"), ("imdb_roberta_ft", "imdb_mlm_roberta")):
        cli("app/train.py", f"experiment={ft}", f"init_from={runs[mlm]}", "data.val_size=50", *SHORT)
    runs = by_name(cli)
    for ft, mlm in (("imdb_bert_ft", "imdb_mlm_bert"), ("imdb_roberta_ft", "imdb_mlm_roberta")):
        # The pretraining run's tokenizer travels with its weights; everything but the heads and the pooler loads.
        assert (runs[ft] / "tokenizer" / "tokenizer.json").read_text() == (runs[mlm] / "tokenizer" / "tokenizer.json").read_text()
        loaded = read(runs[ft] / "manifest.json")["init_from"]
        assert loaded["loaded"] > 10 and all(n.split(".")[0] in ("pooler", "head", "lm_head") for n in
                                             (line.split(":")[0] for line in loaded["not_loaded"])), loaded
        assert "test/acc" in read(runs[ft] / "metrics.json")

    cli("app/train.py", "experiment=imdb_distilbert_kd", f"task.teacher={runs['imdb_bert_ft']}", "data.val_size=50", *SHORT)
    runs = by_name(cli)
    kd = runs["imdb_distilbert_kd"]
    metrics = read(kd / "metrics.json")
    assert "test/kl" in metrics and "test/acc" in metrics
    assert read(kd / "manifest.json")["init_from"]["loaded"] > 10  # every other teacher block, the embeddings, the head
    # The distilled run validates alone (no teacher needed) to the accuracy it recorded.
    cli("val/validate.py", f"run={kd}")
    assert read(kd / "validation" / "test.json")["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    # ... and it is a classifier to predict and serve, as its teacher is.
    done = cli("app/predict.py", f"run={kd}", "input=a wonderful film, the best of the year")
    said = done.stdout + done.stderr
    assert "predicted 1 input(s)" in said and re.search(r": (positive|negative) [01]\.\d{4}", said), said
    # The student's inference speed against its teacher's, side by side on the same texts.
    texts = cli.results.parent / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"review {i}: " + "a fine film " * (i % 7 + 1)}) + "\n" for i in range(12)))
    done = cli("scripts/bench_models.py", f"runs={runs['imdb_bert_ft']},{kd}", f"input={texts}", "n=10", "batch=4",
               "rounds=1", "threads=1")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    teacher, student = report["rows"]
    assert report["n"] == 10 and teacher["speedup"] == 1.0 and student["speedup"] > 0
    assert (teacher["layers"], student["layers"]) == (2, 1) and student["parameters"] < teacher["parameters"]
    assert cli("scripts/bench_models.py", f"runs={kd}", f"input={texts}", expect=2).stderr.startswith("error: name two runs")
