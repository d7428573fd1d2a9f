"""app/serve.py as users run it: a real server (LitServe) in a subprocess on a free localhost port, called over HTTP,
for every family a run can be: text and image classification, language model (with streaming), translation,
summarisation. Answers must equal `runs.load_model` + the model on the same inputs; bad inputs get a 4xx that says
what is wrong and the server keeps answering; the API key is enforced; /health, /info and /metrics say true things.

The runs are tiny, trained in this process once per module (test_load_model.train_in_process)."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_load_model import train_in_process

from attnlab import runs
from attnlab.data.corpus import write_fake_corpus
from attnlab.data.image_folder import write_fake_folders
from attnlab.data.imdb import write_fake_imdb
from attnlab.data.mnist import read_idx, write_fake_mnist

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    health_before_ready: list  # /health answers (None: no connection) seen before the first 200

    def post(self, path: str, body: object, headers: dict | None = None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run: Path, tmp: Path, *overrides: str, ready_s: float = 240) -> Iterator[Server]:
    """`python app/serve.py run=<run> port=<free> *overrides`, until /health says 200; stopped with Ctrl+C after."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    env.pop("ATTNLAB_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app/serve.py"), f"run={run}", f"port={port}", *overrides],
                                cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, [])
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{server.output()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready after {ready_s} s:\n{server.output()[-4000:]}"
            try:
                status = httpx.get(server.url + "/health", timeout=5).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            server.health_before_ready.append(status)
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# -- runs -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_imdb")
    write_fake_imdb(root / "data" / "imdb", n_train=160, n_test=40)
    return train_in_process(root, ["experiment=imdb_bilstm", "data.val_size=32", "data.batch_size=16",
                                   "data.max_len=48", "model.d_embed=16", "model.d_hidden=16"])


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_mnist")
    write_fake_mnist(root / "data" / "mnist", n_train=256, n_test=64)
    return train_in_process(root, ["experiment=mnist_cnn", "data.val_size=64", "data.batch_size=32"])


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_lm")
    (root / "data" / "tinystories_sample").mkdir(parents=True)
    write_fake_corpus(root / "data" / "tinystories_sample" / "validation_head.txt.gz", n_docs=200)
    return train_in_process(root, ["experiment=tinystories_gpt", "data.max_len=32", "data.tokenizer.max_vocab=300",
                                   "+model.n_layers=2", "+model.d_model=64", "++task.sample_tokens=4"])


def probabilities(outputs: list[dict]) -> torch.Tensor:
    return torch.tensor([list(o["probabilities"].values()) for o in outputs])


# -- text classification: answers, bad input, API key, health, info, metrics -------------------------------------------
def test_text_classifier_answers_as_the_model_refuses_bad_input_and_needs_its_key(imdb_run, tmp_path):
    texts = ["a great wonderful film", "awful boring plot " * 40, "the movie was", "<br />superb acting<br/>"]
    loaded = runs.load_model(imdb_run)
    with torch.no_grad():
        expected = loaded.model(**loaded.preprocess(texts)).softmax(-1)
    with serving(imdb_run, tmp_path, f"api_key={KEY}", "max_text_chars=2000", "max_payload_bytes=50000",
                 "max_inputs=8") as server:
        # /health was never 200 before the worker had loaded and warmed up its model
        assert set(server.health_before_ready) <= {None, 503}
        assert "worker ready" in server.output()
        one = server.post("/predict", {"input": texts[0]}, AUTH)
        many = server.post("/predict", {"inputs": texts}, AUTH)
        assert one.status_code == 200 and many.status_code == 200, (one.text, many.text)
        out = many.json()["outputs"]
        assert torch.allclose(probabilities(out), expected, atol=1e-5)
        assert [o["label"] for o in out] == [loaded.facts["class_names"][i] for i in expected.argmax(-1)]
        assert torch.allclose(probabilities([one.json()["output"]]), expected[:1], atol=1e-5)

        # the key: 401 without it or with a wrong one; /health is open
        assert server.post("/predict", {"input": "x"}).status_code == 401
        assert server.post("/predict", {"input": "x"}, {"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(server.url + "/info").status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200

        bad_json = {
            "empty": ({"input": "  "}, 422, "input is empty"),
            "not a string": ({"input": 5}, 422, "valid string"),
            "both": ({"input": "a", "inputs": ["b"]}, 422, "exactly one of"),
            "neither": ({}, 422, "exactly one of"),
            "too many": ({"inputs": ["a"] * 9}, 422, "give 1 to 8"),
            "too long": ({"input": "a" * 2001}, 422, "limit is 2,000"),
            "lone surrogate": ({"input": "ok \ud800"}, 422, "not valid Unicode"),
            "unknown field": ({"input": "a", "temperature": 1}, 422, "Extra inputs"),
            "a list": (["a"], 422, ""),
        }
        for name, (body, status, message) in bad_json.items():
            content = json.dumps(body)  # httpx would refuse to encode the lone surrogate itself
            r = httpx.post(server.url + "/predict", content=content, headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == status and message in r.text, (name, r.status_code, r.text)
        raw = {
            "not JSON": (b"{input: 1", "application/json", 422),
            "not UTF-8": (b'{"input": "\xff\xfe"}', "application/json", 400),
            "form encoded": (b'{"input": "a"}', "application/x-www-form-urlencoded", 415),
            "too big": (json.dumps({"input": "a" * 60000}).encode(), "application/json", 413),
        }
        for name, (content, ctype, status) in raw.items():
            r = httpx.post(server.url + "/predict", content=content, headers={**AUTH, "Content-Type": ctype})
            assert r.status_code == status and r.json()["detail"], (name, r.status_code, r.text)
        assert server.post("/predict", {"input": texts[0]}, AUTH).json() == one.json()  # still up, same answer

        info = httpx.get(server.url + "/info", headers=AUTH).json()["model"]
        manifest = runs.read_json(imdb_run / "manifest.json")
        assert info["family"] == "text_classification" and info["run_id"] == imdb_run.name
        assert info["parameters"] == sum(p.numel() for p in loaded.model.parameters())
        assert info["git_commit"] == manifest["git"]["commit"] and info["checkpoint"] == loaded.checkpoint.name
        metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
        assert 'attnlab_requests_total{path="/predict",status="200"} 3.0' in metrics
        assert 'attnlab_requests_total{path="/predict",status="401"} 2.0' in metrics
        assert 'attnlab_requests_total{path="/predict",status="422"} 10.0' in metrics  # 9 above + "not JSON"
        assert 'attnlab_batch_inputs_sum' in metrics and 'attnlab_request_seconds_bucket' in metrics


def test_dynamic_batching_on_onnxruntime_answers_concurrent_requests_as_the_model_does_alone(imdb_run, tmp_path):
    from attnlab.serving.export import export_onnx

    texts = [f"film {'great ' * (i % 5)}{'awful ' * (i % 3)}story" for i in range(24)]
    loaded = runs.load_model(imdb_run)
    with torch.no_grad():  # one at a time: the batched answers must not depend on the company they keep
        expected = torch.cat([loaded.model(**loaded.preprocess([t])).softmax(-1) for t in texts])
    out = serve_cli(f"run={imdb_run}", "backend=onnx", "port=8000", cwd=tmp_path)
    assert out.returncode == 2 and "scripts/export.py" in out.stderr  # not exported yet: says how
    export_onnx(imdb_run)
    with serving(imdb_run, tmp_path, "backend=onnx", "max_batch_size=8", "batch_timeout=0.05") as server:
        assert httpx.get(server.url + "/info").json()["model"]["backend"] == "onnx"
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda t: server.post("/predict", {"input": t}), texts))
        assert all(a.status_code == 200 for a in answers)
        got = probabilities([a.json()["output"] for a in answers])
        assert torch.allclose(got, expected, atol=1e-4)
        metrics = httpx.get(server.url + "/metrics").text
        batched = [line for line in metrics.splitlines() if line.startswith('attnlab_batch_requests_bucket{le="1.0"}')]
        count = [line for line in metrics.splitlines() if line.startswith("attnlab_batch_requests_count")]
        assert float(batched[0].split()[-1]) < float(count[0].split()[-1])  # some predict calls held several requests


# -- images --------------------------------------------------------------------------------------------------------------
def png(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_classifier_takes_pixels_and_pngs(mnist_run, tmp_path):
    images = read_idx(mnist_run.parent / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")[:5]  # (5, 28, 28) uint8
    loaded = runs.load_model(mnist_run)
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess(torch.from_numpy(images))).softmax(-1)
    with serving(mnist_run, tmp_path) as server:
        as_lists = server.post("/predict", {"inputs": [im.tolist() for im in images]})
        as_pngs = server.post("/predict", {"inputs": [png(im) for im in images]})
        one = server.post("/predict", {"input": images[0][None].tolist()})  # (1, 28, 28) works too
        for r in (as_lists, as_pngs, one):
            assert r.status_code == 200, r.text
        assert torch.allclose(probabilities(as_lists.json()["outputs"]), expected, atol=1e-5)
        assert torch.allclose(probabilities(as_pngs.json()["outputs"]), expected, atol=1e-5)
        assert as_lists.json()["outputs"][0]["label"] == str(int(expected[0].argmax()))
        assert torch.allclose(probabilities([one.json()["output"]]), expected[:1], atol=1e-5)
        bad = {
            "wrong shape": ({"input": [[0] * 28] * 27}, "shape"),
            "ragged": ({"input": [[0] * 28] * 27 + [[0] * 5]}, "same length"),
            "out of range": ({"input": [[300] * 28] * 28}, "0 to 255"),
            "png of the wrong size": ({"input": png(np.zeros((32, 32), np.uint8))}, "32x32"),
            "not base64": ({"input": "%%%"}, "base64"),
            "not a png": ({"input": base64.b64encode(b"hello").decode()}, "PNG"),
        }
        for name, (body, message) in bad.items():
            r = server.post("/predict", body)
            assert r.status_code == 422 and message in r.text, (name, r.status_code, r.text)
        assert server.post("/predict", {"input": images[0].tolist()}).status_code == 200


@pytest.mark.heavy
def test_an_image_folder_run_is_served_in_colour_with_its_class_names(tmp_path_factory, tmp_path):
    """data=image_folder (RGB, standardised with its training statistics): PNGs and pixel lists answer as the run's
    own predict does, with the folder names as labels."""
    from PIL import Image

    root = tmp_path_factory.mktemp("serve_folders")
    folders = write_fake_folders(root / "imgs", per_class=10, size=16, mode="RGB")
    run = train_in_process(root, ["data=image_folder", f"data.root={folders}", "data.batch_size=8", "model.channels=[4,8]",
                                  "model.hidden=8", "trainer.max_epochs=2"])
    files = sorted(folders.glob("*/000.png"))
    expected = runs.load_model(run).predict([str(f) for f in files])
    pixels = [np.asarray(Image.open(f).convert("RGB")) for f in files]  # (16, 16, 3)
    with serving(run, tmp_path) as server:
        as_pngs = server.post("/predict", {"inputs": [png(p) for p in pixels]})
        as_lists = server.post("/predict", {"inputs": [p.transpose(2, 0, 1).tolist() for p in pixels]})  # (3, 16, 16)
        for r in (as_pngs, as_lists):
            assert r.status_code == 200, r.text
            assert [o["label"] for o in r.json()["outputs"]] == expected.labels
            assert torch.allclose(probabilities(r.json()["outputs"]), torch.as_tensor(expected.probs).float(), atol=1e-5)
        assert set(expected.labels) <= {"circle", "square", "stripes"}
        r = server.post("/predict", {"input": [[0] * 16] * 16})  # one channel where the run reads three
        assert r.status_code == 422 and "shape" in r.text, r.text


# -- language model: continuation and streaming ----------------------------------------------------------------------
def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_language_model_generates_as_the_model_and_streams_the_same_tokens(lm_run, tmp_path):
    from attnlab.tasks.language_modeling import checked_samples

    loaded = runs.load_model(lm_run)
    prompt = "Lily saw a"
    sampling = {"temperature": 0.9, "top_k": 20, "top_p": 0.95}
    expected = checked_samples(loaded.model, loaded.tokenizer, [prompt], 12, seed=7, **sampling)[0][len(prompt):]
    with serving(lm_run, tmp_path) as server:
        r = server.post("/predict", {"input": prompt, "max_new_tokens": 12, "seed": 7, **sampling})
        assert r.status_code == 200, r.text
        assert r.json()["output"]["continuation"] == expected
        other = server.post("/predict", {"inputs": [prompt, prompt], "max_new_tokens": 12, "seed": 8, **sampling})
        assert other.json()["outputs"][0] == other.json()["outputs"][1]  # each input starts from the seed

        stream = server.post("/stream", {"input": prompt, "max_new_tokens": 12, "seed": 7, **sampling})
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        got = events(stream)
        assert got[-1] == {"done": True, "continuation": expected, "version": lm_run.name}  # the answering version
        assert "".join(e["token"] for e in got[:-1]) == expected and len(got) > 2

        for body, message in [({"input": prompt, "top_p": 1.5}, "top_p"), ({"input": prompt, "max_new_tokens": 10_000},
                              "limit of 512"), ({"input": prompt, "temperature": -1}, "temperature")]:
            r = server.post("/predict", body)
            assert r.status_code == 422 and message in r.text, r.text
        r = server.post("/stream", {"inputs": [prompt]})
        assert r.status_code == 422 and "one prompt" in r.text


# -- refused at start -------------------------------------------------------------------------------------------------
def serve_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(REPO / "app/serve.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_or_unservable_run_is_refused_at_start(tmp_path, imdb_run, lm_run):
    for args, message in [((f"run={tmp_path / 'nothing'}",), "nothing"), ((), "say which run"),
                          ((f"run={imdb_run}", "host=example.com"), "host="), ((f"run={imdb_run}", "backend=tf"), "backend"),
                          ((f"run={lm_run}", "backend=onnx"), "serves classifiers")]:
        out = serve_cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


# -- translation and summarisation -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mt_run(tmp_path_factory) -> Path:
    from attnlab.data.parallel import write_fake_multi30k

    root = tmp_path_factory.mktemp("serve_mt")
    write_fake_multi30k(root / "data" / "multi30k_en_fr", sizes={"train": 200, "val": 20, "test_2016_flickr": 10})
    return train_in_process(root, ["experiment=multi30k_transformer", "data.tokenizer.max_vocab=300",
                                   "data.batch_size=16", "data.eval_batch_size=16", "+model.d_model=32",
                                   "+model.n_heads=2", "+model.d_ff=64", "average_last=0"])


@pytest.mark.heavy
def test_translation_answers_as_translate_texts(mt_run, tmp_path):
    from attnlab.translate import translate_texts

    texts = ["A man rides a bike.", "Two dogs play in the snow near a house.", "A girl."]
    loaded = runs.load_model(mt_run)
    beam2 = [hyps[0][0] for hyps in translate_texts(loaded, texts, beam_size=2)]
    greedy = [hyps[0][0] for hyps in translate_texts(loaded, texts, beam_size=1)]
    with serving(mt_run, tmp_path) as server:
        r = server.post("/predict", {"inputs": texts, "beam_size": 2})
        assert r.status_code == 200, r.text
        assert [o["translation"] for o in r.json()["outputs"]] == beam2
        one = server.post("/predict", {"input": texts[1], "beam_size": 1})
        assert one.json()["output"]["translation"] == greedy[1]
        r = server.post("/predict", {"input": "x", "beam_size": 50})
        assert r.status_code == 422 and "beam_size=50" in r.text


@pytest.mark.heavy
@pytest.mark.data
def test_summarization_answers_as_summarize_texts(tmp_path_factory, tmp_path, shared_data):
    from attnlab.data.summarization import write_fake_summaries
    from attnlab.tasks.summarization import summarize_texts

    root = tmp_path_factory.mktemp("serve_sum")
    write_fake_summaries(root / "data")
    (root / "data" / "gpt2_tokenizer").symlink_to(shared_data / "gpt2_tokenizer")
    run = train_in_process(root, ["experiment=scitldr_full", "++base=null", "++model.n_layer=1", "++model.n_embd=16",
                                  "++model.n_head=2", "++data.max_len=128", "++data.batch_size=4",
                                  "++data.max_summary_len=12", "++task.val_generate=4"])
    docs = ["We propose a new model. It learns graphs from data. Results show gains.", "Deep networks train."]
    loaded = runs.load_model(run)
    facts = loaded.facts
    expected = summarize_texts(loaded.model, loaded.preprocess, docs, max_new_tokens=8, eos_id=facts["eos_id"],
                               pad_id=facts["pad_id"], num_beams=2)
    with serving(run, tmp_path) as server:
        r = server.post("/predict", {"inputs": docs, "num_beams": 2, "max_new_tokens": 8})
        assert r.status_code == 200, r.text
        assert [o["summary"] for o in r.json()["outputs"]] == expected
        assert server.post("/predict", {"input": docs[0], "num_beams": 99}).status_code == 422
