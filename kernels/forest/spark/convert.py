"""Between a packed forest (the library's node arrays) and ``kernels.forest.RandomForestClassifier``,
for models grown on Spark or read from a Spark ML save. No pyspark import here."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkernels.kernels.forest.estimator import RandomForestClassifier, check_model
from modelkernels.kernels.forest.levelwise import spark_importances

_LIBRARY_NAMES = ("numTrees", "maxDepth", "maxBins", "impurity", "featureSubsetStrategy", "subsamplingRate",
                  "minInstancesPerNode", "minInfoGain", "seed")


def fitted_estimator(model: dict[str, np.ndarray], n_features: int, n_classes: int,
                     params: dict[str, Any]) -> RandomForestClassifier:
    """A fitted in-memory estimator (Spark's defaults, then ``params`` by Spark's names) holding
    the packed ``model``; classes are the label indices 0..n_classes-1 as Spark's. The arrays are
    checked first (``check_model``): a model file is data."""
    arrays = {k: model[k] for k in ("feature", "threshold", "child", "value", "node_offsets", "leaf_offsets")}
    check_model(arrays, n_features, n_classes)
    kw = {k: params[k] for k in _LIBRARY_NAMES if params.get(k) is not None}
    if "seed" in kw:
        kw["seed"] = int(kw["seed"]) & 0x7FFFFFFFFFFFFFFF
    est = RandomForestClassifier.spark(**kw)
    est.classes_ = np.arange(n_classes, dtype=np.float64)
    est.n_classes_ = n_classes
    est.n_features_in_ = n_features
    est._set_arrays(arrays)
    est.feature_importances_ = spark_importances(np.asarray(model["importance"], np.float64))
    return est
