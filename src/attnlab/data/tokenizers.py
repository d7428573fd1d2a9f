"""Tokenizers (`tokenizer` config group): word, char and byte-level BPE trained on the training split, GPT-2's BPE, any hub tokenizer.

A config names a *recipe* (`WordTokenizer`, `CharTokenizer`, `BPETokenizer`, `GPT2Tokenizer`, `HubTokenizer`): its
settings, nothing trained. `recipe.build(texts)` returns a `Tokenizer`: a Hugging Face `tokenizers.Tokenizer`
(fast, batched, Rust) plus the ids of attnlab's special tokens by role. Encoding never adds special tokens;
the data module places them (`<cls> ... <sep>` for encoders), so every scheme truncates and wraps the same way.

    saved as <dir>/tokenizer.json (the standard HF file, loadable with tokenizers.Tokenizer.from_file)
         and <dir>/specials.json  (role -> token text, e.g. {"pad": "<pad>", "cls": "<cls>"})
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Sequence, Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROLES = ("pad", "unk", "cls", "sep", "sos", "eos", "mask")
# <pad> <unk> <cls> <sep> <sos> <eos>, ids 0..5 when trained; <mask> (id 6) only where a recipe asks for it (mask=true,
# masked-LM pretraining), so every other tokenizer's vocabulary stays as it was.
SPECIALS = {role: f"<{role}>" for role in ROLES if role != "mask"}
MASK = "<mask>"
GPT2_EOS = "<|endoftext|>"
TOKENIZER_FILE, SPECIALS_FILE = "tokenizer.json", "specials.json"
_ENCODE_CHUNK = 4096  # texts per encode_batch call: bounds the memory of the Encoding objects


class Tokenizer:
    """A built tokenizer: encode / decode text, special-token ids by role (`pad_id`, `cls_id`, ...; None if absent)."""

    def __init__(self, hf: HFTokenizer, specials: dict[str, str]) -> None:
        unknown = set(specials) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown special-token roles {sorted(unknown)}; valid: {', '.join(ROLES)}")
        missing = [tok for tok in specials.values() if hf.token_to_id(tok) is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.hf = hf
        self.specials = dict(specials)
        for role in ROLES:
            setattr(self, f"{role}_id", hf.token_to_id(specials[role]) if role in specials else None)

    pad_id: int | None
    unk_id: int | None
    cls_id: int | None
    sep_id: int | None
    sos_id: int | None
    eos_id: int | None
    mask_id: int | None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, no special tokens added."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel threads."""
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts as one flat id array and offsets (N + 1,): text i is ids[offsets[i]:offsets[i + 1]]."""
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32
        chunks, lengths = [], []
        for start in range(0, len(texts), _ENCODE_CHUNK):
            batch = self.encode_batch(texts[start : start + _ENCODE_CHUNK])
            n = [len(ids) for ids in batch]
            chunks.append(np.fromiter(itertools.chain.from_iterable(batch), dtype=dtype, count=sum(n)))
            lengths.extend(n)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return (np.concatenate(chunks) if chunks else np.zeros(0, dtype)), offsets

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special)

    def tokens(self, text: str) -> list[str]:
        """The token strings of a text (for inspection)."""
        return self.hf.encode(text, add_special_tokens=False).tokens

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids: the cache key of encoded data."""
        payload = self.hf.to_str() + json.dumps(self.specials, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def save(self, directory: Path) -> None:
        """Write tokenizer.json and specials.json into `directory` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / TOKENIZER_FILE))
        (directory / SPECIALS_FILE).write_text(json.dumps(self.specials, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        directory = Path(directory)
        try:
            hf = HFTokenizer.from_file(str(directory / TOKENIZER_FILE))
            specials = json.loads((directory / SPECIALS_FILE).read_text())
        except Exception as err:  # missing file, bad JSON, not a tokenizer file
            raise DataError(
                f"cannot load the tokenizer in {directory} ({type(err).__name__}: {err}); "
                f"it needs {TOKENIZER_FILE} and {SPECIALS_FILE} as written by Tokenizer.save"
            ) from None
        return cls(hf, specials)


class TokenizerRecipe(Protocol):
    """What a `tokenizer` config builds: settings, and a tokenizer from the training texts (ignored if `trains` is false)."""

    trains: bool

    def settings(self) -> dict[str, Any]: ...

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer: ...


def _check_trainable(max_vocab: int, min_freq: int) -> None:
    if max_vocab < len(SPECIALS) + 1 or min_freq < 1:
        raise ConfigError(f"tokenizer: max_vocab must be > {len(SPECIALS)} and min_freq >= 1; got {max_vocab}, {min_freq}")


def _specials(mask: bool, *, unk: bool = True) -> dict[str, str]:
    """The special tokens of a trained vocabulary by role: attnlab's six (no <unk> for byte-level BPE), <mask> last."""
    return {**{role: tok for role, tok in SPECIALS.items() if unk or role != "unk"}, **({"mask": MASK} if mask else {})}


def _settings(scheme: str, recipe: Any) -> dict[str, Any]:
    """A recipe's settings (its cache key): `mask` only when set, so keys written before it existed stay valid."""
    values = asdict(recipe)
    if not values.get("mask"):
        values.pop("mask", None)
    return {"scheme": scheme, **values}


def _train(hf: HFTokenizer, trainer: Any, texts: Iterable[str] | None, name: str) -> None:
    """Train on a list of texts or any iterable of them (a generator streams a corpus without holding it)."""
    items = iter(texts if texts is not None else ())
    first = next(items, None)
    if first is None:
        raise DataError(f"the {name} tokenizer is trained on the training texts, and none were given")
    length = len(texts) if isinstance(texts, Sized) else None
    hf.train_from_iterator(itertools.chain([first], items), trainer, length=length)


@dataclass(frozen=True, kw_only=True)
class WordTokenizer:
    """Word level: (lower-cased) words and punctuation marks, the `max_vocab` most frequent seen >= `min_freq` times."""

    max_vocab: int = 30000
    min_freq: int = 2
    lowercase: bool = True
    mask: bool = False  # a <mask> token (masked-LM pretraining: task=masked_lm)

    trains = True

    def __post_init__(self) -> None:
        _check_trainable(self.max_vocab, self.min_freq)

    def settings(self) -> dict[str, Any]:
        return _settings("word", self)

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer:
        hf = HFTokenizer(models.WordLevel(unk_token=SPECIALS["unk"]))
        hf.normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if self.lowercase else [])])
        hf.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
        trainer = trainers.WordLevelTrainer(
            vocab_size=self.max_vocab, min_frequency=self.min_freq, special_tokens=list(_specials(self.mask).values()),
            show_progress=False,
        )
        _train(hf, trainer, texts, "word")
        return Tokenizer(hf, _specials(self.mask))


@dataclass(frozen=True, kw_only=True)
class CharTokenizer:
    """Character level: every character (spaces included) is a token; rare ones (< `min_freq`) become <unk>."""

    max_vocab: int = 1000
    min_freq: int = 1
    lowercase: bool = False
    mask: bool = False  # a <mask> token (masked-LM pretraining: task=masked_lm)

    trains = True

    def __post_init__(self) -> None:
        _check_trainable(self.max_vocab, self.min_freq)

    def settings(self) -> dict[str, Any]:
        return _settings("char", self)

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer:
        hf = HFTokenizer(models.WordLevel(unk_token=SPECIALS["unk"]))
        if self.lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
        hf.decoder = decoders.Fuse()  # join the characters back with nothing between them
        trainer = trainers.WordLevelTrainer(
            vocab_size=self.max_vocab, min_frequency=self.min_freq, special_tokens=list(_specials(self.mask).values()),
            show_progress=False,
        )
        _train(hf, trainer, texts, "char")
        return Tokenizer(hf, _specials(self.mask))


@dataclass(frozen=True, kw_only=True)
class BPETokenizer:
    """Byte-level BPE (GPT-2 / RoBERTa style) with `max_vocab` tokens: any text encodes, so no <unk>."""

    max_vocab: int = 16000
    min_freq: int = 2
    lowercase: bool = False
    mask: bool = False  # a <mask> token (masked-LM pretraining: task=masked_lm)

    trains = True

    def __post_init__(self) -> None:
        _check_trainable(self.max_vocab, self.min_freq)

    def settings(self) -> dict[str, Any]:
        return _settings("bpe", self)

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer:
        specials = _specials(self.mask, unk=False)
        hf = HFTokenizer(models.BPE())
        if self.lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.max_vocab,
            min_frequency=self.min_freq,
            special_tokens=list(specials.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
            show_progress=False,
        )
        _train(hf, trainer, texts, "bpe")
        return Tokenizer(hf, specials)


@dataclass(frozen=True, kw_only=True)
class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens) from vocab.json + merges.txt in `vocab_dir`, else from the hub.

    <|endoftext|> serves as <sos> and <eos>, as in GPT-2. With `add_specials`, <pad> <cls> <sep> are appended
    (ids 50257..50259) for models trained from scratch; without, <pad> is <|endoftext|> (a pretrained GPT-2's
    embedding table keeps its size, and attention masks hide the padding).
    """

    vocab_dir: str | None = None
    hub_id: str = "openai-community/gpt2"
    add_specials: bool = True

    trains = False

    def _files(self) -> tuple[Path, Path] | None:
        if not self.vocab_dir:
            return None
        vocab, merges = Path(self.vocab_dir) / "vocab.json", Path(self.vocab_dir) / "merges.txt"
        return (vocab, merges) if vocab.is_file() and merges.is_file() else None

    def settings(self) -> dict[str, Any]:
        files = self._files()
        digest = [hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files] if files else [self.hub_id]
        return {"scheme": "gpt2", "files": digest, "add_specials": self.add_specials}

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer:
        files = self._files()
        if files:
            hf = HFTokenizer(models.BPE.from_file(str(files[0]), str(files[1])))
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
        else:
            try:
                hf = HFTokenizer.from_pretrained(self.hub_id)
            except Exception as err:  # offline, unknown id
                raise DataError(
                    f"no vocab.json + merges.txt in {self.vocab_dir} and the hub download of {self.hub_id!r} failed "
                    f"({type(err).__name__}); copy GPT-2's vocab.json and merges.txt there or set tokenizer.vocab_dir"
                ) from None
        hf.add_special_tokens([GPT2_EOS])
        specials = {"sos": GPT2_EOS, "eos": GPT2_EOS, "pad": GPT2_EOS}
        if self.add_specials:
            added = {role: SPECIALS[role] for role in ("pad", "cls", "sep")}
            hf.add_special_tokens(list(added.values()))
            specials.update(added)
        return Tokenizer(hf, specials)


@dataclass(frozen=True, kw_only=True)
class HubTokenizer:
    """The fast tokenizer of a pretrained model (`transformers.AutoTokenizer`), by hub name or local path.

    Pair it with `model=hf_classifier` of the same name: a pretrained model only understands its own ids.
    """

    name_or_path: str

    trains = False

    def settings(self) -> dict[str, Any]:
        return {"scheme": "hub", "name_or_path": self.name_or_path}

    def build(self, texts: Iterable[str] | None = None) -> Tokenizer:
        try:
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(self.name_or_path)
        except Exception as err:
            raise DataError(
                f"cannot load the tokenizer {self.name_or_path!r} ({type(err).__name__}: {str(err)[:200]}); "
                "give a local folder with tokenizer.json or a hub name on a networked machine"
            ) from None
        if not getattr(auto, "is_fast", False):
            raise DataError(f"{self.name_or_path!r} has no fast (tokenizer.json) tokenizer; attnlab needs one")
        named = {"pad": auto.pad_token, "unk": auto.unk_token, "cls": auto.cls_token or auto.bos_token,
                 "sep": auto.sep_token or auto.eos_token, "sos": auto.bos_token, "eos": auto.eos_token}
        return Tokenizer(auto.backend_tokenizer, {role: tok for role, tok in named.items() if tok})
