"""Translation data: the three sources and their errors, the no-leak Tatoeba split, empty and long pairs, the cache,
run artifacts, batches, DDP sharding; and the real Multi30k / Tatoeba files when ../shared/data has them."""

import gzip
import logging
import re
import sys
import types

import pytest
import torch

from attnlab.data.parallel import FilePairs, SplitDirectory, TabSeparated, fake_pairs, read_lines, write_fake_multi30k
from attnlab.data.tokenizers import BPETokenizer, Tokenizer
from attnlab.data.translation import TranslationDataModule
from attnlab.errors import ConfigError, DataError

TINY_BPE = BPETokenizer(max_vocab=300, min_freq=1)


def make(data_dir, tmp_path, **kw) -> TranslationDataModule:
    source = kw.pop("source", None) or SplitDirectory(data_dir=str(data_dir))
    args = {"source": source, "cache_dir": str(tmp_path / "cache"), "tokenizer": TINY_BPE, "seed": 0,
            "max_src_len": 32, "max_tgt_len": 32, "batch_size": 16, "eval_batch_size": 8, "bucket_size": 2, **kw}
    return TranslationDataModule(**args)


def write(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


@pytest.fixture
def fake(tmp_path):
    return write_fake_multi30k(tmp_path / "m30k")


def rows(batch, key, pad):
    """The unpadded rows of batch[key]."""
    return [[t for t in row if t != pad] for row in batch[key].tolist()]


# -- sources -------------------------------------------------------------------------------------------------------
def test_split_directory_finds_the_test_sets_and_keeps_the_raw_text(fake, tmp_path):
    dm = make(fake, tmp_path)
    facts = dm.facts()
    assert facts["test_sets"] == ["test_2016_flickr", "test_2017_mscoco"] and facts["shared_vocab"] is True
    assert facts["src_vocab_size"] == facts["tgt_vocab_size"] == dm.tokenizers["source"].vocab_size
    assert facts["sos_id"] == dm.tokenizers["target"].sos_id and facts["tgt_pad_id"] == facts["src_pad_id"] == 0
    dm.setup("test")
    for split in ("val", "test_2016_flickr"):
        assert dm.sources(split) == read_lines(fake / f"{split}.en.gz") and len(dm.sources(split)) == len(dm.datasets[split])
        assert dm.references(split) == read_lines(fake / f"{split}.fr.gz")
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [30, 20]
    restricted = make(fake, tmp_path, test_sets=["test_2017_mscoco", "test_2016_flickr"])
    assert restricted.facts()["test_sets"] == ["test_2017_mscoco", "test_2016_flickr"]
    with pytest.raises(ConfigError, match=r"\['test_2099'\], which the source lacks; choose from: test_2016_flickr, "):
        make(fake, tmp_path, test_sets=["test_2099"]).facts()


def test_missing_files_name_what_was_looked_for(fake, tmp_path):
    (fake / "test_2017_mscoco.fr.gz").unlink()
    with pytest.raises(DataError, match=r"no test_2017_mscoco\.fr\.gz \(or test_2017_mscoco\.fr\) under .*m30k"):
        make(fake, tmp_path).setup()
    with pytest.raises(DataError, match=r"no train\.en\.gz \(or train\.en\) under .*nowhere.*data\.source\.data_dir"):
        make(tmp_path / "nowhere", tmp_path).facts()
    with pytest.raises(DataError, match=r"missing file .*fra\.txt\.gz"):
        make(None, tmp_path, source=TabSeparated(path=str(tmp_path / "fra.txt.gz"))).facts()


def test_unequal_line_counts_name_both_files_and_counts(fake, tmp_path):
    write(fake / "val.fr.gz", read_lines(fake / "val.fr.gz")[:-1])
    with pytest.raises(DataError, match=r"val\.en\.gz has 40 lines but .*val\.fr\.gz has 39; line i of one"):
        make(fake, tmp_path).setup()


def test_file_pairs_resolve_in_data_dir_and_check_their_shape(fake, tmp_path):
    source = FilePairs(data_dir=str(fake), train=["train.en.gz", "train.fr.gz"], val=["val.en.gz", "val.fr.gz"],
                       test={"news": ["test_2017_mscoco.en.gz", "test_2017_mscoco.fr.gz"]})
    dm = make(None, tmp_path, source=source)
    assert dm.facts()["test_sets"] == ["news"] and dm.references("news") == read_lines(fake / "test_2017_mscoco.fr.gz")
    with pytest.raises(ConfigError, match=r"data\.source\.val must be \[source file, target file\]"):
        FilePairs(train=["a", "b"], val=["a"])
    with pytest.raises(ConfigError, match="'val' cannot name a test set"):
        FilePairs(train=["a", "b"], val=["a", "b"], test={"val": ["a", "b"]})


def tatoeba_lines(n: int = 600) -> list[str]:
    """Tab-separated pairs where English sentences recur with other translations, and French ones with other sources."""
    en, fr = fake_pairs(n, seed=1)
    lines = [f"{e}\t{f}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i, (e, f) in enumerate(zip(en, fr))]
    lines += [f"{e}\tLe {f[3:]}" for e, f in zip(en[:50], fr[:50])]  # a second translation
    return lines + ["", f"Hello there!\t{fr[0]}"]  # a blank line (skipped) and another source of a French sentence


def test_tab_separated_split_never_leaks_a_sentence_and_is_seeded(tmp_path):
    path = tmp_path / "fra.txt.gz"
    write(path, tatoeba_lines())
    source = TabSeparated(path=str(path), val_size=60, test_size=90, split_seed=3)
    splits = {s: source.read(s) for s in ("train", "val", "test")}
    assert sum(len(en) for en, _ in splits.values()) == 651
    assert 90 <= len(splits["test"][0]) < 110 and 60 <= len(splits["val"][0]) < 80
    for side in (0, 1):  # neither an English nor a French sentence in two splits
        sets = [set(pair[side]) for pair in splits.values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    again = TabSeparated(path=str(path), val_size=60, test_size=90, split_seed=3)
    assert all(again.read(s) == splits[s] for s in splits)
    other = TabSeparated(path=str(path), val_size=60, test_size=90, split_seed=4)
    assert other.read("test") != splits["test"]
    dm = make(None, tmp_path, source=source)
    assert dm.facts()["test_sets"] == ["test"] and dm.references("test") == splits["test"][1]


def test_tab_separated_bad_specs_and_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Go.\tVa !\nHi.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.tsv, line 2: 1 tab-separated field\(s\), column 1 is needed"):
        TabSeparated(path=str(path), val_size=0, test_size=0).read("train")
    write(tmp_path / "ok.gz", tatoeba_lines(20))
    with pytest.raises(DataError, match=r"val_size=10 \+ test_size=31 leave no training pairs out of the 41 in .*ok\.gz"):
        TabSeparated(path=str(tmp_path / "ok.gz"), val_size=10, test_size=31).read("train")
    with pytest.raises(ConfigError, match="val_size, test_size and the columns must be >= 0"):
        TabSeparated(path=str(path), val_size=-1)


def test_a_hub_dataset_is_written_in_the_split_directory_layout(tmp_path, monkeypatch):
    en, fr = fake_pairs(30)
    table = {"train": [{"translation": {"en": e, "fr": f}} for e, f in zip(en[:20], fr[:20])],
             "validation": [{"translation": {"en": e, "fr": f}} for e, f in zip(en[20:25], fr[20:25])],
             "test": [{"en": e, "fr": f + "\nsuite"} for e, f in zip(en[25:], fr[25:])]}  # a newline must not split a pair
    fake_hub = types.SimpleNamespace(load_dataset=lambda hub_id, config, cache_dir: table)
    monkeypatch.setitem(sys.modules, "datasets", fake_hub)
    dm = make(tmp_path / "hub", tmp_path, source=SplitDirectory(data_dir=str(tmp_path / "hub"), hub_id="someone/en-fr"))
    assert dm.facts()["test_sets"] == ["test"]
    assert dm.sources("val") == en[20:25] and dm.references("test") == [f + " suite" for f in fr[25:]]


# -- what setup keeps ------------------------------------------------------------------------------------------------
def test_empty_pairs_dropped_from_train_and_val_kept_in_test(fake, tmp_path, caplog):
    for split, at in (("train", 3), ("val", 0), ("test_2016_flickr", 5)):
        src, tgt = read_lines(fake / f"{split}.en.gz"), read_lines(fake / f"{split}.fr.gz")
        src[at] = "   "
        write(fake / f"{split}.en.gz", src)
        write(fake / f"{split}.fr.gz", tgt)
    dm = make(fake, tmp_path)
    with caplog.at_level(logging.INFO, logger="attnlab.data.translation"):
        dm.setup()
    assert "train: dropped 1 of 200 pairs with an empty side" in caplog.text and "val: dropped 1 of 40" in caplog.text
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test_2016_flickr"])) == (199, 39, 30)
    assert dm.sources("test_2016_flickr")[5] == ""
    eos = dm.facts()["eos_id"]
    assert dm.datasets["test_2016_flickr"][5]["src"].tolist() == [eos]  # an empty source is <eos> alone


def test_length_filter_drops_training_pairs_only(fake, tmp_path, caplog):
    long_en, long_fr = "A dog " * 30 + "runs.", "Un chien " * 30 + "court."
    for split in ("train", "test_2016_flickr"):
        write(fake / f"{split}.en.gz", [*read_lines(fake / f"{split}.en.gz")[:-1], long_en])
        write(fake / f"{split}.fr.gz", [*read_lines(fake / f"{split}.fr.gz")[:-1], long_fr])
    dm = make(fake, tmp_path, max_src_len=40, max_tgt_len=44)
    with caplog.at_level(logging.INFO, logger="attnlab.data.translation"):
        dm.setup()
    assert re.search(r"train: dropped 1 of 200 pairs longer than max_src_len=40 / max_tgt_len=44", caplog.text)
    assert "test_2016_flickr: 1 of 30 sources are longer than max_src_len=40 tokens and are cut" in caplog.text
    assert "test_2016_flickr: 1 of 30 targets are longer than max_tgt_len=44" in caplog.text
    assert len(dm.datasets["train"]) == 199 and len(dm.datasets["test_2016_flickr"]) == 30
    assert dm.references("test_2016_flickr")[-1] == long_fr  # BLEU scores the full reference
    last = dm.datasets["test_2016_flickr"][29]
    facts = dm.facts()
    assert len(last["src"]) == 40 and last["src"][-1] == facts["eos_id"]
    assert len(last["tgt"]) == 44 and last["tgt"][0] == facts["sos_id"] and last["tgt"][-1] == facts["eos_id"]
    assert last["src"].tolist() == dm.preprocessing().encode_source([long_en])[0]  # translate cuts as evaluation did


def test_second_setup_reads_the_cache_and_encodes_nothing(fake, tmp_path, caplog, monkeypatch):
    first = make(fake, tmp_path)
    first.prepare_data()
    first.setup()
    monkeypatch.setattr(Tokenizer, "encode_flat", lambda *a, **k: pytest.fail("encoded again"))
    monkeypatch.setattr(BPETokenizer, "build", lambda *a, **k: pytest.fail("trained again"))
    with caplog.at_level(logging.INFO, logger="attnlab.data.translation"):
        second = make(fake, tmp_path, max_src_len=12)  # lengths are cut at setup: no new entry
        second.setup()
    assert "encoded cache hit" in caplog.text and len(list((tmp_path / "cache").glob("encoded-*"))) == 1
    assert second.tokenizers["source"].fingerprint() == first.tokenizers["source"].fingerprint()
    assert torch.equal(second.datasets["val"].tgt.ids, first.datasets["val"].tgt.ids)
    write(fake / "val.fr.gz", read_lines(fake / "val.fr.gz")[::-1])  # an edited file: encoded again
    with pytest.raises(BaseException, match="encoded again"):
        make(fake, tmp_path).setup()


@pytest.mark.parametrize("joint", [True, False])
def test_saved_artifacts_give_the_same_facts_and_ids_without_data(fake, tmp_path, joint):
    dm = make(fake, tmp_path, joint=joint)
    dm.setup()
    dm.save_artifacts(tmp_path / "run")
    texts = dm.sources("val")
    fresh = make(tmp_path / "gone", tmp_path / "elsewhere", joint=True)  # no data files, no cache, another joint
    assert fresh.load_artifacts(tmp_path / "run") and not make(fake, tmp_path).load_artifacts(tmp_path / "none")
    plain = lambda facts: {k: v for k, v in facts.items() if k != "tgt_tokenizer"}  # noqa: E731
    assert plain(fresh.facts()) == plain(dm.facts()) and fresh.facts()["shared_vocab"] is joint
    assert fresh.facts()["tgt_tokenizer"].fingerprint() == dm.facts()["tgt_tokenizer"].fingerprint()
    assert fresh.preprocessing().encode_source(texts) == dm.preprocessing().encode_source(texts)
    assert not (tmp_path / "elsewhere").exists()
    if not joint:
        assert dm.tokenizers["source"].fingerprint() != dm.tokenizers["target"].fingerprint()


def test_decode_target_stops_at_eos_and_skips_specials(fake, tmp_path):
    dm = make(fake, tmp_path)
    prep, facts = dm.preprocessing(), dm.facts()
    text = "Un chien âgé court près du café !"
    ids = prep.target.encode(text)
    assert prep.decode_target([facts["sos_id"], *ids, facts["eos_id"], *ids, facts["tgt_pad_id"]]) == text
    assert prep.decode_target(torch.tensor(ids)) == text
    assert prep.encode_source(["  " + text + " "])[0] == [*ids, facts["eos_id"]]


# -- batches ---------------------------------------------------------------------------------------------------------
def test_batches_are_padded_and_index_finds_the_raw_pair(fake, tmp_path):
    dm = make(fake, tmp_path)
    dm.setup()
    facts, prep = dm.facts(), dm.preprocessing()
    for split, loader in (("val", dm.val_dataloader()), ("test_2017_mscoco", dm.test_dataloader()[1])):
        seen = []
        for batch in loader:
            src, tgt, index = batch["src"], batch["tgt"], batch["index"]
            assert src.dtype == tgt.dtype == index.dtype == torch.long and src.shape[0] == tgt.shape[0] == len(index)
            lengths = (src != facts["src_pad_id"]).sum(1)
            assert src.shape[1] == lengths.max() and (src[torch.arange(len(src)), lengths - 1] == facts["eos_id"]).all()
            for row, i in zip(rows(batch, "tgt", facts["tgt_pad_id"]), index.tolist()):
                assert row[0] == facts["sos_id"] and row[-1] == facts["eos_id"]
                assert prep.decode_target(row) == dm.references(split)[i]  # byte-level BPE: exact
            assert rows(batch, "src", facts["src_pad_id"]) == prep.encode_source([dm.sources(split)[i] for i in index])
            # An evaluation batch names its set and carries the raw references BLEU is scored against.
            assert batch["set"] == split and batch["refs"] == [dm.references(split)[i] for i in index.tolist()]
            seen += index.tolist()
        assert sorted(seen) == list(range(len(dm.sources(split))))
    train = next(iter(dm.train_dataloader()))
    assert train["src"].shape[0] == 16 and train["tgt"][:, 0].eq(facts["sos_id"]).all()
    assert "refs" not in train and "set" not in train


def test_training_order_is_seeded_and_changes_each_epoch(fake, tmp_path):
    def order(seed, epoch):
        dm = make(fake, tmp_path, seed=seed)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    first = order(0, 0)
    assert sorted(first) == list(range(200)) and first == order(0, 0)
    assert first != order(0, 1) and first != order(1, 0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_cover_every_eval_pair_once(fake, tmp_path, world_size):
    dm = make(fake, tmp_path)
    dm.setup()
    val, tests, train_steps = [], [[], []], set()
    for rank in range(world_size):
        dm.trainer = types.SimpleNamespace(world_size=world_size, global_rank=rank)  # what the loaders read of DDP
        val += [i for b in dm.val_dataloader() for i in b["index"].tolist()]
        for seen, loader in zip(tests, dm.test_dataloader()):
            seen += [i for b in loader for i in b["index"].tolist()]
        train_steps.add(len(list(dm.train_dataloader())))
    assert sorted(val) == list(range(40)) and [sorted(t) for t in tests] == [list(range(30)), list(range(20))]
    assert len(train_steps) == 1  # ranks step together


# -- the real data (../shared/data) ------------------------------------------------------------------------------------
MULTI30K_TESTS = {"test_2016_flickr": 1000, "test_2017_flickr": 1000, "test_2017_mscoco": 461, "test_2018_flickr": 1071}


@pytest.mark.data
def test_real_multi30k_splits_and_raw_text(shared_data, tmp_path):
    root = shared_data / "multi30k_en_fr"
    dm = make(root, tmp_path)
    assert dm.test_set_names() == list(MULTI30K_TESTS)
    assert len(dm.sources("train")) == len(dm.references("train")) == 29000 and len(dm.sources("val")) == 1014
    for name, n in MULTI30K_TESTS.items():
        assert len(dm.sources(name)) == len(dm.references(name)) == n
    for split in ("val", "test_2016_flickr"):
        for lang, texts in (("en", dm.sources(split)), ("fr", dm.references(split))):
            with gzip.open(root / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                assert texts == [line.strip() for line in f.read().splitlines()]
    assert dm.sources("train")[0] == "Two young, White males are outside near many bushes."
    assert not (tmp_path / "cache").exists()  # raw text needs no tokenizer


@pytest.mark.data
def test_real_multi30k_round_trip_is_exact(shared_data, tmp_path):
    dm = make(shared_data / "multi30k_en_fr", tmp_path, tokenizer=BPETokenizer(max_vocab=8000), max_src_len=100)
    prep = dm.preprocessing()  # trains the joint BPE on the 29,000 training pairs (a few seconds)
    refs, srcs = dm.references("test_2016_flickr"), dm.sources("test_2016_flickr")
    assert any("é" in r for r in refs) and any("ç" in r for r in refs) and any("'" in r for r in refs)
    assert [prep.decode_target(ids) for ids in prep.encode_source(refs)] == refs  # joint: one tokenizer both ways
    assert [prep.decode_target(ids) for ids in prep.encode_source(srcs)] == srcs
    odd = "« Où est-ce ? » demanda l’Élève\u202f: ÇA coûte 5 € !"
    assert prep.decode_target(prep.encode_source([odd])[0]) == odd
    assert 10 < sum(map(len, prep.encode_source(refs[:100]))) / 100 < 25  # a real vocabulary: ~16 tokens a sentence


@pytest.mark.data
def test_real_tatoeba_split_never_leaks_and_is_deterministic(shared_data):
    path = str(shared_data / "tatoeba_fra_eng" / "fra.txt.gz")
    source = TabSeparated(path=path, val_size=2000, test_size=5000, split_seed=1234)
    splits = {s: source.read(s) for s in ("train", "val", "test")}
    assert sum(len(en) for en, _ in splits.values()) == 167130
    assert 5000 <= len(splits["test"][0]) < 5100 and 2000 <= len(splits["val"][0]) < 2100
    english = [set(en) for en, _ in splits.values()]
    assert not (english[0] & english[1] or english[0] & english[2] or english[1] & english[2])
    assert TabSeparated(path=path, val_size=2000, test_size=5000, split_seed=1234).read("test") == splits["test"]
