"""The README's table figures from bench_tables.sh's sweeps: per experiment, mean ± std over its jobs (seeds or folds)
of the test metrics, and the mean wall time of a job (manifest start to end). Usage: python scripts/table_times.py <dir>"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from attnlab.sweeps.jobs import collect

METRICS = {"wine": ("test/acc", "test/f1"), "california": ("test/rmse", "test/mae", "test/r2"),
           "boston": ("test/rmse", "test/mae", "test/r2")}


def cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(root: Path) -> None:
    for sweep in sorted(p for p in root.iterdir() if p.is_dir()):
        family = sweep.name.split("_")[0]
        if family not in METRICS or not (sweep / "multirun.yaml").is_file():  # not one of bench_tables.sh's sweeps
            continue
        metrics = METRICS[family]
        rows: dict[str, list] = defaultdict(list)
        for job in collect(sweep):
            if job.status == "completed":
                rows[job.params.get("experiment", "?")].append(job)
        print(f"\n### {sweep.name}\n")
        print("| experiment | jobs | " + " | ".join(metrics) + " | wall s / job |")
        print("|---|---|" + "---|" * (len(metrics) + 1))
        for name, jobs in rows.items():
            walls = [_wall(j.dir) for j in jobs]
            # wine: % with 2 decimals; California: USD; Boston: the MEDV column's thousands of USD
            digits = {"wine": 2, "california": 0, "boston": 2}[family]
            cells = [cell([j.metrics[m] for j in jobs], 100.0 if family == "wine" else 1.0, 3 if "r2" in m else digits)
                     for m in metrics]
            print(f"| {name} | {len(jobs)} | " + " | ".join(cells) + f" | {statistics.mean(walls):.0f} |")


def _wall(job_dir: Path) -> float:
    import json
    from datetime import datetime

    m = json.loads((job_dir / "manifest.json").read_text())
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    return (datetime.strptime(m["end"], fmt) - datetime.strptime(m["start"], fmt)).total_seconds()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
