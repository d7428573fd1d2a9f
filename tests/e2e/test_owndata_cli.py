"""Your own data from the command line, on generated data: the writers' layouts train under fast_dev_run
(experiment=imdb_rating4, experiment=mnist_folders), a data report per family, and app/predict.py with its errors."""

import csv
import json

import pytest

from attnlab.data.image_folder import write_fake_folders

pytestmark = pytest.mark.slow


@pytest.mark.heavy
def test_the_writers_layouts_train_and_report(own_cli, tmp_path):
    own_cli("app/train.py", "-m", "experiment=imdb_rating4,mnist_folders", "trainer.fast_dev_run=true",
            "data.val_size=20", "data.batch_size=16")
    (sweep,) = list((own_cli.results / "sweeps").iterdir())
    for job in ("0", "1"):
        manifest = json.loads((sweep / job / "manifest.json").read_text())
        assert manifest["status"] == "completed", manifest.get("error")
    ratings = ["very negative", "negative", "positive", "very positive"]  # the experiment's order, not sorted
    assert json.loads((sweep / "0" / "class_names.json").read_text()) == ratings
    assert json.loads((sweep / "1" / "image_folder.json").read_text())["class_names"] == list("0123456789")
    out = tmp_path / "reports"
    own_cli("viz/plot.py", "data=text_classification", f"data.train_file={tmp_path / 'data/imdb_rating4/train.csv'}",
            "data.max_len=32", f"out={out / 'text'}")
    text = (out / "text" / "report.md").read_text()
    assert "## Class balance" in text and "longer than max_len=32" in text and (out / "text" / "lengths.png").is_file()
    own_cli("viz/plot.py", "data=mnist", f"data.data_dir={tmp_path / 'data/mnist'}", "data.val_size=20", f"out={out / 'mnist'}")
    mnist = (out / "mnist" / "report.md").read_text()  # the generic report: sizes, class balance, samples
    assert "| train | 180 |" in mnist and "## Class balance" in mnist and (out / "mnist" / "samples.png").is_file()


def test_predict_command_writes_outputs_and_refuses_bad_input(own_cli, tmp_path):
    root = write_fake_folders(tmp_path / "imgs", per_class=10, size=16)
    own_cli("app/train.py", "data=image_folder", f"data.root={root}", "data.batch_size=8", "model.channels=[4,8]",
            "trainer.max_epochs=1", "test=false")
    (run,) = list((own_cli.results / "runs").iterdir())
    out = tmp_path / "pred.csv"
    done = own_cli("app/predict.py", f"run={run}", f"input={root}", f"output={out}", "top_k=2")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30 and rows[0]["id"] == "circle/000.png" and rows[0]["label"] in ("circle", "square", "stripes")
    assert len(rows[0]["top"].split(";")) == 2 and "predicted 30 input(s)" in done.stdout + done.stderr
    bad = own_cli("app/predict.py", f"run={run}", f"input={tmp_path / 'missing.csv'}", f"output={tmp_path / 'no.csv'}",
                  expect=2)
    assert "error: no such file: " in bad.stderr and not (tmp_path / "no.csv").exists()
    single = own_cli("app/predict.py", f"run={run}", f"input={root / 'square' / '001.png'}")
    assert "001.png: square" in single.stdout + single.stderr or "001.png:" in single.stdout + single.stderr
