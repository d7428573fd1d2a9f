"""Training throughput of tinystories_gpt at a GPU size on one CUDA device: tokens/s and model FLOPs utilisation (MFU).

The model is experiment=tinystories_gpt's GPT (rotary positions, SwiGLU, tied embedding; Muon + AdamW, cosine
schedule, gradient clipping) at GPT-2 small's shape (gpt_small: 12 layers x 768, 12 heads) with a context of 1024,
trained by Lightning in bf16-mixed precision as app/train.py builds it (trainer=gpu), with trackers, callbacks,
checkpoints and validation off: they are not the step being timed. It runs once eager and once with compile=true.
A step's time is the median over the steps after the warm-up (the warm-up holds the compilation).

MFU follows nanoGPT's estimate_mfu (PaLM, appendix B): 6 N + 12 L H Q T flops per token (N: the parameters without
the position table, the tied embedding counted once, as the output layer's matmul; L layers, H heads of size Q,
context T), against the GPU's dense bf16 peak from its data sheet (GPU_PEAK_TFLOPS=<number> overrides it).

    python scripts/gpu_bench.py --data-dir DIR [--steps 60] [--warmup 15] [--batch-size 16] [--max-len 1024]
    python scripts/gpu_bench.py --data-dir DIR --device cpu --model gpt_nano --max-len 64 ...  (a dry run of this script)
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
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from attnlab import build
from attnlab.config import conf_dir

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first name found in the GPU's wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0)]
MODES = {"eager": [], "compiled": ["compile=true"]}


class StepClock(Callback):
    """A timestamp at the end of every training step, once the GPU has finished it (not only queued it)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.stamps.append(time.perf_counter())


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and where the figure comes from (None: unknown)."""
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12, "GPU_PEAK_TFLOPS"
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{key} dense bf16, data sheet"
    return None, f"unknown peak for {name}: set GPU_PEAK_TFLOPS=<dense bf16 TFLOP/s>"


def flops_per_token(model: torch.nn.Module, context: int) -> tuple[float, int]:
    """nanoGPT's estimate 6 N + 12 L H Q T, and N."""
    n = sum(p.numel() for p in model.parameters())  # a tied tensor once
    if getattr(model, "pos", None) is not None:
        n -= model.pos.pos.numel()  # a table lookup, no matmul
    layers, heads = len(model.blocks), model.blocks[0].attn.n_heads
    head_size = model.tok_embed.embedding_dim // heads
    return 6 * n + 12 * layers * heads * head_size * context, n


def compose_cfg(args: argparse.Namespace, out_dir: Path, mode: str):
    overrides = [
        "experiment=tinystories_gpt",
        "trainer=gpu",
        f"model._target_=attnlab.models.gpt.{args.model}",
        f"data.max_len={args.max_len}",
        f"data.batch_size={args.batch_size}",
        f"paths.data_dir={args.data_dir}",
        f"paths.cache_dir={out_dir / 'cache'}",  # the tokenizer and token stream, made once for both modes
        f"paths.output_dir={out_dir / mode}",
        "tracker=none",
        "callbacks=none",
        "trainer.max_epochs=-1",  # as many passes over the windows as the steps need
        f"++trainer.max_steps={args.steps}",
        "++trainer.enable_checkpointing=false",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "task.sample_tokens=0",
        *(["trainer.accelerator=cpu"] if args.device == "cpu" else []),
        *MODES[mode],
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def timed_fit(cfg, warmup: int) -> tuple[float, torch.nn.Module]:
    """Median seconds per step after the warm-up, and the trained model."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, task = build.assemble(cfg)
    clock = StepClock()
    trainer = build.instantiate(cfg.trainer, "trainer", logger=False, callbacks=[clock])
    trainer.fit(task, datamodule=datamodule)
    steady = clock.stamps[warmup:]
    if len(steady) < 2:
        raise SystemExit(f"only {len(clock.stamps)} steps ran; raise --steps above --warmup {warmup} + 1")
    return statistics.median(b - a for a, b in zip(steady, steady[1:])), task.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding tinystories_sample/")
    parser.add_argument("--model", default="gpt_small", help="a builder in attnlab.models.gpt")
    parser.add_argument("--steps", type=int, default=60, help="training steps per mode, warm-up included")
    parser.add_argument("--warmup", type=int, default=15, help="steps not timed (compilation happens in them)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=1024, help="context length T")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("attnlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: torch sees no CUDA device; --device cpu runs this script on the CPU as a dry run")
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    peak, peak_source = peak_flops(device)
    tokens = args.batch_size * args.max_len

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            cfg = compose_cfg(args, Path(tmp), mode)
            start = time.perf_counter()
            step, model = timed_fit(cfg, args.warmup)
            results[mode] = step
            if len(results) == 1:
                per_token, n = flops_per_token(model, args.max_len)
                layers, heads = len(model.blocks), model.blocks[0].attn.n_heads
                print(f"{args.model}: {layers} layers x {model.tok_embed.embedding_dim}, {heads} heads, context "
                      f"{args.max_len}, vocabulary {model.tok_embed.num_embeddings}; N = {n / 1e6:.1f}M parameters; "
                      f"{per_token / 1e9:.3f} GFLOP a token (6N + 12 L H Q T)")
                print(f"batch {args.batch_size} x {args.max_len} = {tokens:,} tokens a step, {cfg.trainer.precision}, "
                      f"{cfg.optimizer._target_.rsplit('.', 1)[-1]}; {args.steps} steps a mode, the first "
                      f"{args.warmup} not timed; peak: {'%.0f TFLOP/s' % (peak / 1e12) if peak else '?'} ({peak_source})")
            achieved = per_token * tokens / step
            mfu = f"MFU {100 * achieved / peak:5.1f}%" if peak else "MFU n/a"
            print(f"  {mode:<9} {step * 1e3:8.1f} ms/step {tokens / step:12,.0f} tokens/s  {achieved / 1e12:7.1f} TFLOP/s  "
                  f"{mfu}   (whole fit {time.perf_counter() - start:.0f} s)", flush=True)
    if len(results) == 2:
        print(f"  compiled / eager: {results['eager'] / results['compiled']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
