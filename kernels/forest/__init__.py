"""Random forests: ``RandomForestClassifier`` (scikit-learn's API, Spark ML's parameter names) on
C++ split search, tree building and prediction, with the ops it is made of.

The estimator is imported on first use: with scikit-learn installed it subclasses scikit-learn's
base classes, and importing scikit-learn would add ~0.6 s to ``import modelkernels.kernels``."""

from typing import Any

from modelkernels.kernels.forest.level import level_best_splits, level_histograms
from modelkernels.kernels.forest.ops import (
    best_split_exact,
    best_split_hist,
    build_forest,
    find_splits,
    forest_predict_proba,
)


def __getattr__(name: str) -> Any:
    if name == "RandomForestClassifier":
        from modelkernels.kernels.forest.estimator import RandomForestClassifier

        return RandomForestClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RandomForestClassifier",
    "best_split_exact",
    "best_split_hist",
    "build_forest",
    "find_splits",
    "forest_predict_proba",
    "level_best_splits",
    "level_histograms",
]
