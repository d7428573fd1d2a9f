"""Classical baselines for tables: scikit-learn estimators, the classifier or the regressor by the data's kind.

Any estimator can be a model by `_target_` alone (`model._target_=sklearn.svm.SVC`); these builders add the choice of
classifier or regressor from the data (`target_kind`, a fact) and the ensembles' parts by name, so one model config
serves wine quality and house prices alike. train.py fits an estimator without a Lightning loop (attnlab.classical).
"""

from typing import Any, Literal

Kind = Literal["classification", "regression"]
Part = Literal["tree", "forest", "extra_trees", "gbt", "linear", "knn", "svm"]


def _part(name: str, kind: str, seed: int | None = None) -> Any:
    """A named estimator with library defaults (the parts of bagging, voting and stacking)."""
    from sklearn import ensemble, linear_model, neighbors, svm, tree  # the tables extra, imported on use

    classify = kind == "classification"
    parts = {
        "tree": lambda: (tree.DecisionTreeClassifier if classify else tree.DecisionTreeRegressor)(random_state=seed),
        "forest": lambda: (ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor)(
            n_estimators=200, n_jobs=-1, random_state=seed),
        "extra_trees": lambda: (ensemble.ExtraTreesClassifier if classify else ensemble.ExtraTreesRegressor)(
            n_estimators=200, n_jobs=-1, random_state=seed),
        "gbt": lambda: (ensemble.HistGradientBoostingClassifier if classify else ensemble.HistGradientBoostingRegressor)(
            random_state=seed),
        "linear": lambda: linear_model.LogisticRegression(max_iter=2000) if classify else linear_model.Ridge(),
        "knn": lambda: (neighbors.KNeighborsClassifier if classify else neighbors.KNeighborsRegressor)(),
        "svm": lambda: svm.SVC(probability=True, random_state=seed) if classify else svm.SVR(),
    }
    if name not in parts:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(parts)}")
    return parts[name]()


def random_forest(*, target_kind: Kind, seed: int | None = None, n_estimators: int = 300, **options: Any) -> Any:
    """Random forest (Breiman, 2001): impurity importances come with it."""
    from sklearn import ensemble

    cls = ensemble.RandomForestClassifier if target_kind == "classification" else ensemble.RandomForestRegressor
    return cls(n_estimators=n_estimators, random_state=seed, n_jobs=-1, **options)


def gradient_boosting(*, target_kind: Kind, seed: int | None = None, **options: Any) -> Any:
    """Histogram gradient-boosted trees (LightGBM-style), scikit-learn's fast boosting."""
    from sklearn import ensemble

    cls = (ensemble.HistGradientBoostingClassifier if target_kind == "classification"
           else ensemble.HistGradientBoostingRegressor)
    return cls(random_state=seed, **options)


def bagging(*, target_kind: Kind, base: Part = "tree", seed: int | None = None, n_estimators: int = 100,
            bootstrap: bool = True, max_samples: float = 1.0, **options: Any) -> Any:
    """Bootstrap aggregation of one base estimator; votes (classification) or averages (regression)."""
    from sklearn import ensemble

    cls = ensemble.BaggingClassifier if target_kind == "classification" else ensemble.BaggingRegressor
    return cls(estimator=_part(base, target_kind, seed), n_estimators=n_estimators, bootstrap=bootstrap,
               max_samples=max_samples, random_state=seed, n_jobs=-1, **options)


def voting(*, target_kind: Kind, estimators: list[Part], seed: int | None = None,
           voting: Literal["hard", "soft"] = "soft") -> Any:
    """Several estimators' votes (classification: majority or averaged probabilities) or averaged predictions."""
    from sklearn import ensemble

    named = [(name, _part(name, target_kind, seed)) for name in estimators]
    if target_kind == "classification":
        return ensemble.VotingClassifier(named, voting=voting, n_jobs=1)
    return ensemble.VotingRegressor(named)


def stacking(*, target_kind: Kind, estimators: list[Part], final: Part = "linear", seed: int | None = None,
             cv: int = 5, passthrough: bool = False) -> Any:
    """Level-0 estimators whose cross-validated predictions feed a level-1 estimator (Wolpert, 1992)."""
    from sklearn import ensemble

    named = [(name, _part(name, target_kind, seed)) for name in estimators]
    cls = ensemble.StackingClassifier if target_kind == "classification" else ensemble.StackingRegressor
    return cls(named, final_estimator=_part(final, target_kind, seed), cv=cv, passthrough=passthrough, n_jobs=1)


def linear(*, target_kind: Kind, C: float = 1.0, alpha: float = 1.0, max_iter: int = 2000) -> Any:
    """Logistic regression (C: inverse regularisation) or ridge regression (alpha)."""
    from sklearn import linear_model

    if target_kind == "classification":
        return linear_model.LogisticRegression(C=C, max_iter=max_iter)
    return linear_model.Ridge(alpha=alpha)
