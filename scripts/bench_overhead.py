"""Framework overhead: steady-state time per training step of attnlab vs a plain PyTorch loop.

Both sides train the same CNN (experiment=mnist_cnn) on the same batches with the same AdamW + one-cycle schedule
and weight-decay groups. The framework side is what `app/train.py` builds: composed config, task with its metrics
and logging, the default callbacks (checkpointing, early stopping, LR monitor, progress bar, summary, throughput)
and the history logger, driven by Lightning. Rounds alternate between the two so machine noise hits both; each round's
figure is its median step time, and the ratio of the medians over rounds is the result.

    python scripts/bench_overhead.py [--rounds 5] [--steps 60] [--warmup 10] [--data-dir ../shared/data]
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
from lightning.pytorch.callbacks import Callback

from attnlab import build
from attnlab.config import conf_dir
from attnlab.data.mnist import write_fake_mnist
from attnlab.optim import param_groups
from attnlab.tracking import HistoryLogger
from attnlab.train import _build_callbacks


class StepClock(Callback):
    """Timestamps at the end of every training batch."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def steady_step(stamps: list[float], warmup: int) -> float:
    """Median seconds per step after the warm-up: robust to the odd step another process preempts."""
    steady = stamps[warmup:]
    return statistics.median(b - a for a, b in zip(steady, steady[1:]))


def compose_cfg(data_dir: Path, out_dir: Path, steps: int, extra: list[str]):
    overrides = [
        "experiment=mnist_cnn",
        f"data.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "tracker=none",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",  # validation runs after the timed steps; the callbacks need its metric
        "trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def framework_round(cfg, steps: int, warmup: int, out_dir: Path) -> float:
    """One `trainer.fit` of `steps` batches, built exactly as app/train.py builds it."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build.assemble(cfg)
    clock = StepClock()
    trainer = build.instantiate(
        cfg.trainer, "trainer", logger=[HistoryLogger(out_dir / "history.csv")], callbacks=[*_build_callbacks(cfg), clock]
    )
    trainer.fit(task, datamodule=datamodule)
    assert len(clock.stamps) == steps, len(clock.stamps)
    return steady_step(clock.stamps, warmup)


def plain_round(cfg, steps: int, warmup: int) -> float:
    """The same model, batches, optimizer and schedule in a hand-written loop."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build.assemble(cfg)  # the same objects; only the loop differs
    datamodule.setup("fit")
    model = task.model
    model.train()
    optimizer = task.optimizer_factory(param_groups(model))
    scheduler = task.scheduler_factory(optimizer, total_steps=steps)["scheduler"]
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    stamps = []
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        stamps.append(time.perf_counter())
    return steady_step(stamps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60, help="training steps per round (warm-up included)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for both sides")
    parser.add_argument("--data-dir", default=os.environ.get("ATTNLAB_DATA_DIR"), help="folder holding mnist/")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        mnist = Path(args.data_dir) / "mnist" if args.data_dir else None
        if mnist is None or not (mnist / "train-images-idx3-ubyte.gz").is_file():
            mnist = write_fake_mnist(tmp_dir / "mnist", n_train=8192 + 5000, n_test=128)
            source = "synthetic MNIST-format images"
        else:
            source = str(mnist)
        cfg = compose_cfg(mnist, tmp_dir / "run", args.steps, args.override)
        plain, framework = [], []
        for r in range(args.rounds):
            plain.append(plain_round(cfg, args.steps, args.warmup))
            framework.append(framework_round(cfg, args.steps, args.warmup, tmp_dir))
            print(f"round {r + 1}: plain {plain[-1] * 1e3:7.2f} ms/step   attnlab {framework[-1] * 1e3:7.2f} ms/step", flush=True)

    p, f = statistics.median(plain), statistics.median(framework)
    print(f"\ndata: {source}; batch {cfg.data.batch_size}; torch threads {torch.get_num_threads()}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps ({args.warmup} warm-up)")
    print(f"median plain loop : {p * 1e3:.2f} ms/step")
    print(f"median attnlab    : {f * 1e3:.2f} ms/step")
    print(f"ratio attnlab / plain = {f / p:.3f}")


if __name__ == "__main__":
    main()
