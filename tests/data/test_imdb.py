"""IMDB data: readers and their errors, the disk cache, truncation, dynamic padding, length buckets, the split."""

import gzip
import logging
import re
import types

import numpy as np
import pytest
import torch

from attnlab.data.imdb import IMDBDataModule, write_fake_imdb
from attnlab.data.sources import read_aclimdb, read_jsonl
from attnlab.data.text import BucketSampler, TokenizedDataset, truncate
from attnlab.data.tokenizers import Tokenizer, WordTokenizer
from attnlab.errors import ConfigError, DataError


def make(root, tmp_path, **kw) -> IMDBDataModule:
    args = {"data_dir": str(root / "imdb"), "cache_dir": str(tmp_path / "cache"), "seed": 0, "val_size": 50,
            "tokenizer": WordTokenizer(max_vocab=200, min_freq=1), "max_len": 32, "batch_size": 16, **kw}
    return IMDBDataModule(**args)


def test_jsonl_and_aclimdb_layouts_read_the_same_reviews(tmp_path):
    write_fake_imdb(tmp_path / "j", n_train=40, n_test=20, seed=3)
    write_fake_imdb(tmp_path / "a", n_train=40, n_test=20, seed=3, layout="aclimdb")
    texts, labels = read_jsonl(tmp_path / "j" / "train.jsonl.gz")
    texts_a, labels_a = read_aclimdb(tmp_path / "a" / "aclImdb" / "train")
    assert texts == texts_a and labels.tolist() == labels_a.tolist() and labels.sum() == 20
    dm = make(tmp_path / "a" / "..", tmp_path, data_dir=str(tmp_path / "a"), val_size=5)
    dm.setup()
    assert len(dm.datasets["test"]) == 20


def _write(path, lines):
    with gzip.open(path, "wt") as f:
        f.writelines(lines)


@pytest.mark.parametrize(
    "content, message",
    [
        ([], "holds no reviews"),
        (['{"text": "ok", "label": 2}\n'], "has label 2 (1 bad in all); IMDB labels are 0 (negative) or 1"),
        (['{"text": "ok"}\n'], 'line 1: each line needs "text" and "label"'),
        (['{"text": "ok", "label": 1}\n', "not json\n"], "line 2: not a JSON object"),
        (None, "cannot read"),
    ],
)
def test_bad_files_give_errors_that_name_the_file(tmp_path, content, message):
    path = tmp_path / "train.jsonl.gz"
    if content is None:
        path.write_bytes(b"\x1f\x8b garbage")
    else:
        _write(path, content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_jsonl(path)
    assert str(path) in str(err.value)


def test_a_missing_split_or_folder_is_named(tmp_path):
    write_fake_imdb(tmp_path / "imdb", n_train=20, n_test=10)
    (tmp_path / "imdb" / "test.jsonl.gz").unlink()
    with pytest.raises(DataError, match="IMDB split 'test' is missing beside .*train.jsonl.gz"):
        make(tmp_path, tmp_path).facts()
    with pytest.raises(DataError, match="no IMDB files under .*nowhere.* and the hub download"):
        make(tmp_path, tmp_path, data_dir=str(tmp_path / "nowhere")).prepare_data()


def test_second_run_hits_the_cache_and_max_len_does_not_re_encode(fake_imdb_root, tmp_path, caplog, monkeypatch):
    first = make(fake_imdb_root, tmp_path)
    first.prepare_data()
    first.setup()
    # Any encoding from now on would fail: the cache must serve the same settings, and other lengths.
    monkeypatch.setattr(Tokenizer, "encode_flat", lambda *a, **k: pytest.fail("encoded again"))
    monkeypatch.setattr(WordTokenizer, "build", lambda *a, **k: pytest.fail("trained again"))
    with caplog.at_level(logging.INFO, logger="attnlab.data.imdb"):
        second = make(fake_imdb_root, tmp_path, max_len=64, truncation="head_tail")
        second.prepare_data()
        second.setup()
    assert "encoded cache hit" in caplog.text
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert len(list((tmp_path / "cache").glob("encoded-*"))) == 1
    with pytest.raises(BaseException, match="trained again"):  # other tokenizer settings: a new entry
        make(fake_imdb_root, tmp_path, tokenizer=WordTokenizer(max_vocab=100, min_freq=1)).facts()


def test_facts_split_and_batches(fake_imdb_root, tmp_path):
    dm = make(fake_imdb_root, tmp_path)
    facts = dm.facts()
    assert facts["vocab_size"] == dm.tokenizer.vocab_size and facts["pad_id"] == 0 and facts["max_len"] == 32
    assert facts["num_classes"] == 2 and facts["class_names"] == ["negative", "positive"]
    dm.setup()
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (350, 50, 200)
    other = make(fake_imdb_root, tmp_path, seed=5)  # the run seed shuffles; only split_seed splits
    other.setup()
    assert torch.equal(other.datasets["val"].labels, dm.datasets["val"].labels)
    inputs, labels = next(iter(dm.train_dataloader()))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 16 and ids.shape[1] <= 32 and labels.shape == (16,)
    lengths = mask.sum(1)
    assert ids.shape[1] == lengths.max()  # padded to the batch's own longest review
    assert (ids[:, 0] == dm.tokenizer.cls_id).all() and (ids[torch.arange(16), lengths - 1] == dm.tokenizer.sep_id).all()
    assert (ids[~mask] == 0).all() and mask[:, 0].all()


def test_truncation_head_and_head_tail_with_specials():
    texts = [list(range(10, 20)), [30, 31], []]
    ids = np.concatenate([np.array(t, dtype=np.uint16) for t in texts])
    offsets = np.array([0, 10, 12, 12])
    out, off = truncate(ids, offsets, max_len=6, mode="head", prefix=[1], suffix=[2])
    got = [out[off[i] : off[i + 1]].tolist() for i in range(3)]
    assert got == [[1, 10, 11, 12, 13, 2], [1, 30, 31, 2], [1, 2]]
    out, off = truncate(ids, offsets, max_len=6, mode="head_tail", head_fraction=0.25)
    assert out[off[0] : off[1]].tolist() == [10, 11, 16, 17, 18, 19]  # round(6 * 0.25) = 2 from the head
    out, off = truncate(ids, offsets, index=np.array([1]), max_len=6, mode="head_tail")
    assert out.tolist() == [30, 31] and off.tolist() == [0, 2]
    with pytest.raises(ConfigError, match="no room"):
        truncate(ids, offsets, max_len=2, prefix=[1], suffix=[2])


def test_bucket_sampler_is_seeded_complete_and_cuts_padding():
    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(0))
    sampler = BucketSampler(lengths, batch_size=32, seed=7, bucket_size=10)
    first = list(sampler)
    assert sorted(first) == list(range(1000)) and first == list(sampler)  # a permutation; same (seed, epoch), same order
    sampler.set_epoch(1)
    assert list(sampler) != first

    def padding(order):
        batches = torch.tensor(order[:992]).view(-1, 32)  # the 31 full batches
        lens = lengths[batches]
        return (lens.max(1).values[:, None] - lens).sum().item()

    assert padding(first) < 0.2 * padding(torch.randperm(1000).tolist())
    # Every loader slice of 32 is one bucket's batch (sorted by length): the short batch went last, not in between.
    for batch in torch.tensor(first[:992]).view(-1, 32):
        assert torch.equal(lengths[batch], lengths[batch].sort(descending=True).values)
    assert list(BucketSampler(lengths, batch_size=32, seed=7, shuffle=False)) == torch.argsort(lengths, descending=True, stable=True).tolist()


def _buckets(order, lengths, batch_size):
    batches = torch.tensor(order, dtype=torch.long).split(batch_size)
    return all(torch.equal(lengths[b], lengths[b].sort(descending=True).values) for b in batches), batches


@pytest.mark.parametrize("n, world_size", [(1000, 2), (1000, 3), (40, 2), (20, 4)])
def test_bucket_sampler_under_ddp_shards_the_buckets(n, world_size):
    """Training: the ranks share the single process's batches, equally (padded with its first batches), each batch
    still one bucket. Evaluation: every text exactly once, longest first on each rank, no rank without texts."""
    lengths = torch.randint(1, 500, (n,), generator=torch.Generator().manual_seed(0))
    single = BucketSampler(lengths, batch_size=32, seed=7, bucket_size=10)
    single.set_epoch(3)
    _, batches = _buckets(list(single), lengths, 32)
    shares = []
    for rank in range(world_size):
        sampler = BucketSampler(lengths, batch_size=32, seed=7, bucket_size=10, rank=rank, world_size=world_size)
        sampler.set_epoch(3)
        order = list(sampler)
        assert len(order) == len(sampler)
        sorted_, mine = _buckets(order, lengths, 32)
        assert sorted_
        shares.append(mine)
    assert len({len(m) for m in shares}) == 1  # the same number of steps on every rank
    dealt = [b.tolist() for i in range(len(shares[0])) for m in shares for b in m[i : i + 1]]
    assert dealt == [b.tolist() for b in batches * world_size][: len(dealt)]  # then its first batches again
    evaluated = []
    for rank in range(world_size):
        sampler = BucketSampler(lengths, batch_size=32, seed=7, shuffle=False, rank=rank, world_size=world_size, even=False)
        order = list(sampler)
        assert len(order) == len(sampler) >= n // world_size and _buckets(order, lengths, 32)[0]
        evaluated += order
    assert sorted(evaluated) == list(range(n))


def test_datamodule_keeps_buckets_under_ddp(fake_imdb_root, tmp_path):
    dm = make(fake_imdb_root, tmp_path)
    dm.setup()
    seen = []
    for rank in (0, 1):
        dm.trainer = types.SimpleNamespace(world_size=2, global_rank=rank)  # what the loaders read of a DDP trainer
        train, test = dm.train_dataloader(), dm.test_dataloader()
        assert isinstance(train.sampler, BucketSampler) and isinstance(test.sampler, BucketSampler)
        assert (train.sampler.rank, train.sampler.num_replicas) == (rank, 2)
        seen += list(test.sampler)
        assert sum(len(labels) for _, labels in test) == len(test.sampler)
    assert sorted(seen) == list(range(len(dm.datasets["test"])))


def test_dataset_pads_empty_texts_safely():
    ds = TokenizedDataset(np.array([], dtype=np.uint16), np.array([0, 0, 0]), np.array([0, 1]), pad_id=9)
    inputs, labels = ds.__getitems__([0, 1])
    assert inputs["input_ids"].tolist() == [[9], [9]] and not inputs["attention_mask"].any()


def test_artifacts_make_validation_reuse_the_runs_tokenizer(fake_imdb_root, tmp_path):
    dm = make(fake_imdb_root, tmp_path)
    dm.facts()
    dm.save_artifacts(tmp_path / "run")
    # Another cache and tokenizer settings: the run's tokenizer still wins.
    again = make(fake_imdb_root, tmp_path, cache_dir=str(tmp_path / "other"), tokenizer=WordTokenizer(max_vocab=50))
    again.load_artifacts(tmp_path / "run")
    assert again.facts()["vocab_size"] == dm.tokenizer.vocab_size and again.tokenizer.fingerprint() == dm.tokenizer.fingerprint()
    again.setup()
    assert not list((tmp_path / "other").glob("tokenizer-*"))  # nothing was trained
    fresh = make(fake_imdb_root, tmp_path)
    fresh.load_artifacts(tmp_path / "no-run")  # nothing saved there: built from the settings
    assert fresh.facts()["vocab_size"] == dm.tokenizer.vocab_size


def test_bad_options_are_config_errors(fake_imdb_root, tmp_path):
    with pytest.raises(ConfigError, match="unknown specials 'both'; choose one of: cls_sep, none"):
        make(fake_imdb_root, tmp_path, specials="both")
    with pytest.raises(ConfigError, match="unknown truncation 'tail'"):
        make(fake_imdb_root, tmp_path, truncation="tail").setup()


@pytest.mark.data
def test_shared_imdb_has_the_official_splits(shared_data):
    for split in ("train", "test"):
        texts, labels = read_jsonl(shared_data / "imdb" / f"{split}.jsonl.gz")
        assert len(texts) == 25000 and labels.sum() == 12500
