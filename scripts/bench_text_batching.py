"""What batching buys a text classifier on its own, without a server: ms per review for the run's model on real reviews
one at a time, in one padded batch, and in length-sorted chunks (what `app/serve.py` does with `sub_batch`); a
recurrent model each way on both of its paths, torch's PackedSequence and the padded one (`model.packed`).

    python scripts/bench_text_batching.py run=<text classification run> [reviews=32] [chunk=8] [threads=2] [rounds=3]
        [texts=../shared/data/imdb/test.jsonl.gz]

Each figure is the mean over `rounds` timed passes after one warm-up, the three ways timed in turn every round.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attnlab import runs
from attnlab.cli import script_fail, script_settings

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {"run": None, "reviews": 32, "chunk": 8, "threads": 2, "rounds": 3,
            "texts": str(REPO.parent / "shared/data/imdb/test.jsonl.gz")}


def main() -> None:
    settings = script_settings(sys.argv[1:], DEFAULTS, usage="python scripts/bench_text_batching.py run=<text run>")
    n, chunk, rounds = settings["reviews"], settings["chunk"], settings["rounds"]
    torch.set_num_threads(settings["threads"])
    loaded = runs.load_model(settings["run"])
    pre, model = loaded.preprocess, loaded.model
    if not hasattr(pre, "clean"):
        script_fail(f"{settings['run']} is not a text classification run")
    with gzip.open(settings["texts"], "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(n))]
    lengths = [len(ids) for ids in pre.tokenizer.encode_batch([pre.clean(t) for t in texts])]
    ordered = [t for _, t in sorted(zip(lengths, texts), key=lambda p: p[0])]
    ways = {
        "one at a time": lambda: [model(**pre([t])) for t in texts],
        f"one padded batch of {n}": lambda: model(**pre(texts)),
        f"length-sorted chunks of {chunk}": lambda: [model(**pre(ordered[i : i + chunk])) for i in range(0, n, chunk)],
    }
    if hasattr(model, "packed"):  # a recurrent model: each way on both paths (PackedSequence or padded)
        ways = {f"{name}, {'packed' if packed else 'padded'}": _on_path(model, packed, way)
                for name, way in ways.items() for packed in (False, True)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                if r:  # round 0 warms up
                    times[name].append((time.perf_counter() - start) / n * 1000)
    widths = [pre([t])["input_ids"].shape[1] for t in texts]
    print(f"{settings['run']}: {n} reviews, {statistics.fmean(widths):.0f} tokens on average (longest {max(widths)}), "
          f"{settings['threads']} threads")
    base = statistics.fmean(next(iter(times.values())))
    for name, values in times.items():
        print(f"  {name:42s} {statistics.fmean(values):7.1f} ms a review  ({base / statistics.fmean(values):.2f}x)")


def _on_path(model: torch.nn.Module, packed: bool, way):
    """`way` with the recurrent model's `packed` switch set for its duration."""
    def run():
        before, model.packed = model.packed, packed
        try:
            return way()
        finally:
            model.packed = before
    return run


if __name__ == "__main__":
    main()
