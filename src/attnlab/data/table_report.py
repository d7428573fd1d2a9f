"""A table's data report before any training: summary statistics per column, distributions, and the class balance or
the target's histogram, as figures and a markdown summary (`python viz/plot.py data=<table config>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_report(datamodule: Any, out_dir: Path) -> str:
    """Write figures into out_dir and return the report's markdown; statistics are over the whole table read (every
    split), the class counts per split."""
    import pandas as pd

    from attnlab import plots
    from attnlab.data.report import class_balance

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = datamodule.frames
    table = pd.concat(list(frames.values()), ignore_index=True)
    target = datamodule.target
    lines = [f"# Data report: {', '.join(Path(f).name for f in datamodule.files)}", "",
             f"{len(table):,} rows, {table.shape[1] - 1} feature column(s), target `{target}` ({datamodule.kind}); "
             + ", ".join(f"{s} {len(f):,}" for s, f in frames.items()) + " rows.", "",
             "| column | type | count | missing | mean | std | min | max | distinct |", "|---|---|---|---|---|---|---|---|---|"]
    for col in table.columns:
        series = table[col]
        numeric = pd.api.types.is_numeric_dtype(series)
        stats = [f"{series.mean():.4g}", f"{series.std():.4g}", f"{series.min():.4g}", f"{series.max():.4g}"] if numeric \
            else ["", "", "", ""]
        lines.append(f"| {col}{' (target)' if col == target else ''} | {'numeric' if numeric else 'categorical'} | "
                     f"{int(series.count()):,} | {int(series.isna().sum()):,} | " + " | ".join(stats)
                     + f" | {series.nunique():,} |")
    features = [c for c in table.columns if c != target]
    plots.distributions(table[features], out_dir / "distributions.png")
    lines += ["", "![distributions](distributions.png)", ""]
    if datamodule.kind == "classification":
        labels = {split: frame[target].astype(str) for split, frame in frames.items()}
        names = sorted(set().union(*(set(v) for v in labels.values())), key=_order)
        index = {name: k for k, name in enumerate(names)}
        lines += ["", class_balance({s: y.map(index).to_numpy(np.int64) for s, y in labels.items()}, names, out_dir)]
    else:
        values = table[target].to_numpy(dtype=float)
        plots.histogram(values, out_dir / "target.png", title=f"{target}: {len(values):,} values",
                        log_too=bool(np.all(values > 0)))
        lines += ["## Target", "", f"mean {values.mean():.5g}, median {np.median(values):.5g}, std {values.std():.5g}, "
                  f"min {values.min():.5g}, max {values.max():.5g} ({int(np.sum(values == values.max())):,} rows at the "
                  "max: a cap?)", "", "![target](target.png)"]
    return "\n".join(lines) + "\n"


def _order(name: str) -> tuple[int, float, str]:
    try:
        return 0, float(name), ""
    except ValueError:
        return 1, 0.0, name
