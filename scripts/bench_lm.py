"""Language-model speed: attnlab's training step against a plain PyTorch loop, and generation with / without KV cache.

Training: both sides train the same GPT (experiment=tinystories_gpt) on the same token windows with the same AdamW,
schedule and weight-decay groups; the framework side is what `app/train.py` builds (task with its metrics and
logging, default callbacks, history logger, Lightning's loop). Rounds alternate between the two so machine noise
hits both; a round's figure is its median step time, the result the ratio of tokens/s (framework / plain) over the
medians of the rounds. Modes: fp32, bf16 autocast, and either with torch.compile.

Generation: tokens/s of `GPT.generate` for `--new-tokens` new tokens with the KV cache and with full recomputation
of the context at every step (same weights, greedy, so both produce the same tokens; checked).

    python scripts/bench_lm.py [--modes fp32 bf16 compile] [--rounds 5] [--steps 40] [--warmup 8] [--new-tokens 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from attnlab import build
from attnlab.config import conf_dir
from attnlab.data.corpus import write_fake_corpus
from attnlab.optim import param_groups
from bench_overhead import framework_round, steady_step  # scripts/ is on sys.path when a script in it runs

MODES = {  # mode -> config overrides (both sides)
    "fp32": [],
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["compile=true"],
    "bf16+compile": ["trainer.precision=bf16-mixed", "compile=true"],
}


def compose_cfg(data_dir: Path, out_dir: Path, steps: int, extra: list[str]):
    overrides = [
        "experiment=tinystories_gpt",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "tracker=none",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",  # validation runs after the timed steps; the callbacks need its metric
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "task.sample_tokens=0",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def plain_round(cfg, steps: int, warmup: int) -> float:
    """The same model (compiled if the mode says so), windows, optimizer and schedule in a hand-written loop."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build.assemble(cfg)  # the same objects; only the loop differs
    datamodule.setup("fit")
    model = task.model
    model.train()
    optimizer = task.optimizer_factory(param_groups(model))
    scheduler = task.scheduler_factory(optimizer, total_steps=steps)["scheduler"]
    clip = cfg.trainer.gradient_clip_val
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    stamps = []
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        stamps.append(time.perf_counter())
    return steady_step(stamps, warmup)


def bench_training(data_dir: Path, tmp_dir: Path, mode: str, args: argparse.Namespace) -> tuple[float, float, int]:
    cfg = compose_cfg(data_dir, tmp_dir / mode, args.steps, MODES[mode] + args.override)
    tokens = cfg.data.batch_size * cfg.data.max_len
    plain, framework = [], []
    for r in range(args.rounds):
        plain.append(plain_round(cfg, args.steps, args.warmup))
        framework.append(framework_round(cfg, args.steps, args.warmup, tmp_dir))
        print(f"  {mode} round {r + 1}: plain {tokens / plain[-1]:8.0f} tok/s   attnlab {tokens / framework[-1]:8.0f} tok/s",
              flush=True)
    return tokens / statistics.median(plain), tokens / statistics.median(framework), tokens


@torch.no_grad()
def bench_generation(data_dir: Path, tmp_dir: Path, args: argparse.Namespace) -> None:
    cfg = compose_cfg(data_dir, tmp_dir / "gen", args.steps, args.override)
    L.seed_everything(cfg.seed, verbose=False)
    _, task = build.assemble(cfg)
    model = task.model.eval()
    prompt = torch.randint(0, model.vocab_size if hasattr(model, "vocab_size") else 100, (1, 8),
                           generator=torch.Generator().manual_seed(0))
    n = min(args.new_tokens, cfg.data.max_len - prompt.size(1))
    results = {}
    for use_cache in (True, False):
        times, out = [], None
        for _ in range(args.gen_rounds):
            start = time.perf_counter()
            out = model.generate(prompt, n, temperature=0.0, use_cache=use_cache)
            times.append(time.perf_counter() - start)
        results[use_cache] = (n / statistics.median(times), out)
    same = torch.equal(results[True][1], results[False][1])
    cached, full = results[True][0], results[False][0]
    print(f"\ngeneration, {n} new tokens after an 8-token prompt, batch 1, greedy ({args.gen_rounds} rounds, median):")
    print(f"  KV cache        : {cached:8.1f} tokens/s")
    print(f"  recomputation   : {full:8.1f} tokens/s")
    print(f"  speed-up = {cached / full:.2f}x   identical tokens: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="*", default=["fp32", "bf16", "compile"], choices=list(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="training steps per round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--gen-rounds", type=int, default=3)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for both sides")
    parser.add_argument("--data-dir", default=os.environ.get("ATTNLAB_DATA_DIR"), help="folder holding tinystories_sample/")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("attnlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        data_dir = Path(args.data_dir) if args.data_dir else None
        if data_dir is None or not (data_dir / "tinystories_sample").is_dir():
            data_dir = tmp_dir / "data"
            (data_dir / "tinystories_sample").mkdir(parents=True)
            write_fake_corpus(data_dir / "tinystories_sample" / "validation_head.txt.gz", n_docs=4000)
            print("data: generated stories (no tinystories_sample under --data-dir)")
        else:
            print(f"data: {data_dir / 'tinystories_sample'}")
        print(f"torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds of {args.steps} steps "
              f"({args.warmup} warm-up) per mode\n")
        rows = []
        for mode in args.modes:
            plain, framework, tokens = bench_training(data_dir, tmp_dir, mode, args)
            rows.append((mode, plain, framework))
        print(f"\ntraining tokens/s (batch of {tokens} tokens, median over rounds):")
        print(f"  {'mode':<14}{'plain':>10}{'attnlab':>10}{'ratio':>8}")
        for mode, plain, framework in rows:
            print(f"  {mode:<14}{plain:>10.0f}{framework:>10.0f}{framework / plain:>8.3f}")
        base = rows[0][2]
        for mode, _, framework in rows[1:]:
            print(f"  attnlab {mode} / {rows[0][0]} = {framework / base:.2f}x")
        if args.new_tokens > 0:
            bench_generation(data_dir, tmp_dir, args)


if __name__ == "__main__":
    main()
