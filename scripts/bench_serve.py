"""Load test of `app/serve.py`: start the server on a free localhost port, drive it with `clients` concurrent clients
for `requests` requests in all, report throughput, latency percentiles, errors and the server's memory, then stop it.

    python scripts/bench_serve.py run=<run dir> [clients=32] [requests=2000] [max_batch_size=32,1]
        [batch_timeout=0.01] [workers=1] [backend=torch] [texts=<.jsonl.gz with "text" rows>] [warmup=50]

Each comma-separated max_batch_size is a separate server (started, loaded, driven, stopped in turn), so dynamic
batching is compared with batch-size-1 serving on the same inputs and clients; the ratio of their throughputs is
printed. Text runs send real reviews (`texts`, default ../shared/data/imdb/test.jsonl.gz, else generated sentences);
image runs send generated 28x28 digits; language models a short prompt with max_new_tokens=16. Memory: the resident
set of the server's processes together (HTTP server + inference workers), read from /proc after warm-up and at the
end. Traffic goes to 127.0.0.1 only. The last line is one JSON object (`throughput_rps`, `p50_ms`, `p95_ms`,
`p99_ms`, `errors`, `rss_start_mb`, `rss_end_mb`, of the first max_batch_size; `runs` holds every one).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from attnlab.cli import cpu_name, script_fail, script_settings

REPO = Path(__file__).resolve().parents[1]
DEFAULTS: dict[str, Any] = {"run": None, "clients": 32, "requests": 2000, "max_batch_size": "32,1", "batch_timeout": 0.01,
                            "workers": 1, "backend": "torch", "texts": str(REPO.parent / "shared/data/imdb/test.jsonl.gz"),
                            "warmup": 50, "threads": None}


def parse(argv: list[str]) -> dict[str, Any]:
    settings = script_settings(argv, DEFAULTS, usage="python scripts/bench_serve.py run=<run dir>")
    try:
        settings["max_batch_size"] = [int(b) for b in str(settings["max_batch_size"]).split(",")]
    except ValueError:
        script_fail(f"max_batch_size={settings['max_batch_size']}: expected comma-separated integers, e.g. 32,1")
    return settings


def bodies(family: str, texts_file: str, n: int) -> list[dict]:
    """n request bodies for the run's family."""
    import random

    rng = random.Random(0)
    if family == "image_classification":
        return [{"input": [[rng.randrange(256) if 6 < r < 22 and 6 < c < 22 else 0 for c in range(28)] for r in range(28)]}
                for _ in range(min(n, 64))]
    if family == "language_model":
        return [{"input": "Once upon a time", "max_new_tokens": 16, "seed": i} for i in range(n)]
    texts: list[str] = []
    if Path(texts_file).is_file():
        with gzip.open(texts_file, "rt", encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                if len(texts) >= 500:
                    break
    if not texts:
        words = "the a film movie great awful plot actor story was boring wonderful".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))) for _ in range(500)]
    return [{"input": t} for t in texts]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


def start(settings: dict[str, Any], batch: int, port: int) -> subprocess.Popen:
    args = [sys.executable, str(REPO / "app/serve.py"), f"run={settings['run']}", f"port={port}",
            f"max_batch_size={batch}", f"batch_timeout={settings['batch_timeout']}", f"workers={settings['workers']}",
            f"backend={settings['backend']}", "max_inputs=64"]
    if settings["threads"]:
        args.append(f"threads={settings['threads']}")
    env = {k: v for k, v in os.environ.items() if k != "ATTNLAB_API_KEY"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    sys.exit(f"error: the server was not ready after {timeout:.0f} s")


async def drive(url: str, requests: list[dict], clients: int) -> tuple[list[float], int, float]:
    """Send the requests with `clients` concurrent clients; (latencies s, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for body in requests:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench(settings: dict[str, Any], batch: int, family: str) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start(settings, batch, port)
    try:
        wait_ready(proc, url)
        pool = bodies(family, settings["texts"], settings["requests"])
        requests = [pool[i % len(pool)] for i in range(settings["requests"])]
        asyncio.run(drive(url, requests[: settings["warmup"]], settings["clients"]))
        rss_start = rss_mb(proc.pid)
        latencies, errors, wall = asyncio.run(drive(url, requests, settings["clients"]))
        rss_end = rss_mb(proc.pid)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        calls = next((float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("attnlab_batch_requests_count")), 0.0)
        return {"max_batch_size": batch, "requests": len(requests), "clients": settings["clients"],
                "throughput_rps": round(len(requests) / wall, 1), "p50_ms": round(1000 * percentile(latencies, 50), 1),
                "p95_ms": round(1000 * percentile(latencies, 95), 1), "p99_ms": round(1000 * percentile(latencies, 99), 1),
                "mean_ms": round(1000 * statistics.fmean(latencies), 1), "errors": errors,
                "mean_batch_requests": round((len(requests) + settings["warmup"]) / calls, 2) if calls else None,
                "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
                "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1), "wall_s": round(wall, 1)}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    settings = parse(sys.argv[1:])
    from attnlab import runs
    from attnlab.serving.apis import family_of

    loaded = runs.load_model(settings["run"])
    family = family_of(loaded)
    del loaded
    print(f"# {family} run {settings['run']}; {settings['clients']} clients, {settings['requests']} requests; "
          f"backend {settings['backend']}, {settings['workers']} worker(s); CPU: {cpu_name()}", flush=True)
    results = [bench(settings, batch, family) for batch in settings["max_batch_size"]]
    print("| max_batch_size | req/s | p50 ms | p95 ms | p99 ms | errors | requests/batch | RSS start -> end MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['max_batch_size']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
              f"{r['errors']} | {r['mean_batch_requests']} | {r['rss_start_mb']} -> {r['rss_end_mb']} "
              f"({r['rss_growth_pct']:+.1f}%) |")
    if len(results) > 1:
        print(f"throughput ratio, max_batch_size={results[0]['max_batch_size']} over {results[-1]['max_batch_size']}: "
              f"{results[0]['throughput_rps'] / results[-1]['throughput_rps']:.2f}x")
    print(json.dumps({**results[0], "runs": results, "cpu": cpu_name()}))


if __name__ == "__main__":
    main()
