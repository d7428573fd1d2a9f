"""Sentence pairs for translation (English -> French by default: Multi30k, Tatoeba, any aligned files) as a
LightningDataModule for sequence-to-sequence models. Where the pairs come from is the `source` (attnlab.data.parallel).

Tokenization: the `tokenizer` recipe, trained on the training split only (after empty pairs are dropped, before the
length filter): one tokenizer for both languages (joint=true, the default: one vocabulary, so a model may tie its
embeddings) or one per language. With tokenizer=bpe it is byte-level BPE, cased: any text encodes (no <unk>) and
decoding gives the text back exactly. The source side needs <pad> <eos>, the target side <pad> <sos> <eos>.

Rows: src = source ids + [eos] (every source ends in <eos>, so even an empty one has a token to attend to);
tgt = [sos] + target ids + [eos]. max_src_len and max_tgt_len count these special tokens.
- train: pairs with an empty side are dropped, and so are pairs whose src or tgt is longer than its limit (counts logged).
- val: pairs with an empty side are dropped (count logged); none is dropped for length.
- test: every pair is kept, empty ones too (an empty source is legal: src = [eos]).
- val and test: a source longer than max_src_len is cut to its first max_src_len - 1 tokens + <eos>, with a warning
  saying how many (the model then sees less than the reference translates); a longer target is cut the same way for
  the loss only, while `references(split)` keeps the full text for BLEU.
Lines are stripped of surrounding whitespace. `index` in a batch is the row's position in `sources(split)` and
`references(split)`.

Cache, under cache_dir, each entry written atomically (attnlab.data.text.atomic_dir):
    tokenizer-<side>-<key>/  a trained tokenizer (side: joint, source or target); key: the recipe and the training split
    encoded-<key>/           the ids of every split, no special tokens; key: the tokenizers' content and the source files
Length limits, special tokens and batching are array operations at setup: changing max_src_len re-encodes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attnlab.data.loading import make_loader, shard
from attnlab.data.parallel import ParallelSource
from attnlab.data.text import BucketSampler, TokenizedDataset, atomic_dir, digest, truncate
from attnlab.data.tokenizers import Tokenizer, TokenizerRecipe
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SIDES = ("source", "target")
ARTIFACT_DIR = "tokenizer"  # in the run directory: the tokenizer (joint) or source/ and target/, and DATA_FILE
DATA_FILE = "translation.json"  # beside it: the test set names, so facts() needs no data files
_CACHE_VERSION = 1  # bump when the encoded format changes


@dataclass(frozen=True)
class TranslationPreprocessing:
    """Text <-> ids as the run's data module made them: `encode_source` gives a model's input, `decode_target` reads
    its output."""

    source: Tokenizer
    target: Tokenizer
    max_src_len: int

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids exactly as in training: the stripped text's ids, cut to max_src_len - 1, then <eos>."""
        eos = self.source.eos_id
        return [ids[: self.max_src_len - 1] + [eos] for ids in self.source.encode_batch([t.strip() for t in texts])]

    def decode_target(self, ids: Sequence[int] | Tensor) -> str:
        """The text of target ids up to the first <eos>; <sos>, <pad> and other special tokens are skipped."""
        ids = [int(i) for i in ids]
        if self.target.eos_id in ids:
            ids = ids[: ids.index(self.target.eos_id)]
        return self.target.decode(ids)


class PairDataset(Dataset):
    """Encoded sentence pairs; a batch is {"src": (B, S), "tgt": (B, T), "index": (B,)}, each side padded to its own
    longest row in the batch. An evaluation set also gives its name and raw references: {"set": name, "refs": [B
    reference sentences]}, so a task scores BLEU on the text itself, with no data module at hand."""

    def __init__(self, src: TokenizedDataset, tgt: TokenizedDataset, *, name: str | None = None,
                 references: Sequence[str] | None = None) -> None:
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} sources for {len(tgt)} targets")
        self.src, self.tgt = src, tgt
        self.name, self.references = name, references

    def __len__(self) -> int:
        return len(self.src)

    @property
    def lengths(self) -> Tensor:
        """(N,) src + tgt tokens: the bucketing key (the two sides' lengths go together)."""
        return self.src.lengths + self.tgt.lengths

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        src, index = self.src.__getitems__(indices)
        tgt, _ = self.tgt.__getitems__(indices)
        batch: dict[str, Any] = {"src": src["input_ids"], "tgt": tgt["input_ids"], "index": index}
        if self.references is not None:
            batch["set"] = self.name
            batch["refs"] = [self.references[i] for i in index.tolist()]
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v if k == "set" else v[0] for k, v in self.__getitems__([i]).items()}


class TranslationDataModule(L.LightningDataModule):
    """Parallel text for sequence-to-sequence models: bucketed batches {"src", "tgt", "index"}; one val loader, one test
    loader per test set (facts()["test_sets"] order); raw `sources` / `references` of a split for BLEU."""

    def __init__(
        self,
        *,
        source: ParallelSource,
        cache_dir: str,
        tokenizer: TokenizerRecipe,
        seed: int,
        joint: bool = True,
        max_src_len: int = 100,
        max_tgt_len: int = 100,
        test_sets: list[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        bucket_size: int = 100,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if max_src_len < 2 or max_tgt_len < 3:
            raise ConfigError(f"max_src_len must be >= 2 (a token + <eos>) and max_tgt_len >= 3 (<sos> token <eos>); "
                              f"got {max_src_len}, {max_tgt_len}")
        if batch_size < 1 or num_workers < 0 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("TranslationDataModule: batch sizes must be >= 1, num_workers >= 0")
        self.source = source
        self.cache_dir = Path(cache_dir)
        self.recipe = tokenizer
        self.seed = seed
        self.joint = joint
        self.max_src_len = max_src_len
        self.max_tgt_len = max_tgt_len
        self.test_sets = list(test_sets) if test_sets is not None else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.bucket_size = bucket_size
        self.num_workers = num_workers
        self.tokenizers: dict[str, Tokenizer] | None = None  # "source", "target": the same object when joint
        self._test_names: list[str] | None = None
        self._texts: dict[str, tuple[list[str], list[str]]] = {}
        self.datasets: dict[str, PairDataset] = {}

    # -- facts and artifacts -------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know about this data, stated once (builds or loads the tokenizers)."""
        src, tgt = self._tokenizers().values()
        return {"src_vocab_size": src.vocab_size, "tgt_vocab_size": tgt.vocab_size, "src_pad_id": src.pad_id,
                "tgt_pad_id": tgt.pad_id, "sos_id": tgt.sos_id, "eos_id": tgt.eos_id, "max_src_len": self.max_src_len,
                "max_tgt_len": self.max_tgt_len, "shared_vocab": self.joint, "test_sets": self.test_set_names(),
                "tgt_tokenizer": tgt}  # the task detokenizes its translations with it (BLEU is scored on text)

    def save_artifacts(self, run_dir: Path) -> None:
        """Keep the tokenizer(s) and the test set names in the run directory: validation, translation and resumed runs
        reuse exactly these ids."""
        path = Path(run_dir) / ARTIFACT_DIR
        toks = self._tokenizers()
        if self.joint:
            toks["source"].save(path)
        else:
            for side in SIDES:
                toks[side].save(path / side)
        (path / DATA_FILE).write_text(json.dumps({"joint": self.joint, "test_sets": self.test_set_names()}, indent=2) + "\n")

    def load_artifacts(self, run_dir: Path) -> bool:
        """Use the tokenizer(s) a run saved, if it saved them; True if it did. Then `facts()` and `preprocessing()`
        read no data."""
        path = Path(run_dir) / ARTIFACT_DIR
        if not path.is_dir():
            return False
        saved = json.loads((path / DATA_FILE).read_text()) if (path / DATA_FILE).is_file() else {}
        self.joint = not (path / "source").is_dir()
        if self.joint:
            tok = Tokenizer.load(path)
            self.tokenizers = {"source": tok, "target": tok}
        else:
            self.tokenizers = {side: Tokenizer.load(path / side) for side in SIDES}
        self._check_specials(self.tokenizers)
        self._test_names = saved.get("test_sets")
        log.info("tokenizer%s from %s", "" if self.joint else "s", path)
        return True

    def preprocessing(self) -> TranslationPreprocessing:
        """What turns source text into the model's input ids and its output ids into target text."""
        toks = self._tokenizers()
        return TranslationPreprocessing(toks["source"], toks["target"], self.max_src_len)

    def test_set_names(self) -> list[str]:
        """The test sets, in test loader order: the source's, restricted and ordered by `test_sets` if given."""
        if self._test_names is None:
            self.source.prepare()
            found = self.source.test_sets()
            if self.test_sets is not None:
                unknown = [name for name in self.test_sets if name not in found]
                if unknown:
                    raise ConfigError(f"data.test_sets names {unknown}, which the source lacks; choose from: "
                                      f"{', '.join(found) or '(none found)'}")
                found = list(self.test_sets)
            self._test_names = found
        return list(self._test_names)

    # -- raw text ----------------------------------------------------------------------------------------------
    def sources(self, split: str) -> list[str]:
        """The raw source sentences of a split ("train", "val" or a test set), in `index` order."""
        return list(self._split_texts(split)[0])

    def references(self, split: str) -> list[str]:
        """The raw target sentences of a split, in `index` order: the references for BLEU, never truncated."""
        return list(self._split_texts(split)[1])

    def _split_texts(self, split: str) -> tuple[list[str], list[str]]:
        """A split's pairs as read, less the ones with an empty side for train and val (count logged)."""
        if split not in self._texts:
            names = ["train", "val", *self.test_set_names()]
            if split not in names:
                raise ConfigError(f"no split {split!r}; choose one of: {', '.join(names)}")
            self.source.prepare()
            src, tgt = self.source.read(split)
            if split in ("train", "val"):
                keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if s and t]
                if len(keep) < len(src):
                    log.info("%s: dropped %d of %d pairs with an empty side", split, len(src) - len(keep), len(src))
                    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            if not src and split in ("train", "val"):
                raise DataError(f"the {split} split holds no sentence pairs; check data.source")
            self._texts[split] = (src, tgt)
        return self._texts[split]

    # -- tokenizers and encoding (cached) ------------------------------------------------------------------------
    def _tokenizers(self) -> dict[str, Tokenizer]:
        if self.tokenizers is None:
            if self.joint:
                tok = self._tokenizer("joint")
                toks = {"source": tok, "target": tok}
            else:
                toks = {side: self._tokenizer(side) for side in SIDES}
            self._check_specials(toks)
            self.tokenizers = toks
        return self.tokenizers

    def _tokenizer(self, side: str) -> Tokenizer:
        """A tokenizer for one side (or both: joint), from the cache or trained on the training split."""
        if not self.recipe.trains:
            return self.recipe.build()
        self.source.prepare()
        key = {"tokenizer": self.recipe.settings(), "side": side, "train": self.source.key("train")}
        path = self.cache_dir / f"tokenizer-{side}-{digest(key)}"
        if not path.is_dir():
            src, tgt = self._split_texts("train")
            texts = {"joint": src + tgt, "source": src, "target": tgt}[side]
            start = time.perf_counter()
            tok = self.recipe.build(texts)
            log.info("trained %s %s tokenizer on %d training sentences in %.1f s (vocabulary %d)",
                     key["tokenizer"]["scheme"], side, len(texts), time.perf_counter() - start, tok.vocab_size)
            with atomic_dir(path) as tmp:
                tok.save(tmp)
                (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")
        return Tokenizer.load(path)

    @staticmethod
    def _check_specials(toks: dict[str, Tokenizer]) -> None:
        need = {"source": ("pad", "eos"), "target": ("pad", "sos", "eos")}
        for side, roles in need.items():
            missing = [role for role in roles if getattr(toks[side], f"{role}_id") is None]
            if missing:
                raise ConfigError(f"the {side} tokenizer has no {', '.join(f'<{r}>' for r in missing)} token; translation "
                                  "needs <pad> <sos> <eos>: choose tokenizer=bpe, word or char")

    def _splits(self) -> list[str]:
        return ["train", "val", *self.test_set_names()]

    def _encoded_dir(self) -> Path:
        """The cache entry with every split encoded; encodes them on a miss."""
        toks = self._tokenizers()
        key = {"version": _CACHE_VERSION, "tokenizers": [toks[side].fingerprint() for side in SIDES],
               "splits": [self.source.key(split) for split in self._splits()]}
        path = self.cache_dir / f"encoded-{digest(key)}"
        if (path / "meta.json").is_file():
            log.info("translation encoded cache hit: %s", path)
            return path
        meta: dict[str, Any] = {"key": key, "splits": {}}
        with atomic_dir(path) as tmp:
            for i, split in enumerate(self._splits()):
                start = time.perf_counter()
                counts = {}
                for side, texts in zip(SIDES, self._split_texts(split)):
                    ids, offsets = toks[side].encode_flat(texts)
                    np.save(tmp / f"{i}_{side}_ids.npy", ids)
                    np.save(tmp / f"{i}_{side}_offsets.npy", offsets)
                    counts[f"{side}_tokens"] = int(len(ids))
                meta["splits"][split] = {"file": i, "pairs": len(offsets) - 1, **counts,
                                         "seconds": round(time.perf_counter() - start, 3)}
                log.info("encoded %s: %s", split, meta["splits"][split])
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    # -- datasets and loaders ---------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Fetch missing files (hub sources); build the tokenizers and the encoded cache."""
        self.source.prepare()
        self._encoded_dir()

    def setup(self, stage: str | None = None) -> None:
        """Load the encoded splits; filter (train) or cut (val, test) for length and add the special tokens."""
        if self.datasets:
            return
        path = self._encoded_dir()
        meta = json.loads((path / "meta.json").read_text())
        for split in self._splits():
            i = meta["splits"][split]["file"]
            arrays = [np.load(path / f"{i}_{side}_{name}.npy") for side in SIDES for name in ("ids", "offsets")]
            self.datasets[split] = self._pairs(split, *arrays)
        log.info("translation data: %s pairs", ", ".join(f"{s} {len(d):,}" for s, d in self.datasets.items()))

    def _pairs(self, split: str, src_ids: np.ndarray, src_offsets: np.ndarray, tgt_ids: np.ndarray,
               tgt_offsets: np.ndarray) -> PairDataset:
        toks = self._tokenizers()
        src_len = np.diff(src_offsets) + 1  # (N,) with <eos>
        tgt_len = np.diff(tgt_offsets) + 2  # (N,) with <sos> and <eos>
        too_long = (src_len > self.max_src_len, tgt_len > self.max_tgt_len)
        if split == "train":
            keep = np.flatnonzero(~(too_long[0] | too_long[1]))
            if len(keep) < len(src_len):
                log.info("train: dropped %d of %d pairs longer than max_src_len=%d / max_tgt_len=%d tokens",
                         len(src_len) - len(keep), len(src_len), self.max_src_len, self.max_tgt_len)
            if not len(keep):
                raise DataError(f"no training pair fits max_src_len={self.max_src_len} and max_tgt_len={self.max_tgt_len}; "
                                "raise data.max_src_len / data.max_tgt_len")
        else:
            keep = np.arange(len(src_len))
            if too_long[0].any():
                log.warning("%s: %d of %d sources are longer than max_src_len=%d tokens and are cut to it (every pair is "
                            "still scored)", split, too_long[0].sum(), len(keep), self.max_src_len)
            if too_long[1].any():
                log.warning("%s: %d of %d targets are longer than max_tgt_len=%d tokens and are cut for the loss (BLEU "
                            "uses the full references)", split, too_long[1].sum(), len(keep), self.max_tgt_len)
        src, tgt = toks["source"], toks["target"]
        s_ids, s_off = truncate(src_ids, src_offsets, index=keep, max_len=self.max_src_len, suffix=[src.eos_id])
        t_ids, t_off = truncate(tgt_ids, tgt_offsets, index=keep, max_len=self.max_tgt_len, prefix=[tgt.sos_id],
                                suffix=[tgt.eos_id])
        evaluated = {} if split == "train" else {"name": split, "references": self.references(split)}
        return PairDataset(TokenizedDataset(s_ids, s_off, keep, pad_id=src.pad_id),
                           TokenizedDataset(t_ids, t_off, keep, pad_id=tgt.pad_id), **evaluated)

    def _loader(self, split: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError("TranslationDataModule: call setup() before asking for a dataloader")
        dataset = self.datasets[split]
        rank, world_size = shard(self.trainer)
        # A shuffled loader trains: ranks get equal shares. An ordered one evaluates: every pair once.
        sampler = BucketSampler(dataset.lengths, batch_size=batch_size, seed=self.seed, shuffle=shuffle,
                                bucket_size=self.bucket_size, rank=rank, world_size=world_size, even=shuffle)
        return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, batch_size=self.eval_batch_size, shuffle=False) for name in self.test_set_names()]
