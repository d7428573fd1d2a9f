"""Language-modelling text (TinyStories, any plain-text corpus): documents from local files or the hub, encoded once
into memory-mapped token streams; random training windows, fixed validation windows.

Files: UTF-8 text, plain or .gz (the published TinyStories-train.txt / TinyStories-valid.txt), or JSON Lines (.jsonl,
.jsonl.gz: one document per row, the first of `text_fields` it has). `train_file` may list several files, read in
order as one corpus (IMDB reviews and SciTLDR abstracts for the GPT-2 base). Each `separator`
(default `<|endoftext|>`, on its own line or not) ends a document; with separator "" blank lines do. Documents are
stripped and empty ones dropped; a file without any separator is one document. Without a val_file the train file
is split by document: round(val_fraction * n) documents, drawn with `split_seed`, go to validation. TinyStories
publishes no test split: without a test_file, test uses the validation windows. If the train file is missing and
`hub_id` is set, the hub dataset (splits "train" / "validation", field `hub_text_field`) is written to those files.

Cache, under cache_dir, each entry written atomically (attnlab.data.text.atomic_dir):
    tokenizer-<key>/  the trained tokenizer; key: recipe settings, train file, split, separator, tokenizer_train_chars
    tokens-<key>/     train.bin, val.bin[, test.bin]: raw little-endian uint16 ids (vocabulary <= 65536, else uint32),
                      every document followed by eos; meta.json: dtype and counts. Key: the tokenizer's fingerprint,
                      the files, the separator and the split. max_len and the batch settings shape only the windows.
Reading streams one document at a time and encoding goes in chunks (HF encode_batch, parallel threads) straight to
disk, so memory does not grow with the corpus; the tokenizer trainer sees the first `tokenizer_train_chars`
characters of the training documents (default 50 M: a BPE vocabulary settles long before that).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tokenizers import decoders, pre_tokenizers
from torch import Tensor
from torch.utils.data import DataLoader

from attnlab.data.loading import make_loader, shard
from attnlab.data.sources import EOT, download_documents, is_jsonl, iter_documents, iter_jsonl_documents, open_text
from attnlab.data.text import atomic_dir, digest, file_stamps
from attnlab.data.tokenizers import Tokenizer, TokenizerRecipe
from attnlab.data.windows import RandomWindowSampler, TokenWindows, fixed_starts
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HUB_SPLITS = {"train": "train", "val": "validation"}  # our split -> the hub dataset's
ARTIFACT_DIR = "tokenizer"  # in the run directory
_CHUNK_CHARS = 1 << 20  # characters per encode_batch call: bounds the memory of the encodings
_CACHE_VERSION = 1  # bump when the encoded format changes


# -- a generated corpus for tests --------------------------------------------------------------------------------
_NAMES = "Lily Ben Tom Mia Zoë Max".split()
_THINGS = "ball tree cat dog cake boat sun flower".split()
_VERBS = "saw liked found wanted shared lost".split()


def write_fake_corpus(path: Path, *, n_docs: int = 200, seed: int = 0) -> list[str]:
    """Write short stories, TinyStories style (curly quotes, accents, an emoji; varied spacing around `<|endoftext|>`
    lines); returns them stripped."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        name = str(rng.choice(_NAMES))
        sentences = [f"{name} {rng.choice(_VERBS)} a {rng.choice(_THINGS)}." for _ in range(int(rng.integers(1, 6)))]
        if i % 4 == 0:
            sentences.append(f"“It is so nice!” said {name}. The café was fun 🙂.")
        docs.append(" ".join(sentences) + ("\n\nThe end." if i % 3 == 0 else ""))
    with open_text(Path(path), "wt") as f:
        f.write(" ")  # as TinyStories: the file starts with a space, stories start on the next line or after a blank one
        for i, doc in enumerate(docs):
            f.write(f"{doc}\n{EOT}\n" + ("\n" if i % 2 else ""))
    return [d.strip() for d in docs]


# -- bytes per token -----------------------------------------------------------------------------------------------
def token_bytes(tok: Tokenizer) -> Tensor:
    """(V,) float: the UTF-8 bytes of text each token id stands for, the denominator of bits per byte.

    Byte-level BPE: the length of the token string, each character of the ByteLevel alphabet being one byte (decoding
    one token alone would give U+FFFD for part of a multi-byte character). Other tokenizers: the UTF-8 length of the
    token decoded alone (exact for characters; word level drops the spaces between words). Special tokens count 0,
    except eos: 1, the newline that separates documents.
    """
    hf = tok.hf
    counts = [0.0] * tok.vocab_size
    if isinstance(hf.decoder, decoders.ByteLevel):
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        for text, i in hf.get_vocab(with_added_tokens=False).items():
            counts[i] = sum(1 if c in alphabet else len(c.encode()) for c in text)
    else:
        counts = [len(hf.decode([i], skip_special_tokens=False).encode()) for i in range(tok.vocab_size)]
    for i, added in hf.get_added_tokens_decoder().items():  # raw text, never byte-mapped
        counts[i] = 0 if added.special else len(added.content.encode())
    for text in tok.specials.values():
        counts[hf.token_to_id(text)] = 0
    counts[tok.eos_id] = 1
    return torch.tensor(counts, dtype=torch.float32)


# -- encoding ------------------------------------------------------------------------------------------------------
class _StreamWriter:
    """Documents in, a raw token file out: chunks of documents encoded in parallel, each document followed by eos."""

    def __init__(self, tok: Tokenizer, path: Path, dtype: np.dtype) -> None:
        self.tok, self.dtype, self.file = tok, dtype, open(path, "wb")
        self.chunk: list[str] = []
        self.chunk_chars = 0
        self.stats = {"documents": 0, "tokens": 0, "bytes": 0, "encode_s": 0.0}

    def add(self, doc: str) -> None:
        self.chunk.append(doc)
        self.chunk_chars += len(doc)
        if self.chunk_chars >= _CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.chunk:
            return
        start = time.perf_counter()
        batch = self.tok.encode_batch(self.chunk)
        lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        ids = np.fromiter(itertools.chain.from_iterable(batch), dtype=self.dtype, count=int(lengths.sum()))
        ids = np.insert(ids, np.cumsum(lengths), self.tok.eos_id)  # eos after each document
        self.stats["encode_s"] += time.perf_counter() - start
        self.file.write(ids.tobytes())
        self.stats["documents"] += len(self.chunk)
        self.stats["tokens"] += len(ids)
        self.stats["bytes"] += sum(len(d.encode()) for d in self.chunk)
        self.chunk, self.chunk_chars = [], 0

    def close(self) -> dict[str, Any]:
        self.flush()
        self.file.close()
        return self.stats


# -- the data module -----------------------------------------------------------------------------------------------
class TextCorpusDataModule(L.LightningDataModule):
    """A text corpus for language modelling; a batch is (x, y), int64 (B, max_len) each, y = x shifted by one.

    Training: len(train tokens) // max_len random windows an epoch, drawn by (seed, epoch). Validation: fixed
    windows (see fixed_starts), the same at every evaluation; test: the test file's, else the validation windows.
    """

    def __init__(
        self,
        *,
        cache_dir: str,
        tokenizer: TokenizerRecipe,
        seed: int,
        train_file: str | list[str],
        val_file: str | None = None,
        test_file: str | None = None,
        data_dir: str | None = None,
        name: str = "text corpus",
        separator: str = EOT,
        max_len: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        split_seed: int = 1234,
        val_windows: int | None = None,
        tokenizer_train_chars: int = 50_000_000,
        num_workers: int = 0,
        hub_id: str | None = None,
        hub_text_field: str = "text",
        text_fields: list[str] = ["text"],
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_len < 1 or batch_size < 1 or tokenizer_train_chars < 1 or num_workers < 0:
            raise ConfigError("TextCorpusDataModule: max_len, batch_size and tokenizer_train_chars must be >= 1, num_workers >= 0")
        if val_windows is not None and val_windows < 1:
            raise ConfigError(f"val_windows must be >= 1 or null (all), got {val_windows}")
        self.cache_dir = Path(cache_dir)
        self.recipe = tokenizer
        self.seed = seed
        self.train_names = [train_file] if isinstance(train_file, str) else list(train_file)
        if not self.train_names:
            raise ConfigError("data.train_file is an empty list; name at least one training file")
        self.file_names = {"train": self.train_names[0], "val": val_file, "test": test_file}
        self.text_fields = list(text_fields)
        self.data_dir = Path(data_dir) if data_dir else None
        self.name = name
        self.separator = separator
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.val_windows = val_windows
        self.tokenizer_train_chars = tokenizer_train_chars
        self.num_workers = num_workers
        self.hub_id = hub_id
        self.hub_text_field = hub_text_field
        self.meta: dict[str, Any] = {}  # counts and encode throughput of the token streams (meta.json)
        self.datasets: dict[str, TokenWindows] = {}
        self._tok: Tokenizer | None = None
        self._paths: dict[str, Path | None] | None = None
        self._train_paths: list[Path] = []
        self._val_mask: np.ndarray | None = None
        self._tokens_path: Path | None = None
        self._token_bytes: Tensor | None = None

    # -- facts and artifacts -------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once (builds or loads the tokenizer)."""
        tok = self.tokenizer
        if self._token_bytes is None:
            self._token_bytes = token_bytes(tok)
        return {"vocab_size": tok.vocab_size, "max_len": self.max_len, "eos_id": tok.eos_id,
                "token_bytes": self._token_bytes, "tokenizer": tok}

    @property
    def tokenizer(self) -> Tokenizer:
        """The run's tokenizer: loaded from a run, from the cache, or trained on the training documents."""
        if self._tok is None:
            self._tok = self._build_tokenizer()
            if self._tok.eos_id is None:
                raise ConfigError("this tokenizer has no end-of-text token, which separates documents; use bpe, char, word or gpt2")
        return self._tok

    def save_artifacts(self, run_dir: Path) -> None:
        """Keep the tokenizer in the run directory: validation and generation reuse exactly these ids."""
        self.tokenizer.save(Path(run_dir) / ARTIFACT_DIR)

    def load_tokenizer(self, run_dir: Path) -> bool:
        """Use the tokenizer another run saved (`init_from`: its weights read these ids); True if it saved one."""
        return self.load_artifacts(run_dir)

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use the tokenizer a run saved, if it saved one, instead of building it from the settings; True if it did.
        With it, `facts()` and `preprocessing()` read no data."""
        path = Path(run_dir) / ARTIFACT_DIR
        if not path.is_dir():
            return False
        self._tok, self._token_bytes = Tokenizer.load(path), None
        log.info("tokenizer from %s (vocabulary %d)", path, self._tok.vocab_size)
        return True

    def preprocessing(self) -> Tokenizer:
        """What turns raw text into the model's input ids: the run's tokenizer."""
        return self.tokenizer

    # -- files -------------------------------------------------------------------------------------------------
    def _find(self, name: str | None) -> Path | None:
        if name is None:
            return None
        path = self.data_dir / name if self.data_dir else Path(name)  # an absolute name stays as it is
        other = path.with_suffix("") if path.suffix == ".gz" else path.with_name(path.name + ".gz")
        return next((p for p in (path, other) if p.is_file()), None)

    def files(self) -> dict[str, Path | None]:
        """The train / val / test files (val and test None when not configured); the hub fills a missing train set."""
        if self._paths is not None:
            return self._paths
        found = {split: self._find(name) for split, name in self.file_names.items()}
        hub_error = ""
        if found["train"] is None and self.hub_id and self.data_dir and len(self.train_names) == 1:
            try:
                files = {HUB_SPLITS[s]: self.file_names[s] for s in HUB_SPLITS if self.file_names[s]}
                download_documents(self.hub_id, self.data_dir, files, text_field=self.hub_text_field, separator=self.separator)
                found = {split: self._find(name) for split, name in self.file_names.items()}
            except Exception as e:  # offline, no `datasets`, network or hub errors all end the same way
                hub_error = f" and the hub download of {self.hub_id!r} failed ({type(e).__name__}: {str(e)[:200]})"
        named = [("train", name) for name in self.train_names] + [(s, self.file_names[s]) for s in ("val", "test")]
        for split, name in named:
            if name is not None and self._find(name) is None:
                where = self.data_dir / name if self.data_dir else Path(name)
                raise DataError(
                    f"no {self.name} {split} file {where} (or {where.name}.gz){hub_error}; put it there, or set "
                    f"data.data_dir / data.{split}_file (one file is split into train and validation when data.val_file=null, "
                    "e.g. data_dir=<shared data>/tinystories_sample train_file=validation_head.txt.gz)")
        self._train_paths = [p for p in map(self._find, self.train_names) if p is not None]
        self._paths = found
        return found

    def train_files(self) -> list[Path]:
        """Every training file, in the order they are read."""
        self.files()
        return self._train_paths

    def _documents(self, split: str) -> Iterator[str]:
        paths = self.train_files() if split == "train" else [self.files()[split]]
        for path in paths:
            assert path is not None
            yield from (iter_jsonl_documents(path, self.text_fields) if is_jsonl(path)
                        else iter_documents(path, self.separator))

    def _fields_key(self) -> dict[str, Any]:
        """The JSON fields read, when a JSON Lines file is read (absent otherwise, so older cache keys stay valid)."""
        paths = self.train_files() + [p for s, p in self.files().items() if s != "train" and p is not None]
        return {"text_fields": self.text_fields} if any(map(is_jsonl, paths)) else {}

    def _split_key(self) -> dict[str, Any] | None:
        """The settings that carve validation out of the train file, when they do."""
        return None if self.file_names["val"] else {"val_fraction": self.val_fraction, "split_seed": self.split_seed}

    def _carved(self) -> np.ndarray | None:
        """Which documents of the train file are validation ones (None with a val file); one bool per document."""
        if self.file_names["val"] is not None:
            return None
        if self._val_mask is None:
            n = sum(1 for _ in self._documents("train"))
            if n < 2:
                raise DataError(f"{self.files()['train']} holds {'no text' if n == 0 else 'one document'} (documents end at "
                                f"{self.separator!r}); validation is carved from its documents, so set data.val_file, or "
                                "data.separator ('' splits at blank lines)")
            n_val = min(n - 1, max(1, round(n * self.val_fraction)))
            self._val_mask = np.zeros(n, dtype=bool)
            self._val_mask[np.random.default_rng(self.split_seed).choice(n, size=n_val, replace=False)] = True
        return self._val_mask

    # -- tokenizer and token streams (cached) ----------------------------------------------------------------------
    def _tokenizer_sample(self) -> Iterator[str]:
        """The training documents in file order, up to tokenizer_train_chars characters."""
        mask, chars = self._carved(), 0
        for i, doc in enumerate(self._documents("train")):
            if mask is None or not mask[i]:
                yield doc
                chars += len(doc)
                if chars >= self.tokenizer_train_chars:
                    return

    def _build_tokenizer(self) -> Tokenizer:
        if not self.recipe.trains:
            return self.recipe.build()
        train = self.files()["train"]
        key = {"tokenizer": self.recipe.settings(), "train": file_stamps(self.train_files()), "separator": self.separator,
               "split": self._split_key(), "train_chars": self.tokenizer_train_chars, **self._fields_key()}
        path = self.cache_dir / f"tokenizer-{digest(key)}"
        if not path.is_dir():
            if next(self._documents("train"), None) is None:
                raise DataError(f"{train} holds no text; replace it with a good copy")
            start = time.perf_counter()
            tok = self.recipe.build(self._tokenizer_sample())
            log.info("trained %s tokenizer on %s in %.1f s (vocabulary %d)", key["tokenizer"]["scheme"], train,
                     time.perf_counter() - start, tok.vocab_size)
            with atomic_dir(path) as tmp:
                tok.save(tmp)
                (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")
        return Tokenizer.load(path)

    def tokens_dir(self) -> Path:
        """The cache entry with the encoded token streams; encodes the files on a miss."""
        if self._tokens_path is not None:
            return self._tokens_path
        tok = self.tokenizer
        files = {split: path for split, path in self.files().items() if path is not None}
        stamps = {split: file_stamps(self.train_files() if split == "train" else [path]) for split, path in files.items()}
        key = {"version": _CACHE_VERSION, "tokenizer": tok.fingerprint(), "separator": self.separator,
               "files": stamps, "split": self._split_key(), **self._fields_key()}
        path = self.cache_dir / f"tokens-{digest(key)}"
        if (path / "meta.json").is_file():
            log.info("%s token cache hit: %s", self.name, path)
        else:
            with atomic_dir(path) as tmp:
                meta = {"key": key, **self._encode(tok, files, tmp)}
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.meta = json.loads((path / "meta.json").read_text())
        self._tokens_path = path
        return path

    def _encode(self, tok: Tokenizer, files: dict[str, Path], out: Path) -> dict[str, Any]:
        dtype = np.dtype("<u2" if tok.vocab_size <= 2**16 else "<u4")
        splits = ("train", "val", "test") if "test" in files else ("train", "val")
        writers = {split: _StreamWriter(tok, out / f"{split}.bin", dtype) for split in splits}
        start = time.perf_counter()
        mask = self._carved()
        for i, doc in enumerate(self._documents("train")):
            writers["val" if mask is not None and mask[i] else "train"].add(doc)
        for split in ("val", "test"):
            if split in files:
                for doc in self._documents(split):
                    writers[split].add(doc)
        stats = {split: w.close() for split, w in writers.items()}
        seconds = time.perf_counter() - start
        for split, s in stats.items():
            if s["documents"] == 0:
                raise DataError(f"{files[split]} holds no text; replace it with a good copy")
        total_mb, encode_s = sum(s["bytes"] for s in stats.values()) / 1e6, sum(s["encode_s"] for s in stats.values())
        log.info("encoded %s: %s tokens, %.1f MB of text in %.1f s: %.1f MB/s encoding, %.1f MB/s with reading", self.name,
                 ", ".join(f"{split} {s['tokens']:,}" for split, s in stats.items()), total_mb, seconds,
                 total_mb / max(encode_s, 1e-9), total_mb / max(seconds, 1e-9))
        return {"dtype": dtype.str, "seconds": round(seconds, 3), "encode_mb_per_s": round(total_mb / max(encode_s, 1e-9), 2),
                "splits": stats}

    def _stream(self, split: str) -> np.ndarray:
        path = self.tokens_dir()
        return np.memmap(path / f"{split}.bin", dtype=np.dtype(self.meta["dtype"]), mode="r")

    def train_tokens(self) -> np.ndarray:
        """The training token stream (read-only memory map), documents each followed by eos."""
        return self._stream("train")

    def val_tokens(self) -> np.ndarray:
        """The validation token stream (read-only memory map)."""
        return self._stream("val")

    def test_tokens(self) -> np.ndarray:
        """The test file's token stream, else the validation stream (TinyStories has no test split)."""
        return self._stream("test" if self.file_names["test"] else "val")

    # -- datasets and loaders -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Fetch missing files from the hub; build the tokenizer and the token streams (cached)."""
        self.tokens_dir()

    def setup(self, stage: str | None = None) -> None:
        """Memory-map the token streams and lay out the windows (no re-encoding)."""
        if self.datasets:
            return
        streams = {"train": self.train_tokens(), "val": self.val_tokens(), "test": self.test_tokens()}
        for split in ("train", "val", "test") if self.file_names["test"] else ("train", "val"):
            if len(streams[split]) < self.max_len + 1:
                source = self.files()[split] or self.files()["train"]
                raise DataError(f"the {self.name} {split} stream ({source}) has {len(streams[split])} tokens, fewer than one "
                                f"window of max_len + 1 = {self.max_len + 1}; lower data.max_len or use more text")
        self.datasets["train"] = TokenWindows(streams["train"], max_len=self.max_len)
        for split in ("val", "test"):
            starts = fixed_starts(len(streams[split]), self.max_len, self.val_windows)
            self.datasets[split] = TokenWindows(streams[split], max_len=self.max_len, starts=starts)
        log.info("%s: train %s tokens (%s windows of %d an epoch), val %s tokens (%s windows), vocabulary %d", self.name,
                 f"{len(streams['train']):,}", f"{self._epoch_windows():,}", self.max_len + 1, f"{len(streams['val']):,}",
                 f"{len(self.datasets['val']):,}", self.tokenizer.vocab_size)

    def _epoch_windows(self) -> int:
        return max(1, len(self.datasets["train"].tokens) // self.max_len)

    def _dataset(self, split: str) -> TokenWindows:
        if split not in self.datasets:
            raise RuntimeError("TextCorpusDataModule: call setup() before asking for a dataloader")
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        data = self._dataset("train")
        rank, world = shard(self.trainer)
        sampler = RandomWindowSampler(len(data), num_samples=self._epoch_windows(), seed=self.seed, rank=rank, world_size=world)
        return make_loader(data, batch_size=self.batch_size, shuffle=True, seed=self.seed, num_workers=self.num_workers,
                           trainer=self.trainer, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self._dataset("val"), batch_size=self.eval_batch_size, shuffle=False, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)

    def test_dataloader(self) -> DataLoader:
        return make_loader(self._dataset("test"), batch_size=self.eval_batch_size, shuffle=False, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)
