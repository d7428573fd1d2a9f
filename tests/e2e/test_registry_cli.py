"""The model registry as users run it: `python app/registry.py register|list|compare|promote`, then
`val/validate.py run=models:/x@champion` and `app/serve.py model=models:/x@champion` with a canary and the response
cache, over HTTP. Offline: a sqlite store, the runs and the fetched copies all under tmp (MLFLOW_TRACKING_URI and
ATTNLAB_RESULTS_DIR point there). The runs are tiny, trained in this process (test_load_model.train_in_process)."""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_load_model import train_in_process
from test_serve_cli import Server, free_port, probabilities

from attnlab import runs
from attnlab.data.imdb import write_fake_imdb
from attnlab.data.mnist import write_fake_mnist
from attnlab.runs import registering, registry

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry_cli")


@pytest.fixture(scope="module")
def env(home) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "ATTNLAB_RESULTS_DIR": str(home / "results"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    env.pop("ATTNLAB_API_KEY", None)
    return env


def command(env: dict[str, str], cwd: Path, script: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    if expect is not None:
        assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def mnist_runs(home) -> tuple[Path, Path]:
    """Two tested runs of mnist_cnn on fake MNIST, seeds 1 and 2."""
    write_fake_mnist(home / "data" / "mnist", n_train=256, n_test=64)
    made = []
    for seed in (1, 2):
        (home / f"seed{seed}").mkdir()
        (home / f"seed{seed}" / "data").symlink_to(home / "data")
        made.append(train_in_process(home / f"seed{seed}", ["experiment=mnist_cnn", "data.val_size=64", "data.batch_size=32",
                                                            f"seed={seed}", "test=true"]))
    return made[0], made[1]


@pytest.fixture(scope="module")
def walkthrough(home, env, mnist_runs) -> dict[str, subprocess.CompletedProcess]:
    """register (v1 as challenger) -> register (v2) -> promote v2 to champion -> list -> compare, on the command line."""
    first, second = mnist_runs
    out = {"register 1": command(env, home, "app/registry.py", "register", f"run={first}", "name=x", "alias=challenger")}
    out["register 2"] = command(env, home, "app/registry.py", "register", f"run={second}", "name=x")
    out["promote"] = command(env, home, "app/registry.py", "promote", "name=x", "version=2", "alias=champion")
    out["list"] = command(env, home, "app/registry.py", "list", "name=x")
    out["compare"] = command(env, home, "app/registry.py", "compare", "name=x", "versions=1,2")
    return out


def test_register_list_promote_compare_then_validate_reproduces_the_test_metrics(walkthrough, mnist_runs, home, env):
    rows = [line for line in walkthrough["list"].stdout.splitlines() if re.match(r"│\s+\d\s+│", line)]
    assert len(rows) == 2 and "challenger" in rows[0] and "champion" in rows[1], walkthrough["list"].stdout
    for row, run in zip(rows, mnist_runs):
        acc = runs.read_json(run / "metrics.json")["test/acc"]
        assert run.parent.name in row or runs.read_json(run / "manifest.json")["run_id"] in row
        assert f"{acc:.4g}" in row
    assert "alias 'champion' now points at version 2" in walkthrough["promote"].stdout
    assert re.search(r"│ seed\s+│\s+1 │\s+2 │", walkthrough["compare"].stdout), walkthrough["compare"].stdout

    bad = {("promote", "name=x", "version=9", "alias=champion"): "no version 9",
           ("list", "name=y"): "no registered model 'y'",
           ("promote", "name=x", "version=1"): "needs alias=",
           ("lists", "name=x"): "unknown command 'lists'",
           ("register", f"run={home / 'nothing'}", "name=x"): "does not exist"}
    for args, message in bad.items():
        out = command(env, home, "app/registry.py", *args, expect=2)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)

    # validate of the registered model: the run's test numbers, the report beside (not inside) the fetched copy
    command(env, home, "val/validate.py", "run=models:/x@champion", "progress_bar=false")
    report = runs.read_json(home / "results" / "validation" / "x-v2" / "test.json")
    expected = runs.read_json(mnist_runs[1] / "metrics.json")
    for key in ("test/acc", "test/f1", "test/loss"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key
    assert report["registered"]["name"] == "x" and report["registered"]["version"] == 2


@contextmanager
def serving(env: dict[str, str], cwd: Path, *args: str, ready_s: float = 300) -> Iterator[Server]:
    """`python app/serve.py port=<free> *args` until /health says 200; stopped with Ctrl+C after."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app/serve.py"), f"port={port}", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log, [])
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{server.output()[-4000:]}"
            assert time.monotonic() < deadline, f"not ready after {ready_s} s:\n{server.output()[-4000:]}"
            try:
                if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def series(metrics: str, name: str) -> dict[tuple, float]:
    """A Prometheus series' values by their labels: {(("result", "hit"), ("version", "x/2")): 3.0, ...}."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            out[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return out


@pytest.mark.heavy
def test_serve_by_alias_with_a_canary_at_half_the_traffic_and_a_response_cache(walkthrough, mnist_runs, home, env):
    images = np.random.default_rng(0).integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    expected = {}
    for version, run in zip(("x/1", "x/2"), mnist_runs):
        loaded = runs.load_model(run)
        with torch.no_grad():
            expected[version] = loaded.model(loaded.preprocess(torch.from_numpy(images))).softmax(-1)
    with serving(env, home, "model=models:/x@champion", "canary=models:/x@challenger", "canary_share=0.5",
                 "cache_size=256") as server:
        info = httpx.get(server.url + "/info").json()["model"]
        assert info["version"] == "x/2" and info["canary"]["version"] == "x/1" and info["canary_share"] == 0.5
        answers = [server.post("/predict", {"input": image.tolist()}) for image in images]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        versions = [a.json()["version"] for a in answers]
        counts = collections.Counter(versions)
        assert set(counts) == {"x/1", "x/2"} and 80 <= counts["x/1"] <= 120, counts  # 40% to 60% of 200
        for i, (answer, version) in enumerate(zip(answers, versions)):  # each answer is its version's model's
            assert torch.allclose(probabilities([answer.json()["output"]]), expected[version][i : i + 1], atol=1e-5)

        # the first 50 again: a request that lands on the same version is a cache hit, answered identically
        again = [server.post("/predict", {"input": image.tolist()}) for image in images[:50]]
        same = [(a, b) for a, b in zip(answers, again) if a.json()["version"] == b.json()["version"]]
        assert same and all(a.json() == b.json() for a, b in same)
        metrics = httpx.get(server.url + "/metrics").text
    requests = series(metrics, "attnlab_model_requests_total")
    later = collections.Counter(a.json()["version"] for a in again)
    for version in ("x/1", "x/2"):
        assert requests[(("version", version),)] == counts[version] + later[version]
    cache = series(metrics, "attnlab_cache_total")
    assert sum(v for k, v in cache.items() if ("result", "hit") in k) == len(same)
    assert sum(cache.values()) == 250
    predictions = series(metrics, "attnlab_predictions_total")
    assert sum(v for k, v in predictions.items() if ("version", "x/1") in k) == requests[(("version", "x/1"),)]
    assert series(metrics, "attnlab_model_seconds_count")[(("version", "x/2"),)] == requests[(("version", "x/2"),)]


@pytest.mark.heavy
def test_unknown_names_missing_files_and_a_canary_of_another_task_are_refused_at_start(walkthrough, mnist_runs, home,
                                                                                          env):
    store = env["MLFLOW_TRACKING_URI"]
    reviews = home / "reviews"
    write_fake_imdb(reviews / "data" / "imdb", n_train=160, n_test=40)
    run = train_in_process(reviews, ["experiment=imdb_bilstm", "data.val_size=32", "data.batch_size=16", "data.max_len=48",
                                     "model.d_embed=16", "model.d_hidden=16"])
    registering.register(run, "reviews", store=store)
    registering.register(mnist_runs[0], "gone", store=store)
    shutil.rmtree(registry.resolve("models:/gone/1", store=store).source.removeprefix("file://"))
    cases = [(("model=models:/nope@champion",), "no registered model 'nope'"),
             (("model=models:/x@gold",), "has no alias 'gold'"),
             (("model=models:/x/7",), "has no version 7"),
             (("model=models:/gone/1",), "register the run again"),
             (("model=models:/x@champion", "canary=models:/reviews/1"), "does another task"),
             (("model=models:/x@champion", "canary=models:/x/2"), "is the main model itself"),
             (("model=models:/x@champion", f"run={mnist_runs[0]}"), "both given")]
    for args, message in cases:
        out = command(env, home, "app/serve.py", "port=8000", *args, expect=None)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
