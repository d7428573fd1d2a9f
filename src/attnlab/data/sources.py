"""Text from local files or the hub: labelled JSON Lines (.jsonl / .jsonl.gz) and aclImdb-style folders, plain-text
corpora of separated documents (TinyStories' format), and hub datasets written out as such files. Every error names
the file and the fix."""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from attnlab.errors import DataError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"  # TinyStories' (and GPT-2's) document separator
_MAX_DOC_CHARS = 1 << 26  # a longer document most likely means a wrong separator


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


# -- plain-text corpora ---------------------------------------------------------------------------------------------
def open_text(path: Path, mode: str = "rt") -> IO[str]:
    """A UTF-8 text file, gzip'd when its name ends in .gz."""
    return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else open(path, mode, encoding="utf-8")


def iter_documents(path: Path, separator: str = EOT) -> Iterator[str]:
    """The stripped, non-empty documents of a text file, read line by line: one document in memory at a time."""
    parts: list[str] = []
    size = 0
    try:
        with open_text(path) as f:
            for line in f:
                if separator and separator in line:
                    *ends, rest = line.split(separator)
                elif not separator and not line.strip():
                    ends, rest = [line], ""
                else:
                    parts.append(line)
                    size += len(line)
                    if size > _MAX_DOC_CHARS:
                        raise DataError(f"{path}: a document runs past {_MAX_DOC_CHARS:,} characters without the separator "
                                        f"{separator!r}; set data.separator ('' splits at blank lines)")
                    continue
                for end in ends:
                    parts.append(end)
                    if doc := "".join(parts).strip():
                        yield doc
                    parts = []
                parts, size = [rest], len(rest)
            if doc := "".join(parts).strip():
                yield doc
    except FileNotFoundError:
        raise DataError(f"missing text file {path}; copy it there or set data.data_dir / data.train_file") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good UTF-8 copy") from None


def iter_jsonl_documents(path: Path, fields: Iterable[str]) -> Iterator[str]:
    """One document per JSON Lines row: the first of `fields` the row has (a list of strings is joined with spaces,
    SciTLDR's sentence lists); rows with none of them, or with empty text, are skipped. One row in memory at a time."""
    fields = list(fields)
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line_no}: not JSON ({err.msg}); a .jsonl file holds one object per line") from None
                value = next((row[k] for k in fields if isinstance(row, dict) and k in row), None)
                text = " ".join(map(str, value)) if isinstance(value, list) else value
                if isinstance(text, str) and (text := text.strip()):
                    yield text
    except FileNotFoundError:
        raise DataError(f"missing text file {path}; copy it there or set data.data_dir / data.train_file") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good UTF-8 copy") from None


def is_jsonl(path: Path) -> bool:
    """A JSON Lines file by its name: .jsonl or .jsonl.gz."""
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def write_documents(path: Path, docs: Iterable[str], *, separator: str = EOT) -> int:
    """Write documents, each followed by a separator line (a blank line for separator ""), atomically; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp-" + path.name)  # same suffix: gzip'd alike
    n = 0
    with open_text(tmp, "wt") as f:
        for n, doc in enumerate(docs, 1):
            f.write(f"{doc}\n{separator}\n")
    tmp.replace(path)
    return n


def download_documents(hub_id: str, data_dir: Path, files: dict[str, str], *, text_field: str, separator: str) -> None:
    """Write the hub dataset's splits ({hub split: file name}) as text files under data_dir, a batch of rows at a time."""
    import datasets  # optional: only needed when the files are missing

    log.info("files missing under %s; downloading %r from the hub", data_dir, hub_id)
    dataset = datasets.load_dataset(hub_id, cache_dir=str(data_dir / "hf_cache"))
    for split, name in files.items():
        rows = dataset[split].iter(batch_size=1024)
        n = write_documents(data_dir / name, (text for batch in rows for text in batch[text_field]), separator=separator)
        log.info("wrote %d documents of %r %s to %s", n, hub_id, split, data_dir / name)


# -- labelled tables: CSV / TSV / JSON Lines -------------------------------------------------------------------------
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".csv.gz", ".tsv.gz", ".jsonl.gz")


def table_kind(path: Path) -> str:
    """csv, tsv or jsonl, from the file's name (.gz allowed); a DataError for any other name."""
    name = path.name.lower().removesuffix(".gz")
    for kind in ("csv", "tsv", "jsonl"):
        if name.endswith(f".{kind}"):
            return kind
    raise DataError(f"{path}: cannot tell the format from the name; use a .csv, .tsv or .jsonl file (optionally .gz)")


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a CSV, TSV or JSON Lines file (optionally gzip'd) as dicts of column -> value."""
    import csv

    kind = table_kind(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; check the path (relative paths are from the directory you run in)")
    with open_text(path) as f:
        if kind == "jsonl":
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}, line {line_no}: not a JSON object ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}, line {line_no}: not a JSON object")
                    yield row
        else:
            csv.field_size_limit(1 << 26)
            yield from csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")


def read_labelled_texts(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[str | None], int]:
    """(texts, labels as strings (None without `label_column`), rows skipped) of a labelled table; rows with an empty
    text or a missing label are skipped and counted. A column that does not exist names the ones that do."""
    texts: list[str] = []
    labels: list[str | None] = []
    skipped = 0
    try:
        for i, row in enumerate(iter_rows(path)):
            for column in (text_column, label_column):
                if column is not None and column not in row and (i == 0 or table_kind(path) != "jsonl"):
                    raise DataError(f"{path} has no column {column!r}; its columns: {', '.join(map(str, row))} "
                                    "(set data.text_column / data.label_column)")
            text, label = row.get(text_column), row.get(label_column) if label_column else ""
            if not isinstance(text, str) or not text.strip() or label is None or label == "":
                skipped += 1
                continue
            texts.append(text)
            labels.append(None if label_column is None else str(label))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); replace it with a good copy") from None
    return texts, labels, skipped
