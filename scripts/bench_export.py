"""Latency of a run's model in PyTorch eager against its ONNX export in onnxruntime, fp32 and int8, side by side.

    python scripts/bench_export.py run=<run dir> [batch=1,32] [rounds=20] [threads=2] [length=0]

Needs the run's export with its int8 file (python scripts/export.py run=<run dir> format=onnx quantize=int8). Inputs
are what export's check feeds (attnlab.serving.export.sample_inputs): normalised images, or for text a batch at a
fixed length (`length`; 0: 256, or the run's max_len if shorter; a language model: its max_len) whose rows after
the first have random shorter real lengths, padded and masked, as a server's batches are. After one warm-up call
each, every round times one call of each backend in turn, so load on the machine hits all of them alike; the
median milliseconds per batch are reported with the speed-up over eager (eager ms / backend ms). torch and
onnxruntime get the same thread count. Prints a markdown table and, last, one JSON line; absolute times hold on the
CPU named with them, ratios measured side by side carry over better. The 1-minute load average at the start is
stated too: with the cores busy, torch's threads wait on one another at every parallel region (here, load 4 on 2
cores, a tiny BiLSTM took 2130 ms a batch of 32 at threads=2 against 8.6 at threads=1), so compare at threads=1 there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from attnlab.cli import script_fail, script_settings, time_rounds

DEFAULTS: dict[str, Any] = {"run": None, "batch": "1,32", "rounds": 20, "threads": 2, "length": 0}
TEXT_LENGTH = 256  # a typical review's length in tokens (IMDB's median is about 230 words)
BACKENDS = ("eager", "ort_fp32", "ort_int8")
log = logging.getLogger("bench_export")


def parse(settings: list[str]) -> dict[str, Any]:
    """key=value settings over DEFAULTS, each converted to its default's type; batch is a comma-separated list."""
    args = script_settings(settings, DEFAULTS, usage="python scripts/bench_export.py run=<run dir>")
    try:
        args["batch"] = [int(b) for b in str(args["batch"]).split(",") if b.strip()]
    except ValueError:
        script_fail(f"batch={args['batch']}: expected comma-separated integers, e.g. batch=1,32")
    if not args["batch"] or min(args["batch"]) < 1 or min(args["rounds"], args["threads"]) < 1 or args["length"] < 0:
        script_fail("batch sizes, rounds and threads must be >= 1, length >= 0")
    return args


def cpu() -> dict[str, Any]:
    """The CPU's model name and its vector extensions (lscpu; /proc/cpuinfo where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {"model": name, "avx512": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx2": "avx2" in flags, "avx_vnni": "avx_vnni" in flags}


def bench(args: dict[str, Any]) -> dict[str, Any]:
    """Every batch size's median ms of each backend and their speed-ups over eager."""
    import torch

    from attnlab.runs import load_model, require_run
    from attnlab.serving.export import IMAGE, LM, sample_inputs
    from attnlab.serving.onnx_model import OnnxModel

    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args["threads"])
    run = require_run(args["run"])
    ort32, ort8 = OnnxModel(run, threads=args["threads"]), OnnxModel(run, int8=True, threads=args["threads"])
    loaded = load_model(run, run / ort32.info["checkpoint"])  # the checkpoint that was exported
    family, limit = ort32.family, ort32.max_len or loaded.facts.get("max_len")
    length = args["length"] or (limit if family == LM else min(TEXT_LENGTH, limit or TEXT_LENGTH))
    if limit and length > limit:
        script_fail(f"length={length} exceeds the model's max_len {limit}")
    rows = []
    for batch in args["batch"]:
        inputs = sample_inputs(family, loaded.facts, batch, length, preprocess=loaded.preprocess)
        log.info("batch %d: %d rounds of %s", batch, args["rounds"], ", ".join(BACKENDS))
        with torch.inference_mode():
            ms = time_rounds({"eager": lambda: loaded.model(*inputs), "ort_fp32": lambda: ort32(*inputs),
                              "ort_int8": lambda: ort8(*inputs)}, args["rounds"])
        rows.append({"batch": batch, **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                     **{f"{k}_speedup": round(ms["eager"] / ms[k], 3) for k in BACKENDS[1:]}})
    return {"run": str(run), "family": family, "length": None if family == IMAGE else length,
            "threads": args["threads"], "rounds": args["rounds"], "cpu": cpu(), "load_avg_1m": load,
            "torch": torch.__version__, "onnxruntime": ort32.info["versions"]["onnxruntime"], "rows": rows}


def table(report: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    lines = ["| batch | eager ms | ort fp32 ms | ort int8 ms | fp32 speed-up | int8 speed-up |", "|" + "---|" * 6]
    for r in report["rows"]:
        lines.append(f"| {r['batch']} | {r['eager_ms']:.2f} | {r['ort_fp32_ms']:.2f} | {r['ort_int8_ms']:.2f} | "
                     f"{r['ort_fp32_speedup']:.2f}x | {r['ort_int8_speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="key=value: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    args = parse(parser.parse_args().settings)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    from attnlab.errors import AttnlabError

    try:
        report = bench(args)
    except AttnlabError as err:
        script_fail(str(err))
    c = report["cpu"]
    vector = "AVX-512" + (" VNNI" if c["avx512_vnni"] else "") if c["avx512"] else "AVX2" if c["avx2"] else "no AVX2"
    length = f", sequence length {report['length']}" if report["length"] else ""
    print(f"\n{Path(report['run']).name} ({report['family']}{length}): median ms per batch over {report['rounds']} "
          f"interleaved rounds, threads={report['threads']}, {c['model']} ({vector}, load average "
          f"{report['load_avg_1m']}), torch {report['torch']}, onnxruntime {report['onnxruntime']}\n")
    print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
