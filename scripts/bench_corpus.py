"""Language-modelling data cost: tokenizer training, encode throughput, peak memory, and memory growth with corpus size.

    python scripts/bench_corpus.py [--vocab 4096] [--replicas 1 2 4] [--max-len 256] [--batch-size 64]

Each measurement runs TextCorpusDataModule with a fresh cache in its own process (peak RSS is per process). The
TinyStories sample is first measured as it is (tokenizer trained on all of it), then replicated k times into one
file with the trainer's sample capped at one copy's characters, so only the corpus grows: memory growth (peak RSS
minus RSS before setup) should stay flat while tokens and time grow k-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = "tinystories_sample/validation_head.txt.gz"


def _rss_mb() -> float:
    """Resident memory now (MB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One measurement; prints a JSON line."""
    from attnlab.data.corpus import TextCorpusDataModule
    from attnlab.data.tokenizers import BPETokenizer

    rss_before = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    dm = TextCorpusDataModule(cache_dir=args.cache, tokenizer=BPETokenizer(max_vocab=args.vocab), seed=0,
                              train_file=args.file, max_len=args.max_len, batch_size=args.batch_size,
                              tokenizer_train_chars=args.train_chars)
    dm.tokenizer  # noqa: B018 (trains it)
    tokenizer_s, tokenizer_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    dm.setup()
    encode_s, encode_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    warm = TextCorpusDataModule(cache_dir=args.cache, tokenizer=BPETokenizer(max_vocab=args.vocab), seed=0,
                                train_file=args.file, max_len=args.max_len, batch_size=args.batch_size,
                                tokenizer_train_chars=args.train_chars)
    warm.setup()
    warm_s = time.perf_counter() - start
    start, batches = time.perf_counter(), 0
    for _ in warm.train_dataloader():
        batches += 1
        if batches == 200:
            break
    batch_s = (time.perf_counter() - start) / batches
    splits = dm.meta["splits"]
    print(json.dumps({
        "text_mb": sum(s["bytes"] for s in splits.values()) / 1e6,
        "train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
        "tokenizer_s": tokenizer_s, "tokenizer_cpu_s": tokenizer_cpu_s, "encode_s": encode_s, "encode_cpu_s": encode_cpu_s,
        "encode_mb_per_s": dm.meta["encode_mb_per_s"], "warm_setup_s": warm_s, "batch_ms": 1000 * batch_s,
        "rss_before_mb": rss_before, "peak_rss_mb": peak, "growth_mb": peak - rss_before,
    }))


def measure(file: Path, train_chars: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, __file__, "--child", "--file", str(file), "--cache", cache, "--train-chars", str(train_chars),
               "--vocab", str(args.vocab), "--max-len", str(args.max_len), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    shared = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=shared / SAMPLE)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--train-chars", type=int, default=50_000_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from attnlab.data.sources import iter_documents, write_documents

    one = measure(args.sample, 50_000_000, args)
    print(f"sample {args.sample.name}, BPE {args.vocab}: {one['text_mb']:.2f} MB of text, train {one['train_tokens']:,} "
          f"tokens, val {one['val_tokens']:,} tokens")
    print(f"  tokenizer training {one['tokenizer_s']:.2f} s wall, {one['tokenizer_cpu_s']:.2f} s CPU (all threads)")
    print(f"  reading + encoding {one['encode_s']:.2f} s wall, {one['encode_cpu_s']:.2f} s CPU: "
          f"{one['text_mb'] / one['encode_s']:.1f} MB/s wall, {one['text_mb'] / one['encode_cpu_s']:.1f} MB per CPU-second "
          f"(encode_batch alone: {one['encode_mb_per_s']:.1f} MB/s wall)")
    print(f"  warm setup (cache hit) {one['warm_setup_s']:.3f} s; a batch of {args.batch_size}x{args.max_len} windows "
          f"{one['batch_ms']:.2f} ms; peak RSS {one['peak_rss_mb']:.0f} MB (+{one['growth_mb']:.0f} MB over "
          f"{one['rss_before_mb']:.0f} MB after imports)")
    chars = sum(len(d) for d in iter_documents(args.sample))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.replicas:
            file = Path(tmp) / f"x{k}.txt"
            write_documents(file, (d for _ in range(k) for d in iter_documents(args.sample)))
            rows.append((k, measure(file, chars, args)))
            file.unlink()
    base = rows[0][1]
    print(f"replicated corpus (tokenizer sample capped at {chars:,} characters, one copy):")
    print("   k  text MB     tokens  x tokens  MB/CPU-s  peak RSS MB  growth MB  x growth  token file MB")
    for k, r in rows:
        tokens = r["train_tokens"] + r["val_tokens"]
        print(f"{k:4d} {r['text_mb']:8.1f} {tokens:10,d} {tokens / (base['train_tokens'] + base['val_tokens']):9.2f} "
              f"{r['text_mb'] / r['encode_cpu_s']:9.1f} {r['peak_rss_mb']:12.0f} {r['growth_mb']:10.0f} "
              f"{r['growth_mb'] / base['growth_mb']:9.2f} {2 * tokens / 1e6:14.1f}")


if __name__ == "__main__":
    main()
