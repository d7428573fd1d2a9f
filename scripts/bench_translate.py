"""Translation decoding speed of a trained run: sentences/s for greedy and beam search at one batch size, with the
decoder's key/value cache and with the whole prefix recomputed at every step (same weights and outputs; checked).

The sentences are a test set's sources (default: the first), sorted by length into batches as app/translate.py does;
each figure is the median of `--rounds` timed passes over them, after one untimed pass.

    python scripts/bench_translate.py run=<run dir> [--set test_2016_flickr] [--batch 64] [--beams 1 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnlab import build, runs
from attnlab.models.decoding import beam_search, greedy


def batches(loaded: runs.LoadedRun, texts: list[str], size: int) -> list[torch.Tensor]:
    """Source id tensors (B, S) of similar-length sentences, padded, in app/translate.py's order."""
    ids = sorted(loaded.preprocess.encode_source(texts), key=len)
    out = []
    for i in range(0, len(ids), size):
        chunk = ids[i : i + size]
        src = torch.full((len(chunk), max(map(len, chunk))), loaded.facts["src_pad_id"], dtype=torch.long)
        for row, seq in enumerate(chunk):
            src[row, : len(seq)] = torch.tensor(seq)
        out.append(src)
    return out


def decode_all(loaded: runs.LoadedRun, srcs: list[torch.Tensor], beam: int, cache: bool) -> list[list[int]]:
    f = loaded.facts
    kw = dict(sos_id=f["sos_id"], eos_id=f["eos_id"], max_len=f["max_tgt_len"], cache=cache)
    out: list[list[int]] = []
    for src in srcs:
        if beam == 1:
            out += greedy(loaded.model, src, **kw)
        else:
            out += [h[0].tokens for h in beam_search(loaded.model, src, beam_size=beam, **kw)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run=<run dir> of a translation run")
    parser.add_argument("--set", default=None, help="test set whose sources are translated (default: the first)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ckpt", default="best")
    args = parser.parse_args()
    loaded = runs.load_model(args.run.removeprefix("run="), args.ckpt)
    datamodule = build.make_datamodule(loaded.cfg, artifacts=loaded.run_dir)
    name = args.set or loaded.facts["test_sets"][0]
    texts = datamodule.sources(name)
    srcs = batches(loaded, texts, args.batch)
    print(f"{loaded.run_dir.name}: {len(texts)} sentences of {name}, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'beam':>4}  {'cache':>5}  {'sentences/s':>11}  {'rounds (s)':>24}")
    for beam in args.beams:
        outputs = {}
        for cache in (True, False):
            outputs[cache] = decode_all(loaded, srcs, beam, cache)  # untimed: warms up, and kept to compare
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                decode_all(loaded, srcs, beam, cache)
                times.append(time.perf_counter() - start)
            rate = len(texts) / statistics.median(times)
            print(f"{beam:>4}  {str(cache):>5}  {rate:>11.1f}  {' '.join(f'{t:.2f}' for t in times):>24}", flush=True)
        same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
        print(f"      beam {beam}: cached and recomputed outputs agree on {same} of {len(texts)} sentences")


if __name__ == "__main__":
    main()
