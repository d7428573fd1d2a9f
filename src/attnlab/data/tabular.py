"""Tables: any CSV (plain or .gz) or Parquet file, a named target, classification or regression.

The split is seeded (stratified for classification) or given as files; k-fold (repeated) is an option for small sets.
Preprocessing is a scikit-learn ColumnTransformer fitted on the training split only (impute, standardise, one-hot or
ordinal-encode categories, unknown ones ignored) and saved in the run with skops, so validate, `load_model`, predict
and serving transform exactly as training did. A regression target can be log-transformed and is standardised for
the networks; metrics are always in the target's own units (see attnlab.tasks.regression).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from attnlab.data.loading import BatchedTensorDataset, make_loader
from attnlab.data.table_prep import TablePreprocessing, fit_preprocessing, read_table
from attnlab.errors import ConfigError, DataError

log = logging.getLogger("attnlab")
Kind = Literal["classification", "regression"]
KINDS = ("classification", "regression")
ARTIFACTS = "tabular"  # in a run directory: preprocessor.skops + meta.json


class TabularDataModule(L.LightningDataModule):
    """A table held in memory as float32 features after the run's preprocessing; targets are class ids (int64) or the
    (log-)standardised value (float32)."""

    def __init__(
        self,
        *,
        files: list[str],
        target: str,
        kind: Kind,
        seed: int,
        columns: list[str] | None = None,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        ratios: dict[str, list[str]] | None = None,
        projections: dict[str, Any] | None = None,
        file_feature: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        val_size: float = 0.15,
        test_size: float = 0.15,
        split_seed: int = 1234,
        folds: int = 0,
        fold: int = 0,
        repeat: int = 0,
        impute: Literal["median", "mean", "most_frequent"] = "median",
        missing_indicator: bool = False,
        scaler: Literal["standard", "quantile", "robust"] = "standard",
        categorical_encoding: Literal["onehot", "ordinal"] = "onehot",
        log_target: bool = False,
        batch_size: int | Literal["full"] = 256,
        eval_batch_size: int = 4096,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"data.kind: unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
        if not files:
            raise ConfigError("data.files: give at least one CSV or Parquet file")
        if not (0 <= val_size < 1 and 0 <= test_size < 1 and val_size + test_size < 1):
            raise ConfigError(f"data.val_size={val_size}, data.test_size={test_size}: fractions in [0, 1) whose sum is < 1")
        if folds == 1 or folds < 0 or (folds and not 0 <= fold < folds):
            raise ConfigError(f"data.folds={folds}, data.fold={fold}: k-fold needs folds >= 2 and 0 <= fold < folds "
                              "(folds=0 switches it off)")
        if folds and test_file:
            raise ConfigError("data.folds and data.test_file both given: k-fold makes its own test fold; choose one")
        if batch_size != "full" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"data.batch_size={batch_size!r}: a positive number, or full (the whole training split)")
        if scaler not in ("standard", "quantile", "robust"):
            raise ConfigError(f"data.scaler: unknown scaler {scaler!r}; choose one of: standard, quantile, robust")
        if log_target and kind != "regression":
            raise ConfigError("data.log_target=true is for regression targets; this table's kind is classification")
        self.files = [str(f) for f in files]
        self.target, self.kind, self.seed = target, kind, seed
        self.columns = list(columns) if columns else None
        self.features = list(features) if features else None
        self.categorical = list(categorical) if categorical is not None else None
        self.ratios = {k: list(v) for k, v in (ratios or {}).items()}
        self.projections = dict(projections or {})
        self.file_feature = file_feature
        self.val_file, self.test_file = val_file, test_file
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.folds, self.fold, self.repeat = folds, fold, repeat
        self.impute, self.missing_indicator, self.scaler = impute, missing_indicator, scaler
        self.categorical_encoding = categorical_encoding
        self.log_target = log_target
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.prep: TablePreprocessing | None = None
        self.frames: dict[str, Any] = {}  # split -> the raw DataFrame (features and target), for reports and importance
        self.sets: dict[str, BatchedTensorDataset] = {}

    # -- facts and artifacts ---------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What models and tasks need to know, from the fitted preprocessing (fitted here on first call)."""
        prep = self._prep()
        facts: dict[str, Any] = {"in_features": prep.n_features, "target_kind": self.kind,
                                 "num_numeric": prep.n_numeric, "cat_cardinalities": list(prep.cardinalities)}
        if self.kind == "classification":
            facts.update(num_classes=len(prep.class_names), class_names=list(prep.class_names),
                         class_counts=list(prep.class_counts))
        else:
            facts.update(num_outputs=1, target_mean=prep.target_mean, target_std=prep.target_std, log_target=prep.log_target)
        return facts

    def preprocessing(self) -> TablePreprocessing:
        return self._prep()

    def save_artifacts(self, run_dir: Path) -> None:
        self._prep().save(Path(run_dir) / ARTIFACTS)

    def load_artifacts(self, run_dir: Path) -> bool:
        """Reuse a run's fitted preprocessing (validate, load_model, resume); False if the run has none."""
        folder = Path(run_dir) / ARTIFACTS
        if not (folder / "meta.json").is_file():
            return False
        self.prep = TablePreprocessing.load(folder)
        return True

    def _prep(self) -> TablePreprocessing:
        if self.prep is None:
            self._read_splits()
            train = self.frames["train"]
            self.prep = fit_preprocessing(
                train, target=self.target, kind=self.kind, features=self._feature_names(train),
                categorical=self.categorical, impute=self.impute, missing_indicator=self.missing_indicator,
                encoding=self.categorical_encoding, log_target=self.log_target, ratios=self.ratios,
                scaler=self.scaler, seed=self.split_seed, projections=self.projections)
        return self.prep

    # -- reading and splitting --------------------------------------------------------------------------------------
    def _feature_names(self, frame: Any) -> list[str]:
        if self.features:
            return self.features
        return [c for c in frame.columns if c != self.target]

    def _read(self, files: list[str]) -> Any:
        import pandas as pd

        frames = []
        for path in files:
            frame = read_table(path, columns=self.columns)
            if self.file_feature:  # one table from several files, the file each row came from as a feature (wine colour)
                frame[self.file_feature] = _file_tag(path)
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if self.target not in table.columns:
            raise DataError(f"data.target={self.target!r}: no such column in {', '.join(files)}; its columns: "
                            f"{', '.join(map(str, table.columns))}")
        missing = [c for c in (self.features or []) + (self.categorical or []) if c not in table.columns]
        if missing:
            raise DataError(f"column(s) {', '.join(missing)} (data.features / data.categorical) not in "
                            f"{', '.join(files)}; its columns: {', '.join(map(str, table.columns))}")
        unlabelled = table[self.target].isna()
        if unlabelled.any():
            log.warning("%d row(s) without a value of %r skipped", int(unlabelled.sum()), self.target)
            table = table[~unlabelled].reset_index(drop=True)
        if self.kind == "regression":
            import pandas.api.types as ptypes

            if not ptypes.is_numeric_dtype(table[self.target]):
                bad = table[self.target][pd.to_numeric(table[self.target], errors="coerce").isna()].iloc[0]
                raise DataError(f"data.target={self.target!r} is not numeric (e.g. {bad!r}) but data.kind=regression; "
                                "use data.kind=classification or another target column")
        return table

    def _read_splits(self) -> None:
        if self.frames:
            return
        table = self._read(self.files)
        if self.test_file or self.val_file:
            rest = table
            test = self._read([self.test_file]) if self.test_file else None
            if test is None:
                rest, test = self._split(rest, self.test_size)
            if self.val_file:
                val = self._read([self.val_file])
            else:
                rest, val = self._split(rest, self.val_size / (1 - (0 if self.test_file else self.test_size)))
            self.frames = {"train": rest, "val": val, "test": test}
        elif self.folds:
            rest, test = self._kfold(table)
            train, val = self._split(rest, self.val_size)
            self.frames = {"train": train, "val": val, "test": test}
        else:
            rest, test = self._split(table, self.test_size)
            train, val = self._split(rest, self.val_size / (1 - self.test_size))
            self.frames = {"train": train, "val": val, "test": test}
        if len(self.frames["train"]) == 0:
            raise DataError(f"no training rows in {', '.join(self.files)}")
        log.info("table %s: train %d, val %d, test %d rows", ", ".join(Path(f).name for f in self.files),
                 *(len(self.frames[s]) for s in ("train", "val", "test")))

    def _stratify(self, frame: Any) -> Any:
        if self.kind != "classification":
            return None
        counts = frame[self.target].value_counts()
        return frame[self.target] if counts.min() >= 2 else None  # a class of one row cannot be split both ways

    def _split(self, frame: Any, size: float) -> tuple[Any, Any]:
        from sklearn.model_selection import train_test_split

        if size <= 0:
            return frame, frame.iloc[:0]
        a, b = train_test_split(frame, test_size=size, random_state=self.split_seed, stratify=self._stratify(frame))
        return a.reset_index(drop=True), b.reset_index(drop=True)

    def _kfold(self, frame: Any) -> tuple[Any, Any]:
        from sklearn.model_selection import KFold, StratifiedKFold

        seed = self.split_seed + self.repeat  # each repeat shuffles the rows into other folds
        stratify = self._stratify(frame)
        splitter = (StratifiedKFold if stratify is not None else KFold)(n_splits=self.folds, shuffle=True, random_state=seed)
        parts = list(splitter.split(frame, stratify if stratify is not None else None))
        train_idx, test_idx = parts[self.fold]
        return frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)

    # -- Lightning ----------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._read_splits()  # a run's saved preprocessing still needs the rows (validate)
        for split in self.frames:
            x, y = self.arrays(split)
            self.sets[split] = BatchedTensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features after preprocessing, float32; targets: class ids int64, or the scaled value float32) of a split."""
        self._read_splits()
        prep = self._prep()
        frame = self.frames[split]
        return prep.transform(frame), prep.encode_target(frame[self.target])

    def raw(self, split: str) -> tuple[Any, np.ndarray]:
        """(the split's feature columns as read, its targets in their own units or as class ids)."""
        self._read_splits()
        prep = self._prep()
        frame = self.frames[split]
        y = prep.encode_target(frame[self.target], scaled=False)
        return frame[prep.feature_columns], y

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.sets:
            raise RuntimeError("TabularDataModule: call setup() before asking for a dataloader")
        dataset = self.sets[split]
        return make_loader(dataset, batch_size=max(1, min(batch_size, len(dataset))), shuffle=shuffle, seed=self.seed,
                           num_workers=self.num_workers, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        n = len(self.sets.get("train", ()))
        return self._loader("train", n if self.batch_size == "full" else int(self.batch_size), True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)

    def report(self, out_dir: Path) -> str:
        """A data report before any training: summary statistics, distributions, class balance or target histogram."""
        from attnlab.data.table_report import write_report

        self._read_splits()
        return write_report(self, Path(out_dir))


def _file_tag(path: str) -> str:
    """A file's tag as a feature value: its name without suffixes and without a common prefix (winequality-red -> red)."""
    name = Path(path).name.split(".")[0]
    return name.rsplit("-", 1)[-1]
