"""CLI fixtures: the repo's scripts run as users run them, in a subprocess, on generated data, results and caches
under tmp_path. `cli` trains on fake MNIST, `text_cli` on a fake IMDB, `lm_cli` on a fake story corpus."""

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnlab.data.summarization import write_fake_summaries

REPO = Path(__file__).resolve().parents[2]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # no rich widgets in the output


def make_cli(tmp_path: Path, data_root: Path, train_overrides: list[str]) -> Callable[..., subprocess.CompletedProcess]:
    """A runner for `script *args`; app/train.py gets train_overrides first, so a test's own overrides win."""

    def run(script: str, *args: str, expect: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "ATTNLAB_DATA_DIR": str(data_root),
            "ATTNLAB_CACHE_DIR": str(tmp_path / "cache"),
            "ATTNLAB_RESULTS_DIR": str(tmp_path / "results"),
            # This checkout's package (whichever checkout the tests run from) and callbacks that kill or interrupt a run.
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests" / "helpers")]),
            "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
        extra = train_overrides if script == "app/train.py" else []
        flags = [a for a in args if a.startswith("-")]  # Hydra's flags (-m) go before the overrides
        overrides = [a for a in args if not a.startswith("-")]
        out = subprocess.run([sys.executable, str(REPO / script), *flags, *extra, *overrides], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=timeout)
        if expect is not None:
            assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return out

    run.results = tmp_path / "results"
    run.cache = tmp_path / "cache"
    return run


@pytest.fixture
def cli(tmp_path, fake_mnist_dir):
    """Fake MNIST: 512 train (128 kept for validation) / 128 test images, batches of 32."""
    return make_cli(tmp_path, fake_mnist_dir.parent,
                    [f"data.data_dir={fake_mnist_dir}", "data.val_size=128", "data.batch_size=32", *QUIET])


@pytest.fixture
def text_cli(tmp_path, fake_imdb_root):
    """Fake IMDB: 400 train reviews (50 kept for validation), CSV tracking."""
    return make_cli(tmp_path, fake_imdb_root, ["data.val_size=50", *QUIET, "tracker=csv"])


@pytest.fixture
def imdb_cli(tmp_path, fake_imdb_root):
    """Fake IMDB with no data setting of its own (data=mlm_corpus and data=imdb both read it), CSV tracking."""
    return make_cli(tmp_path, fake_imdb_root, [*QUIET, "tracker=csv"])


@pytest.fixture
def lm_cli(tmp_path, fake_stories_root):
    """Fake stories: context 32 and a 300-token BPE (the corpus is small), 8 sampled tokens, CSV tracking."""
    return make_cli(tmp_path, fake_stories_root, ["data=tinystories_sample", "data.max_len=32",
                    "data.tokenizer.max_vocab=300", "++task.sample_tokens=8", *QUIET, "tracker=csv"])


@pytest.fixture
def mt_cli(tmp_path):
    """Generated Multi30k (300 train / 40 val / test_2016_flickr 30 / test_2017_mscoco 20 pairs) and Tatoeba (400 pairs)
    files, a 300-token BPE, batches of 16, CSV tracking."""
    from attnlab.data.parallel import fake_pairs, write_fake_multi30k

    root = tmp_path / "data"
    sizes = {"train": 300, "val": 40, "test_2016_flickr": 30, "test_2017_mscoco": 20}
    write_fake_multi30k(root / "multi30k_en_fr", sizes=sizes)
    (root / "tatoeba_fra_eng").mkdir()
    with gzip.open(root / "tatoeba_fra_eng" / "fra.txt.gz", "wt", encoding="utf-8") as f:
        f.writelines(f"{en}\t{fr}\n" for en, fr in zip(*fake_pairs(400, seed=7)))
    return make_cli(tmp_path, root, ["data.tokenizer.max_vocab=300", "data.batch_size=16", "data.eval_batch_size=16",
                                     "tracker=csv", *QUIET])


@pytest.fixture
def sum_cli(tmp_path, shared_data):
    """Generated SciTLDR / DialogSum / IMDB files beside GPT-2's tokenizer files (from ../shared/data), a 128-token
    context with 16-token summaries, batches of 4, CSV tracking."""
    root = tmp_path / "data"
    write_fake_summaries(root)
    (root / "gpt2_tokenizer").symlink_to(shared_data / "gpt2_tokenizer")
    return make_cli(tmp_path, root, ["++data.max_len=128", "++data.batch_size=4", "tracker=csv", *QUIET])


def write_tables(root: Path, seed: int = 0) -> None:
    """Wine (12 columns, no header, scores 4-7), California (header, holes in total_bedrooms, a categorical column, USD
    target), Boston (14 columns, no header): small, learnable, in the shared data folders' layout."""
    rng = np.random.default_rng(seed)
    n = 200
    x = rng.normal(size=(n, 11))
    quality = np.digitize(x[:, 10] - x[:, 1], [-1.0, 0.0, 1.0]) + 4
    (root / "wine_quality").mkdir(parents=True)
    for colour in ("red", "white"):
        pd.DataFrame(np.column_stack([x, quality])).to_csv(root / "wine_quality" / f"winequality-{colour}.csv",
                                                           index=False, header=False)
    m = 300
    income = rng.uniform(1, 10, m)
    frame = pd.DataFrame({
        "longitude": rng.uniform(-124, -114, m), "latitude": rng.uniform(32, 42, m),
        "housing_median_age": rng.integers(1, 52, m), "total_rooms": rng.integers(200, 5000, m),
        "total_bedrooms": rng.integers(50, 1000, m).astype(float), "population": rng.integers(100, 3000, m),
        "households": rng.integers(50, 1000, m), "median_income": income,
        "median_house_value": (40_000 * income + rng.normal(0, 10_000, m)).clip(15_000, 500_001),
        "ocean_proximity": rng.choice(["<1H OCEAN", "INLAND", "NEAR BAY"], m)})
    frame.loc[rng.choice(m, 10, replace=False), "total_bedrooms"] = np.nan
    (root / "california_housing").mkdir()
    frame.to_csv(root / "california_housing" / "housing.csv.gz", index=False)
    b = rng.normal(size=(150, 13))
    (root / "boston_housing").mkdir()
    pd.DataFrame(np.column_stack([b, 22 + 5 * b[:, 5] - 3 * b[:, 12]])).to_csv(
        root / "boston_housing" / "housing.csv", index=False, header=False)


@pytest.fixture
def table_cli(tmp_path):
    """Generated wine, California and Boston tables in ../shared/data's layout, CSV tracking."""
    root = tmp_path / "data"
    write_tables(root)
    return make_cli(tmp_path, root, [*QUIET, "tracker=csv"])


@pytest.fixture
def own_cli(tmp_path):
    """The writers' layouts of a fake IMDB (imdb_rating4/*.csv: 120 train / 40 test) and a fake MNIST (mnist_folders/:
    200 train / 50 test PNGs), with the originals beside them."""
    from attnlab.data.imdb import write_fake_imdb
    from attnlab.data.mnist import write_fake_mnist
    from attnlab.data.writers import write_idx_folders, write_imdb_rating4

    data = tmp_path / "data"
    write_fake_imdb(data / "imdb", n_train=120, n_test=40)
    write_imdb_rating4(data / "imdb", data / "imdb_rating4")
    write_fake_mnist(data / "mnist", n_train=200, n_test=50)
    write_idx_folders(data / "mnist", data / "mnist_folders")
    return make_cli(tmp_path, data, QUIET)
