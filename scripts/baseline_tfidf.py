"""Classical IMDB reference: TF-IDF (or binary) unigrams + bigrams with logistic regression or NBSVM (scikit-learn).

Trains on the same 22,500 reviews as the neural experiments (the seeded val split of data/imdb.yaml held out),
prints val and test accuracy and macro F1 on the full 25,000-review test set.

    python scripts/baseline_tfidf.py [--model nbsvm|logreg] [--data-dir ../shared/data/imdb] [--full-train]

NBSVM is Wang & Manning (2012): binary n-gram features scaled by the naive-Bayes log-count ratio, then a linear
classifier (here logistic regression, the "NBLR" variant); their NBSVM-bigram reports 91.2% on the full train set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from attnlab.data.sources import read_jsonl

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def split(n: int, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) rows exactly as IMDBDataModule splits them."""
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def nb_ratio(x, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Naive-Bayes log-count ratio r = log((p / |p|_1) / (q / |q|_1)) of binary features."""
    p = alpha + np.asarray(x[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(x[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def main() -> None:
    default_dir = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[1] / "data")) / "imdb"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("nbsvm", "logreg"), default="nbsvm")
    parser.add_argument("--data-dir", type=Path, default=default_dir)
    parser.add_argument("--val-size", type=int, default=2500)
    parser.add_argument("--split-seed", type=int, default=1234)
    parser.add_argument("--full-train", action="store_true", help="train on all 25,000 reviews (the published setting)")
    parser.add_argument("--C", type=float, default=None, help="inverse regularisation (default: 10 nbsvm, 30 logreg)")
    args = parser.parse_args()

    start = time.perf_counter()
    train_texts, train_y = read_jsonl(args.data_dir / "train.jsonl.gz")
    test_texts, test_y = read_jsonl(args.data_dir / "test.jsonl.gz")
    clean = lambda texts: [_BR.sub(" ", t) for t in texts]  # noqa: E731
    train_texts, test_texts = clean(train_texts), clean(test_texts)
    tr, va = split(len(train_texts), args.val_size, args.split_seed)
    if args.full_train:
        tr = np.arange(len(train_texts))
    pattern = r"(?u)\b\w[\w']*\b|[!?]"  # words (with apostrophes) and ! ?, which carry sentiment
    if args.model == "nbsvm":
        vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True, min_df=2, token_pattern=pattern, lowercase=True)
    else:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=pattern, lowercase=True)
    x_train = vectorizer.fit_transform([train_texts[i] for i in tr])
    x_val = vectorizer.transform([train_texts[i] for i in va])
    x_test = vectorizer.transform(test_texts)
    y_train = train_y[tr]
    if args.model == "nbsvm":
        r = nb_ratio(x_train, y_train)
        x_train, x_val, x_test = (x.multiply(r).tocsr() for x in (x_train, x_val, x_test))
    C = args.C if args.C is not None else (10.0 if args.model == "nbsvm" else 30.0)
    classifier = LogisticRegression(C=C, max_iter=2000, solver="liblinear")
    classifier.fit(x_train, y_train)
    result = {"model": args.model, "features": x_train.shape[1], "train_reviews": len(tr), "C": C}
    evaluated = [("test", x_test, test_y)] if args.full_train else [("val", x_val, train_y[va]), ("test", x_test, test_y)]
    for name, x, y in evaluated:
        pred = classifier.predict(x)
        result[f"{name}/acc"] = round(float(accuracy_score(y, pred)), 5)
        result[f"{name}/f1"] = round(float(f1_score(y, pred, average="macro")), 5)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
