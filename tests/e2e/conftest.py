"""The `cli` fixture: the repo's scripts run as users run them, in a subprocess, on fake MNIST, results under tmp_path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Small and quiet: fake MNIST (512 train / 128 test), no rich widgets in captured output.
FAST = [
    "data.val_size=128",
    "data.batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture
def cli(tmp_path, fake_mnist_dir):
    """Run one of the repo's scripts in a subprocess with results under tmp_path."""

    def run(script: str, *args: str, expect: int | None = 0, timeout: int = 300) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "ATTNLAB_RESULTS_DIR": str(tmp_path / "results"),
            "ATTNLAB_DATA_DIR": str(fake_mnist_dir.parent),
            "PYTHONPATH": str(REPO / "tests" / "helpers"),
            "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        extra = [f"data.data_dir={fake_mnist_dir}", *FAST] if script == "app/train.py" else []
        flags = [a for a in args if a.startswith("-")]  # -m etc.: argparse wants them before the overrides
        overrides = [a for a in args if not a.startswith("-")]
        out = subprocess.run(
            [sys.executable, str(REPO / script), *flags, *extra, *overrides],  # the test's own overrides win
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
        )
        if expect is not None:
            assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return out

    run.results = tmp_path / "results"
    return run
