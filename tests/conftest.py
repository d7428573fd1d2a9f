"""Shared fixtures: offline environment, a tiny fake MNIST, and the shared real data when present."""

import os
from pathlib import Path

import pytest

# Tests never reach the network or a tracking server.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests are skipped, with the reason, where torch sees no CUDA device (torch is imported only if any)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false); scripts/gpu_check.sh runs it")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def fake_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four MNIST idx.gz files holding 512 train and 128 test learnable fake images."""
    from attnlab.data.mnist import write_fake_mnist

    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=512, n_test=128)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repository (real datasets); skips the test when it is missing."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not present")
    return path


@pytest.fixture(scope="session")
def fake_imdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with imdb/{train,test}.jsonl.gz: 400 train and 200 test learnable fake reviews."""
    from attnlab.data.imdb import write_fake_imdb

    root = tmp_path_factory.mktemp("textdata")
    write_fake_imdb(root / "imdb", n_train=400, n_test=200)
    return root


@pytest.fixture(scope="session")
def fake_stories_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with tinystories_sample/validation_head.txt.gz: 400 short generated stories."""
    from attnlab.data.corpus import write_fake_corpus

    root = tmp_path_factory.mktemp("stories")
    (root / "tinystories_sample").mkdir()
    write_fake_corpus(root / "tinystories_sample" / "validation_head.txt.gz", n_docs=400)
    return root
