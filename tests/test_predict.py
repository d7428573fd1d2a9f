"""predict: `load_model(run).predict` and app/predict.py give validate's predictions on the same raw inputs, for text
and image runs trained here; bad inputs get clear errors and leave no output file."""

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from attnlab import build, runs
from attnlab.config import conf_dir
from attnlab.data.image_folder import write_fake_folders
from attnlab.errors import DataError, RunError
from attnlab.predict import Predictions, read_inputs, write_predictions

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "tracker=csv"]
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "test=false"]


def train_in_process(root: Path, overrides: list[str]) -> Path:
    """app/train.py's job in this process: caches under root/cache, the run in root/run."""
    from attnlab.train import train

    run_dir = root / "run"
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.cache_dir={root / 'cache'}", f"paths.results_dir={root}", *QUIET,
                                          *SHORT, *overrides], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    train(cfg)
    return run_dir


def validate_probs(run_dir: Path) -> tuple[object, np.ndarray]:
    """(data module, class probabilities of its test split in dataset order): validate's model on validate's data."""
    loaded = runs.load_model(run_dir, "last")
    datamodule = build.make_datamodule(loaded.cfg, artifacts=run_dir)
    datamodule.setup("test")
    task = build.make_task(loaded.cfg, loaded.model, loaded.facts, training=False)
    dataset = datamodule.test_dataloader().dataset
    x, _ = dataset.__getitems__(list(range(len(dataset))))
    with torch.no_grad():
        return datamodule, torch.softmax(task._forward(x), -1).numpy()


def write_table(path: Path, n: int) -> Path:
    words = {"apple": "crisp sweet", "banana": "yellow peel", "cherry": "red stone"}
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = list(words)[i % 3]
            writer.writerow([" ".join(rng.choice(["the", "a", "was", "it"], size=int(rng.integers(2, 12)))) + " "
                             + words[label], label])
    return path


def test_text_predictions_equal_validates_and_keep_the_label_order(tmp_path):
    write_table(tmp_path / "train.csv", 60)
    test = write_table(tmp_path / "test.csv", 21)
    run = train_in_process(tmp_path, ["data=text_classification", "model=gru", f"data.train_file={tmp_path / 'train.csv'}",
                                      f"data.test_file={test}", "data.class_names=[cherry,apple,banana]",
                                      "data.batch_size=8", "data.max_len=16", "model.d_embed=8", "model.d_hidden=8",
                                      "data.specials=none"])
    datamodule, expected = validate_probs(run)
    items, ids = read_inputs(str(test))
    got = runs.load_model(run, "last").predict(items, batch_size=4)
    assert got.class_names == ["cherry", "apple", "banana"] and len(ids) == 21
    assert np.allclose(got.probs, expected, atol=1e-5) and np.allclose(got.probs.sum(1), 1, atol=1e-5)
    assert got.labels == [got.class_names[i] for i in expected.argmax(1)]
    texts = [row["text"] for row in items]  # plain strings give the same as table rows
    assert np.allclose(runs.load_model(run, "last").predict(texts).probs, got.probs, atol=1e-5)
    with pytest.raises(DataError, match="input 2 is an empty or missing text"):
        runs.load_model(run, "last").predict(["fine", " "])


def test_image_predictions_equal_validates_and_convert_channels(tmp_path, caplog):
    root = write_fake_folders(tmp_path / "imgs", per_class=10, size=16)
    run = train_in_process(tmp_path, ["data=image_folder", f"data.root={root}", "data.batch_size=8",
                                      "model.channels=[4,8]", "model.hidden=8"])
    datamodule, expected = validate_probs(run)
    test_files = [str(p) for p, _ in sorted(datamodule._files()["train"])]  # the carved test rows, by path
    loaded = runs.load_model(run, "last")
    probs = loaded.predict(test_files).probs
    decoded = datamodule._decoded()["train"][0]
    test_images = datamodule._splits()["test"][0]
    index = [next(i for i, img in enumerate(decoded) if torch.equal(img, t)) for t in test_images]
    assert np.allclose(probs[index], expected, atol=1e-5)
    rgb = tmp_path / "rgb.png"
    Image.open(test_files[0]).convert("RGB").save(rgb)
    with caplog.at_level(logging.WARNING):
        converted = loaded.predict([str(rgb)]).probs
    assert "converted to 1 channel(s) (L)" in caplog.text and "rgb.png (RGB)" in caplog.text
    assert np.allclose(converted, probs[:1], atol=1e-5)
    with pytest.raises(DataError, match="no such image file: .*missing.png"):
        read_inputs(str(tmp_path / "missing.png"))
    with pytest.raises(DataError, match="input= is empty"):
        read_inputs("")


def test_a_run_that_is_not_a_classifier_is_refused(tmp_path, fake_mnist_dir):
    run = train_in_process(tmp_path, ["experiment=mnist_ae", f"data.data_dir={fake_mnist_dir}", "data.val_size=64"])
    with pytest.raises(RunError, match="is a ReconstructionTask run, not a classifier"):
        runs.load_model(run, "last").predict([np.zeros((28, 28), dtype=np.uint8)])


def test_a_failed_write_leaves_no_output_file(tmp_path):
    predictions = Predictions(["a", "b"], np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32))
    out = tmp_path / "out.csv"
    write_predictions(out, ["x", "y"], predictions, top_k=1)
    assert out.read_text().splitlines()[1].startswith("x,b,b:0.800000")
    with pytest.raises(IndexError):
        write_predictions(tmp_path / "half.jsonl", ["only one id"], predictions, top_k=2)
    assert list(tmp_path.iterdir()) == [out]


def test_a_distilled_student_is_a_classifier_and_a_masked_lm_is_not():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from attnlab.errors import RunError
    from attnlab.predict import check_classifier
    from attnlab.tasks import task_name

    def loaded(target: str):
        cfg = OmegaConf.create({"task": {"_target_": target}})
        return SimpleNamespace(cfg=cfg, facts={"class_names": ["a", "b"]}, preprocess=SimpleNamespace(to_batch=len),
                               run_dir="run")

    assert task_name(loaded("attnlab.tasks.distillation.DistillationTask").cfg) == "DistillationTask"
    check_classifier(loaded("attnlab.tasks.distillation.DistillationTask"))
    check_classifier(loaded("attnlab.tasks.classification.ClassificationTask"))
    with pytest.raises(RunError, match="MaskedLMTask run, not a classifier"):
        check_classifier(loaded("attnlab.tasks.masked_lm.MaskedLMTask"))
