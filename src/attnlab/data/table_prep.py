"""A table's preprocessing: a scikit-learn ColumnTransformer fitted on the training split, and the target's encoding.

Saved in a run as `tabular/preprocessor.skops` (skops: loads without executing code) and `tabular/meta.json` (the
columns, class names and counts, the target's scaling), and loaded by validate, `load_model`, predict and serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.errors import DataError

log = logging.getLogger("attnlab")
SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")


def read_table(path: str | Path, *, columns: Sequence[str] | None = None) -> Any:
    """A CSV/TSV (plain or .gz) or Parquet file as a DataFrame; `columns` names the columns of a file without header."""
    import pandas as pd

    file = Path(path).expanduser()
    name = file.name.lower()
    if not file.is_file():
        raise DataError(f"no such table file {file}")
    if not name.endswith(SUFFIXES):
        raise DataError(f"{file}: not a table file; expected one of {', '.join(SUFFIXES)}")
    try:
        if name.endswith(".parquet"):
            frame = pd.read_parquet(file)
            if columns:
                frame.columns = list(columns)
        else:
            sep = "\t" if ".tsv" in name else ","
            frame = pd.read_csv(file, sep=sep, header=None if columns else "infer", names=list(columns) if columns else None)
    except pd.errors.EmptyDataError:
        raise DataError(f"{file} is empty (no rows)") from None
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read {file}: {err}") from None
    if frame.empty:
        raise DataError(f"{file} is empty (no rows)")
    if columns and frame.shape[1] != len(columns):
        raise DataError(f"{file} has {frame.shape[1]} columns, data.columns names {len(columns)}")
    return frame


@dataclass
class TablePreprocessing:
    """Raw rows -> float32 features; targets -> class ids or the scaled value, and model outputs back."""

    transformer: Any  # the fitted ColumnTransformer
    kind: str
    target: str
    feature_columns: list[str]
    categorical: list[str]
    n_features: int
    n_numeric: int  # outputs of the numeric part (first), then one column per categorical one (ordinal encoding)
    cardinalities: list[int] = field(default_factory=list)  # categories per ordinal-encoded column
    class_names: list[str] = field(default_factory=list)
    class_values: list[Any] = field(default_factory=list)  # the target's values as read, in class-id order
    class_counts: list[int] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    log_target: bool = False
    ratios: dict[str, list[str]] = field(default_factory=dict)  # derived column -> [numerator, denominator]
    projections: dict[str, Any] = field(default_factory=dict)  # {columns: [x, y], directions: n} (see add_projections)

    def with_ratios(self, frame: Any) -> Any:
        """The feature columns plus the derived columns: ratios (a zero denominator gives a missing value, imputed) and
        projections."""
        return add_projections(add_ratios(frame, self.ratios), self.projections)

    # -- features ---------------------------------------------------------------------------------------------------
    def transform(self, frame: Any) -> np.ndarray:
        """A DataFrame (or a list of row dicts) with the run's feature columns -> (N, n_features) float32."""
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(list(frame))
        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            raise DataError(f"column(s) {', '.join(missing)} missing: this run reads {', '.join(self.feature_columns)}; "
                            f"given: {', '.join(map(str, frame.columns))}")
        frame = self.with_ratios(frame[self.feature_columns].copy())
        for col in self.categorical:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), np.nan)
        numeric = [c for c in self.feature_columns if c not in self.categorical]
        for col in numeric:
            values = pd.to_numeric(frame[col], errors="coerce")
            bad = values.isna() & frame[col].notna()
            if bad.any():
                raise DataError(f"column {col!r} is numeric in this run but holds {frame[col][bad].iloc[0]!r}")
            frame[col] = values
        return np.asarray(self.transformer.transform(frame), dtype=np.float32)

    def to_batch(self, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Raw rows (dicts of column -> value: a request, a CSV or JSONL row) -> the model's (B, F) float32 batch."""
        import torch

        return torch.from_numpy(self.transform(rows_frame(rows)))

    # -- targets ----------------------------------------------------------------------------------------------------
    def encode_target(self, values: Any, *, scaled: bool = True) -> np.ndarray:
        """Class ids (int64) for classification; for regression the value, log- and standardised when `scaled`."""
        if self.kind == "classification":
            index = {_key(v): i for i, v in enumerate(self.class_values)}
            unknown = sorted({str(v) for v in values if _key(v) not in index})
            if unknown:
                raise DataError(f"target {self.target!r}: label(s) {', '.join(unknown[:5])} not seen in training "
                                f"(classes: {', '.join(self.class_names)})")
            return np.asarray([index[_key(v)] for v in values], dtype=np.int64)
        y = np.asarray(values, dtype=np.float64)
        if not scaled:
            return y.astype(np.float32)
        return ((self._forward_target(y) - self.target_mean) / self.target_std).astype(np.float32)

    def _forward_target(self, y: np.ndarray) -> np.ndarray:
        return np.log1p(y) if self.log_target else y

    def decode_target(self, scaled: Any) -> Any:
        """Model outputs on the scaled target -> the target's own units (numpy array or torch tensor alike)."""
        value = scaled * self.target_std + self.target_mean
        if not self.log_target:
            return value
        return value.expm1() if hasattr(value, "expm1") else np.expm1(value)

    # -- saving -----------------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from attnlab.runs.directory import save_skops, write_json

        folder.mkdir(parents=True, exist_ok=True)
        save_skops(self.transformer, folder / "preprocessor.skops")
        meta = {k: v for k, v in asdict(self).items() if k != "transformer"}
        meta["class_values"] = [_plain(v) for v in self.class_values]
        write_json(folder / "meta.json", meta)

    @classmethod
    def load(cls, folder: Path) -> TablePreprocessing:
        from attnlab.runs.directory import load_skops, read_json

        meta = read_json(folder / "meta.json")
        return cls(transformer=load_skops(folder / "preprocessor.skops"), **meta)


def _key(value: Any) -> str:
    """A label's identity across reading: 5, 5.0 and '5' are one class."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(number)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def fit_preprocessing(
    train: Any,
    *,
    target: str,
    kind: str,
    features: list[str],
    categorical: list[str] | None,
    impute: str,
    missing_indicator: bool,
    encoding: str,
    log_target: bool,
    ratios: Mapping[str, Sequence[str]] | None = None,
    scaler: str = "standard",
    seed: int = 0,
    projections: Mapping[str, Any] | None = None,
) -> TablePreprocessing:
    """Fit the ColumnTransformer and the target encoding on the training rows only."""
    import pandas.api.types as ptypes
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, QuantileTransformer, RobustScaler, StandardScaler

    if target in features:
        raise DataError(f"the target {target!r} is among data.features; a model must not read its own answer")
    if categorical is None:  # non-numeric columns are categorical unless the config says which
        categorical = [c for c in features if not ptypes.is_numeric_dtype(train[c])]
    ratios = {name: list(pair) for name, pair in (ratios or {}).items()}
    for name, pair in ratios.items():
        if len(pair) != 2 or any(c not in features or c in categorical for c in pair):
            raise DataError(f"data.ratios.{name}={pair}: give [numerator, denominator], two numeric feature columns")
    projections = _check_projections(projections, features, categorical)
    numeric = [c for c in features if c not in categorical] + list(ratios) + projection_names(projections)
    if encoding == "onehot":
        cat_pipe = make_pipeline(SimpleImputer(strategy="most_frequent"),
                                 OneHotEncoder(handle_unknown="ignore", sparse_output=False))
    else:  # unknown and missing categories get -1, which the model shifts to its own "unknown" embedding
        cat_pipe = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    # quantile: each numeric column mapped through its training quantiles onto a normal (Gorishniy et al. do so for
    # the FT-Transformer): heavy tails (population per household up to 1,243) cannot blow up a network's inputs
    scale = {"standard": StandardScaler, "robust": RobustScaler,
             "quantile": lambda: QuantileTransformer(output_distribution="normal", n_quantiles=min(1000, len(train)),
                                                     subsample=10**9, random_state=seed)}[scaler]()
    parts = [("num", make_pipeline(SimpleImputer(strategy=impute, add_indicator=missing_indicator), scale),
              numeric)] if numeric else []
    parts += [("cat", cat_pipe, categorical)] if categorical else []
    transformer = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
    frame = add_projections(add_ratios(train[features].copy(), ratios), projections)
    for col in categorical:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), np.nan)
    transformer.fit(frame)
    n_features = int(transformer.transform(frame.iloc[:1]).shape[1])
    cardinalities: list[int] = []
    n_numeric = n_features
    if categorical and encoding == "ordinal":
        cardinalities = [len(c) for c in transformer.named_transformers_["cat"].categories_]
        n_numeric = n_features - len(categorical)
    prep = TablePreprocessing(transformer=transformer, kind=kind, target=target, feature_columns=list(features),
                              categorical=list(categorical), n_features=n_features, n_numeric=n_numeric,
                              cardinalities=cardinalities, log_target=log_target, ratios=ratios,
                              projections=projections)
    y = train[target]
    if kind == "classification":
        values = sorted(y.unique(), key=lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(v)))
        prep.class_values = [_plain(v) for v in values]
        prep.class_names = [_key(v) for v in values]
        counts = y.map(_key).value_counts()
        prep.class_counts = [int(counts.get(name, 0)) for name in prep.class_names]
    else:
        t = prep._forward_target(np.asarray(y, dtype=np.float64))
        if not np.isfinite(t).all():
            raise DataError(f"target {target!r}: data.log_target=true needs values > -1")
        prep.target_mean, prep.target_std = float(t.mean()), float(t.std() or 1.0)
    log.info("preprocessing fitted on %d training rows: %d numeric, %d categorical column(s) -> %d features",
             len(train), len(numeric), len(categorical), n_features)
    return prep


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def rows_frame(rows: Sequence[Mapping[str, Any]] | Any) -> Any:
    """Rows given as dicts (a request, a JSONL file) as a DataFrame; a DataFrame as it is."""
    import pandas as pd

    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def add_ratios(frame: Any, ratios: Mapping[str, Sequence[str]]) -> Any:
    """frame with a column num / den per ratio (rooms per household ...); inf (a zero denominator) -> missing."""
    import pandas as pd

    for name, (num, den) in ratios.items():
        value = pd.to_numeric(frame[num], errors="coerce") / pd.to_numeric(frame[den], errors="coerce")
        frame[name] = value.where(np.isfinite(value), np.nan)
    return frame


def _check_projections(projections: Mapping[str, Any] | None, features: list[str], categorical: list[str]) -> dict:
    if not projections:
        return {}
    columns, n = list(projections.get("columns") or []), projections.get("directions")
    extra = sorted(set(projections) - {"columns", "directions"})
    if extra or len(columns) != 2 or any(c not in features or c in categorical for c in columns):
        raise DataError(f"data.projections={dict(projections)}: give columns: [x, y], two numeric feature columns, and "
                        "directions: n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 3:
        raise DataError(f"data.projections.directions={n!r}: a whole number >= 3 (the two columns are 2 of the n "
                        "directions)")
    return {"columns": columns, "directions": n}


def _projection_angles(projections: Mapping[str, Any]) -> list[float]:
    """The n directions evenly spaced over 180 degrees, less the two columns' own (0 and 90 degrees)."""
    n = projections["directions"]
    return [k * 180.0 / n for k in range(1, n) if 2 * k != n]


def projection_names(projections: Mapping[str, Any]) -> list[str]:
    if not projections:
        return []
    x, y = projections["columns"]
    return [f"{x}_{y}_{angle:g}deg" for angle in _projection_angles(projections)]


def add_projections(frame: Any, projections: Mapping[str, Any]) -> Any:
    """frame with x cos(a) + y sin(a) for each direction a of the (x, y) plane: trees split along one column at a time,
    so a boundary running diagonally across longitude and latitude (a coast) takes many splits on the columns alone
    and one on the column nearest its direction."""
    import pandas as pd

    if not projections:
        return frame
    xname, yname = projections["columns"]
    x = pd.to_numeric(frame[xname], errors="coerce")
    y = pd.to_numeric(frame[yname], errors="coerce")
    for name, angle in zip(projection_names(projections), _projection_angles(projections)):
        a = np.deg2rad(angle)
        frame[name] = x * np.cos(a) + y * np.sin(a)
    return frame
