"""Spark ML's random-forest parameters, names, defaults and checks
(``org.apache.spark.ml.tree.{TreeEnsembleParams, RandomForestParams}``), shared by the estimator
and its model."""

from __future__ import annotations

import math
from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
    HasWeightCol,
)

from modelkernels.kernels.forest.estimator import _spark_subset

DEFAULTS: dict[str, Any] = dict(numTrees=20, maxDepth=5, maxBins=32, impurity="gini", featureSubsetStrategy="auto",
                                subsamplingRate=1.0, minInstancesPerNode=1, minInfoGain=0.0,
                                minWeightFractionPerNode=0.0, bootstrap=True, maxMemoryInMB=256)


def _param(name: str, doc: str, conv: Any) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=conv)


class ForestParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol,
                   HasWeightCol, HasSeed):
    """The params of Spark's RandomForestClassifier, with its defaults."""

    numTrees = _param("numTrees", "number of trees to train (>= 1)", TypeConverters.toInt)
    maxDepth = _param("maxDepth", "maximum depth of a tree, in [0, 30]; depth 0 is one leaf", TypeConverters.toInt)
    maxBins = _param("maxBins", "bins per continuous feature, in [2, 256]", TypeConverters.toInt)
    impurity = _param("impurity", "split criterion: gini or entropy", TypeConverters.toString)
    featureSubsetStrategy = _param("featureSubsetStrategy", "features per node: auto, all, onethird, sqrt, log2, "
                                   "an integer n or a fraction in (0, 1]", TypeConverters.toString)
    subsamplingRate = _param("subsamplingRate", "fraction of the rows each tree learns from, in (0, 1]",
                             TypeConverters.toFloat)
    minInstancesPerNode = _param("minInstancesPerNode", "minimum rows (bag counts) in each child of a split, >= 1",
                                 TypeConverters.toInt)
    minInfoGain = _param("minInfoGain", "minimum information gain of a split, >= 0", TypeConverters.toFloat)
    minWeightFractionPerNode = _param("minWeightFractionPerNode", "minimum fraction of the total weight in each "
                                      "child of a split, in [0, 0.5)", TypeConverters.toFloat)
    bootstrap = _param("bootstrap", "Poisson bagging of the rows (otherwise sampling without replacement)",
                       TypeConverters.toBoolean)
    maxMemoryInMB = _param("maxMemoryInMB", "memory for the histograms of one pass, in MB (>= 1)",
                           TypeConverters.toInt)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(**DEFAULTS)

    def getNumTrees(self) -> int:
        return int(self.getOrDefault(self.numTrees))

    def getMaxDepth(self) -> int:
        return int(self.getOrDefault(self.maxDepth))

    def getMaxBins(self) -> int:
        return int(self.getOrDefault(self.maxBins))

    def getImpurity(self) -> str:
        return str(self.getOrDefault(self.impurity))

    def getFeatureSubsetStrategy(self) -> str:
        return str(self.getOrDefault(self.featureSubsetStrategy))

    def getSubsamplingRate(self) -> float:
        return float(self.getOrDefault(self.subsamplingRate))

    def getMinInstancesPerNode(self) -> int:
        return int(self.getOrDefault(self.minInstancesPerNode))

    def getMinInfoGain(self) -> float:
        return float(self.getOrDefault(self.minInfoGain))

    def getMinWeightFractionPerNode(self) -> float:
        return float(self.getOrDefault(self.minWeightFractionPerNode))

    def getBootstrap(self) -> bool:
        return bool(self.getOrDefault(self.bootstrap))

    def getMaxMemoryInMB(self) -> int:
        return int(self.getOrDefault(self.maxMemoryInMB))

    def check_params(self, n_features: int) -> int:
        """Raise ``ValueError`` naming the first param outside Spark's range; returns the number
        of features sampled per node."""
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={self.getOrDefault(name)!r}: {allowed}")

        if self.getNumTrees() < 1:
            raise bad("numTrees", "must be >= 1")
        if not 0 <= self.getMaxDepth() <= 30:
            raise bad("maxDepth", "must be in [0, 30]")
        if not 2 <= self.getMaxBins() <= 256:
            raise bad("maxBins", "must be in [2, 256] (bins are stored in one byte)")
        if self.getImpurity().lower() not in ("gini", "entropy"):
            raise bad("impurity", "supported gini, entropy")
        if not 0.0 < self.getSubsamplingRate() <= 1.0:
            raise bad("subsamplingRate", "must be in (0, 1]")
        if self.getMinInstancesPerNode() < 1:
            raise bad("minInstancesPerNode", "must be >= 1")
        if not (self.getMinInfoGain() >= 0.0 and math.isfinite(self.getMinInfoGain())):
            raise bad("minInfoGain", "must be finite and >= 0")
        if not 0.0 <= self.getMinWeightFractionPerNode() < 0.5:
            raise bad("minWeightFractionPerNode", "must be in [0, 0.5)")
        if self.getMaxMemoryInMB() < 1:
            raise bad("maxMemoryInMB", "must be >= 1")
        return _spark_subset(self.getFeatureSubsetStrategy(), n_features, self.getNumTrees())
