"""IMDB movie reviews (Maas et al., 2011): one configuration of the general text classification data module
(attnlab.data.text_classification), with IMDB's sources, its two classes and its random validation split; readers
and a learnable fake corpus for tests.

Sources, first found wins: <data_dir>/{train,test}.jsonl.gz (as in ../shared/data/imdb), the original aclImdb/
folders (<data_dir>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, or those folders in data_dir itself), else
the hub dataset (`hub_id`), written as the two .jsonl.gz files on first use. The IMDB-specific options (`<br />`
stripping, head-tail truncation) are options of the general module.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from attnlab.data.sources import download_jsonl, read_aclimdb, read_jsonl, write_jsonl
from attnlab.data.text import Truncation, digest, file_stamps
from attnlab.data.text_classification import ARTIFACT_DIR, TextClassificationDataModule, TextPreprocessing, strip_breaks
from attnlab.data.tokenizers import TokenizerRecipe
from attnlab.errors import DataError

__all__ = ["ARTIFACT_DIR", "CLASS_NAMES", "IMDBDataModule", "ReviewPreprocessing", "write_fake_imdb"]

SPLITS = ("train", "test")
CLASS_NAMES = ["negative", "positive"]
ReviewPreprocessing = TextPreprocessing  # the name serving and older code use


class IMDBDataModule(TextClassificationDataModule):
    """IMDB sentiment: seeded validation split carved from train, the full 25,000-review test set; text batches
    ({"input_ids", "attention_mask"}, labels) padded per batch, optionally grouped by length."""

    name = "IMDB"

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
        super().__init__(train_file=str(Path(data_dir) / "train.jsonl.gz"), test_file=str(Path(data_dir) / "test.jsonl.gz"),
                         cache_dir=cache_dir, tokenizer=tokenizer, seed=seed, class_names=CLASS_NAMES,
                         max_len=max_len, truncation=truncation, head_fraction=head_fraction, specials=specials,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size, test_size=0,
                         split_seed=split_seed, bucket=bucket, bucket_size=bucket_size, strip_html=strip_html,
                         num_workers=num_workers)
        self.data_dir = Path(data_dir)
        self.hub_id = hub_id

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

    def _read(self, role: str) -> tuple[list[str], list[Any]]:
        if role not in self._read_cache:
            source = self._sources()[role]
            texts, labels = read_aclimdb(source) if source.is_dir() else read_jsonl(source)
            if self.strip_html:
                texts = [strip_breaks(t) for t in texts]  # as TextPreprocessing.clean
            self._read_cache[role] = (texts, [CLASS_NAMES[i] for i in labels.tolist()])
        return self._read_cache[role]

    def _stamps(self, roles: Sequence[str]) -> list[Any]:
        stamps = []
        for role in roles:
            source = self._sources()[role]
            files = sorted(source.rglob("*.txt")) if source.is_dir() else [source]
            stamps.append([role, len(files), digest(file_stamps(files))])
        return stamps

    def _key_extra(self) -> dict[str, Any]:
        return {}

    def _split(self, labels: np.ndarray, size: float, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) row indices of the training file: a random split by `split_seed` only (as IMDB always had)."""
        n, count = len(labels), int(size)
        if count >= n:
            raise DataError(f"val_size={count} leaves no training reviews out of {n}; set data.val_size below {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).numpy()
        return np.sort(perm[count:]), np.sort(perm[:count])

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
