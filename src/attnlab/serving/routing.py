"""Which model version answers a request, and the response cache.

Router: `serve model=A canary=B canary_share=0.1` sends each request to B with probability 0.1, drawn from a
generator seeded with `canary_seed`, so the same requests in the same order go to the same versions (each worker
process draws from its own generator with that seed).

ResponseCache: an LRU of answers, one entry per input, keyed by the version, the request's options and the input as
the model reads it (an image sent as pixel lists or as a PNG is the same uint8 array, so the same entry). A hit is
the answer computed earlier for that key, so it equals an uncached answer; with `cache_size=0` (the default) it is off.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class Router:
    """The main version, or the canary for a seeded `share` of the requests."""

    def __init__(self, *, main: str, canary: str | None = None, share: float = 0.0, seed: int = 0) -> None:
        self.main, self.canary, self.share = main, canary, share if canary else 0.0
        self.rng = random.Random(seed)

    def choose(self) -> str:
        if self.canary is None:
            return self.main
        return self.canary if self.rng.random() < self.share else self.main


def _item_bytes(item: Any) -> bytes:
    """The input as the model reads it, as bytes: an array's dtype, shape and values; a text's UTF-8."""
    if hasattr(item, "tobytes") and hasattr(item, "shape"):
        return f"{item.dtype}{tuple(item.shape)}".encode() + item.tobytes()
    if isinstance(item, str):
        return item.encode("utf-8")
    return json.dumps(item, sort_keys=True, default=str).encode()


class ResponseCache:
    """Least-recently-used answers, at most `size` of them."""

    def __init__(self, *, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def key(version: str, options: dict[str, Any], item: Any) -> str:
        digest = hashlib.sha256(version.encode() + b"\0" + json.dumps(options, sort_keys=True, default=str).encode() + b"\0")
        digest.update(_item_bytes(item))
        return digest.hexdigest()

    def get(self, key: str) -> Any | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return copy.deepcopy(self.entries[key])  # the caller may change its copy; the entry stays as computed

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = copy.deepcopy(value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def answer(jobs: list[Any], run_jobs: Callable[[list[Any]], list[Any]], *, version: str,
           cache: ResponseCache | None) -> list[tuple[bool, list[Any]]]:
    """Each job's (single, outputs): cached inputs from the cache, the rest through run_jobs in one call."""
    if cache is None:
        return run_jobs(jobs)
    from attnlab.serving import metrics

    keys = [[cache.key(version, job.options, item) for item in job.items] for job in jobs]
    found = [[cache.get(k) for k in ks] for ks in keys]
    pending = [type(job)(items=[i for i, f in zip(job.items, fs) if f is None], options=job.options, single=False)
               for job, fs in zip(jobs, found)]
    computed = iter(run_jobs([p for p in pending if p.items]) if any(p.items for p in pending) else [])
    out = []
    for job, ks, fs, p in zip(jobs, keys, found, pending):
        fresh = iter(next(computed)[1]) if p.items else iter(())
        items = []
        for key, hit in zip(ks, fs):
            if hit is None:
                hit = next(fresh)
                cache.put(key, hit)
            items.append(hit)
        out.append((job.single, items))
    hits = sum(f is not None for fs in found for f in fs)
    misses = sum(len(fs) for fs in found) - hits
    metrics.CACHE.labels(version=version, result="hit").inc(hits)
    metrics.CACHE.labels(version=version, result="miss").inc(misses)
    return out
