"""`python app/serve.py run=<run dir>` or `model=models:/<name>@<alias>`: a trained run or a registered model behind
REST, on LitServe (FastAPI and uvicorn underneath). `canary=<second model> canary_share=0.1` answers a seeded share of
the requests with a second version of the same task; `cache_size=N` caches answers (attnlab.serving.routing).

    POST /predict   {"input": x} -> {"output": y}, {"inputs": [x, ...]} -> {"outputs": [y, ...]} (attnlab.serving.schemas)
    POST /stream    language models: the continuation as server-sent events (text/event-stream)
    GET  /health    200 "ok" once every worker has loaded and warmed up its model, 503 before
    GET  /info      the run (id, git commit, task, family, metrics, parameter count) and the server's settings
    GET  /metrics   Prometheus: requests by path and status, latency histogram, batch sizes; by model version
                    (label `version`): requests, model seconds, predicted classes, cache hits and misses
    GET  /docs      OpenAPI (Swagger UI), /openapi.json

The run is loaded once here before anything starts, so a missing, incomplete or unservable run stops the command
with one clear line; then LitServe starts `workers` inference processes (each loads the run again, warms up, and
batches requests: up to `max_batch_size` within `batch_timeout` seconds) and its HTTP server(s).

Security: binds to 127.0.0.1 unless told otherwise; with an API key (serve `api_key=` or ATTNLAB_API_KEY) every
endpoint but /health answers 401 without `Authorization: Bearer <key>`; bodies over `max_payload_bytes` get 413,
malformed or out-of-bounds inputs 422 with what is wrong.

Prometheus counters are shared by the HTTP and worker processes through prometheus_client's multiprocess mode: a
fresh PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is first imported (its value class is chosen then).
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from attnlab.errors import ConfigError
from attnlab.tasks import task_name

log = logging.getLogger("attnlab")

API_KEY_ENV = "ATTNLAB_API_KEY"
BACKENDS = ("torch", "onnx", "onnx_int8")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to
OPEN_PATHS = {"/health"}  # answered without the API key (load balancers and probes)


def _prometheus_dir() -> None:
    """A private multiprocess directory for this server, removed at exit."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    path = tempfile.mkdtemp(prefix="attnlab-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


class AuthMiddleware:
    """401 for a request without `Authorization: Bearer <key>` (constant-time comparison); /health stays open."""

    def __init__(self, app: Any, *, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                from starlette.responses import JSONResponse

                response = JSONResponse({"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestGuard:
    """Before a body reaches FastAPI: a JSON content type (415 otherwise), at most max_bytes (413), UTF-8 (400). FastAPI
    would read a form-encoded body (curl -d's default) as one string, and fail on broken UTF-8 with a 500 or a vague
    400."""

    def __init__(self, app: Any, *, paths: tuple[str, ...], max_bytes: int) -> None:
        self.app, self.paths, self.max_bytes = app, set(paths), max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        def refuse(status: int, detail: str) -> Any:
            return JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)

        ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            await refuse(415, f"send a JSON body with the header 'Content-Type: application/json' (got "
                              f"{ctype.decode(errors='replace') or 'none'})")
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await refuse(413, f"the body is over {self.max_bytes:,} bytes (serve.max_payload_bytes)")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await refuse(413, f"the body is over {self.max_bytes:,} bytes (serve.max_payload_bytes)")
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            await refuse(400, f"the body is not UTF-8 text (byte {err.start}); send JSON encoded as UTF-8")
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def validation_error(request: Any, exc: Any) -> Any:
    """422 with where and what, without echoing the input back (it may be megabytes, or not encodable)."""
    from starlette.responses import JSONResponse

    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")).removeprefix("Value error, ")}
              for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


class MetricsMiddleware:
    """Counts every HTTP request by path and status and times it (until its last byte, streams included); a
    server-sent-event stream is labelled text/event-stream."""

    def __init__(self, app: Any, *, paths: tuple[str, ...]) -> None:
        self.app, self.paths = app, set(paths)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from attnlab.serving import metrics

        path = scope["path"] if scope["path"] in self.paths else "other"  # bounded label values
        start, status = time.perf_counter(), 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if scope["path"] == "/stream" and status == 200:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-type"]
                    message = {**message, "headers": [*headers, (b"content-type", b"text/event-stream; charset=utf-8")]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.REQUESTS.labels(path=path, status=str(status)).inc()
            metrics.LATENCY.labels(path=path).observe(time.perf_counter() - start)


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """The serve config, checked: bad values stop the command with the fix."""
    if not cfg.get("run") and not cfg.get("model_uri"):
        raise ConfigError("say which run to serve: python app/serve.py run=<run dir>   or   model=models:/<name>@<alias>")
    if cfg.get("run") and cfg.get("model_uri"):
        raise ConfigError(f"run={cfg.run} and model={cfg.model_uri} both given; serve one (model= takes a run directory too)")
    if not 0.0 <= float(cfg.canary_share) <= 1.0:
        raise ConfigError(f"canary_share={cfg.canary_share}: the share of requests the canary answers, from 0 to 1")
    if cfg.get("canary") and cfg.backend != "torch":
        raise ConfigError(f"canary= runs on backend=torch; backend={cfg.backend} serves one exported model")
    if int(cfg.cache_size) < 0:
        raise ConfigError(f"cache_size must be >= 0 (0: no response cache), got {cfg.cache_size}")
    if cfg.host not in HOSTS:
        raise ConfigError(f"host={cfg.host!r}: choose one of {', '.join(HOSTS)} (127.0.0.1, the default, is this machine only)")
    if not 1024 <= int(cfg.port) <= 65535:
        raise ConfigError(f"port={cfg.port}: choose a port from 1024 to 65535")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {cfg.backend!r}; choose one of: {', '.join(BACKENDS)}")
    for key in ("max_batch_size", "sub_batch", "workers", "max_inputs", "max_new_tokens", "max_beams", "max_text_chars",
                "max_payload_bytes"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if float(cfg.batch_timeout) < 0 or float(cfg.timeout) <= 0:
        raise ConfigError("batch_timeout must be >= 0 and timeout > 0 (seconds)")
    api_key = cfg.get("api_key") or os.environ.get(API_KEY_ENV) or None
    threads = int(cfg.threads) if cfg.get("threads") else max(1, (os.cpu_count() or 1) // int(cfg.workers))
    return {"api_key": api_key, "threads": threads}


def inspect_run(run: str, ckpt: str, *, store: str | None = None) -> dict[str, Any]:
    """Load the run or registered model once (every error a clear RunError/ConfigError) and describe it for /info."""
    from attnlab import runs
    from attnlab.runs import registry
    from attnlab.serving.apis import family_of

    loaded = runs.load_model(run, ckpt, store=store)
    family = family_of(loaded)
    manifest = runs.read_json(loaded.run_dir / runs.MANIFEST) if (loaded.run_dir / runs.MANIFEST).is_file() else {}
    metrics = runs.read_json(loaded.run_dir / runs.METRICS) if (loaded.run_dir / runs.METRICS).is_file() else {}
    git = manifest.get("git") or {}
    info = {
        "run_id": (registry.source_of(loaded.run_dir) or {}).get("run") or loaded.run_dir.name, "run_dir": str(loaded.run_dir),
        "version": registry.label(loaded.run_dir), "registered": registry.source_of(loaded.run_dir),
        "checkpoint": loaded.checkpoint.name,
        "family": family, "task": task_name(loaded.cfg),
        "model": str(loaded.cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
        "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
        "metrics": runs.finite_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "class_names": loaded.facts.get("class_names"),
    }
    image = {}
    if family == "image_classification":
        image = {"channels": int(loaded.preprocess.channels), "image_size": int(loaded.preprocess.image_size)}
    return {"info": info, "image": image}


def _canary(cfg: DictConfig, main: dict[str, Any], *, store: str | None) -> dict[str, Any]:
    """The canary, loaded and checked to do the main model's task (family, classes, image size): a distilled
    student (DistillationTask) can be the canary of its teacher (ClassificationTask)."""
    other = inspect_run(str(cfg.canary), "best", store=store)
    mine, theirs = main["info"], other["info"]
    what = ("family", "class_names")
    if any(mine[k] != theirs[k] for k in what) or main["image"] != other["image"]:
        differ = "; ".join(f"{k}: {mine[k]} here, {theirs[k]} in the canary" for k in what if mine[k] != theirs[k])
        raise ConfigError(f"canary={cfg.canary} does another task than the main model ({differ or 'image size'}); a canary "
                          "is another version of the same task")
    if theirs["run_dir"] == mine["run_dir"]:
        raise ConfigError(f"canary={cfg.canary} is the main model itself ({mine['version']}); name another version")
    return {k: theirs[k] for k in ("version", "run_id", "run_dir", "registered", "metrics")}


def build_server(cfg: DictConfig) -> Any:
    """The LitServer for cfg (conf/serve.yaml), not yet running."""
    settings = _settings(cfg)
    _prometheus_dir()
    import litserve as ls

    from attnlab.serving import metrics, schemas
    from attnlab.serving.apis import FAMILIES, Settings, StreamAPI

    store = cfg.get("store") or None
    run = inspect_run(str(cfg.get("model_uri") or cfg.run), str(cfg.ckpt), store=store)
    info, family = run["info"], run["info"]["family"]
    canary = _canary(cfg, run, store=store) if cfg.get("canary") else None
    if cfg.backend != "torch":
        if family not in ("text_classification", "image_classification"):
            raise ConfigError(f"backend={cfg.backend} serves classifiers; a {family} run decodes step by step with its "
                              "own generate loop (and KV cache), which the ONNX export leaves out: use backend=torch")
        onnx_file = Path(info["run_dir"]) / "export" / ("model.int8.onnx" if cfg.backend == "onnx_int8" else "model.onnx")
        if not onnx_file.is_file():
            raise ConfigError(f"backend={cfg.backend} needs {onnx_file}: run python scripts/export.py "
                              f"run={info['run_dir']} format=onnx" + (" quantize=int8" if cfg.backend == "onnx_int8" else ""))
    limits = schemas.Limits(max_text_chars=int(cfg.max_text_chars), max_inputs=int(cfg.max_inputs),
                            max_new_tokens=int(cfg.max_new_tokens), max_beams=int(cfg.max_beams), **run["image"])
    schemas.LIMITS = limits  # the HTTP processes fork from this one
    worker = Settings(run_dir=info["run_dir"], ckpt=str(cfg.ckpt), backend=str(cfg.backend),
                      threads=settings["threads"], sub_batch=int(cfg.sub_batch), limits=limits, version=info["version"],
                      canary_dir=canary["run_dir"] if canary else None, canary_version=canary["version"] if canary else "",
                      canary_share=float(cfg.canary_share), canary_seed=int(cfg.canary_seed), cache_size=int(cfg.cache_size))
    apis = [FAMILIES[family](worker, max_batch_size=int(cfg.max_batch_size), batch_timeout=float(cfg.batch_timeout))]
    if family == "language_model":
        apis.append(StreamAPI(worker, api_path="/stream", stream=True))
    middlewares: list[Any] = [(RequestGuard, {"paths": ("/predict", "/stream"), "max_bytes": int(cfg.max_payload_bytes)})]
    if settings["api_key"]:
        middlewares.append((AuthMiddleware, {"api_key": settings["api_key"]}))
    paths = ("/predict", "/stream", "/health", "/info", "/metrics")
    middlewares.append((MetricsMiddleware, {"paths": paths}))  # added last: the outermost, so it sees 401s too
    server_info = {**info, "backend": str(cfg.backend), "max_batch_size": int(cfg.max_batch_size),
                   "batch_timeout": float(cfg.batch_timeout), "workers": int(cfg.workers),
                   "threads_per_worker": settings["threads"], "api_key": bool(settings["api_key"]), "endpoints": ["/predict", *(["/stream"] if len(apis) > 1 else [])],
                   "canary": canary, "canary_share": float(cfg.canary_share) if canary else 0.0,
                   "cache_size": int(cfg.cache_size)}
    server = ls.LitServer(apis if len(apis) > 1 else apis[0], accelerator="cpu" if cfg.get("device") in (None, "cpu") else "auto",
                          workers_per_device=int(cfg.workers), timeout=float(cfg.timeout), model_metadata=server_info,
                          middlewares=middlewares)  # RequestGuard limits the body (LitServe's limit would answer 500 behind it)
    server.app.add_api_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=True)
    from fastapi.exceptions import RequestValidationError

    server.app.add_exception_handler(RequestValidationError, validation_error)
    server.attnlab_info = server_info
    return server


def serve(cfg: DictConfig) -> None:
    """Build the server and run it until interrupted (Ctrl+C)."""
    server = build_server(cfg)
    info = server.attnlab_info
    canary = f" and {info['canary']['version']} on {info['canary_share']:.0%} of requests" if info["canary"] else ""
    log.info("serving %s%s (%s, %s) on http://%s:%d  (POST %s; GET /health /info /metrics /docs)%s%s", info["version"],
             canary, info["family"], info["model"], cfg.host, int(cfg.port), " ".join(info["endpoints"]),
             f"; response cache of {info['cache_size']}" if info["cache_size"] else "",
             "; API key required" if info["api_key"] else "")
    server.run(host=str(cfg.host), port=int(cfg.port), generate_client_file=False, log_level=str(cfg.log_level),
               num_api_servers=int(cfg.api_servers) if cfg.get("api_servers") else None)
