"""runs.load_model: a trained run's model, preprocessing, config and data facts, with the training data gone.

Each test trains a small run in this process (as app/train.py does, without the subprocess), then compares the
loaded model with the trained task: the checkpoint in the task, as Lightning loads it, fed by the run's data module.
"""

import shutil
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from attnlab import build, runs
from attnlab.config import conf_dir
from attnlab.data.corpus import write_fake_corpus
from attnlab.data.imdb import write_fake_imdb
from attnlab.data.sources import read_jsonl
from attnlab.data.mnist import read_idx, write_fake_mnist
from attnlab.errors import RunError

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "tracker=csv"]
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "test=false"]


def train_in_process(root: Path, overrides: list[str]) -> Path:
    """app/train.py's job in this process: data under root/data, caches under root/cache, the run in root/run."""
    from attnlab.train import train

    run_dir = root / "run"
    paths = [f"paths.data_dir={root / 'data'}", f"paths.cache_dir={root / 'cache'}", f"paths.results_dir={root}"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*paths, *QUIET, *SHORT, *overrides], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    train(cfg)
    return run_dir


def trained_task(run_dir: Path, ckpt: str = "last"):
    """(data module, task): the run's checkpoint in its task, as Lightning restores it; the data is needed here."""
    datamodule, task = build.assemble(runs.load_config(run_dir), artifacts=run_dir)
    task.load_state_dict(runs.load_checkpoint(run_dir / "checkpoints" / f"{ckpt}.ckpt")["state_dict"])
    return datamodule, task.eval()


def timed_load(run_dir: Path, **kw) -> runs.LoadedRun:
    start = time.perf_counter()
    loaded = runs.load_model(run_dir, **kw)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"load_model took {elapsed:.2f} s"
    return loaded


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist_run")
    write_fake_mnist(root / "data" / "mnist", n_train=256, n_test=64)
    return train_in_process(root, ["experiment=mnist_cnn", "data.val_size=64", "data.batch_size=32"])


def test_an_image_run_loads_without_its_data_and_computes_what_the_task_did(mnist_run):
    datamodule, task = trained_task(mnist_run)
    datamodule.setup("test")
    x, _ = next(iter(datamodule.test_dataloader()))  # the first test images, as the task saw them
    raw = torch.from_numpy(read_idx(datamodule.data_dir / "t10k-images-idx3-ubyte.gz")[: len(x)])  # (B, 28, 28) uint8
    with torch.no_grad():
        expected = task(x)
    shutil.rmtree(mnist_run.parent / "data")  # nothing below may read the training data
    shutil.rmtree(mnist_run.parent / "cache", ignore_errors=True)

    loaded = timed_load(mnist_run, ckpt="last")
    assert not loaded.model.training and loaded.tokenizer is None
    assert loaded.checkpoint == mnist_run / "checkpoints" / "last.ckpt" and loaded.run_dir == mnist_run
    assert loaded.facts["num_classes"] == 10 and loaded.cfg.model.hidden == 128
    with torch.no_grad():
        got = loaded.model(loaded.preprocess(raw))  # raw pixels -> the model's input -> logits
    assert torch.equal(got, expected)
    assert runs.load_model(mnist_run).checkpoint.name.startswith("best")  # ckpt=best by default


def test_a_checkpoint_that_does_not_fit_the_model_is_a_clear_error(mnist_run, tmp_path):
    run = shutil.copytree(mnist_run, tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.hidden = 64
    OmegaConf.save(cfg, run / "config.yaml")
    with pytest.raises(RunError, match=r"last.ckpt does not fit the model in .*config.yaml: head.2.weight: shape \[64, 3136\] here, \[128, 3136\]"):
        runs.load_model(run, ckpt="last")
    with pytest.raises(RunError, match="no checkpoint"):
        runs.load_model(run, ckpt=str(tmp_path / "nothing.ckpt"))


def test_loading_applies_the_model_transform_of_training(mnist_run, tmp_path):
    run = shutil.copytree(mnist_run, tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.compile = True
    OmegaConf.save(cfg, run / "config.yaml")
    loaded = runs.load_model(run)
    assert loaded.model._compiled_call_impl is not None  # compiled in place, as build.assemble does at training


def test_a_language_model_run_loads_without_its_data_with_its_tokenizer(tmp_path):
    (tmp_path / "data" / "tinystories_sample").mkdir(parents=True)
    write_fake_corpus(tmp_path / "data" / "tinystories_sample" / "validation_head.txt.gz", n_docs=200)
    run = train_in_process(tmp_path, ["experiment=tinystories_gpt", "data.max_len=32", "data.tokenizer.max_vocab=300",
                                      "+model.n_layers=2", "+model.d_model=64", "++task.sample_tokens=4"])
    datamodule, task = trained_task(run)
    datamodule.setup("test")
    x, _ = next(iter(datamodule.test_dataloader()))  # (B, T) token ids
    text = "Lily saw a red ball. “It is so nice!”"
    prompt = torch.tensor([datamodule.tokenizer.encode(text)])
    with torch.no_grad():
        expected, expected_prompt = task(x), task(prompt)
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "cache")

    loaded = timed_load(run, ckpt="last")
    assert loaded.tokenizer is loaded.preprocess and loaded.tokenizer.vocab_size == loaded.facts["vocab_size"]
    assert loaded.facts["eos_id"] == loaded.tokenizer.eos_id and loaded.facts["max_len"] == 32
    with torch.no_grad():
        assert torch.equal(loaded.model(x), expected)
        assert torch.equal(loaded.model(torch.tensor([loaded.preprocess.encode(text)])), expected_prompt)

    shutil.rmtree(run / "tokenizer")  # a text run without its saved tokenizer would need the training data
    with pytest.raises(RunError, match="holds no saved data artifacts"):
        runs.load_model(run)


def test_a_text_classification_run_loads_without_its_data(tmp_path):
    write_fake_imdb(tmp_path / "data" / "imdb", n_train=120, n_test=40)
    run = train_in_process(tmp_path, ["experiment=imdb_gru", "data.val_size=20", "data.batch_size=16",
                                      "data.max_len=64", "model.d_embed=16", "model.d_hidden=16"])
    datamodule, task = trained_task(run)
    datamodule.setup("test")
    x, _ = datamodule.datasets["test"].__getitems__(range(6))  # the first test reviews as training encoded them
    texts = read_jsonl(tmp_path / "data" / "imdb" / "test.jsonl.gz")[0][:6]
    with torch.no_grad():
        expected = task(x)
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "cache")

    loaded = timed_load(run, ckpt="last")
    assert loaded.tokenizer is loaded.preprocess.tokenizer and loaded.facts["vocab_size"] == datamodule.tokenizer.vocab_size
    assert loaded.facts["pad_id"] == datamodule.tokenizer.pad_id and loaded.facts["num_classes"] == 2
    assert loaded.tokenizer.encode("a great film") == datamodule.tokenizer.encode("a great film")
    batch = loaded.preprocess(texts)  # raw text -> the model's input, with the training data gone
    assert batch.keys() == x.keys() and all(torch.equal(batch[k], x[k]) for k in x)
    long = " ".join(texts) * 5  # far over max_len: cut as training cut it
    pre, ids = loaded.preprocess, loaded.tokenizer.encode(long)
    assert pre.truncation == "head_tail"  # the experiment's: a quarter of the room from the start, the rest from the end
    room = 64 - len(pre.prefix) - len(pre.suffix)
    head = round(room * 0.25)
    expected_ids = [*pre.prefix, *ids[:head], *ids[-(room - head):], *pre.suffix]
    assert pre([long])["input_ids"][0].tolist() == expected_ids
    with torch.no_grad():
        assert torch.equal(loaded.model(**x), expected)
        assert torch.equal(loaded.model(**batch), expected)


def test_init_from_applies_when_a_run_starts_not_when_it_resumes(mnist_run, tmp_path):
    source = shutil.copytree(mnist_run, tmp_path / "source")
    root = tmp_path / "tuned"
    write_fake_mnist(root / "data" / "mnist", n_train=128, n_test=32)
    tuned = train_in_process(root, ["experiment=mnist_cnn", "data.val_size=32", "data.batch_size=32",
                                    f"init_from={source}", "model.hidden=64", "init_from_strict=false"])
    record = runs.read_json(tuned / "manifest.json")["init_from"]
    assert record["checkpoint"] == str(runs.find_checkpoint(source, "best")) and record["loaded"] == 25
    assert OmegaConf.load(tuned / "config.yaml").init_from == str(source)
    shutil.rmtree(source)  # a resume continues from its own checkpoint: the source is not read again
    train_in_process(root, [f"resume={tuned}"])
    assert runs.read_json(tuned / "manifest.json")["status"] == "completed"
