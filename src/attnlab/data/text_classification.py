"""Text classification from labelled files: `data=text_classification data.train_file=<csv|tsv|jsonl[.gz]>`, any
number of classes, labels as strings or integers; IMDB (attnlab.data.imdb) is one configuration of it.

Validation and test sets come from their own files when given, else from a seeded stratified split of the training
file. Preparation is cached under `cache_dir`: the tokenizer, keyed by its settings, the training file and the split;
the encoded texts, keyed by the tokenizer's content and the files. Truncation, special tokens and the split are cheap
array operations done at setup, so changing max_len re-encodes nothing. The class names are saved in the run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from attnlab.data.loading import make_loader, shard
from attnlab.data.sources import read_labelled_texts
from attnlab.data.splits import held_out_count, stratified_split
from attnlab.data.text import BucketSampler, TokenizedDataset, Truncation, atomic_dir, digest, file_stamps, truncate
from attnlab.data.tokenizers import Tokenizer, TokenizerRecipe
from attnlab.errors import ConfigError, DataError

SPECIALS = ("cls_sep", "none")
ARTIFACT_DIR = "tokenizer"  # in the run directory
LABELS_FILE = "class_names.json"  # in the run directory
SPLITS = ("train", "val", "test")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_CACHE_VERSION = 2  # bump when the encoded format changes


@dataclass(frozen=True)
class TextPreprocessing:
    """Raw texts -> a model's input batch, exactly as training made it: HTML line breaks out (strip_html), the run's
    tokenizer, truncation to max_len (head or head_tail) inside the special tokens, padding to the longest text."""

    tokenizer: Tokenizer
    max_len: int
    truncation: Truncation
    head_fraction: float
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    strip_html: bool
    text_column: str = "text"

    def clean(self, text: str) -> str:
        return strip_breaks(text) if self.strip_html else text

    def cut(self, ids: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoded texts (flat ids + offsets) truncated and wrapped in the special tokens."""
        return truncate(ids, offsets, index=index, max_len=self.max_len, mode=self.truncation,
                        head_fraction=self.head_fraction, prefix=self.prefix, suffix=self.suffix)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"input_ids": (B, T) long, "attention_mask": (B, T) bool}, T the longest text after truncation."""
        ids, offsets = self.tokenizer.encode_flat([self.clean(t) for t in texts])
        ids, offsets = self.cut(ids, offsets)
        rows = TokenizedDataset(ids, offsets, np.zeros(len(texts), dtype=np.int64), pad_id=self.pad_id)
        return rows.__getitems__(range(len(texts)))[0]

    def to_batch(self, inputs: Sequence[str | dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Raw inputs (texts, or table rows: dicts holding `text_column`) -> the model's input batch; an empty text
        is a DataError."""
        texts = [item.get(self.text_column) if isinstance(item, dict) else item for item in inputs]
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                where = f"input {i + 1}" + (f" (column {self.text_column!r})" if isinstance(inputs[i], dict) else "")
                raise DataError(f"{where} is an empty or missing text; a text classifier needs some text")
        return self(texts)


def strip_breaks(text: str) -> str:
    """HTML line breaks (`<br />`, as in IMDB's reviews) as spaces."""
    return _BR.sub(" ", text)


def sorted_labels(labels: Sequence[str]) -> list[str]:
    """The distinct labels in order: numerically when all are integers, else alphabetically."""
    distinct = set(labels)
    if all(re.fullmatch(r"-?\d+", x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


class TextClassificationDataModule(L.LightningDataModule):
    """Labelled texts: batches ({"input_ids", "attention_mask"}, labels) padded per batch, optionally grouped by
    length; validation/test from files or carved from training (stratified, by split_seed)."""

    name = "text"  # in log messages

    def __init__(
        self,
        *,
        train_file: str,
        cache_dir: str,
        tokenizer: TokenizerRecipe,
        seed: int,
        val_file: str | None = None,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        class_names: list[str] | None = None,
        max_len: int = 256,
        truncation: Truncation = "head",
        head_fraction: float = 0.25,
        specials: Literal["cls_sep", "none"] = "cls_sep",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 1234,
        bucket: bool = True,
        bucket_size: int = 100,
        strip_html: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if specials not in SPECIALS:
            raise ConfigError(f"unknown specials {specials!r}; choose one of: {', '.join(SPECIALS)}")
        if not 0.0 <= head_fraction <= 1.0:
            raise ConfigError(f"head_fraction must be in [0, 1], got {head_fraction}")
        if val_size < 0 or test_size < 0 or num_workers < 0 or max_len < 1:
            raise ConfigError(f"{type(self).__name__}: val_size, test_size and num_workers must be >= 0, max_len >= 1")
        self.log = logging.getLogger(type(self).__module__)
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.text_column, self.label_column = text_column, label_column
        self.given_names = list(class_names) if class_names else None
        self.cache_dir = Path(cache_dir)
        self.recipe = tokenizer
        self.seed = seed
        self.max_len = max_len
        self.truncation = truncation
        self.head_fraction = head_fraction
        self.specials = specials
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size, self.test_size = val_size, test_size
        self.split_seed = split_seed
        self.bucket = bucket
        self.bucket_size = bucket_size
        self.strip_html = strip_html
        self.num_workers = num_workers
        self.tokenizer: Tokenizer | None = None
        self.class_names: list[str] | None = None
        self._encoded: Path | None = None
        self._read_cache: dict[str, tuple[list[str], list[Any]]] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self.full_lengths: dict[str, torch.Tensor] = {}  # tokens per text before truncation (the data report)

    # -- sources: what a configuration (IMDB) overrides ---------------------------------------------------------
    def _sources(self) -> dict[str, Path]:
        """{train, val?, test?: the file of each given split}."""
        return {role: Path(path).expanduser() for role, path in self.files.items() if path}

    def _ensure_files(self) -> None:
        for role, path in self._sources().items():
            if not path.is_file():
                raise DataError(f"data.{role}_file={path}: no such file; check the path (relative paths are from the "
                                "directory you run in)")

    def _read(self, role: str) -> tuple[list[str], list[Any]]:
        """(texts, raw labels) of a source, HTML line breaks stripped when asked; skipped rows counted and warned."""
        if role not in self._read_cache:
            path = self._sources()[role]
            texts, labels, skipped = read_labelled_texts(path, self.text_column, self.label_column)
            if skipped:
                self.log.warning("%s: skipped %d row(s) with an empty text or a missing label", path, skipped)
            if not texts:
                raise DataError(f"{path} holds no row with a text and a label (columns {self.text_column!r}, "
                                f"{self.label_column!r})")
            self._read_cache[role] = ([strip_breaks(t) for t in texts] if self.strip_html else texts, labels)
        return self._read_cache[role]

    def _names(self) -> list[str]:
        """The class names in order: given, saved in the run, or the training file's labels sorted."""
        if self.class_names is None:
            self.class_names = self.given_names or sorted_labels(self._read("train")[1])
            if len(self.class_names) < 2:
                raise DataError(f"{self._sources()['train']} has a single label ({self.class_names[0]!r}); "
                                "classification needs at least two")
        return self.class_names

    def _label_ids(self, role: str, labels: list[Any]) -> np.ndarray:
        """Raw labels -> class indices; a label outside the classes names itself and where it came from."""
        index = {name: i for i, name in enumerate(self._names())}
        unknown = sorted({x for x in labels if x not in index})
        if unknown:
            seen = "given in data.class_names" if self.given_names else "seen in training"
            raise DataError(f"{self._sources()[role]} has label(s) {', '.join(map(repr, unknown[:5]))} not {seen} "
                            f"({', '.join(self._names())}); fix the file or data.class_names")
        return np.asarray([index[x] for x in labels], dtype=np.int64)

    def _split(self, labels: np.ndarray, size: float, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(kept, held out) row indices of the training rows; seeded by split_seed only."""
        return stratified_split(labels, size, seed=self.split_seed + (name == "test_size"), name=f"data.{name}")

    def _stamps(self, roles: Sequence[str]) -> list[Any]:
        return [[role, digest(file_stamps([self._sources()[role]]))] for role in roles]

    def _carve(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """{train, val?, test?: row indices of the training file} for the splits without a file of their own."""
        rest, out = np.arange(len(labels)), {}
        for role, size in (("test", self.test_size), ("val", self.val_size)):
            if role not in self._sources():
                count = held_out_count(size, len(labels), name=f"data.{role}_size")  # a share of the whole file
                keep, held = self._split(labels[rest], count, f"{role}_size")
                out[role], rest = rest[held], rest[keep]
        out["train"] = rest
        return out

    # -- facts and artifacts -------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once (builds or loads the tokenizer)."""
        tok = self._tokenizer()
        names = self._names()
        return {"vocab_size": tok.vocab_size, "pad_id": self._pad_id(tok), "num_classes": len(names),
                "class_names": list(names), "max_len": self.max_len}

    def save_artifacts(self, run_dir: Path) -> None:
        """Keep the tokenizer and the class names in the run directory: validation and prediction reuse them."""
        self._tokenizer().save(Path(run_dir) / ARTIFACT_DIR)
        (Path(run_dir) / LABELS_FILE).write_text(json.dumps(self._names()) + "\n")

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use the tokenizer (and class names) a run saved instead of building them from the settings; True if it
        saved a tokenizer. With it, `facts()` and `preprocessing()` read no data."""
        if not self.load_tokenizer(run_dir):
            return False
        if (Path(run_dir) / LABELS_FILE).is_file():
            self.class_names = json.loads((Path(run_dir) / LABELS_FILE).read_text())
        return True

    def load_tokenizer(self, run_dir: Path) -> bool:
        """Use the tokenizer another run saved (`init_from`: its weights read these ids), nothing else of it; True if
        it saved one."""
        path = Path(run_dir) / ARTIFACT_DIR
        if not path.is_dir():
            return False
        self.tokenizer = Tokenizer.load(path)
        self.log.info("tokenizer from %s (vocabulary %d)", path, self.tokenizer.vocab_size)
        return True

    def preprocessing(self) -> TextPreprocessing:
        """What turns raw texts into the model's input batch: the run's tokenizer, truncation and special tokens."""
        tok = self._tokenizer()
        prefix: tuple[int, ...] = ()
        suffix: tuple[int, ...] = ()
        if self.specials == "cls_sep":
            if tok.cls_id is None or tok.sep_id is None:
                raise ConfigError("data.specials=cls_sep needs <cls> and <sep> tokens, which this tokenizer lacks; "
                                  "set data.specials=none (or tokenizer add_specials=true for gpt2)")
            prefix, suffix = (tok.cls_id,), (tok.sep_id,)
        return TextPreprocessing(tokenizer=tok, max_len=self.max_len, truncation=self.truncation,
                                 head_fraction=self.head_fraction, prefix=prefix, suffix=suffix,
                                 pad_id=self._pad_id(tok), strip_html=self.strip_html, text_column=self.text_column)

    def prepare_data(self) -> None:
        """Make sure the files are there; build the tokenizer and the encoded cache."""
        self._ensure_files()
        self._encoded_dir()

    # -- tokenizer and encoding (cached) --------------------------------------------------------------------------
    def _tokenizer(self) -> Tokenizer:
        """The run's tokenizer: loaded from a run, from the cache, or trained on the training part of the split."""
        if self.tokenizer is not None:
            return self.tokenizer
        if not self.recipe.trains:
            self.tokenizer = self.recipe.build()
            return self.tokenizer
        self._ensure_files()
        key = {"tokenizer": self.recipe.settings(), "files": self._stamps(["train"]), "strip_html": self.strip_html,
               "val_size": self.val_size, "split_seed": self.split_seed, **self._key_extra()}
        path = self.cache_dir / f"tokenizer-{digest(key)}"
        if not path.is_dir():
            texts, labels = self._read("train")
            train_idx = self._carve(self._label_ids("train", labels))["train"]
            start = time.perf_counter()
            tok = self.recipe.build([texts[i] for i in train_idx])
            self.log.info("trained %s tokenizer on %d texts in %.1f s (vocabulary %d)", key["tokenizer"]["scheme"],
                          len(train_idx), time.perf_counter() - start, tok.vocab_size)
            with atomic_dir(path) as tmp:
                tok.save(tmp)
                (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")
        self.tokenizer = Tokenizer.load(path)
        return self.tokenizer

    def _key_extra(self) -> dict[str, Any]:
        """Settings beyond the files that shape what is read: the columns, the classes and the test split."""
        return {"columns": [self.text_column, self.label_column], "class_names": self.given_names,
                "test_size": self.test_size}

    def _encoded_dir(self) -> Path:
        """The cache entry with every source encoded; encodes them (batched, parallel) on a miss."""
        tok = self._tokenizer()
        roles = list(self._sources())
        key = {"version": _CACHE_VERSION, "tokenizer": tok.fingerprint(), "files": self._stamps(roles),
               "strip_html": self.strip_html, "classes": self._names(), **self._key_extra()}
        path = self.cache_dir / f"encoded-{digest(key)}"
        if (path / "meta.json").is_file():
            if path != self._encoded:
                self.log.info("%s encoded cache hit: %s", self.name, path)
            self._encoded = path
            return path
        meta: dict[str, Any] = {"key": key, "sources": {}}
        with atomic_dir(path) as tmp:
            for role in roles:
                texts, labels = self._read(role)
                label_ids = self._label_ids(role, labels)
                start = time.perf_counter()
                ids, offsets = tok.encode_flat(texts)
                seconds = max(time.perf_counter() - start, 1e-9)
                meta["sources"][role] = {"texts": len(texts), "tokens": int(len(ids)), "seconds": round(seconds, 3)}
                self.log.info("encoded %s %s: %d texts, %d tokens in %.2f s (%.2f M tokens/s)", self.name, role,
                              len(texts), len(ids), seconds, len(ids) / seconds / 1e6)
                for name, array in (("ids", ids), ("offsets", offsets), ("labels", label_ids)):
                    np.save(tmp / f"{role}_{name}.npy", array)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        self._encoded = path
        return path

    def _pad_id(self, tok: Tokenizer) -> int:
        if tok.pad_id is None:
            raise DataError("the tokenizer has no padding token; choose a tokenizer with one (word, char, bpe, gpt2)")
        return tok.pad_id

    # -- datasets and loaders -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the encoded texts; split, truncate and wrap them in special tokens (array operations, no re-encoding)."""
        if self.datasets:
            return
        pre = self.preprocessing()
        path = self._encoded_dir()
        arrays = {f"{r}_{n}": np.load(path / f"{r}_{n}.npy") for r in self._sources() for n in ("ids", "offsets", "labels")}
        carved = self._carve(arrays["train_labels"])
        for name in SPLITS:
            role, index = (name, None) if name not in carved else ("train", carved[name])
            ids, offsets, labels = (arrays[f"{role}_{n}"] for n in ("ids", "offsets", "labels"))
            full = np.diff(offsets) if index is None else np.diff(offsets)[index]
            self.full_lengths[name] = torch.from_numpy(full + len(pre.prefix) + len(pre.suffix))
            ids, offsets = pre.cut(ids, offsets, index)
            self.datasets[name] = TokenizedDataset(ids, offsets, labels if index is None else labels[index],
                                                   pad_id=pre.pad_id)
        lengths = self.full_lengths["train"].float()
        self.log.info("%s: train %d, val %d, test %d; %d classes; train length mean %.0f, longer than max_len=%d: %.1f%%",
                      self.name, *(len(self.datasets[s]) for s in SPLITS), len(self._names()), lengths.mean(),
                      self.max_len, 100 * (lengths > self.max_len).float().mean())

    def _loader(self, name: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        dataset = self.datasets[name]
        sampler = None
        if self.bucket:
            rank, world_size = shard(self.trainer)
            # A shuffled loader trains: ranks get equal shares. An ordered one evaluates: every text once.
            sampler = BucketSampler(dataset.lengths, batch_size=batch_size, seed=self.seed, shuffle=shuffle,
                                    bucket_size=self.bucket_size, rank=rank, world_size=world_size, even=shuffle)
        return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.eval_batch_size, shuffle=False)

    def report(self, out_dir: Path) -> str:
        """Markdown: class balance per split, the length distribution in tokens and the share cut at max_len."""
        from attnlab.data.report import text_report

        self.setup()
        labels = {name: ds.labels for name, ds in self.datasets.items()}
        return text_report(labels, self.full_lengths, self._names(), self.max_len, Path(out_dir))
