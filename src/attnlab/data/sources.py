"""Labelled text from local files or the hub: JSON Lines (.jsonl / .jsonl.gz), aclImdb-style folders, and a hub
dataset written out as JSON Lines. Every error names the file and the fix."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.errors import DataError

log = logging.getLogger(__name__)


def read_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of a .jsonl or .jsonl.gz file with one {"text": str, "label": 0|1} object per line."""
    texts, labels = [], []
    line_no = 0
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    texts.append(row["text"])
                    labels.append(row["label"])
    except FileNotFoundError:
        raise DataError(f"missing IMDB split file {path}; copy it there or set paths.data_dir") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good copy") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {line_no}: not a JSON object ({err.msg})") from None
    except (KeyError, TypeError):
        raise DataError(f'{path}, line {line_no}: each line needs "text" and "label" fields') from None
    return texts, _check_labels(labels, str(path))


def read_aclimdb(split_dir: Path) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of an aclImdb split folder with neg/ and pos/ subfolders, in (label, id) order."""
    texts, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        folder = split_dir / name
        if not folder.is_dir():
            raise DataError(f"missing IMDB folder {folder}; the aclImdb layout has {split_dir}/neg and {split_dir}/pos")
        files = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem.split("_")[0]) if p.stem.split("_")[0].isdigit() else p.stem)
        for path in files:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(f"cannot read {path} ({type(err).__name__}: {err})") from None
        labels += [label] * len(files)
    return texts, _check_labels(labels, str(split_dir))


def _check_labels(labels: list[Any], source: str) -> np.ndarray:
    if not labels:
        raise DataError(f"{source} holds no reviews; replace it with a good copy of the IMDB split")
    bad = [x for x in labels if x not in (0, 1) or isinstance(x, bool)]
    if bad:
        raise DataError(f"{source} has label {bad[0]!r} ({len(bad)} bad in all); IMDB labels are 0 (negative) or 1 (positive)")
    return np.asarray(labels, dtype=np.int64)


def download_jsonl(hub_id: str, data_dir: Path, splits: tuple[str, ...] = ("train", "test")) -> None:
    """Fetch a text + label dataset with `datasets` (cached under data_dir/hf_cache) and write <split>.jsonl.gz files."""
    import datasets  # optional: only needed when the files are missing

    log.info("files missing under %s; downloading %r from the hub", data_dir, hub_id)
    dataset = datasets.load_dataset(hub_id, cache_dir=str(data_dir / "hf_cache"))
    for split in splits:
        rows = [{"id": i, "label": int(r["label"]), "text": r["text"]} for i, r in enumerate(dataset[split])]
        write_jsonl(data_dir / f"{split}.jsonl.gz", rows)
    log.info("wrote %s to %s", ", ".join(f"{s}.jsonl.gz" for s in splits), data_dir)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON Lines (gzip'd when the name ends in .gz), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(path)
