"""ONNX export (attnlab.serving.export), OnnxModel and scripts/export.py on tiny runs trained here, once each: an MNIST
CNN, an IMDB BiLSTM and BERT-style encoder, and a TinyStories GPT. Each is exported with its int8 file; the checks
compare with the torch model at shapes the export's own check did not use, and with padding, so a frozen shape or an
ignored mask would show."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_load_model import train_in_process  # tests/ is on sys.path: its conftest.py sits there

from attnlab.data.corpus import write_fake_corpus
from attnlab.data.imdb import write_fake_imdb
from attnlab.data.mnist import write_fake_mnist
from attnlab.errors import ConfigError, RunError
from attnlab.runs import load_model
from attnlab.serving import export
from attnlab.serving.export import ExportCheckError, export_onnx, family_of, sample_inputs
from attnlab.serving.onnx_model import OnnxModel

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
IMDB = ["data.val_size=40", "data.batch_size=16", "data.max_len=64", "trainer.limit_train_batches=10",
        "model.dropout=0", "optimizer.lr=1e-2"]  # trained enough that logits have margins (val acc 1.0)
RUNS = {
    "mnist_cnn": ("mnist", ["experiment=mnist_cnn", "data.val_size=64", "data.batch_size=32", "model.channels=[8,16]",
                            "model.hidden=32"]),
    "imdb_bilstm": ("imdb", ["experiment=imdb_bilstm", *IMDB, "trainer.max_epochs=3", "model.d_embed=16",
                             "model.d_hidden=16"]),
    "imdb_bert": ("imdb", ["experiment=imdb_bert", *IMDB, "trainer.max_epochs=5", "+model.d_model=32",
                           "+model.n_layers=1", "+model.n_heads=2"]),
    "tinystories_gpt": ("stories", ["experiment=tinystories_gpt", "data.max_len=32", "data.tokenizer.max_vocab=300",
                                    "+model.n_layers=2", "+model.d_model=64", "++task.sample_tokens=4"]),
}
FAMILIES = {"mnist_cnn": "image_classification", "imdb_bilstm": "text_classification",
            "imdb_bert": "text_classification", "tinystories_gpt": "language_model"}


def train(root: Path, data: str, overrides: list[str]) -> Path:
    if data == "mnist":
        write_fake_mnist(root / "data" / "mnist", n_train=256, n_test=32)
    elif data == "imdb":
        write_fake_imdb(root / "data" / "imdb", n_train=200, n_test=40)
    else:
        (root / "data" / "tinystories_sample").mkdir(parents=True)
        write_fake_corpus(root / "data" / "tinystories_sample" / "validation_head.txt.gz", n_docs=200)
    return train_in_process(root, overrides)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine a second one makes these tiny models many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> its run, trained and exported (with int8) on first use."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            runs[name] = train(tmp_path_factory.mktemp(name), *RUNS[name])
            export_onnx(runs[name], quantize="int8")
        return runs[name]

    return get


def copy_run(run: Path, target: Path) -> Path:
    """The run without its export."""
    return Path(shutil.copytree(run, target, ignore=shutil.ignore_patterns("export")))


def fresh_inputs(name: str, run: Path, batch: int = 5, length: int = 23) -> list[torch.Tensor]:
    """Inputs at a shape the export's check did not use (seed 7; padded text rows)."""
    loaded = load_model(run)
    return sample_inputs(FAMILIES[name], loaded.facts, batch, length, preprocess=loaded.preprocess,
                         generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", RUNS)
def test_export_is_checked_at_several_shapes_and_described(exported, name):
    run = exported(name)
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["family"] == FAMILIES[name] and info["opset"] == 17
    assert (run / info["checkpoint"]).is_file() and info["checkpoint"].startswith("checkpoints/best")
    assert set(info["versions"]) == {"torch", "onnx", "onnxruntime"} and "dynamo=False" in info["exporter"]
    assert info["max_abs_diff"] < TOL and info["top1_agreement"] == 1.0
    assert info["files"]["fp32"]["size_bytes"] == (run / "export" / "model.onnx").stat().st_size
    names = [i["name"] for i in info["inputs"]]
    shapes = info["checked_shapes"]
    if name == "mnist_cnn":
        assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 28, 28]}]
        assert info["outputs"][0]["shape"] == ["batch", 10] and info["tokenizer_files"] == []
        assert [s[0] for s in shapes] == [1, 3, 8]
        return
    assert {tuple(s) for s in shapes} == {(b, t) for b in (1, 3, 8) for t in (5, 17, 32 if "gpt" in name else 64)}
    assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "sequence"] for i in info["inputs"])
    assert "tokenizer/tokenizer.json" in info["tokenizer_files"]
    assert all((run / f).is_file() for f in info["tokenizer_files"])
    if name == "tinystories_gpt":
        assert names == ["input_ids"] and info["outputs"][0]["shape"] == ["batch", "sequence", 300]
        assert "without the KV cache" in info["note"] and info["max_len"] == 32
    else:
        assert names == ["input_ids", "attention_mask"] and info["outputs"][0]["shape"] == ["batch", 2]
        assert "note" not in info
        assert info["max_len"] == (64 if name == "imdb_bert" else None)  # an RNN reads any length


@pytest.mark.parametrize("name", RUNS)
def test_onnx_model_computes_what_the_torch_model_does(exported, name):
    run = exported(name)
    torch_model, onnx_model = load_model(run).model, OnnxModel(run, threads=1)
    for batch, length in ((5, 23), (2, 32), (1, 9)):
        inputs = fresh_inputs(name, run, batch, length)
        with torch.no_grad():
            expected = torch_model(*inputs)
        got = onnx_model(*inputs)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    if FAMILIES[name] == "text_classification":
        ids, mask = fresh_inputs(name, run)
        with torch.no_grad():
            expected = torch_model(ids, mask.bool())
            unmasked = torch_model(ids)
        torch.testing.assert_close(onnx_model(input_ids=ids, attention_mask=mask.bool()), expected, atol=TOL, rtol=0)
        torch.testing.assert_close(onnx_model(ids), unmasked, atol=TOL, rtol=0)  # no mask: every token real
        assert (expected - unmasked).abs().max() > 1e-3  # the padding matters, so the mask was really read


@pytest.mark.parametrize("name", RUNS)
def test_int8_is_smaller_and_agrees_on_most_predictions(exported, name):
    run = exported(name)
    info = json.loads((run / "export" / "export.json").read_text())["int8"]
    assert info["size_bytes"] == (run / "export" / "model.int8.onnx").stat().st_size
    assert info["size_bytes"] < 0.8 * (run / "export" / "model.onnx").stat().st_size
    assert info["top1_agreement"] >= 0.9 and 0 < info["max_abs_diff"] < 0.5
    inputs = fresh_inputs(name, run, batch=16)
    expected, got = OnnxModel(run).__call__(*inputs), OnnxModel(run, int8=True)(*inputs)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9
    assert not torch.equal(got, expected)  # really the quantised graph


def test_an_export_that_differs_from_pytorch_is_refused_and_not_kept(exported, tmp_path, monkeypatch):
    run = copy_run(exported("mnist_cnn"), tmp_path / "run")
    trace = export.trace_to_onnx

    def trace_a_different_model(model, *args):
        with torch.no_grad():
            model.head[-1].bias += 1e-3  # the graph gets these weights, PyTorch's check the original ones
        trace(model, *args)
        with torch.no_grad():
            model.head[-1].bias -= 1e-3

    monkeypatch.setattr(export, "trace_to_onnx", trace_a_different_model)
    with pytest.raises(ExportCheckError, match=r"differ from PyTorch's by 0.001 \(> 0.0001\).*not kept"):
        export_onnx(run)
    assert list((run / "export").iterdir()) == []


def test_text_samples_are_padded_except_a_single_row():
    facts = {"vocab_size": 50, "pad_id": 0}
    ids, mask = sample_inputs("text_classification", facts, 8, 17)
    assert mask[0].all() and not mask[1:].all(dim=1).any() and mask[:, 0].all()
    assert (ids[mask == 0] == 0).all() and mask.dtype == torch.int64
    assert sample_inputs("text_classification", facts, 1, 17)[1].all()


def test_unsupported_models_and_options_are_refused(exported, tmp_path):
    from attnlab.models.autoencoder import ConvAutoencoder
    from attnlab.models.ngram import NGramLM

    for model in (ConvAutoencoder(in_channels=1, image_size=28), NGramLM(vocab_size=10)):
        with pytest.raises(ConfigError, match=r"ONNX export supports CNN \(image_classification\), .*GPT "
                                              rf"\(language_model\), LSTMLM \(language_model\); this run's model is "
                                              rf"{type(model).__name__}"):
            family_of(model)
    ae = train(tmp_path, "mnist", ["experiment=mnist_ae", "data.val_size=64", "data.batch_size=32"])
    with pytest.raises(ConfigError, match="this run's model is ConvAutoencoder"):
        export_onnx(ae)
    assert not (ae / "export").exists()
    run = exported("mnist_cnn")
    with pytest.raises(ConfigError, match="unknown quantize='int4'; choose one of: int8"):
        export_onnx(run, quantize="int4")
    with pytest.raises(ConfigError, match="opset 9 is out of range; choose 14-20"):
        export_onnx(run, opset=9)


def test_onnx_model_refuses_a_run_without_its_export(exported, tmp_path, caplog):
    run = copy_run(exported("imdb_bert"), tmp_path / "run")
    with pytest.raises(RunError, match=rf"has no ONNX export .*; run python scripts/export.py run={run} format=onnx$"):
        OnnxModel(run)
    export_onnx(run)  # fp32 only: no int8 file
    with pytest.raises(RunError, match="no int8 ONNX export .* format=onnx quantize=int8"):
        OnnxModel(run, int8=True)
    model = OnnxModel(run)
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_len 64; truncate"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(RunError, match="does not exist"):
        OnnxModel(tmp_path / "nowhere")
    checkpoint = run / json.loads((run / "export" / "export.json").read_text())["checkpoint"]
    later = (run / "export" / "model.onnx").stat().st_mtime + 60
    os.utime(checkpoint, (later, later))  # the run trained on (resumed) after its export
    OnnxModel(run)
    assert f"was exported from {checkpoint.name}, which is rewritten since; run python scripts/export.py" in caplog.text


def script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "export.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_export_script(exported, tmp_path):
    run = copy_run(exported("mnist_cnn"), tmp_path / "run")
    out = script(f"run={run}", "format=onnx", "quantize=int8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"fp32  {run}/export/model.onnx" in out.stdout and "top-1 agreement" in out.stdout
    assert (run / "export" / "model.int8.onnx").is_file()
    bad = script(f"run={run}", "format=tflite")
    assert bad.returncode == 2 and bad.stderr == "error: format=tflite: only onnx is supported\n"
    missing = script(f"run={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and missing.stderr.strip().endswith("does not exist")
    assert missing.stderr.count("\n") == 1
