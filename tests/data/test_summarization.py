"""Summarization data: prompt + summary sequences and their labels, left-padded prompts for generation, truncation
that keeps the summary's room, config and data errors, run artifacts, the lead baseline; tiny synthetic jsonl files,
and the real SciTLDR-A / DialogSum files with GPT-2's tokenizer when ../shared/data has them."""

import gzip
import json
import logging
import sys
import types

import pytest
import torch

from attnlab.data.summarization import IGNORE, SummarizationDataModule, lead, sentences
from attnlab.data.tokenizers import BPETokenizer, GPT2Tokenizer
from attnlab.errors import ConfigError, DataError

TINY_BPE = BPETokenizer(max_vocab=400, min_freq=1)
WORDS = "the model learns a short summary of each long document about cats dogs and birds in the park".split()


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)).capitalize() + "."


def write(path, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def synth_rows(tmp_path, *, long: bool = False):
    """train.jsonl (source a list of sentences), val.jsonl.gz, news.jsonl (two reference fields, some empty) in
    tmp_path/summ; long: validation sources and summaries longer than any max_len of the tests."""
    root = tmp_path / "summ"
    root.mkdir()
    write(root / "train.jsonl", [{"doc": [text(i, 8), text(i + 1, 6)], "tldr": text(i, 4)} for i in range(40)])
    n = 200 if long else 12
    write(root / "val.jsonl.gz", [{"doc": text(i, n), "tldr": [text(i, 3 if not long else 50)]} for i in range(10)])
    write(root / "news.jsonl", [{"doc": text(i, 10), "s1": text(i, 5), "s2": "" if i % 2 else text(i + 2, 5)}
                                for i in range(7)])
    return root


@pytest.fixture
def synth(tmp_path):
    """synth_rows' files."""
    return synth_rows(tmp_path)


SPLITS = {"train": {"file": "train.jsonl", "source": "doc", "targets": ["tldr"]},
          "val": {"file": "val.jsonl.gz", "source": "doc", "targets": ["tldr"]},
          "test_news": {"file": "news.jsonl", "source": "doc", "targets": ["s1", "s2"]}}


def make(data_dir, **kw) -> SummarizationDataModule:
    args = {"tokenizer": TINY_BPE, "seed": 0, "data_dir": str(data_dir), "splits": SPLITS, "max_len": 64,
            "max_summary_len": 16, "batch_size": 4, "eval_batch_size": 3, **kw}
    return SummarizationDataModule(**args)


def check_batch(batch, pre, refs, sources, max_summary_len=16):
    """labels are IGNORE exactly on prompt and pad, and " " + the first reference + <eos> (cut to max_summary_len)
    elsewhere; the prompt before them is what `preprocessing().prompt` makes of the source."""
    tok = pre.tokenizer
    for b in range(len(batch["index"])):
        ids, mask, labels = batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b]
        scored = labels != IGNORE
        n, s = int(mask.sum()), int(scored.sum())
        assert mask[:n].all() and not mask[n:].any() and (ids[n:] == tok.pad_id).all()  # right-padded
        assert scored[n - s : n].all() and not scored[: n - s].any() and not scored[n:].any()
        assert torch.equal(labels[scored], ids[n - s : n]) and int(labels[n - 1]) == tok.eos_id
        i = int(batch["index"][b])
        summary = tok.decode(labels[scored][:-1].tolist(), skip_special=False)
        assert summary == " " + refs[i][0] or (s == max_summary_len and (" " + refs[i][0]).startswith(summary))
        assert pre.decode(labels) == summary.strip() and ids[: n - s].tolist() == pre.prompt([sources[i]])[0]


# -- batches -------------------------------------------------------------------------------------------------------
def test_train_batches_score_the_summary_only(synth):
    dm = make(synth)
    dm.setup("fit")
    pre = dm.preprocessing()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["index"].dtype == torch.int64
    assert batch["attention_mask"].dtype == torch.bool and batch["input_ids"].shape == batch["labels"].shape
    check_batch(batch, pre, dm.references("train"), dm.sources("train"))
    assert dm.sources("train")[0] == text(0, 8) + " " + text(1, 6)  # a list of sentences is joined with " "
    order = [int(i) for b in dm.train_dataloader() for i in b["index"]]
    assert sorted(order) == list(range(40)) and order != list(range(40))  # shuffled, every row once
    again = make(synth)
    again.setup("fit")
    assert order == [int(i) for b in again.train_dataloader() for i in b["index"]]  # the seed decides the order


def test_eval_batches_carry_left_padded_prompts_and_every_reference(synth):
    dm = make(synth)
    dm.setup("test")
    pre = dm.preprocessing()
    loaders = dm.test_dataloader()
    assert len(loaders) == 1 and dm.facts()["test_sets"] == ["news"]
    batches = list(loaders[0])
    assert [int(i) for b in batches for i in b["index"]] == list(range(7))  # file order
    batch = batches[0]
    assert batch["set"] == "news" and batch["sources"] == dm.sources("test_news")[:3]
    assert batch["refs"] == [[text(0, 5), text(2, 5)], [text(1, 5)], [text(2, 5), text(4, 5)]]  # empty ones left out
    check_batch(batch, pre, dm.references("test_news"), dm.sources("test_news"))
    prompts, mask = batch["prompt_ids"], batch["prompt_mask"]
    assert prompts.dtype == torch.int64 and mask.dtype == torch.bool
    suffix = list(pre.suffix)
    for b, source in enumerate(batch["sources"]):
        want = pre.prompt([source])[0]
        assert prompts[b][mask[b]].tolist() == want and mask[b, -len(want):].all() and not mask[b, : -len(want)].any()
        assert (prompts[b][~mask[b]] == pre.tokenizer.pad_id).all() and prompts[b, -len(suffix):].tolist() == suffix
    assert pre.tokenizer.decode(suffix) == "\nTL;DR:"
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))
    assert val["set"] == "val" and len(val["index"]) == 3 and val["refs"][0] == [text(0, 3)]


def test_a_long_source_is_cut_and_the_summary_keeps_its_room(synth):
    write(synth / "val.jsonl.gz", [{"doc": text(0, 200), "tldr": text(0, 100)}, {"doc": "Short.", "tldr": "Tiny."}])
    dm = make(synth, max_len=48, max_summary_len=10)
    dm.setup("validate")
    pre = dm.preprocessing()
    assert pre.room == 48 - 10 - len(pre.prefix) - len(pre.suffix)
    batch = next(iter(dm.val_dataloader()))
    scored = batch["labels"] != IGNORE
    assert scored.sum(1).tolist()[0] == 10 and batch["input_ids"].shape[1] == 48  # 9 summary tokens + eos
    assert int(batch["prompt_mask"][0].sum()) == 48 - 10
    assert batch["prompt_ids"][0, -len(pre.suffix):].tolist() == list(pre.suffix)
    assert batch["refs"][0] == [text(0, 100)] and batch["sources"][0] == text(0, 200)  # raw text is never cut
    assert pre.prompt([text(0, 200)])[0] == batch["prompt_ids"][0].tolist()  # generation prompts are cut alike
    with pytest.raises(DataError, match=r"val, row 0: the source has \d+ tokens but max_len=48 leaves room for \d+ .*"
                                        r"data\.truncate=true"):
        make(synth, max_len=48, max_summary_len=10, truncate=False).setup("validate")


# -- config errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["TL;DR:", "{source} and {source}", "{src}\nTL;DR:"])
def test_a_template_needs_the_source_exactly_once(synth, template):
    with pytest.raises(ConfigError, match=r"data\.template must hold \{source\} exactly once"):
        make(synth, template=template)


def test_a_template_that_leaves_no_room_is_a_config_error(synth):
    dm = make(synth, template="Summarise this scientific paper in one sentence: {source}\nTL;DR:", max_len=20)
    with pytest.raises(ConfigError, match=r"leaves no room for the source in max_len=20: raise data\.max_len or lower "
                                          r"data\.max_summary_len"):
        dm.facts()


def test_splits_limit_and_hub_are_checked(synth):
    with pytest.raises(ConfigError, match=r"data\.splits\.test: a split is train, val or test_<name>"):
        make(synth, splits={**SPLITS, "test": SPLITS["val"]})
    with pytest.raises(ConfigError, match=r"data\.splits\.val must be \{file: .*targets: \[<field>"):
        make(synth, splits={**SPLITS, "val": {"file": "val.jsonl.gz", "source": "doc", "targets": "tldr"}})
    with pytest.raises(ConfigError, match=r"data\.limit\.tset_news: limit maps a split"):
        make(synth, limit={"tset_news": 3})
    with pytest.raises(ConfigError, match=r"data\.hub must be"):
        make(synth, hub={"id": "x/y", "source": "a", "targets": ["b"], "splits": {"test_cnn": "test"}})
    with pytest.raises(ConfigError, match=r"fit needs the val split\(s\): add them to data\.splits"):
        make(synth, splits={"train": SPLITS["train"]}).setup("fit")
    dm = make(synth, limit={"train": 5, "test_news": 2})
    dm.setup()
    assert len(dm.datasets["train"]) == 5 and len(dm.datasets["val"]) == 10 and dm.references("test_news") == [
        [text(0, 5), text(2, 5)], [text(1, 5)]]


# -- data errors ---------------------------------------------------------------------------------------------------
def test_bad_files_name_the_file_line_and_fix(synth):
    with pytest.raises(DataError, match=r"missing file .*nowhere.*train\.jsonl; copy it there"):
        make(synth / "nowhere").facts()  # a trained tokenizer reads train
    write(synth / "news.jsonl", [{"doc": "A.", "s1": "B."}, {"doc": "C.", "s1": " ", "s2": []}])
    with pytest.raises(DataError, match=r"news\.jsonl, line 2: no reference in the fields \['s1', 's2'\]"):
        make(synth).references("test_news")
    write(synth / "news.jsonl", [{"text": "A.", "s1": "B."}])
    with pytest.raises(DataError, match=r"news\.jsonl, line 1: no text in the source field 'doc'"):
        make(synth).sources("test_news")
    (synth / "news.jsonl").write_text('{"doc": "A.", "s1": "B."}\n{oops\n')
    with pytest.raises(DataError, match=r"news\.jsonl, line 2: not a JSON object"):
        make(synth).sources("test_news")


def test_missing_files_come_from_the_hub_when_set(synth, monkeypatch):
    rows = {"test": [{"article": text(i, 9), "highlights": text(i, 3), "id": i} for i in range(4)]}
    calls = []

    def load_dataset(hub_id, config, split, cache_dir):
        calls.append((hub_id, config, split))
        if split not in rows:
            raise ConnectionError("offline")
        return rows[split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    hub = {"id": "abisee/cnn_dailymail", "config": "3.0.0", "source": "article", "targets": ["highlights"],
           "splits": {"test_cnn": "test", "val": "validation"}}
    splits = {**SPLITS, "test_cnn": {"file": "cnn/test.jsonl.gz", "source": "text", "targets": ["summary"]}}
    dm = make(synth, splits=splits, hub=hub)
    dm.prepare_data()
    assert calls == [("abisee/cnn_dailymail", "3.0.0", "test")]  # only the missing file
    assert dm.sources("test_cnn") == [text(i, 9) for i in range(4)] and dm.references("test_cnn")[1] == [text(1, 3)]
    (synth / "val.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"no .*val\.jsonl\.gz and the hub download of 'abisee/cnn_dailymail' "
                                        r"\(validation\) failed \(ConnectionError: offline\); copy the val file there"):
        make(synth, splits=splits, hub=hub).sources("val")


# -- artifacts, preprocessing, lead ----------------------------------------------------------------------------------
def test_artifacts_round_trip_without_data(synth, tmp_path):
    dm = make(synth)
    facts = dm.facts()
    run = tmp_path / "run"
    dm.save_artifacts(run)
    assert json.loads((run / "tokenizer" / "summarization.json").read_text())["test_sets"] == ["news"]
    other = make(tmp_path / "nowhere", splits={"train": SPLITS["train"], "val": SPLITS["val"]})
    assert other.load_artifacts(tmp_path / "empty") is False
    assert other.load_artifacts(run) is True
    again = other.facts()
    assert again["test_sets"] == ["news"] and again["tokenizer"].fingerprint() == facts["tokenizer"].fingerprint()
    assert {k: v for k, v in again.items() if k != "tokenizer"} == {k: v for k, v in facts.items() if k != "tokenizer"}
    docs = dm.sources("test_news")
    assert other.preprocessing().prompt(docs) == dm.preprocessing().prompt(docs)


def test_decode_stops_at_eos_and_skips_ignored_labels(synth):
    pre = make(synth).preprocessing()
    tok = pre.tokenizer
    ids = tok.encode(" A short summary.")
    assert pre.decode(ids + [tok.eos_id] + tok.encode(" more")) == "A short summary."
    assert pre.decode(torch.tensor([IGNORE, IGNORE, *ids, tok.eos_id, tok.pad_id])) == "A short summary."


@pytest.mark.parametrize("source, n, want", [
    ("Mr. Smith went to Washington. He came back on Monday! Did he?", 1, "Mr. Smith went to Washington."),
    ("Mr. Smith went to Washington. He came back on Monday! Did he?", 2,
     "Mr. Smith went to Washington. He came back on Monday!"),
    ("We use e.g. dropout, i.e. noise. Results (Fig. 3) improve by 3.5 points. Done.", 1,
     "We use e.g. dropout, i.e. noise."),
    ("Work by Lee et al. Shows gains.", 1, "Work by Lee et al. Shows gains."),
    ("#Person1#: Hi, Dr. Hawkins. How are you?\n#Person2#: Fine", 1, "#Person1#: Hi, Dr. Hawkins."),
    ("#Person1#: Hello\n#Person2#: Hi. Bye.", 2, "#Person1#: Hello #Person2#: Hi."),
    ("  no capital after. the end  ", 1, "no capital after. the end"),
    ("", 1, ""),
])
def test_lead_takes_the_first_sentences(source, n, want):
    assert lead(source, n) == want


def test_sentences_keep_every_word():
    doc = "A first one. A second one!\nThird, by Dr. Who? Fourth."
    assert sentences(doc) == ["A first one.", "A second one!", "Third, by Dr. Who?", "Fourth."]


# -- the real data ---------------------------------------------------------------------------------------------------
def scitldr(shared_data, *overrides):
    """data=scitldr as train.py builds it, with paths.data_dir at ../shared/data."""
    from hydra import compose, initialize_config_dir

    from attnlab import build
    from attnlab.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["data=scitldr", f"paths.data_dir={shared_data}", *overrides])
    return build.instantiate(cfg.data, "data")


@pytest.mark.data
def test_real_scitldr_and_dialogsum_counts(shared_data):
    dm = scitldr(shared_data)
    assert [len(dm.references(s)) for s in ("train", "val", "test_scitldr", "test_dialogsum")] == [1992, 619, 618, 500]
    assert all(len(r) == 1 for r in dm.references("train"))
    assert sum(map(len, dm.references("test_scitldr"))) / 618 > 3 and sum(map(len, dm.references("val"))) / 619 > 2
    assert all(len(r) == 3 for r in dm.references("test_dialogsum"))
    dialogue = dm.sources("test_dialogsum")[0]
    assert dialogue.startswith("#Person1#: ") and "\n#Person2#: " in dialogue  # turns keep their line breaks
    with gzip.open(shared_data / "scitldr_a" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        row = json.loads(f.readline())
    assert dm.sources("train")[0] == " ".join(row["source"]) and dm.references("train")[0] == row["target"]


@pytest.mark.data
def test_real_gpt2_batches(shared_data, caplog):
    dm = scitldr(shared_data, "data.limit={train: 48, val: 16, test_scitldr: 16, test_dialogsum: 16}")
    with caplog.at_level(logging.INFO, logger="attnlab.data.summarization"):
        dm.setup()
    assert "train: 48 rows (1.00 references each)" in caplog.text and "encoded in" in caplog.text
    pre = dm.preprocessing()
    assert pre.tokenizer.eos_id == pre.tokenizer.pad_id == 50256 and pre.tokenizer.decode(pre.suffix) == "\nTL;DR:"
    check_batch(next(iter(dm.train_dataloader())), pre, dm.references("train"), dm.sources("train"), 64)
    for loader, name in zip(dm.test_dataloader(), ("scitldr", "dialogsum")):
        batch = next(iter(loader))
        assert batch["set"] == name and batch["prompt_ids"][:, -len(pre.suffix):].tolist() == [list(pre.suffix)] * 8
        check_batch(batch, pre, dm.references(f"test_{name}"), dm.sources(f"test_{name}"), 64)
    assert all(len(p) + 64 <= 512 for p in dm.datasets["test_dialogsum"].prompts)


@pytest.mark.data
def test_real_facts_read_no_data(shared_data, tmp_path):
    nowhere = f"data.data_dir={tmp_path / 'nowhere'}"  # the tokenizer stays at paths.data_dir/gpt2_tokenizer
    facts = scitldr(shared_data, nowhere).facts()
    assert {k: v for k, v in facts.items() if k != "tokenizer"} == {
        "vocab_size": 50257, "max_len": 512, "eos_id": 50256, "pad_id": 50256, "max_summary_len": 64,
        "test_sets": ["scitldr", "dialogsum"], "template": "{source}\nTL;DR:"}
    scitldr(shared_data, nowhere).save_artifacts(tmp_path / "run")
    other = scitldr(shared_data, nowhere, "data.tokenizer.vocab_dir=null", "data.tokenizer.hub_id=offline/none")
    assert other.load_artifacts(tmp_path / "run") and other.facts()["vocab_size"] == 50257  # loaded, not built


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_tokens_are_reserved_so_the_longest_batch_fits_the_position_table(method, tmp_path):
    """Prompt and prefix tuning put num_virtual_tokens positions before every input: the data reserves them
    (conf/data/scitldr.yaml: reserved_tokens from peft.num_virtual_tokens), so a batch of max_len tokens still fits
    GPT-2's position table; without the reservation it runs past it."""
    from attnlab import adapters
    from attnlab.models.hf import HFCausalLM

    root = synth_rows(tmp_path, long=True)

    def longest_batch(reserved: int):
        dm = make(root, max_len=32, max_summary_len=8, batch_size=2, eval_batch_size=2, reserved_tokens=reserved)
        dm.setup("validate")
        return dm.facts()["vocab_size"], next(iter(dm.val_dataloader()))

    vocab, batch = longest_batch(4)
    assert batch["input_ids"].shape[1] == 32 - 4
    adapter = (adapters.PromptTuning if method == "prompt_tuning" else adapters.PrefixTuning)(num_virtual_tokens=4)
    torch.manual_seed(0)
    model = adapter.apply(HFCausalLM(vocab_size=vocab, max_len=32, n_layer=1, n_embd=16, n_head=2, dropout=0.0))
    assert model(batch["input_ids"]).shape == (2, 28, vocab)
    _, full = longest_batch(0)
    assert full["input_ids"].shape[1] == 32
    with pytest.raises(IndexError):
        model(full["input_ids"])
