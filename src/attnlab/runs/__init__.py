"""Runs: the run directory a training job writes, and everything that reads one back.

    <run>/config.yaml      resolved config: rebuilds data, model and task
    <run>/manifest.json    command line, git commit + dirty flag, versions, seed, host, times, status, error
    <run>/metrics.json     final metrics under their logged names (`test/acc`, ...)
    <run>/history.csv      every logged value (step, metric, value), whatever tracker was chosen
    <run>/checkpoints/     `last.ckpt` and the best by the monitored metric
    <run>/plots/           figures written at test time and by viz/plot.py

directory.py writes and validates run directories (no torch, no Lightning); loading.py rebuilds a trained model
from one (`load_model`) for validate, generate and every later consumer, and loads another run's weights into a new
run (`init_weights`, for `init_from=`). Imports build and errors (data and models through the config); never train.
"""

from attnlab.runs.directory import (
    CHECKPOINTS,
    CONFIG,
    HISTORY,
    MANIFEST,
    METRICS,
    PLOTS,
    Run,
    describe_error,
    find_checkpoint,
    finite_metrics,
    git_state,
    load_checkpoint,
    load_config,
    load_skops,
    package_versions,
    read_history,
    read_json,
    record_failure,
    require_run,
    save_skops,
    write_json,
)
from attnlab.runs.loading import (LoadedRun, WeightMatch, init_weights, load_model, match_weights, model_weights, pick_layers,
                                  resolve_init_from, run_of_checkpoint)

__all__ = [
    "CHECKPOINTS", "CONFIG", "HISTORY", "MANIFEST", "METRICS", "PLOTS", "LoadedRun", "Run", "WeightMatch",
    "describe_error", "find_checkpoint", "finite_metrics", "git_state", "init_weights", "pick_layers", "run_of_checkpoint", "load_checkpoint", "load_config", "load_skops", "save_skops",
    "load_model", "match_weights", "model_weights", "package_versions", "read_history", "read_json", "record_failure",
    "require_run", "resolve_init_from", "write_json",
]
