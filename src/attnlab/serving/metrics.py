"""The server's Prometheus metrics, shared by its HTTP and inference processes (prometheus_client multiprocess mode:
attnlab.serving.server sets PROMETHEUS_MULTIPROC_DIR before this module is first imported)."""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from starlette.requests import Request
from starlette.responses import Response

REQUESTS = Counter("attnlab_requests", "HTTP requests by path and status code", ["path", "status"])
LATENCY = Histogram("attnlab_request_seconds", "HTTP request latency until the last byte (seconds)", ["path"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_SIZE = Histogram("attnlab_batch_inputs", "Inputs the model ran together in one predict call",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_REQUESTS = Histogram("attnlab_batch_requests", "Requests LitServe batched into one predict call",
                           buckets=(1, 2, 4, 8, 16, 32, 64))

# By the model version that answered (`<name>/<version>` for a registered model, else the run's folder name).
MODEL_REQUESTS = Counter("attnlab_model_requests", "Requests answered, by model version", ["version"])
MODEL_SECONDS = Histogram("attnlab_model_seconds", "Seconds in the model for a request (its batch's time), by model version",
                          ["version"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PREDICTIONS = Counter("attnlab_predictions", "Predicted classes (classifiers), by model version", ["version", "label"])
CACHE = Counter("attnlab_cache", "Response cache lookups, one per input: result hit or miss, by model version",
                ["version", "result"])


async def endpoint(request: Request) -> Response:
    """GET /metrics: every process's values, summed."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
