"""data=text_classification: tables of any format and classes, stratified splits, skipped rows, clear errors."""

import csv
import gzip
import json
import logging
import re

import numpy as np
import pytest

from attnlab.data.splits import stratified_split
from attnlab.data.text_classification import TextClassificationDataModule, sorted_labels
from attnlab.data.tokenizers import WordTokenizer
from attnlab.errors import DataError

WORDS = {"apple": "crisp sweet orchard", "banana": "yellow peel tropical", "cherry": "red stone tart"}
FILLER = "the a it was and of this to in very".split()


def write_csv(path, n=60, *, seed=0, labels=tuple(WORDS), extra_rows=(), delimiter=","):
    """A learnable table: each text holds its label's three words among filler words."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "review", "stars"])
        for i in range(n):
            label = labels[i % len(labels)]
            words = list(rng.choice(FILLER, size=8)) + WORDS.get(label, "odd").split()
            rng.shuffle(words)
            writer.writerow([i, " ".join(words), label])
        writer.writerows(extra_rows)
    return path


def make(tmp_path, train, **kw):
    args = {"train_file": str(train), "cache_dir": str(tmp_path / "cache"), "seed": 0, "text_column": "review",
            "label_column": "stars", "tokenizer": WordTokenizer(max_vocab=100, min_freq=1), "max_len": 16,
            "batch_size": 8, "val_size": 0.2, "test_size": 0.2, **kw}
    return TextClassificationDataModule(**args)


def test_three_string_labels_split_stratified_and_batch(tmp_path):
    dm = make(tmp_path, write_csv(tmp_path / "train.csv"))
    facts = dm.facts()
    assert facts["num_classes"] == 3 and facts["class_names"] == ["apple", "banana", "cherry"]
    dm.setup()
    sizes = {s: len(dm.datasets[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 36, "val": 12, "test": 12}
    for split in ("train", "val", "test"):  # every class on every side, in its share
        assert np.bincount(dm.datasets[split].labels.numpy(), minlength=3).tolist() == [sizes[split] // 3] * 3
    inputs, labels = next(iter(dm.train_dataloader()))
    assert inputs["input_ids"].shape[0] == 8 and labels.max() <= 2
    again = make(tmp_path, tmp_path / "train.csv", seed=7)  # the run seed shuffles, split_seed splits
    again.setup()
    assert again.datasets["val"].labels.tolist() == dm.datasets["val"].labels.tolist()


def test_stratified_split_keeps_every_class_even_a_rare_one():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 2)
    kept, held = stratified_split(labels, 0.1, seed=3)
    assert len(kept) + len(held) == 82 and not set(kept) & set(held)
    assert set(labels[held]) == {0, 1, 2} and set(labels[kept]) == {0, 1, 2}
    assert len(held) == 8
    assert np.array_equal(stratified_split(labels, 0.1, seed=3)[1], held)  # seeded
    assert not np.array_equal(stratified_split(labels, 0.1, seed=4)[1], held)


def test_integer_labels_sort_numerically_and_jsonl_gz_and_tsv_read_alike(tmp_path):
    rows = [{"text": f"word{i % 3} filler text", "label": [2, 10, 1][i % 3]} for i in range(30)]
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    dm = make(tmp_path, path, text_column="text", label_column="label")
    assert dm.facts()["class_names"] == ["1", "2", "10"]
    assert sorted_labels(["b", "a", "10"]) == ["10", "a", "b"]
    tsv = write_csv(tmp_path / "t.tsv", n=30, delimiter="\t")
    assert make(tmp_path, tsv).facts()["class_names"] == ["apple", "banana", "cherry"]


def test_empty_texts_and_missing_labels_are_counted_and_skipped_once(tmp_path, caplog):
    train = write_csv(tmp_path / "train.csv", extra_rows=[[90, "", "apple"], [91, "  ", "banana"], [92, "some text", ""]])
    dm = make(tmp_path, train)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 3 row(s) with an empty text or a missing label" in warnings[0]
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 60


def test_a_label_training_never_saw_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", n=8, labels=("apple", "durian"))
    with pytest.raises(DataError, match=r"test.csv has label\(s\) 'durian' not seen in training \(apple, banana, cherry\)"):
        make(tmp_path, train, test_file=str(test)).setup()


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    with pytest.raises(DataError, match=re.escape("has no column 'text'; its columns: id, review, stars")):
        make(tmp_path, train, text_column="text").facts()
    with pytest.raises(DataError, match=r"data.train_file=.*nowhere.csv: no such file"):
        make(tmp_path, tmp_path / "nowhere.csv").facts()


def test_a_single_class_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", labels=("apple",))
    with pytest.raises(DataError, match="has a single label \\('apple'\\); classification needs at least two"):
        make(tmp_path, train).facts()


def test_label_order_survives_save_and_reload(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    order = ["cherry", "apple", "banana"]
    dm = make(tmp_path, train, class_names=order)
    dm.setup()
    dm.save_artifacts(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "class_names.json").read_text()) == order
    again = make(tmp_path, tmp_path / "elsewhere.csv")  # no data at all: the run's artifacts say everything
    assert again.load_artifacts(tmp_path / "run")
    assert again.facts()["class_names"] == order and again.tokenizer.fingerprint() == dm.tokenizer.fingerprint()
    first = dm.datasets["train"].labels[0].item()
    assert order[first] in ("cherry", "apple", "banana")


def test_another_runs_tokenizer_comes_without_its_classes(tmp_path):
    """init_from: the source run's tokenizer (its weights read those ids), this data's own classes (a 2-class run
    fine-tuned into a 3-class task keeps 3)."""
    source = make(tmp_path, write_csv(tmp_path / "two.csv", labels=("apple", "banana")),
                  tokenizer=WordTokenizer(max_vocab=30, min_freq=1))
    source.setup()
    source.save_artifacts(tmp_path / "run")
    target = make(tmp_path, write_csv(tmp_path / "three.csv"))
    assert target.load_tokenizer(tmp_path / "run")
    facts = target.facts()
    assert facts["class_names"] == ["apple", "banana", "cherry"] and facts["vocab_size"] == source.tokenizer.vocab_size
    assert target.tokenizer.fingerprint() == source.tokenizer.fingerprint()
    assert not make(tmp_path, tmp_path / "three.csv").load_tokenizer(tmp_path / "nothing")
