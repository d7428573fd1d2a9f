"""Sample text from a trained language model: `python app/generate.py run=<run dir> prompt="Once upon a time"`."""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from attnlab.errors import ConfigError
from attnlab.validate import load_run

log = logging.getLogger("attnlab")


def generate(cfg: DictConfig) -> list[str]:
    """Print `num_samples` continuations of `prompt` from a run's checkpoint; returns them."""
    if not cfg.get("run"):
        raise ConfigError('say which run to sample from: python app/generate.py run=<run dir> prompt="Once upon a time"')
    if cfg.max_new_tokens < 1 or cfg.num_samples < 1 or cfg.temperature < 0:
        raise ConfigError("max_new_tokens and num_samples must be >= 1 and temperature >= 0")
    _, _, task, ckpt_path = load_run(cfg.run, str(cfg.ckpt), cfg.get("data_dir"))
    if not hasattr(task, "sample") or task.tokenizer is None:
        raise ConfigError(f"{cfg.run} is not a language-model run (its task cannot sample text)")
    if cfg.get("device"):
        task.to(cfg.device)
    task.eval()
    start = time.perf_counter()
    texts = task.sample(
        [cfg.prompt] * cfg.num_samples, cfg.max_new_tokens, seed=cfg.seed, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, **({} if cfg.use_cache is None else {"use_cache": cfg.use_cache}),
    )
    elapsed = time.perf_counter() - start
    log.info("%d samples of up to %d new tokens from %s in %.2f s", len(texts), cfg.max_new_tokens, ckpt_path.name, elapsed)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}\n", flush=True)
    return texts
