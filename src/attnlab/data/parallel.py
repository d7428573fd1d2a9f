"""Parallel text (line i of a source file is translated by line i of a target file): the `source` of a
TranslationDataModule, one class per layout.

    SplitDirectory  <data_dir>/<split>.<src_lang>[.gz] + <split>.<tgt_lang>[.gz] for train, val and every test* split
                    (Multi30k's raw files); on first use a hub dataset is written there in this layout, if `hub_id` is set
    FilePairs       a (source file, target file) pair for train and val, and one per named test set
    TabSeparated    one `English<TAB>French[<TAB>...]` file (Tatoeba, manythings.org's fra.txt), split with a seed into
                    train / val / test so that no sentence, of either language, is in two splits

Every source answers `test_sets()` (names, in order), `read(split)` (the stripped lines of both sides, empty ones
included: the data module decides what to drop) and `key(split)` (JSON-able, changes when the split may change: the
cache key). Errors name the file and the fix.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from attnlab.data.text import file_stamps
from attnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Pair = tuple[list[str], list[str]]  # (source sentences, target sentences), aligned
HUB_SPLITS = {"train": "train", "validation": "val", "test": "test"}  # the hub dataset's split -> ours


class ParallelSource(Protocol):
    def prepare(self) -> None: ...  # fetch missing files (hub), else nothing

    def test_sets(self) -> list[str]: ...

    def read(self, split: str) -> Pair: ...

    def key(self, split: str) -> Any: ...


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzip'd when named .gz), stripped; only "\\n" ends a line, so a stray "\\r" or
    U+2028 inside a sentence cannot shift the alignment."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="\n") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"missing file {path}; copy it there or fix the path in data.source") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good UTF-8 copy") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line.strip() for line in lines]


def read_pair(src: Path, tgt: Path) -> Pair:
    """The aligned lines of a source file and its translation; their counts must agree."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise DataError(f"{src} has {len(a):,} lines but {tgt} has {len(b):,}; line i of one must translate line i of "
                        "the other: replace them with an aligned pair")
    return a, b


def _check_split_names(names: list[str], where: str) -> None:
    bad = [n for n in names if n in ("train", "val") or not n or "/" in n]
    if bad:
        raise ConfigError(f"{where}: {bad[0]!r} cannot name a test set (train and val are taken; no '/')")


@dataclass(frozen=True, kw_only=True)
class SplitDirectory:
    """`<split>.<lang>[.gz]` files in one folder (Multi30k's raw layout): train, val and the test sets named test*."""

    data_dir: str
    src_lang: str = "en"
    tgt_lang: str = "fr"
    # A `datasets` id written here when train is missing; rows {"translation": {lang: text}} or {lang: text}.
    hub_id: str | None = None
    hub_config: str | None = None

    def __post_init__(self) -> None:
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"data.source: src_lang and tgt_lang are both {self.src_lang!r}; set two languages")

    def _find(self, split: str, lang: str) -> Path | None:
        for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
            if (path := Path(self.data_dir) / name).is_file():
                return path
        return None

    def files(self, split: str) -> tuple[Path, Path]:
        found = [self._find(split, lang) for lang in (self.src_lang, self.tgt_lang)]
        if None in found:
            lang = (self.src_lang, self.tgt_lang)[found.index(None)]
            raise DataError(f"no {split}.{lang}.gz (or {split}.{lang}) under {self.data_dir}; copy the {split} files "
                            f"there, or set data.source.data_dir (or paths.data_dir / ATTNLAB_DATA_DIR)")
        return found[0], found[1]  # type: ignore[return-value]

    def prepare(self) -> None:
        if self._find("train", self.src_lang) or not self.hub_id:
            return
        try:
            download_parallel(self.hub_id, self.hub_config, Path(self.data_dir), (self.src_lang, self.tgt_lang))
        except Exception as e:  # offline, no `datasets`, network or hub errors all end the same way
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise DataError(f"no train.{self.src_lang}.gz under {self.data_dir} and the hub download of {self.hub_id!r} "
                            f"failed ({reason}); copy the files there or set data.source.data_dir") from e

    def test_sets(self) -> list[str]:
        suffix = f".{self.src_lang}"
        names = {p.name.removesuffix(".gz").removesuffix(suffix) for p in Path(self.data_dir).glob(f"test*{suffix}*")
                 if p.name.removesuffix(".gz").endswith(suffix)}
        return sorted(names)

    def read(self, split: str) -> Pair:
        return read_pair(*self.files(split))

    def key(self, split: str) -> Any:
        return [split, file_stamps(list(self.files(split)))]


@dataclass(frozen=True, kw_only=True)
class FilePairs:
    """Named [source file, target file] pairs: train, val, and `test` {name: pair}; relative paths resolve in data_dir."""

    train: list[str]
    val: list[str]
    test: dict[str, list[str]] = field(default_factory=dict)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        for name, pair in {"train": self.train, "val": self.val, **{f"test.{k}": v for k, v in self.test.items()}}.items():
            if len(pair) != 2:
                raise ConfigError(f"data.source.{name} must be [source file, target file], got {pair!r}")
        _check_split_names(list(self.test), "data.source.test")

    def files(self, split: str) -> tuple[Path, Path]:
        pair = {"train": self.train, "val": self.val, **self.test}.get(split)
        if pair is None:
            raise ConfigError(f"no split {split!r}; data.source names train, val and test sets {list(self.test)}")
        src, tgt = (Path(self.data_dir or ".") / p for p in pair)
        return src, tgt

    def prepare(self) -> None:
        pass

    def test_sets(self) -> list[str]:
        return list(self.test)

    def read(self, split: str) -> Pair:
        return read_pair(*self.files(split))

    def key(self, split: str) -> Any:
        return [split, file_stamps(list(self.files(split)))]


@dataclass(kw_only=True)
class TabSeparated:
    """One tab-separated file of pairs (columns `src_column`, `tgt_column`; blank lines skipped), split with
    `split_seed`: about `test_size` pairs to "test", `val_size` to "val", the rest to "train", in file order.

    Pairs that share a sentence on either side form a group (Tatoeba gives many sentences several translations),
    and a group goes whole to one split: no English or French sentence is in two splits.
    """

    path: str
    src_column: int = 0
    tgt_column: int = 1
    val_size: int = 2000
    test_size: int = 5000
    split_seed: int = 1234
    _splits: dict[str, Pair] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        sizes, columns = (self.val_size, self.test_size), (self.src_column, self.tgt_column)
        if min(*sizes, *columns) < 0 or columns[0] == columns[1]:
            raise ConfigError("data.source: val_size, test_size and the columns must be >= 0, the two columns different; "
                              f"got val_size={sizes[0]}, test_size={sizes[1]}, columns {columns[0]}, {columns[1]}")

    def prepare(self) -> None:
        if not Path(self.path).is_file():
            raise DataError(f"missing file {self.path} (tab-separated pairs, e.g. Tatoeba's fra.txt.gz); copy it there "
                            "or set data.source.path (or paths.data_dir / ATTNLAB_DATA_DIR)")

    def test_sets(self) -> list[str]:
        return ["test"]

    def read(self, split: str) -> Pair:
        if self._splits is None:
            self._splits = self._read_and_split()
        if split not in self._splits:
            raise ConfigError(f"no split {split!r} in {self.path}; it has train, val and test")
        return self._splits[split]

    def key(self, split: str) -> Any:
        self.prepare()
        return [split, file_stamps([Path(self.path)]), self.src_column, self.tgt_column, self.val_size,
                self.test_size, self.split_seed]

    def _read_and_split(self) -> dict[str, Pair]:
        self.prepare()
        need = max(self.src_column, self.tgt_column) + 1
        src, tgt = [], []
        for n, line in enumerate(read_lines(Path(self.path)), 1):
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) < need:
                raise DataError(f"{self.path}, line {n}: {len(fields)} tab-separated field(s), column {need - 1} is needed; "
                                "each line must be source<TAB>target (set data.source.src_column / tgt_column)")
            src.append(fields[self.src_column].strip())
            tgt.append(fields[self.tgt_column].strip())
        rows = split_groups(src, tgt, val_size=self.val_size, test_size=self.test_size, seed=self.split_seed,
                            where=self.path)
        log.info("%s: %s pairs", self.path, ", ".join(f"{s} {len(r):,}" for s, r in rows.items()))
        return {s: ([src[i] for i in r], [tgt[i] for i in r]) for s, r in rows.items()}


def sentence_groups(src: list[str], tgt: list[str]) -> np.ndarray:
    """(N,) group id of each pair: pairs linked by a shared source or target sentence share a group (union-find)."""
    ids: dict[tuple[int, str], int] = {}
    parent: list[int] = []

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    pair_root = []
    for s, t in zip(src, tgt):
        a, b = (ids.setdefault(key, len(ids)) for key in ((0, s), (1, t)))
        parent.extend(range(len(parent), len(ids)))
        ra, rb = find(a), find(b)
        parent[ra] = rb
        pair_root.append(b)
    roots = np.array([find(x) for x in pair_root], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1]


def split_groups(src: list[str], tgt: list[str], *, val_size: int, test_size: int, seed: int,
                 where: str) -> dict[str, np.ndarray]:
    """Sorted row indices of train / val / test: whole groups (see sentence_groups) in an order drawn from `seed`
    fill test until it has >= test_size pairs, then val to >= val_size; the rest train."""
    n = len(src)
    if val_size + test_size >= n:
        raise DataError(f"val_size={val_size} + test_size={test_size} leave no training pairs out of the {n:,} in "
                        f"{where}; lower data.source.val_size / test_size")
    group = sentence_groups(src, tgt)
    sizes = np.bincount(group)  # (G,)
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).numpy()
    before = np.cumsum(sizes[order]) - sizes[order]  # pairs ahead of each group in that order
    is_test = before < test_size
    test_total = sizes[order][is_test].sum()
    is_val = ~is_test & (before < test_total + val_size)
    split_of_group = np.empty(len(sizes), dtype=np.int64)
    split_of_group[order] = np.where(is_test, 2, np.where(is_val, 1, 0))
    row_split = split_of_group[group]
    return {name: np.flatnonzero(row_split == i) for i, name in enumerate(("train", "val", "test"))}


def download_parallel(hub_id: str, config: str | None, data_dir: Path, langs: tuple[str, str]) -> None:
    """Fetch a translation dataset with `datasets` (cached under data_dir/hf_cache) and write <split>.<lang>.gz files."""
    import datasets  # optional: only needed when the files are missing

    log.info("files missing under %s; downloading %r from the hub", data_dir, hub_id)
    dataset = datasets.load_dataset(hub_id, config, cache_dir=str(data_dir / "hf_cache"))
    data_dir.mkdir(parents=True, exist_ok=True)
    for hub_split, split in HUB_SPLITS.items():
        if hub_split not in dataset:
            continue
        rows = dataset[hub_split]
        for lang in langs:
            texts = (r["translation"][lang] if "translation" in r else r[lang] for r in rows)
            path = data_dir / f"{split}.{lang}.gz"
            tmp = path.with_name("tmp-" + path.name)
            with gzip.open(tmp, "wt", encoding="utf-8") as f:
                f.writelines(" ".join(text.split("\n")).strip() + "\n" for text in texts)  # one sentence, one line
            tmp.replace(path)
        log.info("wrote %s.{%s}.gz (%d pairs) to %s", split, ",".join(langs), len(rows), data_dir)


# -- a learnable fake Multi30k for tests ------------------------------------------------------------------------------
_NOUNS = {"dog": "chien", "cat": "chat", "boy": "garçon", "man": "homme", "child": "enfant"}
_ADJECTIVES = {"small": "petit", "big": "grand", "happy": "heureux", "old": "âgé"}
_VERBS = {"runs": "court", "sleeps": "dort", "eats": "mange", "plays": "joue"}
_PLACES = {"": "", "in the park": "dans le parc", "near the café": "près du café", "at the beach": "à la plage"}


def fake_pairs(n: int, *, seed: int = 0) -> Pair:
    """`n` English sentences and their French translations, word for word with the adjective moved after the noun
    ("A happy dog runs near the café." -> "Un chien heureux court près du café.")."""
    rng = np.random.default_rng(seed)
    en, fr = [], []
    for _ in range(n):
        noun, adj, verb, place = (str(rng.choice(list(d))) for d in (_NOUNS, _ADJECTIVES, _VERBS, _PLACES))
        end = str(rng.choice([".", "!", "."]))
        en.append(" ".join(w for w in ("A", adj, noun, verb, place) if w) + end)
        fr.append(" ".join(w for w in ("Un", _NOUNS[noun], _ADJECTIVES[adj], _VERBS[verb], _PLACES[place]) if w) + end)
    return en, fr


def write_fake_multi30k(root: Path, *, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write <split>.en.gz / <split>.fr.gz under root (Multi30k's layout), `sizes` pairs per split; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {"train": 200, "val": 40, "test_2016_flickr": 30, "test_2017_mscoco": 20}
    for i, (split, n) in enumerate(sizes.items()):
        for lang, lines in zip(("en", "fr"), fake_pairs(n, seed=seed + i)):
            with gzip.open(root / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
    return root
