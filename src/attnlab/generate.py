"""Sample text from a trained language model: `python app/generate.py run=<run dir> prompt="Once upon a time"`."""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from attnlab import runs
from attnlab.errors import ConfigError
from attnlab.tasks import task_name
from attnlab.tasks.language_modeling import checked_samples

log = logging.getLogger("attnlab")


def generate(cfg: DictConfig) -> list[str]:
    """Print `num_samples` continuations of `prompt` from a run's checkpoint; returns them. Reads no data."""
    if not cfg.get("run"):
        raise ConfigError('say which run to sample from: python app/generate.py run=<run dir> prompt="Once upon a time"')
    if cfg.max_new_tokens < 1 or cfg.num_samples < 1 or cfg.temperature < 0:
        raise ConfigError("max_new_tokens and num_samples must be >= 1 and temperature >= 0")
    loaded = runs.load_model(cfg.run, str(cfg.ckpt))
    if hasattr(loaded.preprocess, "prompt"):  # a summarisation run: its prompt template, then HF generate
        return _summaries(cfg, loaded)
    if loaded.tokenizer is None or not hasattr(loaded.model, "generate"):
        raise ConfigError(
            f"{loaded.run_dir} is not a language-model run: its model ({type(loaded.model).__name__}, task "
            f"{task_name(loaded.cfg)}) cannot generate text; pass a run trained with "
            "task=language_modeling (e.g. experiment=tinystories_gpt)"
        )
    model = loaded.model.to(cfg.device) if cfg.get("device") else loaded.model
    start = time.perf_counter()
    texts = checked_samples(
        model, loaded.tokenizer, [cfg.prompt] * cfg.num_samples, cfg.max_new_tokens, seed=cfg.seed,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        **({} if cfg.use_cache is None else {"use_cache": cfg.use_cache}),
    )
    elapsed = time.perf_counter() - start
    log.info("%d samples of up to %d new tokens from %s in %.2f s", len(texts), cfg.max_new_tokens, loaded.checkpoint.name, elapsed)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{text}\n", flush=True)
    return texts


def _summaries(cfg: DictConfig, loaded: runs.LoadedRun) -> list[str]:
    """`prompt` summarised by a summarisation run: greedy (temperature=0 or top_p=null), beam search (num_beams > 1)
    or nucleus sampling (top_p with temperature), as the task generates at test time."""
    import torch

    from attnlab.tasks.summarization import summarize_texts

    sampling = cfg.top_p is not None and cfg.temperature > 0
    facts = loaded.facts
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    texts = summarize_texts(loaded.model, loaded.preprocess, [cfg.prompt] * (cfg.num_samples if sampling else 1),
                            max_new_tokens=min(cfg.max_new_tokens, facts["max_summary_len"]), eos_id=facts["eos_id"],
                            pad_id=facts["pad_id"], num_beams=cfg.num_beams, top_p=cfg.top_p if sampling else None,
                            temperature=cfg.temperature if sampling else 1.0)
    log.info("%d summaries from %s in %.2f s", len(texts), loaded.checkpoint.name, time.perf_counter() - start)
    for i, text in enumerate(texts):
        print(f"--- summary {i + 1} ---\n{text}\n", flush=True)
    return texts
