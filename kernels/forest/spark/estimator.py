"""``RandomForestClassifier`` / ``RandomForestClassificationModel`` as ``pyspark.ml`` Estimator and
Model: Spark ML's params, defaults and output columns, trained level by level
(``kernels.forest.levelwise`` over ``kernels.forest.spark.engine``) and predicting through an
Arrow UDF that runs the C++ predictor on each batch with the trees broadcast once.

Outputs as Spark's model: ``rawPrediction`` is the sum over trees of the leaf class fractions,
``probability`` their mean, ``prediction`` the first class of highest probability (a double);
an empty output column name skips that column. Persistence follows Spark's conventions
(``model.write().overwrite().save(path)``, ``RandomForestClassificationModel.load(path)``): the
params as Spark's metadata JSON, the trees in the library's no-pickle ``.npz`` format stored in a
one-row Parquet file, so any file system Spark writes to holds it.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseVector, SparseVector, Vector, Vectors
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as sf

from modelkernels.kernels.forest import estimator as library
from modelkernels.kernels.forest.levelwise import GrowthParams, grow_forest, quantile_splits
from modelkernels.kernels.forest.ops import forest_predict_proba
from modelkernels.kernels.forest.spark.convert import fitted_estimator
from modelkernels.kernels.forest.spark.engine import (
    SparkEngine,
    bin_rows,
    list_matrix,
    sample_rows,
    spark_seed,
    training_columns,
)
from modelkernels.kernels.forest.spark.params import ForestParams

_OUT = "__kernels_forest_out"


class RandomForestClassifier(Estimator, ForestParams, DefaultParamsReadable, DefaultParamsWritable):
    """Spark ML's ``RandomForestClassifier`` on the library's C++ histograms and split search."""

    @keyword_only
    def __init__(self, *, featuresCol: str = "features", labelCol: str = "label", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 weightCol: str | None = None, numTrees: int = 20, maxDepth: int = 5, maxBins: int = 32,
                 impurity: str = "gini", featureSubsetStrategy: str = "auto", subsamplingRate: float = 1.0,
                 minInstancesPerNode: int = 1, minInfoGain: float = 0.0, minWeightFractionPerNode: float = 0.0,
                 bootstrap: bool = True, maxMemoryInMB: int = 256, seed: int | None = None) -> None:
        super().__init__()
        self._set(**self._input_kwargs)  # type: ignore[attr-defined]

    @keyword_only
    def setParams(self, *, featuresCol: str = "features", labelCol: str = "label", predictionCol: str = "prediction",
                  probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                  weightCol: str | None = None, numTrees: int = 20, maxDepth: int = 5, maxBins: int = 32,
                  impurity: str = "gini", featureSubsetStrategy: str = "auto", subsamplingRate: float = 1.0,
                  minInstancesPerNode: int = 1, minInfoGain: float = 0.0, minWeightFractionPerNode: float = 0.0,
                  bootstrap: bool = True, maxMemoryInMB: int = 256, seed: int | None = None) -> RandomForestClassifier:
        """Set the params given by name (Spark's ``setParams``)."""
        return self._set(**self._input_kwargs)  # type: ignore[attr-defined]

    def setNumTrees(self, value: int) -> RandomForestClassifier:
        return self._set(numTrees=value)

    def setMaxDepth(self, value: int) -> RandomForestClassifier:
        return self._set(maxDepth=value)

    def setMaxBins(self, value: int) -> RandomForestClassifier:
        return self._set(maxBins=value)

    def setImpurity(self, value: str) -> RandomForestClassifier:
        return self._set(impurity=value)

    def setFeatureSubsetStrategy(self, value: str) -> RandomForestClassifier:
        return self._set(featureSubsetStrategy=value)

    def setSubsamplingRate(self, value: float) -> RandomForestClassifier:
        return self._set(subsamplingRate=value)

    def setMinInstancesPerNode(self, value: int) -> RandomForestClassifier:
        return self._set(minInstancesPerNode=value)

    def setMinInfoGain(self, value: float) -> RandomForestClassifier:
        return self._set(minInfoGain=value)

    def setMinWeightFractionPerNode(self, value: float) -> RandomForestClassifier:
        return self._set(minWeightFractionPerNode=value)

    def setBootstrap(self, value: bool) -> RandomForestClassifier:
        return self._set(bootstrap=value)

    def setSeed(self, value: int) -> RandomForestClassifier:
        return self._set(seed=value)

    def setFeaturesCol(self, value: str) -> RandomForestClassifier:
        return self._set(featuresCol=value)

    def setLabelCol(self, value: str) -> RandomForestClassifier:
        return self._set(labelCol=value)

    def setWeightCol(self, value: str) -> RandomForestClassifier:
        return self._set(weightCol=value)

    def _fit(self, dataset: DataFrame) -> RandomForestClassificationModel:
        for name in (self.getFeaturesCol(), self.getLabelCol()):
            if name not in dataset.columns:
                raise ValueError(f"column {name!r} is not in the DataFrame (columns: {', '.join(dataset.columns)})")
        weight = self.getWeightCol() if self.isDefined(self.weightCol) and self.getWeightCol() else None
        if weight and weight not in dataset.columns:
            raise ValueError(f"weightCol={weight!r} is not in the DataFrame")
        rows = training_columns(dataset, self.getFeaturesCol(), self.getLabelCol(), weight)
        totals = [sf.count(sf.lit(1)).alias("n"), sf.max("label").alias("top")]
        stats = rows.agg(*totals, (sf.sum("weight") if weight else sf.count(sf.lit(1))).alias("w")).collect()[0]
        n = int(stats["n"])
        if n == 0:
            raise ValueError("the DataFrame has no rows to learn from")
        n_classes = _num_classes(dataset, self.getLabelCol(), stats["top"])
        seed = spark_seed(self.getSeed())
        # The sample's first vector gives the width; binning checks that every row has it.
        sample = sample_rows(rows, n, self.getMaxBins(), seed)
        n_features = sample.shape[1]
        if n_features < 1:
            raise ValueError(f"featuresCol={self.getFeaturesCol()!r} holds empty vectors; they need size >= 1")
        k = self.check_params(n_features)
        n_bins, split_values, offsets = quantile_splits(sample, self.getMaxBins())
        T = self.getNumTrees()
        engine = SparkEngine(bin_rows(rows, n_features, n_classes, n_bins, split_values, offsets, T,
                                      self.getSubsamplingRate(), self.getBootstrap(), seed), n_features, T,
                             weighted=bool(weight))
        p = GrowthParams(n_trees=T, max_depth=self.getMaxDepth(), max_features=k,
                         criterion=0 if self.getImpurity().lower() == "gini" else 1,
                         min_instances=self.getMinInstancesPerNode(), min_info_gain=self.getMinInfoGain(),
                         min_weight=self.getMinWeightFractionPerNode() * float(stats["w"] or 0.0),
                         max_memory_mb=self.getMaxMemoryInMB(), seed=seed)
        try:
            packed = grow_forest(engine, p, n_bins, split_values, offsets, n_classes)
        finally:
            engine.close()
        params = {k: self.getOrDefault(k) for k in ("numTrees", "maxDepth", "maxBins", "impurity",
                                                    "featureSubsetStrategy", "subsamplingRate",
                                                    "minInstancesPerNode", "minInfoGain", "seed")}
        model = RandomForestClassificationModel(fitted_estimator(packed, n_features, n_classes, params))
        return self._copyValues(model)


def _num_classes(dataset: DataFrame, label: str, top: Any) -> int:
    """Spark's getNumClasses: the label column's nominal metadata (StringIndexer), else max + 1."""
    attr = dataset.schema[label].metadata.get("ml_attr", {})
    if "num_vals" in attr:
        return int(attr["num_vals"])
    if "vals" in attr:
        return len(attr["vals"])
    if top is None or not np.isfinite(top) or top < 0 or top != int(top):
        raise ValueError(f"labelCol={label!r} must hold class indices 0, 1, ... (as StringIndexer gives); its "
                         f"largest value is {top}")
    return int(top) + 1


class RandomForestClassificationModel(Model, ForestParams, MLReadable, MLWritable):
    """A fitted forest: Spark's model API over the library's in-memory estimator."""

    def __init__(self, estimator: library.RandomForestClassifier | None = None) -> None:
        super().__init__()
        self._estimator = estimator
        if estimator is not None:
            self._set(numTrees=int(estimator.node_offsets_.shape[0] - 1))

    @classmethod
    def from_estimator(cls, estimator: library.RandomForestClassifier,
                       **params: Any) -> RandomForestClassificationModel:
        """A Spark model around a fitted in-memory estimator whose classes are 0..C-1 (as
        ``StringIndexer`` gives); ``params`` sets columns by Spark's names."""
        classes = np.asarray(estimator.classes_)
        if classes.dtype.kind not in "biuf" or not np.array_equal(classes, np.arange(classes.shape[0])):
            raise ValueError(f"the estimator's classes_ must be 0..n_classes-1 to be Spark label indices, got "
                             f"{classes[:5].tolist()}")
        model = cls(copy.deepcopy(estimator))
        return model._set(**params)

    def to_estimator(self) -> library.RandomForestClassifier:
        """A copy of the fitted in-memory estimator (``predict_proba`` on NumPy arrays)."""
        return copy.deepcopy(self._fitted())

    def _fitted(self) -> library.RandomForestClassifier:
        if self._estimator is None:
            raise ValueError("this RandomForestClassificationModel holds no trees (load or fit one)")
        return self._estimator

    @property
    def numFeatures(self) -> int:
        return int(self._fitted().n_features_in_)

    @property
    def numClasses(self) -> int:
        return int(self._fitted().n_classes_)

    @property
    def treeWeights(self) -> list[float]:
        return [1.0] * self.getNumTrees()

    @property
    def totalNumNodes(self) -> int:
        return int(self._fitted().n_nodes_)

    @property
    def featureImportances(self) -> SparseVector:
        """Spark's importances: gain x node weight per split, normalised per tree, summed, normalised."""
        imp = np.asarray(self._fitted().feature_importances_, np.float64)
        nz = np.flatnonzero(imp)
        return SparseVector(imp.shape[0], nz.tolist(), imp[nz].tolist())

    def _proba(self, x: np.ndarray) -> np.ndarray:
        proba, _ = forest_predict_proba(x, *self._fitted()._arrays(), n_threads=1)
        return proba

    def _row(self, value: Vector) -> np.ndarray:
        x = np.asarray(value.toArray(), np.float32).reshape(1, -1)
        if x.shape[1] != self.numFeatures:
            raise ValueError(f"a vector of size {x.shape[1]}; the model has {self.numFeatures} features")
        return self._proba(x)[0]

    def predictRaw(self, value: Vector) -> DenseVector:
        return Vectors.dense(self._row(value) * self.getNumTrees())

    def predictProbability(self, value: Vector) -> DenseVector:
        return Vectors.dense(self._row(value))

    def predict(self, value: Vector) -> float:
        return float(np.argmax(self._row(value)))

    def _transform(self, dataset: DataFrame) -> DataFrame:
        name = self.getFeaturesCol()
        if name not in dataset.columns:
            raise ValueError(f"featuresCol={name!r} is not in the DataFrame (columns: {', '.join(dataset.columns)})")
        sc = dataset.sparkSession.sparkContext
        shared = sc.broadcast(self._fitted()._arrays())
        F, C, T = self.numFeatures, self.numClasses, self.getNumTrees()

        def predict_batch(x: pa.Array) -> pa.Array:
            X = list_matrix(x, F, name)
            proba, _ = forest_predict_proba(X, *shared.value, n_threads=1)
            offsets = pa.array(np.arange(X.shape[0] + 1, dtype=np.int32) * C)
            raw = pa.ListArray.from_arrays(offsets, pa.array((proba * T).ravel()))
            prob = pa.ListArray.from_arrays(offsets, pa.array(proba.ravel()))
            pred = pa.array(proba.argmax(axis=1).astype(np.float64))
            return pa.StructArray.from_arrays([raw, prob, pred], names=["raw", "prob", "pred"])

        # Nondeterministic keeps the optimizer from copying the UDF into each of the three fields.
        udf = sf.arrow_udf(predict_batch, "raw array<double>, prob array<double>, pred double")  # type: ignore[call-overload]
        udf = udf.asNondeterministic()
        out = dataset.withColumn(_OUT, udf(vector_to_array(sf.col(name), "float32")))
        for col, field in ((self.getRawPredictionCol(), "raw"), (self.getProbabilityCol(), "prob")):
            if col:
                out = out.withColumn(col, array_to_vector(sf.col(f"{_OUT}.{field}")))
        if self.getPredictionCol():
            out = out.withColumn(self.getPredictionCol(), sf.col(f"{_OUT}.pred"))
        return out.drop(_OUT)

    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


class _ModelWriter(MLWriter):
    def __init__(self, instance: RandomForestClassificationModel) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        est = self.instance._fitted()
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sc, extraMetadata=dict(
            numFeatures=self.instance.numFeatures, numClasses=self.instance.numClasses,
            format="kernels.forest.RandomForestClassifier npz in data/"))
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "model.npz"
            est.save(f)
            blob = f.read_bytes()
        self.sparkSession.createDataFrame([(bytearray(blob),)], "model binary").coalesce(1).write.parquet(
            f"{path}/data")


class _ModelReader(MLReader):
    def __init__(self, cls: type[RandomForestClassificationModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> RandomForestClassificationModel:
        metadata = DefaultParamsReader.loadMetadata(path, self.sc)
        rows = self.sparkSession.read.parquet(f"{path}/data").collect()
        if len(rows) != 1:
            raise ValueError(f"{path}/data: expected one model row, found {len(rows)}")
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "model.npz"
            f.write_bytes(bytes(rows[0]["model"]))
            est = library.RandomForestClassifier.load(f)
        model = self.cls(est)
        DefaultParamsReader.getAndSetParams(model, metadata)
        model._resetUid(metadata["uid"])
        return model
