"""Text data speed: tokenizer training, encode throughput (cold cache), cache-hit start-up, and one epoch of batching.

    python scripts/bench_text_data.py [--tokenizer word|char|bpe|gpt2] [--max-len 400] [--batch-size 64]

Runs the IMDB data module as training does, with a fresh cache in a temporary folder; no model is involved, so
the epoch figure is the data side's whole cost per epoch (compare it with a training epoch's time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from attnlab.data.imdb import IMDBDataModule
from attnlab.data.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, WordTokenizer


def main() -> None:
    data_dir = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", choices=("word", "char", "bpe", "gpt2"), default="word")
    parser.add_argument("--max-len", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=data_dir)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = {"word": WordTokenizer(), "char": CharTokenizer(), "bpe": BPETokenizer(),
              "gpt2": GPT2Tokenizer(vocab_dir=str(args.data_dir / "gpt2_tokenizer"))}[args.tokenizer]
    result = {"tokenizer": args.tokenizer, "max_len": args.max_len, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as cache:
        make = lambda **kw: IMDBDataModule(data_dir=str(args.data_dir / "imdb"), cache_dir=cache, tokenizer=recipe,  # noqa: E731
                                           seed=0, max_len=args.max_len, truncation="head_tail", batch_size=args.batch_size, **kw)
        start = time.perf_counter()
        dm = make()
        dm.prepare_data()
        result["cold_prepare_s"] = round(time.perf_counter() - start, 2)
        meta = json.loads(next(Path(cache).glob("encoded-*/meta.json")).read_text())
        result["encode"] = meta["splits"]
        start = time.perf_counter()
        dm = make()
        dm.prepare_data()
        dm.setup()
        result["warm_setup_s"] = round(time.perf_counter() - start, 2)
        for bucket in (True, False):
            loader = make(bucket=bucket)
            loader.setup()
            start, tokens, padded = time.perf_counter(), 0, 0
            for inputs, _ in loader.train_dataloader():
                tokens += int(inputs["attention_mask"].sum())
                padded += inputs["input_ids"].numel()
            key = "bucketed" if bucket else "random"
            result[f"epoch_{key}_s"] = round(time.perf_counter() - start, 2)
            result[f"epoch_{key}_padding"] = round(1 - tokens / padded, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
