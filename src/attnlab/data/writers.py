"""Writers of the shipped data sets in the generic layouts, the real examples of `data=text_classification` and
`data=image_folder` (scripts/write_imdb_rating4.py, scripts/write_mnist_folders.py): each output is written beside
its final name and renamed into place, so an interrupted write leaves nothing that looks complete."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from attnlab.errors import DataError

log = logging.getLogger(__name__)

RATING4 = {1: "very negative", 2: "very negative", 3: "negative", 4: "negative",
           7: "positive", 8: "positive", 9: "very positive", 10: "very positive"}  # IMDB stars -> four classes
RATING4_CLASSES = ["very negative", "negative", "positive", "very positive"]


def write_imdb_rating4(imdb_dir: Path, out: Path) -> dict[str, dict[str, int]]:
    """IMDB's {train,test}.jsonl.gz as out/{train,test}.csv (columns text, rating, label: four classes from the star
    rating); returns the class counts per split."""
    counts: dict[str, dict[str, int]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        source = Path(imdb_dir) / f"{split}.jsonl.gz"
        if not source.is_file():
            raise DataError(f"missing {source}; point imdb= at a folder with IMDB's train.jsonl.gz and test.jsonl.gz")
        tmp = out / f".{split}.csv.tmp"
        counts[split] = {c: 0 for c in RATING4_CLASSES}
        with gzip.open(source, "rt", encoding="utf-8") as f, open(tmp, "w", newline="", encoding="utf-8") as g:
            writer = csv.writer(g)
            writer.writerow(["text", "rating", "label"])
            for line_no, line in enumerate(f, 1):
                row = json.loads(line)
                if row.get("rating") not in RATING4:
                    raise DataError(f"{source}, line {line_no}: rating {row.get('rating')!r} is not one of IMDB's "
                                    "1-4 or 7-10 stars")
                label = RATING4[row["rating"]]
                counts[split][label] += 1
                writer.writerow([row["text"], row["rating"], label])
        tmp.replace(out / f"{split}.csv")
    log.info("wrote %s: %s", out, counts)
    return counts


def write_idx_folders(mnist_dir: Path, out: Path) -> dict[str, int]:
    """MNIST's four idx.gz files as PNG class folders out/{train,test}/<digit>/<index>.png; returns counts per split."""
    from PIL import Image

    from attnlab.data.mnist import FILES, read_idx

    counts = {}
    for split in ("train", "test"):
        images = read_idx(Path(mnist_dir) / FILES[f"{split}_images"])
        labels = read_idx(Path(mnist_dir) / FILES[f"{split}_labels"])
        tmp = out / f".{split}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for digit in np.unique(labels):
            (tmp / str(digit)).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image, mode="L").save(tmp / str(label) / f"{i:05d}.png")
        shutil.rmtree(out / split, ignore_errors=True)
        tmp.replace(out / split)
        counts[split] = len(labels)
    log.info("wrote %s: %s", out, counts)
    return counts
