"""Post-training quantisation of a language-model run: size on disk, validation perplexity and generation speed of
each method (attnlab.serving.quantize), side by side on the same checkpoint, windows and prompt.

    python scripts/quantize.py run=<run dir> [method=fp32,bf16,int8_dynamic,int8_all,int8_selective] [ckpt=best]
        [prompt="Once upon a time"] [new_tokens=64] [threads=2] [val_windows=64] [rounds=3]

Every method starts from a fresh `runs.load_model`. Perplexity: the first `val_windows` of the run's own validation
windows (its data module, rebuilt from config.yaml and the saved tokenizer). Speed: tokens/s of greedy decoding of
`new_tokens` tokens after `prompt` at batch 1 with torch.set_num_threads(threads), the median of `rounds` timed runs
after one warm-up; the models are held together and each round times them in turn, so a busy machine slows all
methods alike (bench_lm.py's interleaving). Writes <run>/quantize/report.json (one row per method, ratios against
fp32) and prints a markdown table. Speed ratios measured side by side carry over between machines; tokens/s do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnlab import build, runs
from attnlab.errors import AttnlabError, ConfigError
from attnlab.serving.quantize import check_method, count_int8, quantize, size_mb

log = logging.getLogger("quantize")
DEFAULTS: dict[str, Any] = {"run": None, "method": "fp32,bf16,int8_dynamic,int8_all,int8_selective", "ckpt": "best",
                            "prompt": "Once upon a time", "new_tokens": 64, "threads": 2, "val_windows": 64, "rounds": 3}


def parse(settings: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """key=value settings over DEFAULTS, each converted to its default's type."""
    args = dict(DEFAULTS)
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq or key not in DEFAULTS:
            parser.error(f"expected key=value with key one of {', '.join(DEFAULTS)}; got {item!r}")
        try:
            args[key] = type(DEFAULTS[key])(value) if DEFAULTS[key] is not None else value
        except ValueError:
            parser.error(f"{key}={value}: expected {type(DEFAULTS[key]).__name__}")
    if not args["run"]:
        parser.error("say which run to quantise: python scripts/quantize.py run=<run dir>")
    if min(args["new_tokens"], args["threads"], args["val_windows"], args["rounds"]) < 1:
        parser.error("new_tokens, threads, val_windows and rounds must be >= 1")
    return args


def validation_windows(run_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, int, Any]:
    """The first n of the run's validation windows, (x, y) each (n, max_len), its eval batch size and tokenizer."""
    from attnlab.data.corpus import TextCorpusDataModule

    cfg = runs.load_config(run_dir)
    datamodule = build.make_datamodule(cfg, artifacts=run_dir)
    if not isinstance(datamodule, TextCorpusDataModule):
        raise ConfigError(f"{run_dir}: its data is {type(datamodule).__name__}; scripts/quantize.py measures perplexity "
                          "on language-modelling text (TextCorpusDataModule runs such as experiment=tinystories_hf_gpt2)")
    datamodule.prepare_data()  # the token cache of training, or a re-encode of the data files where it is gone
    datamodule.setup("validate")
    windows = datamodule.datasets["val"]
    x, y = windows.__getitems__(list(range(min(n, len(windows)))))
    return x, y, datamodule.eval_batch_size, datamodule.tokenizer


@torch.no_grad()
def perplexity(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token cross-entropy) over windows x, y (N, T), as the task's val/ppl sums it (in fp32)."""
    device = next(model.parameters()).device
    nll = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))  # (B, T, V)
        nll += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + batch_size].flatten().to(device),
                               reduction="sum").item()
    return math.exp(nll / y.numel())


def measure(method: str, args: dict[str, Any], x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[dict, Any]:
    """A report row (size, perplexity) of the run loaded afresh and quantised, and the quantised model."""
    loaded = runs.load_model(args["run"], args["ckpt"])
    if loaded.tokenizer is None or not hasattr(loaded.model, "generate"):
        raise ConfigError(f"{loaded.run_dir} is not a language-model run: {type(loaded.model).__name__} cannot generate "
                          "text; pass a run trained with task=language_modeling (e.g. experiment=tinystories_hf_gpt2)")
    start = time.perf_counter()
    model = quantize(loaded.model, method)
    row: dict[str, Any] = {"method": method, "size_mb": round(size_mb(model), 3),
                           "quantize_s": round(time.perf_counter() - start, 2)}
    log.info("%s: quantised in %.1f s, %.2f MB; perplexity on %d validation windows", method, row["quantize_s"],
             row["size_mb"], len(x))
    row["val_ppl"] = round(perplexity(model, x, y, batch_size), 4)
    row.update(threads=args["threads"], int8_modules=count_int8(model), val_windows=len(x), new_tokens=args["new_tokens"],
               checkpoint=loaded.checkpoint.name, cpu=cpu_name())
    log.info("%s: val ppl %.3f", method, row["val_ppl"])
    return row, model


@torch.no_grad()
def time_generation(models: list[torch.nn.Module], rows: list[dict[str, Any]], ids: list[int], args: dict[str, Any]) -> None:
    """Greedy tokens/s at batch 1 of every model: one warm-up each, then `rounds` rounds that time every model in
    turn (machine noise hits all methods alike), the median per model; the warm-up's tokens go into its row."""
    n = args["new_tokens"]
    idx = [torch.tensor([ids], device=next(m.parameters()).device) for m in models]  # (1, T0) each
    for model, row, prompt in zip(models, rows, idx):
        row["tokens"] = model.generate(prompt, n, temperature=0)[0, len(ids) :].tolist()  # warm-up
    times: list[list[float]] = [[] for _ in models]
    for r in range(args["rounds"]):
        log.info("generation round %d of %d: %d tokens from each of %d models", r + 1, args["rounds"], n, len(models))
        for model, prompt, spent in zip(models, idx, times):
            start = time.perf_counter()
            model.generate(prompt, n, temperature=0)
            spent.append(time.perf_counter() - start)
    for row, spent in zip(rows, times):
        row["tokens_per_s"] = round(n / statistics.median(spent), 2)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Size, perplexity and speed of each row relative to fp32's, and how many greedy tokens match fp32's before
    the first that differs (when fp32 was measured)."""
    ref = next((r for r in rows if r["method"] == "fp32"), None)
    ref_tokens = ref["tokens"] if ref is not None else []
    for row in rows:
        tokens = row.pop("tokens")
        if ref is None:
            continue
        row["size_ratio"] = round(row["size_mb"] / ref["size_mb"], 4)
        row["ppl_ratio"] = round(row["val_ppl"] / ref["val_ppl"], 4)
        row["speedup"] = round(row["tokens_per_s"] / ref["tokens_per_s"], 3)
        row["greedy_agree"] = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(tokens))


def table(rows: list[dict[str, Any]]) -> str:
    """The report as a markdown table."""
    has_ref = "size_ratio" in rows[0]
    head = ["method", "size MB", "val ppl", "tokens/s", "int8 Linears"]
    head += ["size x", "ppl x", "speed x", "same greedy tokens"] if has_ref else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['size_mb']:.2f}", f"{r['val_ppl']:.3f}", f"{r['tokens_per_s']:.1f}", str(r["int8_modules"])]
        if has_ref:
            cells += [f"{r['size_ratio']:.3f}", f"{r['ppl_ratio']:.4f}", f"{r['speedup']:.2f}",
                      f"{r['greedy_agree']}/{r['new_tokens']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux): speed figures hold on a named CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="key=value: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    args = parse(parser.parse_args().settings, parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("attnlab").setLevel(logging.WARNING)
    methods = [m.strip() for m in args["method"].split(",") if m.strip()]
    if not methods:
        parser.error("method= names no method; e.g. method=fp32,int8_dynamic")
    try:
        for method in methods:
            check_method(method)  # unknown, or bitsandbytes without a GPU: say so before loading anything
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    try:
        run_dir = runs.require_run(args["run"])
        args["run"] = run_dir
        torch.set_num_threads(args["threads"])
        x, y, batch_size, tok = validation_windows(run_dir, args["val_windows"])
        measured = [measure(method, args, x, y, batch_size) for method in methods]
        rows, models = [row for row, _ in measured], [model for _, model in measured]
        time_generation(models, rows, [tok.eos_id, *tok.encode(args["prompt"])], args)
    except AttnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    add_ratios(rows)
    out = run_dir / "quantize" / "report.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{run_dir.name}, {rows[0]['checkpoint']}: {len(x)} validation windows of {x.size(1)} tokens; "
          f"{args['new_tokens']} greedy tokens at batch 1, threads={args['threads']}, {cpu_name()}\n")
    print(table(rows))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
