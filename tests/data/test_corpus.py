"""Language-modelling corpus: reading, the seeded split, token streams and their cache, windows, bytes per token, errors."""

import gzip
import os
import pickle
import re
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

import attnlab.data.corpus as corpus
from attnlab.data.corpus import TextCorpusDataModule, token_bytes, write_fake_corpus
from attnlab.data.sources import iter_documents, write_documents
from attnlab.data.windows import RandomWindowSampler, fixed_starts
from attnlab.data.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer
from attnlab.errors import ConfigError, DataError

SHARED = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))


def make(tmp_path, train, **kw) -> TextCorpusDataModule:
    args = {"cache_dir": str(tmp_path / "cache"), "tokenizer": BPETokenizer(max_vocab=300, min_freq=1), "seed": 0,
            "train_file": str(train), "max_len": 16, "batch_size": 8, **kw}
    return TextCorpusDataModule(**args)


@pytest.fixture
def fake(tmp_path):
    """(path, documents) of a 200-story fake corpus."""
    path = tmp_path / "stories.txt"
    return path, write_fake_corpus(path, n_docs=200, seed=1)


def documents_of(stream: np.ndarray, tok: Tokenizer) -> list[str]:
    """Decode a token stream back into its documents (each ends with eos)."""
    ends = np.flatnonzero(np.asarray(stream) == tok.eos_id)
    assert len(ends) and ends[-1] == len(stream) - 1, "the stream must end with eos"
    return [tok.decode(part) for part in np.split(np.asarray(stream), ends + 1)[:-1]]


def test_reader_ends_documents_at_separators_and_strips_them(tmp_path):
    text = " First story.\n<|endoftext|>\nSecond\n\nstory. \n<|endoftext|>\n \n<|endoftext|>\n\nThird.<|endoftext|>Fourth\n"
    plain, packed = tmp_path / "a.txt", tmp_path / "a.txt.gz"
    plain.write_text(text, encoding="utf-8")
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(text)
    expected = ["First story.", "Second\n\nstory.", "Third.", "Fourth"]
    assert list(iter_documents(plain)) == list(iter_documents(packed)) == expected
    plain.write_text(" a\nb \n\n\n  \nc<|endoftext|>\n\nd")
    assert list(iter_documents(plain, separator="")) == ["a\nb", "c<|endoftext|>", "d"]  # blank lines end documents
    assert write_documents(tmp_path / "b.txt.gz", expected) == 4 and list(iter_documents(tmp_path / "b.txt.gz")) == expected
    docs = write_fake_corpus(tmp_path / "c.txt", n_docs=30)
    assert list(iter_documents(tmp_path / "c.txt")) == docs and any("🙂" in d for d in docs)


def test_streams_are_the_documents_encoded_each_followed_by_eos(tmp_path):
    train_docs = write_fake_corpus(tmp_path / "train.txt", n_docs=60, seed=2)
    val_docs = write_fake_corpus(tmp_path / "val.txt.gz", n_docs=10, seed=3)
    dm = make(tmp_path, "train.txt", data_dir=str(tmp_path), val_file="val.txt.gz")
    tok = dm.tokenizer
    for stream, docs in ((dm.train_tokens(), train_docs), (dm.val_tokens(), val_docs)):
        assert isinstance(stream, np.memmap) and stream.dtype == np.uint16
        expected = [i for d in docs for i in tok.encode(d) + [tok.eos_id]]
        assert stream.tolist() == expected
    assert dm.meta["splits"]["train"]["documents"] == 60 and dm.meta["splits"]["val"]["tokens"] == len(dm.val_tokens())


def test_one_file_is_split_by_document_with_the_split_seed(tmp_path, fake):
    path, docs = fake
    dm = make(tmp_path, path, val_fraction=0.1)
    train, val = documents_of(dm.train_tokens(), dm.tokenizer), documents_of(dm.val_tokens(), dm.tokenizer)
    assert len(val) == 20 and len(train) == 180
    assert Counter(train) + Counter(val) == Counter(docs)  # every document once, on one side only
    assert val == [d for d in docs if d in set(val)]  # file order kept
    again = make(tmp_path / "other", path, val_fraction=0.1)
    assert np.array_equal(again.val_tokens(), dm.val_tokens()) and np.array_equal(again.train_tokens(), dm.train_tokens())
    reseeded = make(tmp_path, path, val_fraction=0.1, split_seed=7)
    assert documents_of(reseeded.val_tokens(), reseeded.tokenizer) != val


def test_second_setup_is_a_cache_hit_even_with_other_windows(tmp_path, fake, monkeypatch):
    path, _ = fake
    first = make(tmp_path, path)
    first.prepare_data()
    first.setup()
    # From now on any reading, training or encoding fails: a hit must need none of them.
    monkeypatch.setattr(corpus, "iter_documents", lambda *a, **k: pytest.fail("read again"))
    monkeypatch.setattr(BPETokenizer, "build", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a, **k: pytest.fail("encoded again"))
    second = make(tmp_path, path, max_len=8, batch_size=4, val_windows=3)
    second.prepare_data()
    second.setup()
    assert second.tokens_dir() == first.tokens_dir()
    assert np.array_equal(second.train_tokens(), first.train_tokens()) and len(second.datasets["val"]) == 3


def test_cache_key_follows_the_tokenizer_the_split_and_the_files(tmp_path, fake):
    path, _ = fake
    base = make(tmp_path, path).tokens_dir()
    assert make(tmp_path, path, max_len=32).tokens_dir() == base
    for change in ({"tokenizer": BPETokenizer(max_vocab=280, min_freq=1)}, {"split_seed": 5}, {"val_fraction": 0.2},
                   {"tokenizer_train_chars": 1000}):
        assert make(tmp_path, path, **change).tokens_dir() != base, change
    path.write_text(path.read_text() + "One more story.\n<|endoftext|>\n")
    assert make(tmp_path, path).tokens_dir() != base


def test_train_windows_are_slices_drawn_by_seed_and_epoch(tmp_path, fake):
    path, _ = fake
    dm = make(tmp_path, path)
    dm.setup()
    stream, loader = np.asarray(dm.train_tokens()), dm.train_dataloader()
    sampler = loader.sampler
    assert len(sampler) == len(stream) // 16 and len(loader) == -(-len(sampler) // 8)
    starts = list(sampler)
    assert starts == list(sampler) and min(starts) >= 0 and max(starts) <= len(stream) - 17
    x, y = dm.datasets["train"].__getitems__(starts[:8])
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    for row, s in enumerate(starts[:8]):
        assert x[row].tolist() == stream[s : s + 16].tolist() and y[row].tolist() == stream[s + 1 : s + 17].tolist()
    bx, by = next(iter(loader))
    assert torch.equal(bx[:, 1:], by[:, :-1])
    sampler.set_epoch(1)
    assert list(sampler) != starts
    sampler.set_epoch(0)
    assert list(sampler) == starts
    other = make(tmp_path, path, seed=1)
    other.setup()
    assert list(other.train_dataloader().sampler) != starts


def test_window_sampler_shares_one_epoch_between_ranks():
    single = list(RandomWindowSampler(1000, num_samples=64, seed=3))
    ranks = [RandomWindowSampler(1000, num_samples=64, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert isinstance(ranks[0], DistributedSampler)  # so Lightning leaves it in place under DDP
    assert [list(r) for r in ranks] == [single[0::2], single[1::2]]
    uneven = [RandomWindowSampler(1000, num_samples=63, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [len(r) for r in uneven] == [len(list(r)) for r in uneven] == [32, 32]


def test_under_ddp_each_rank_takes_its_share_of_the_windows(tmp_path, fake):
    path, _ = fake
    dm = make(tmp_path, path)
    dm.setup()
    single = list(dm.train_dataloader().sampler)
    shares, evaluated = [], []
    for rank in (0, 1):
        dm.trainer = types.SimpleNamespace(world_size=2, global_rank=rank)  # what the loaders read of a DDP trainer
        train, val = dm.train_dataloader(), dm.val_dataloader()
        assert isinstance(val.sampler, DistributedSampler)
        shares.append(list(train.sampler))
        evaluated += list(val.sampler)
    assert sorted(evaluated) == list(range(len(dm.datasets["val"])))  # every validation window exactly once
    assert len(shares[0]) == len(shares[1]) == -(-len(single) // 2)
    interleaved = [start for pair in zip(*shares) for start in pair]
    assert interleaved[: len(single)] == single  # together, the ranks draw the single process's epoch


def test_validation_windows_are_fixed_and_predict_each_token_once(tmp_path, fake):
    path, _ = fake
    dm = make(tmp_path, path, eval_batch_size=5)
    dm.setup()
    stream = np.asarray(dm.val_tokens())
    batches = list(dm.val_dataloader())
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    count = (len(stream) - 1) // 16
    assert x.shape == (count, 16)
    assert x.flatten().tolist() == stream[: count * 16].tolist() and y.flatten().tolist() == stream[1 : count * 16 + 1].tolist()
    again = list(dm.val_dataloader())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    test = list(dm.test_dataloader())  # no test file: the validation windows
    assert torch.equal(torch.cat([b[0] for b in test]), x)
    assert fixed_starts(16 * 10 + 1, 16, 4).tolist() == [0, 48, 96, 144]


def test_token_bytes_count_the_utf8_bytes_of_the_text(tmp_path, fake):
    path, docs = fake
    dm = make(tmp_path, path)
    tok, counts = dm.tokenizer, dm.facts()["token_bytes"]
    assert counts.shape == (tok.vocab_size,) and counts[tok.eos_id] == 1 and counts[tok.pad_id] == 0
    split_chars = 0
    for doc in docs:
        ids = tok.encode(doc)
        assert counts[ids].sum().item() == len(doc.encode()), doc
        split_chars += sum("\ufffd" in tok.decode([i]) for i in ids)
    assert split_chars > 0  # some tokens hold part of a multi-byte character: the case that decoding alone gets wrong
    stream = torch.from_numpy(np.asarray(dm.train_tokens(), dtype=np.int64))
    assert counts[stream].sum().item() == dm.meta["splits"]["train"]["bytes"] + dm.meta["splits"]["train"]["documents"]
    chars = make(tmp_path, path, tokenizer=CharTokenizer())
    counts = chars.facts()["token_bytes"]
    assert all(counts[chars.tokenizer.encode(d)].sum().item() == len(d.encode()) for d in docs[:20])


def test_missing_empty_and_short_files_are_named(tmp_path, fake):
    path, _ = fake
    with pytest.raises(DataError, match=re.escape(f"file {tmp_path / 'ts' / 'TinyStories-train.txt'} (or TinyStories-train.txt.gz)")
                       + ".*val_file=null"):
        make(tmp_path, "TinyStories-train.txt", data_dir=str(tmp_path / "ts")).setup()
    with pytest.raises(DataError, match=re.escape(f"no text corpus val file {tmp_path / 'valid.txt'}")):
        make(tmp_path, path, val_file=str(tmp_path / "valid.txt")).setup()
    (tmp_path / "empty.txt").write_text("\n<|endoftext|>\n  \n")
    (tmp_path / "one.txt").write_text("A single story without separators.\n\nIt goes on.\n")
    for name, message in (("empty.txt", "holds no text"), ("one.txt", "holds one document")):
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name} {message}")):
            make(tmp_path, tmp_path / name).setup()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'empty.txt'} holds no text")):
        make(tmp_path, path, val_file=str(tmp_path / "empty.txt")).setup()
    n_val = len(make(tmp_path, path).val_tokens())
    with pytest.raises(DataError, match=rf"val stream .* has {n_val} tokens, fewer than one window of max_len \+ 1 = {n_val + 1}"):
        make(tmp_path, path, max_len=n_val).setup()
    with gzip.open(tmp_path / "stories.txt.gz", "wt") as f:  # the other spelling is found
        f.write(path.read_text())
    path.unlink()
    make(tmp_path, path).setup()
    for bad in ({"val_fraction": 0.0}, {"val_windows": 0}, {"max_len": 0}):
        with pytest.raises(ConfigError):
            make(tmp_path, path, **bad)


def test_hub_fills_missing_files_or_says_it_failed(tmp_path, monkeypatch):
    stories = {"train": [f"Story {i} of the train split." for i in range(40)], "validation": ["A val story.", "Another."]}
    split = lambda texts: types.SimpleNamespace(iter=lambda batch_size: iter([{"text": texts[:7]}, {"text": texts[7:]}]))  # noqa: E731
    fake_hub = types.SimpleNamespace(load_dataset=lambda hub_id, cache_dir: {k: split(v) for k, v in stories.items()})
    monkeypatch.setitem(sys.modules, "datasets", fake_hub)
    hub = {"data_dir": str(tmp_path / "ts"), "val_file": "TinyStories-valid.txt", "hub_id": "roneneldan/TinyStories"}
    dm = make(tmp_path, "TinyStories-train.txt", max_len=4, **hub)
    assert documents_of(dm.val_tokens(), dm.tokenizer) == stories["validation"]
    assert list(iter_documents(tmp_path / "ts" / "TinyStories-train.txt")) == stories["train"]

    def offline(hub_id, cache_dir):
        raise ConnectionError("no network")

    monkeypatch.setattr(fake_hub, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hub download of 'roneneldan/TinyStories' failed \(ConnectionError: no network\)"):
        make(tmp_path, "TinyStories-train.txt", max_len=4, **{**hub, "data_dir": str(tmp_path / "empty")}).setup()


def test_artifacts_round_trip_the_tokenizer(tmp_path, fake, monkeypatch):
    path, _ = fake
    dm = make(tmp_path, path)
    dm.save_artifacts(tmp_path / "run")
    monkeypatch.setattr(BPETokenizer, "build", lambda *a, **k: pytest.fail("trained again"))
    restored = make(tmp_path / "elsewhere", path)
    restored.load_artifacts(tmp_path / "run")
    assert restored.tokenizer.fingerprint() == dm.tokenizer.fingerprint()
    assert restored.facts()["vocab_size"] == 300 and restored.facts()["eos_id"] == dm.tokenizer.eos_id
    assert np.array_equal(restored.train_tokens(), dm.train_tokens())


def test_windows_travel_to_workers_without_the_stream(tmp_path, fake):
    path, _ = fake
    dm = make(tmp_path, path)
    dm.setup()
    data = dm.datasets["train"]
    blob = pickle.dumps(data)
    assert len(blob) < 2000 < data.tokens.nbytes
    copy = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(copy.__getitems__([0, 5, 9]), data.__getitems__([0, 5, 9])))


@pytest.mark.skipif(not (SHARED / "tinystories_sample").is_dir(), reason="shared TinyStories sample not present")
def test_real_tinystories_sample_splits_into_2825_stories(tmp_path):
    dm = make(tmp_path, SHARED / "tinystories_sample" / "validation_head.txt.gz", tokenizer=BPETokenizer(max_vocab=512),
              tokenizer_train_chars=300_000, max_len=128)
    dm.setup()
    splits = dm.meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 2825 and splits["val"]["documents"] == 141
    train = np.asarray(dm.train_tokens())
    assert (train == dm.tokenizer.eos_id).sum() == splits["train"]["documents"]
    counts = dm.facts()["token_bytes"]
    assert counts[torch.from_numpy(train.astype(np.int64))].sum().item() == splits["train"]["bytes"] + splits["train"]["documents"]
    first = dm.tokenizer.decode(train[: np.argmax(train == dm.tokenizer.eos_id)])
    assert first.startswith("Spot. Spot saw the shiny car")


@pytest.mark.skipif(not (SHARED / "gpt2_tokenizer").is_dir(), reason="shared GPT-2 tokenizer not present")
def test_gpt2_token_bytes_and_stream(tmp_path, fake):
    path, docs = fake
    dm = make(tmp_path, path, tokenizer=GPT2Tokenizer(vocab_dir=str(SHARED / "gpt2_tokenizer")))
    tok, counts = dm.tokenizer, dm.facts()["token_bytes"]
    assert tok.eos_id == 50256 and counts[50256] == 1 and counts[tok.pad_id] == 0 and dm.train_tokens().dtype == np.uint16
    assert all(counts[tok.encode(d)].sum().item() == len(d.encode()) for d in docs)
