"""Inference speed of classifier runs side by side on the same real inputs: a distilled student against its teacher,
a small model against a large one.

    python scripts/bench_models.py runs=<teacher run>,<student run> input=<.csv/.jsonl[.gz] of texts> [n=2000]
        [batch=32] [rounds=3] [threads=2]

Each run reads the first n inputs of `input` (a table with a `text` column, as app/predict.py reads it) through its
own preprocessing (tokenizer, truncation to its max_len), once, before timing, in length-sorted batches of `batch`
as predict makes them; after a warm-up pass each, every round times one pass of each run's model over all its
batches, the runs in turn (attnlab.cli.time_rounds), so load on the machine hits them alike. Reported: the median seconds per pass, inputs per second, parameters, and the
speed-up of each run over the first (first's seconds / its seconds). The model's forward only: tokenization is the
same work for runs that share a tokenizer. The CPU and the 1-minute load average at the start are printed with the
figures; the ratio carries over between machines better than the absolute times. Prints a markdown table and, last,
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from attnlab.cli import cpu_name, script_fail, script_settings, time_rounds

DEFAULTS: dict[str, Any] = {"runs": None, "input": None, "n": 2000, "batch": 32, "rounds": 3, "threads": 2}
USAGE = "python scripts/bench_models.py runs=<run dir>,<run dir> input=<.csv/.jsonl file of texts>"


def parse(argv: list[str]) -> dict[str, Any]:
    args = script_settings(argv, DEFAULTS, usage=USAGE)
    args["runs"] = [r for r in str(args["runs"] or "").split(",") if r.strip()]
    if len(args["runs"]) < 2:
        script_fail(f"name two runs or more to compare: {USAGE}")
    if not args["input"]:
        script_fail(f"say which inputs: {USAGE}")
    if min(args["n"], args["batch"], args["rounds"], args["threads"]) < 1:
        script_fail("n, batch, rounds and threads must be >= 1")
    return args


def batches_of(loaded: Any, items: list[Any], batch: int) -> list[Any]:
    """The inputs as the run's model reads them: length-sorted batches, as app/predict.py makes them."""
    order = sorted(range(len(items)), key=lambda i: len(str(items[i].get("text", "") if isinstance(items[i], dict)
                                                         else items[i])))
    return [loaded.preprocess.to_batch([items[i] for i in order[s : s + batch]]) for s in range(0, len(items), batch)]


def bench(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from attnlab.predict import check_classifier, read_inputs
    from attnlab.runs import load_model

    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args["threads"])
    items, _ = read_inputs(str(args["input"]))
    items = items[: args["n"]]
    runs = []
    for path in args["runs"]:
        loaded = load_model(path)
        check_classifier(loaded)
        if not hasattr(loaded.preprocess, "to_batch") or not isinstance(loaded.model, torch.nn.Module):
            script_fail(f"{path}: not a torch text or image classifier")
        runs.append((loaded, batches_of(loaded, items, args["batch"])))

    def one_pass(model: torch.nn.Module, batches: list[Any]) -> None:
        for b in batches:
            model(**b) if isinstance(b, dict) else model(b)

    with torch.inference_mode():  # a warm-up pass each, then rounds of one pass of every run in turn
        ms = time_rounds({str(i): (lambda m=loaded.model, b=batches: one_pass(m, b)) for i, (loaded, batches)
                          in enumerate(runs)}, args["rounds"])
    median = [ms[str(i)] / 1e3 for i in range(len(runs))]
    rows = []
    for (loaded, _), sec in zip(runs, median):
        rows.append({"run": loaded.run_dir.name, "model": str(loaded.cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
                     "parameters": sum(p.numel() for p in loaded.model.parameters()),
                     "layers": len(loaded.model.blocks) if hasattr(loaded.model, "blocks") else None, "seconds": round(sec, 3),
                     "inputs_per_s": round(len(items) / sec, 1), "speedup": round(median[0] / sec, 3)})
    return {"input": str(args["input"]), "n": len(items), "batch": args["batch"], "rounds": args["rounds"],
            "threads": args["threads"], "cpu": cpu_name(), "load_avg_1m": load, "torch": torch.__version__, "rows": rows}


def table(report: dict[str, Any]) -> str:
    lines = ["| run | model | layers | parameters | s per pass | inputs/s | speed-up |", "|" + "---|" * 7]
    for r in report["rows"]:
        lines.append(f"| {r['run']} | {r['model']} | {r['layers'] if r['layers'] is not None else '-'} | "
                     f"{r['parameters']:,} | {r['seconds']:.2f} | {r['inputs_per_s']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="key=value: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    args = parse(parser.parse_args().settings)
    from attnlab.errors import AttnlabError

    try:
        report = bench(args)
    except AttnlabError as err:
        script_fail(str(err))
    print(f"\n{report['n']} inputs of {report['input']} in batches of {report['batch']}, median of {report['rounds']} "
          f"interleaved passes, threads={report['threads']}, {report['cpu']}, load average {report['load_avg_1m']}, "
          f"torch {report['torch']}\n")
    print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
