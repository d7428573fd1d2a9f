"""Translate with a trained run: `python app/translate.py run=<run dir> text="A man is riding a bicycle."`, or
`input=<file> output=<file>` (one sentence a line, batched by length). Reads no training data."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.progress import track

from attnlab import runs
from attnlab.errors import ConfigError, DataError
from attnlab.models.decoding import Hypothesis, beam_search, greedy
from attnlab.tasks import task_name

log = logging.getLogger("attnlab")


def translate_texts(
    loaded: runs.LoadedRun,
    texts: list[str],
    *,
    beam_size: int = 5,
    n_best: int = 1,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[tuple[str, float | None]]]:
    """The n_best translations (text, score; greedy gives no score) of each text, in the input's order.

    Sentences are encoded as training encoded sources (a source over the model's max length is truncated, with a
    warning) and decoded in batches of similar length, so padding costs little and never changes a translation."""
    if beam_size < 1 or not 1 <= n_best <= beam_size or batch_size < 1:
        raise ConfigError(f"need beam_size >= 1, 1 <= n_best <= beam_size and batch_size >= 1; got beam_size="
                          f"{beam_size}, n_best={n_best}, batch_size={batch_size}")
    facts, pre, model = loaded.facts, loaded.preprocess, loaded.model
    ids = pre.encode_source(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    lengths = dict(sos_id=facts["sos_id"], eos_id=facts["eos_id"], max_len_a=max_len_a, max_len_b=max_len_b,
                   max_len=facts["max_tgt_len"])
    out: list[list[tuple[str, float | None]]] = [[] for _ in texts]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in track(batches, description="translating", disable=not progress):
        width = max(1, max(len(ids[i]) for i in batch))
        src = torch.full((len(batch), width), facts["src_pad_id"], dtype=torch.long)
        for row, i in enumerate(batch):
            src[row, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
        src = src.to(device)
        if beam_size == 1:
            results: list[list[Hypothesis | list[int]]] = [[h] for h in greedy(model, src, **lengths)]
        else:
            results = beam_search(model, src, beam_size=beam_size, n_best=n_best, alpha=alpha, **lengths)
        for i, hyps in zip(batch, results):
            out[i] = [(pre.decode_target(h.tokens), h.score) if isinstance(h, Hypothesis) else (pre.decode_target(h), None)
                      for h in hyps]
    return out


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"input file {path} does not exist (one source sentence a line)")
    return path.read_text(encoding="utf-8").splitlines()


def translate(cfg: DictConfig) -> list[list[tuple[str, float | None]]]:
    """Print (or write to `output`) the translations of `text` or of `input`'s lines; returns them."""
    if not cfg.get("run"):
        raise ConfigError('say which run translates: python app/translate.py run=<run dir> text="A man is riding a bicycle."')
    if bool(cfg.get("text")) == bool(cfg.get("input")):
        raise ConfigError('give one of text="<sentence>" or input=<file> (one sentence a line)')
    loaded = runs.load_model(cfg.run, str(cfg.ckpt))
    if not hasattr(loaded.preprocess, "decode_target"):
        raise ConfigError(f"{loaded.run_dir} is not a translation run (task {task_name(loaded.cfg)}); "
                          "pass a run of a translation experiment, e.g. experiment=multi30k_transformer")
    if cfg.get("device"):
        loaded.model.to(cfg.device)
    texts = [str(cfg.text)] if cfg.get("text") else _read_lines(Path(cfg.input).expanduser())
    task = loaded.cfg.task
    settings: dict[str, Any] = {k: cfg.get(k) if cfg.get(k) is not None else task.get(k, default)
                                for k, default in (("beam_size", 5), ("alpha", 0.6), ("max_len_a", 1.5), ("max_len_b", 10))}
    start = time.perf_counter()
    with torch.inference_mode():
        results = translate_texts(loaded, texts, n_best=int(cfg.n_best), batch_size=int(cfg.batch_size),
                                  progress=bool(cfg.get("input")), **settings)
    elapsed = time.perf_counter() - start
    log.info("%d sentences in %.2f s (%.1f sentences/s), beam %d, from %s", len(texts), elapsed,
             len(texts) / max(elapsed, 1e-9), settings["beam_size"], loaded.checkpoint.name)
    lines = [hyps[0][0] for hyps in results] if cfg.n_best == 1 else \
        [f"{k}\t{score:.4f}\t{text}" if score is not None else f"{k}\t\t{text}" for hyps in results for k, (text, score) in enumerate(hyps)]
    if cfg.get("output"):
        out = Path(cfg.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        log.info("wrote %s", out)
    else:
        for line in lines:
            print(line, flush=True)
    return results
