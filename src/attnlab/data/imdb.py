"""IMDB movie reviews (Maas et al., 2011): readers, a learnable fake corpus for tests, and the LightningDataModule.

Sources, first found wins: <data_dir>/{train,test}.jsonl.gz (as in ../shared/data/imdb), the original aclImdb/
folders (<data_dir>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, or those folders in data_dir itself), else
the hub dataset (`hub_id`), written as the two .jsonl.gz files on first use.

Preparation is cached under `cache_dir` (see attnlab.data.text): the tokenizer, keyed by its settings, the
training files and the split; the encoded reviews, keyed by the tokenizer's content and the files. Truncation,
special tokens and the split are cheap array operations done at setup, so changing max_len re-encodes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from attnlab.data.loading import make_loader, shard
from attnlab.data.sources import download_jsonl, read_aclimdb, read_jsonl, write_jsonl
from attnlab.data.text import BucketSampler, TokenizedDataset, Truncation, atomic_dir, digest, file_stamps, truncate
from attnlab.data.tokenizers import Tokenizer, TokenizerRecipe
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CLASS_NAMES = ["negative", "positive"]
SPECIALS = ("cls_sep", "none")
ARTIFACT_DIR = "tokenizer"  # in the run directory
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_CACHE_VERSION = 1  # bump when the encoded format changes


@dataclass(frozen=True)
class ReviewPreprocessing:
    """Raw reviews -> a model's input batch, exactly as training made it: HTML line breaks out (strip_html), the run's
    tokenizer, truncation to max_len (head or head_tail) inside the special tokens, padding to the longest review."""

    tokenizer: Tokenizer
    max_len: int
    truncation: Truncation
    head_fraction: float
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    strip_html: bool

    def clean(self, text: str) -> str:
        return _BR.sub(" ", text) if self.strip_html else text

    def cut(self, ids: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoded texts (flat ids + offsets) truncated and wrapped in the special tokens."""
        return truncate(ids, offsets, index=index, max_len=self.max_len, mode=self.truncation,
                        head_fraction=self.head_fraction, prefix=self.prefix, suffix=self.suffix)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"input_ids": (B, T) long, "attention_mask": (B, T) bool}, T the longest review after truncation."""
        ids, offsets = self.tokenizer.encode_flat([self.clean(t) for t in texts])
        ids, offsets = self.cut(ids, offsets)
        rows = TokenizedDataset(ids, offsets, np.zeros(len(texts), dtype=np.int64), pad_id=self.pad_id)
        return rows.__getitems__(range(len(texts)))[0]


class IMDBDataModule(L.LightningDataModule):
    """IMDB sentiment: seeded validation split carved from train, the full 25,000-review test set; text batches
    ({"input_ids", "attention_mask"}, labels) padded per batch, optionally grouped by length."""

    def __init__(
        self,
        *,
        data_dir: str,
        cache_dir: str,
        tokenizer: TokenizerRecipe,
        seed: int,
        max_len: int = 256,
        truncation: Truncation = "head",
        head_fraction: float = 0.25,
        specials: Literal["cls_sep", "none"] = "cls_sep",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_size: int = 2500,
        split_seed: int = 1234,
        bucket: bool = True,
        bucket_size: int = 100,
        strip_html: bool = True,
        num_workers: int = 0,
        hub_id: str = "stanfordnlp/imdb",
    ) -> None:
        super().__init__()
        if specials not in SPECIALS:
            raise ConfigError(f"unknown specials {specials!r}; choose one of: {', '.join(SPECIALS)}")
        if not 0.0 <= head_fraction <= 1.0:
            raise ConfigError(f"head_fraction must be in [0, 1], got {head_fraction}")
        if val_size < 0 or num_workers < 0 or max_len < 1:
            raise ConfigError("IMDBDataModule: val_size and num_workers must be >= 0, max_len >= 1")
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.recipe = tokenizer
        self.seed = seed
        self.max_len = max_len
        self.truncation = truncation
        self.head_fraction = head_fraction
        self.specials = specials
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.bucket = bucket
        self.bucket_size = bucket_size
        self.strip_html = strip_html
        self.num_workers = num_workers
        self.hub_id = hub_id
        self.tokenizer: Tokenizer | None = None
        self._encoded: Path | None = None
        self.datasets: dict[str, TokenizedDataset] = {}

    # -- facts and artifacts -------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once (builds or loads the tokenizer)."""
        tok = self._tokenizer()
        return {"vocab_size": tok.vocab_size, "pad_id": self._pad_id(tok), "num_classes": 2,
                "class_names": list(CLASS_NAMES), "max_len": self.max_len}

    def save_artifacts(self, run_dir: Path) -> None:
        """Keep the tokenizer in the run directory: validation and resumed runs reuse exactly these ids."""
        self._tokenizer().save(Path(run_dir) / ARTIFACT_DIR)

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use the tokenizer a run saved, if it saved one, instead of building it from the settings; True if it did.
        With it, `facts()` and `preprocessing()` read no data."""
        path = Path(run_dir) / ARTIFACT_DIR
        if not path.is_dir():
            return False
        self.tokenizer = Tokenizer.load(path)
        log.info("tokenizer from %s (vocabulary %d)", path, self.tokenizer.vocab_size)
        return True

    def preprocessing(self) -> ReviewPreprocessing:
        """What turns raw reviews into the model's input batch: the run's tokenizer, truncation and special tokens."""
        tok = self._tokenizer()
        prefix: tuple[int, ...] = ()
        suffix: tuple[int, ...] = ()
        if self.specials == "cls_sep":
            if tok.cls_id is None or tok.sep_id is None:
                raise ConfigError("data.specials=cls_sep needs <cls> and <sep> tokens, which this tokenizer lacks; "
                                  "set data.specials=none (or tokenizer add_specials=true for gpt2)")
            prefix, suffix = (tok.cls_id,), (tok.sep_id,)
        return ReviewPreprocessing(tokenizer=tok, max_len=self.max_len, truncation=self.truncation,
                                   head_fraction=self.head_fraction, prefix=prefix, suffix=suffix,
                                   pad_id=self._pad_id(tok), strip_html=self.strip_html)

    # -- sources ---------------------------------------------------------------------------------------------
    def _sources(self) -> dict[str, Path]:
        """The train/test source (a .jsonl[.gz] file or an aclImdb split folder) of each split."""
        for name in ("{}.jsonl.gz", "{}.jsonl"):
            found = {s: self.data_dir / name.format(s) for s in SPLITS if (self.data_dir / name.format(s)).is_file()}
            if found:
                break
        if not found:
            for root in (self.data_dir / "aclImdb", self.data_dir):
                found = {s: root / s for s in SPLITS if (root / s / "pos").is_dir() or (root / s / "neg").is_dir()}
                if found:
                    break
        if found and len(found) < len(SPLITS):
            (have,) = found.values()
            missing = next(s for s in SPLITS if s not in found)
            raise DataError(f"IMDB split '{missing}' is missing beside {have}; copy it there (both train and test are needed)")
        return found

    def _read(self, split: str) -> tuple[list[str], np.ndarray]:
        source = self._sources()[split]
        texts, labels = read_aclimdb(source) if source.is_dir() else read_jsonl(source)
        if self.strip_html:
            texts = [_BR.sub(" ", t) for t in texts]  # as ReviewPreprocessing.clean
        return texts, labels

    def _stamps(self, splits: tuple[str, ...]) -> list[Any]:
        stamps = []
        for split in splits:
            source = self._sources()[split]
            files = sorted(source.rglob("*.txt")) if source.is_dir() else [source]
            stamps.append([split, len(files), digest(file_stamps(files))])
        return stamps

    def prepare_data(self) -> None:
        """Fetch the reviews from the hub if no local copy exists; build the tokenizer and the encoded cache."""
        self._ensure_files()
        self._encoded_dir()

    def _ensure_files(self) -> None:
        if self._sources():
            return
        try:
            download_jsonl(self.hub_id, self.data_dir, SPLITS)
        except Exception as e:  # offline, no `datasets`, network or hub errors all end the same way
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise DataError(
                f"no IMDB files under {self.data_dir} (looked for train.jsonl.gz + test.jsonl.gz, or aclImdb/) and "
                f"the hub download of {self.hub_id!r} failed ({reason}); copy the files there, or set paths.data_dir "
                "(or ATTNLAB_DATA_DIR) to a folder that has imdb/ inside"
            ) from e

    # -- tokenizer and encoding (cached) --------------------------------------------------------------------------
    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) row indices of the training file, by `split_seed` only."""
        if self.val_size >= n:
            raise DataError(f"val_size={self.val_size} leaves no training reviews out of {n}; set data.val_size below {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).numpy()
        return np.sort(perm[self.val_size :]), np.sort(perm[: self.val_size])

    def _tokenizer(self) -> Tokenizer:
        """The run's tokenizer: loaded from a run, from the cache, or trained on the training part of the split."""
        if self.tokenizer is not None:
            return self.tokenizer
        if not self.recipe.trains:
            self.tokenizer = self.recipe.build()
            return self.tokenizer
        self._ensure_files()
        key = {"tokenizer": self.recipe.settings(), "files": self._stamps(("train",)), "strip_html": self.strip_html,
               "val_size": self.val_size, "split_seed": self.split_seed}
        path = self.cache_dir / f"tokenizer-{digest(key)}"
        if not path.is_dir():
            texts, _ = self._read("train")
            train_idx, _ = self._split(len(texts))
            start = time.perf_counter()
            tok = self.recipe.build([texts[i] for i in train_idx])
            log.info("trained %s tokenizer on %d reviews in %.1f s (vocabulary %d)", key["tokenizer"]["scheme"],
                     len(train_idx), time.perf_counter() - start, tok.vocab_size)
            with atomic_dir(path) as tmp:
                tok.save(tmp)
                (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")
        self.tokenizer = Tokenizer.load(path)
        return self.tokenizer

    def _encoded_dir(self) -> Path:
        """The cache entry with both splits encoded; encodes them (batched, parallel) on a miss."""
        tok = self._tokenizer()
        key = {"version": _CACHE_VERSION, "tokenizer": tok.fingerprint(), "files": self._stamps(SPLITS), "strip_html": self.strip_html}
        path = self.cache_dir / f"encoded-{digest(key)}"
        if (path / "meta.json").is_file():
            if path != self._encoded:
                log.info("IMDB encoded cache hit: %s", path)
            self._encoded = path
            return path
        meta: dict[str, Any] = {"key": key, "splits": {}}
        with atomic_dir(path) as tmp:
            for split in SPLITS:
                texts, labels = self._read(split)
                start = time.perf_counter()
                ids, offsets = tok.encode_flat(texts)
                seconds = time.perf_counter() - start
                chars = sum(map(len, texts))
                meta["splits"][split] = {"reviews": len(texts), "tokens": int(len(ids)), "seconds": round(seconds, 3),
                                         "tokens_per_s": round(len(ids) / seconds), "chars_per_s": round(chars / seconds)}
                log.info("encoded IMDB %s: %d reviews, %d tokens in %.2f s (%.2f M tokens/s, %.1f MB/s)", split,
                         len(texts), len(ids), seconds, len(ids) / seconds / 1e6, chars / seconds / 1e6)
                for name, array in (("ids", ids), ("offsets", offsets), ("labels", labels)):
                    np.save(tmp / f"{split}_{name}.npy", array)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def _pad_id(self, tok: Tokenizer) -> int:
        if tok.pad_id is None:
            raise DataError("the tokenizer has no padding token; choose a tokenizer with one (word, char, bpe, gpt2)")
        return tok.pad_id

    # -- datasets and loaders -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the encoded reviews; split, truncate and wrap them in special tokens (array operations, no re-encoding)."""
        if self.datasets:
            return
        pre = self.preprocessing()
        path = self._encoded_dir()
        arrays = {f"{s}_{n}": np.load(path / f"{s}_{n}.npy") for s in SPLITS for n in ("ids", "offsets", "labels")}
        train_idx, val_idx = self._split(len(arrays["train_labels"]))
        for name, split, index in (("train", "train", train_idx), ("val", "train", val_idx), ("test", "test", None)):
            ids, offsets, labels = (arrays[f"{split}_{n}"] for n in ("ids", "offsets", "labels"))
            ids, offsets = pre.cut(ids, offsets, index)
            self.datasets[name] = TokenizedDataset(ids, offsets, labels if index is None else labels[index],
                                                   pad_id=pre.pad_id)
        lengths = self.datasets["train"].lengths.float()
        log.info("IMDB from %s: train %d, val %d, test %d; train length mean %.0f, truncated at %d: %.1f%%",
                 self.data_dir, len(train_idx), len(val_idx), len(arrays["test_labels"]), lengths.mean(),
                 self.max_len, 100 * (lengths >= self.max_len).float().mean())

    def _loader(self, name: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError("IMDBDataModule: call setup() before asking for a dataloader")
        dataset = self.datasets[name]
        sampler = None
        if self.bucket:
            rank, world_size = shard(self.trainer)
            # A shuffled loader trains: ranks get equal shares. An ordered one evaluates: every review once.
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


_GOOD = "great excellent wonderful superb loved brilliant enjoyable masterpiece fantastic moving".split()
_BAD = "awful terrible boring worst waste dull horrible poor stupid disappointing".split()
_FILLER = "the a movie film plot actor scene story it was and of this to in director character ending music".split()


def write_fake_imdb(root: Path, *, n_train: int = 400, n_test: int = 200, seed: int = 0,
                    layout: Literal["jsonl", "aclimdb"] = "jsonl") -> Path:
    """Write a learnable fake IMDB: filler words with a few sentiment words of the review's class; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            label = i % 2
            words = list(rng.choice(_FILLER, size=int(rng.integers(6, 90))))
            for _ in range(max(1, len(words) // 10)):
                words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(_GOOD if label else _BAD)))
            text = " ".join(words).capitalize() + (". <br /><br />The end!" if i % 3 == 0 else ".")
            rows.append({"id": i // 2, "rating": 9 if label else 2, "label": label, "text": text})
        rows.sort(key=lambda r: (r["label"], r["id"]))
        if layout == "jsonl":
            write_jsonl(root / f"{split}.jsonl.gz", rows)
        else:
            for r in rows:
                path = root / "aclImdb" / split / ("pos" if r["label"] else "neg") / f"{r['id']}_{r['rating']}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(r["text"], encoding="utf-8")
    return root
