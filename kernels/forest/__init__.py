"""Random forests: ``RandomForestClassifier`` (scikit-learn's API, Spark ML's parameter names) on
C++ split search, tree building and prediction, with the ops it is made of."""

from kernels.forest.estimator import RandomForestClassifier
from kernels.forest.ops import (
    best_split_exact,
    best_split_hist,
    build_forest,
    find_splits,
    forest_predict_proba,
)

__all__ = [
    "RandomForestClassifier",
    "best_split_exact",
    "best_split_hist",
    "build_forest",
    "find_splits",
    "forest_predict_proba",
]
