"""A text corpus for masked-language-model pretraining of the encoders (`data=mlm_corpus`, `task=masked_lm`).

The corpus machinery is the language-modelling one (attnlab.data.corpus: any text or JSON Lines files, documents
split into train and validation, a tokenizer trained on the training documents and encoded once into a cached token
stream); what differs is the windows. The stream is cut into consecutive windows of max_len - 2 tokens, each wrapped
as `<cls> window <sep>` (RoBERTa's packed "full sentences": a window may span documents, which the stream separates
with `<eos>`), so every batch is full and has no padding. Training takes every window once an epoch in a shuffled
order drawn by (seed, epoch); validation and test take fixed windows (`val_windows` evenly spaced, or all).

A batch is ({"input_ids": (B, max_len)}, index (B,)): the window's index, from which the task draws its masks (the
same masks every epoch for static masking, new ones each epoch for dynamic masking; see attnlab.tasks.masked_lm).
The tokenizer needs <cls>, <sep> and <mask> (`tokenizer@data.tokenizer=word` with `data.tokenizer.mask=true`); the run
saves it, and a classifier fine-tuned from this run (`init_from=<run>`) reads its data through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import decoders
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attnlab.data.corpus import TextCorpusDataModule
from attnlab.data.loading import make_loader
from attnlab.data.text_classification import strip_breaks
from attnlab.data.tokenizers import Tokenizer
from attnlab.data.windows import fixed_starts
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def word_starts(tok: Tokenizer) -> Tensor:
    """(V,) bool: whether a token can begin a word, for whole-word masking. Byte-level BPE: tokens that start with a
    space or newline (Ġ, Ċ); WordPiece: tokens without the ## continuation prefix; word level: every token; character
    level: whitespace (a word is a space and the letters after it). Special tokens count as starts."""
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    starts = torch.ones(tok.vocab_size, dtype=torch.bool)
    decoder = tok.hf.decoder
    if isinstance(decoder, decoders.ByteLevel):
        for text, i in vocab.items():
            starts[i] = text[:1] in ("Ġ", "Ċ")
    elif any(text.startswith("##") for text in vocab):
        for text, i in vocab.items():
            starts[i] = not text.startswith("##")
    elif isinstance(decoder, decoders.Fuse):  # characters
        for text, i in vocab.items():
            starts[i] = text.isspace()
    for text in tok.specials.values():
        starts[tok.hf.token_to_id(text)] = True
    return starts


def special_ids(tok: Tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens (never masked, never predicted)."""
    return sorted({tok.hf.token_to_id(text) for text in tok.specials.values()})


class MaskedWindows(Dataset):
    """Windows of `span` tokens of a stream at fixed starts, each wrapped as <cls> window <sep> (span + 2 tokens).
    A batch is ({"input_ids": int64 (B, span + 2)}, int64 (B,) window indices)."""

    def __init__(self, tokens: np.ndarray, *, span: int, starts: np.ndarray, cls_id: int, sep_id: int) -> None:
        if len(starts) == 0:
            raise ValueError(f"{len(tokens)} tokens hold no window of {span}")
        self.tokens, self.span, self.starts = tokens, span, starts
        self.cls_id, self.sep_id = cls_id, sep_id
        self.offsets = np.arange(span)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: Sequence[int]) -> tuple[dict[str, Tensor], Tensor]:
        index = np.asarray(indices, dtype=np.int64)
        body = np.asarray(self.tokens[self.starts[index][:, None] + self.offsets], dtype=np.int64)  # (B, span)
        ids = np.empty((len(index), self.span + 2), dtype=np.int64)
        ids[:, 0], ids[:, 1:-1], ids[:, -1] = self.cls_id, body, self.sep_id
        return {"input_ids": torch.from_numpy(ids)}, torch.from_numpy(index)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        inputs, index = self.__getitems__([i])
        return {k: v[0] for k, v in inputs.items()}, index[0]


class MaskedCorpusDataModule(TextCorpusDataModule):
    """TextCorpusDataModule's files, split, tokenizer and token cache; windows for masked-LM pretraining."""

    def __init__(self, *, strip_html: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.max_len < 3:
            raise ConfigError(f"data.max_len must be >= 3 (<cls>, a token, <sep>), got {self.max_len}")
        self.strip_html = strip_html  # IMDB's <br /> tags as spaces, as the IMDB classifier reads its reviews

    def _documents(self, split: str) -> Iterator[str]:
        docs = super()._documents(split)
        return map(strip_breaks, docs) if self.strip_html else docs

    def _fields_key(self) -> dict[str, Any]:
        return {**super()._fields_key(), **({"strip_html": True} if self.strip_html else {})}

    def facts(self) -> dict[str, Any]:
        """vocab_size, max_len, pad_id (the encoder's), mask_id, special_ids and word_start (the task's masking)."""
        tok = self.tokenizer
        missing = [role for role in ("cls", "sep", "mask", "pad") if getattr(tok, f"{role}_id") is None]
        if missing:
            raise ConfigError(f"masked-LM pretraining needs the tokenizer's {', '.join(f'<{r}>' for r in missing)} "
                              "token(s): use a trained tokenizer (word, bpe, char) with data.tokenizer.mask=true")
        return {"vocab_size": tok.vocab_size, "max_len": self.max_len, "pad_id": tok.pad_id, "mask_id": tok.mask_id,
                "special_ids": special_ids(tok), "word_start": word_starts(tok), "tokenizer": tok}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        tok, span = self.tokenizer, self.max_len - 2
        streams = {"train": self.train_tokens(), "val": self.val_tokens(), "test": self.test_tokens()}
        for split, stream in streams.items():
            if len(stream) < span + 1:
                source = self.files()[split] or self.files()["train"]
                raise DataError(f"the {self.name} {split} stream ({source}) has {len(stream)} tokens, fewer than one "
                                f"window of max_len - 2 = {span}; lower data.max_len or use more text")
            limit = None if split == "train" else self.val_windows
            self.datasets[split] = MaskedWindows(stream, span=span, starts=fixed_starts(len(stream), span, limit),
                                               cls_id=tok.cls_id, sep_id=tok.sep_id)
        log.info("%s (masked LM): train %s tokens in %s windows of %d, val %s windows, vocabulary %d", self.name,
                 f"{len(streams['train']):,}", f"{len(self.datasets['train']):,}", self.max_len,
                 f"{len(self.datasets['val']):,}", tok.vocab_size)

    def train_dataloader(self) -> DataLoader:
        """Every window once an epoch, shuffled by (seed, epoch); validation and test loaders are the corpus's."""
        return make_loader(self._dataset("train"), batch_size=self.batch_size, shuffle=True, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)
