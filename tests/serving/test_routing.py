"""attnlab.serving.routing: the seeded canary split and the response cache (LRU, keyed by version, options and the
input as the model reads it). The server end to end: tests/e2e/test_registry_cli.py."""

import numpy as np

from attnlab.serving.apis import Job
from attnlab.serving.routing import ResponseCache, Router, answer


def test_the_router_sends_a_seeded_share_to_the_canary():
    router = Router(main="x/2", canary="x/1", share=0.5, seed=0)
    draws = [router.choose() for _ in range(200)]
    assert 80 <= draws.count("x/1") <= 120
    again = Router(main="x/2", canary="x/1", share=0.5, seed=0)
    assert [again.choose() for _ in range(200)] == draws  # the same seed, the same split
    other = Router(main="x/2", canary="x/1", share=0.5, seed=1)
    assert [other.choose() for _ in range(200)] != draws
    tenth = Router(main="x/2", canary="x/1", share=0.1, seed=0)
    assert 100 <= [tenth.choose() for _ in range(2000)].count("x/1") <= 300
    assert {Router(main="x/2", share=0.5).choose() for _ in range(50)} == {"x/2"}  # no canary: all to the main one
    assert {Router(main="x/2", canary="x/1", share=1.0).choose() for _ in range(50)} == {"x/1"}


def test_cache_keys_are_the_version_the_options_and_the_input_as_the_model_reads_it():
    image = np.arange(784, dtype=np.uint8).reshape(1, 28, 28)
    key = ResponseCache.key
    assert key("x/1", {}, image) == key("x/1", {}, image.copy())  # pixels or a PNG: the same decoded array
    assert key("x/1", {}, image) != key("x/2", {}, image)
    assert key("x/1", {}, image) != key("x/1", {}, image.reshape(28, 28, 1))
    assert key("x/1", {"beam_size": 1, "x": 2}, "a") == key("x/1", {"x": 2, "beam_size": 1}, "a")
    assert key("x/1", {"beam_size": 1}, "a") != key("x/1", {"beam_size": 2}, "a")
    assert key("x/1", {}, "a ") != key("x/1", {}, "a")  # text is read as sent: no whitespace folding


def test_the_cache_evicts_the_least_recently_used_and_hands_out_copies():
    cache = ResponseCache(size=2)
    cache.put("a", {"label": "1"})
    cache.put("b", {"label": "2"})
    assert cache.get("a") == {"label": "1"}  # a is now the most recent
    cache.put("c", {"label": "3"})
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    got = cache.get("a")
    got["label"] = "changed"
    assert cache.get("a") == {"label": "1"}


def test_answer_computes_only_the_inputs_it_has_not_seen_and_keeps_their_order():
    calls = []

    def run_jobs(jobs):  # a stand-in model: doubles each number, and records what it was asked
        calls.append([list(job.items) for job in jobs])
        return [(job.single, [{"value": 2 * i} for i in job.items]) for job in jobs]

    cache = ResponseCache(size=10)
    first = answer([Job(items=[1, 2], single=False), Job(items=[3])], run_jobs, version="v", cache=cache)
    assert first == [(False, [{"value": 2}, {"value": 4}]), (True, [{"value": 6}])] and calls == [[[1, 2], [3]]]
    second = answer([Job(items=[2, 5, 1], single=False)], run_jobs, version="v", cache=cache)
    assert second == [(False, [{"value": 4}, {"value": 10}, {"value": 2}])] and calls[-1] == [[5]]
    answer([Job(items=[3])], run_jobs, version="v", cache=cache)
    assert len(calls) == 2  # all cached: the model is not called
    answer([Job(items=[3])], run_jobs, version="w", cache=cache)
    assert calls[-1] == [[3]]  # another version: its own entries
    assert answer([Job(items=[4])], run_jobs, version="v", cache=None) == [(True, [{"value": 8}])]
