"""Predict on N test inputs as a user would, time it, and check the outputs against validate's predictions:

    python scripts/check_predict.py run=<classification run> [n=1000] [out=<dir>] [batch_size=64] [cache_dir=<dir>]

Writes N evenly spaced rows of the run's test file as out/inputs.csv (text runs; a `row` column keeps each line's
place in the test file) or links N evenly spaced test images into out/images/<class>/ (image-folder runs), runs
`predict` on them into out/predictions.csv (the work app/predict.py does, the model already loaded), and computes
validate's predictions for the same rows: the run's data module (test split, as val/validate.py builds it) through
the run's task, batch by batch. Prints throughput and the largest probability difference; exit 1 if any label
differs. Default out: <run>/predict_check.
"""

from __future__ import annotations

import csv
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnlab.cli import script_fail, script_settings

log = logging.getLogger("check_predict")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
            return f"{line.split(':', 1)[1].strip()} ({isa}, {os.cpu_count()} cores)"
    return platform.processor() or "unknown CPU"


def main(argv: list[str]) -> None:
    args = script_settings(argv, {"run": None, "n": 1000, "out": None, "batch_size": 64, "cache_dir": None, "ckpt": "best"},
                           usage="python scripts/check_predict.py run=<run dir> [n=1000]")
    from attnlab import build, runs
    from attnlab.predict import read_inputs, write_predictions

    loaded = runs.load_model(args["run"], args["ckpt"])
    out = Path(args["out"] or loaded.run_dir / "predict_check")
    out.mkdir(parents=True, exist_ok=True)
    if args["cache_dir"]:  # the run's cache folder may be another user's
        loaded.cfg.data.cache_dir = args["cache_dir"]
    datamodule = build.make_datamodule(loaded.cfg, artifacts=loaded.run_dir)
    datamodule.prepare_data()
    datamodule.setup("test")
    dataset = datamodule.test_dataloader().dataset
    rows = np.linspace(0, len(dataset) - 1, min(args["n"], len(dataset))).round().astype(int)
    if hasattr(datamodule, "_read"):  # text: the test file's rows, in the data module's order
        texts = datamodule._read("test")[0]
        source = out / "inputs.csv"
        with open(source, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["row", getattr(datamodule, "text_column", "text")])
            writer.writerows([int(r), texts[r]] for r in rows)
    elif hasattr(datamodule, "_files"):  # image folders: the test images, decoded in this order
        files = datamodule._files()["test"]
        source = out / "images"
        for r in rows:
            path, cls = files[r]
            link = source / cls / f"{r:06d}{path.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path.resolve())
    else:
        script_fail(f"{type(datamodule).__name__}: this check knows text and image-folder runs")
    items, ids = read_inputs(str(source))
    start = time.perf_counter()
    predictions = loaded.predict(items, batch_size=args["batch_size"], progress=False)
    write_predictions(out / "predictions.csv", ids, predictions, top_k=min(3, len(predictions.class_names)))
    seconds = time.perf_counter() - start
    order = [int(r["row"]) for r in items] if isinstance(items[0], dict) else [int(Path(i).stem) for i in ids]
    task = build.make_task(loaded.cfg, loaded.model, loaded.facts, training=False)
    expected = np.zeros_like(predictions.probs)
    with torch.no_grad():
        for at in range(0, len(order), args["batch_size"]):
            x, _ = dataset.__getitems__(order[at : at + args["batch_size"]])
            expected[at : at + len(x if torch.is_tensor(x) else x["input_ids"])] = torch.softmax(task._forward(x), -1).numpy()
    same = (expected.argmax(1) == predictions.probs.argmax(1))
    diff = float(np.abs(expected - predictions.probs).max())
    print(f"run {loaded.run_dir}\n{len(items)} inputs from {source}: predict (read, preprocess, model, write) "
          f"{seconds:.2f} s = {len(items) / seconds:.1f} inputs/s at batch {args['batch_size']}, "
          f"{torch.get_num_threads()} threads, {cpu_name()}\nlabels equal to validate's: {int(same.sum())}/{len(same)}; "
          f"largest probability difference {diff:.2e}")
    if not same.all():
        sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    main(sys.argv[1:])
