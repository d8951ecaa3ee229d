"""The forest on Spark: the seed's Pipeline with the library's estimator, a model saved by Spark
ML's own RandomForestClassificationModel read without a JVM and predicting as Spark does,
persistence, params, bad inputs. One local[2] session for the whole run."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _data(n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 1.0)
    return X, y.astype(np.int32)


pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'modelkernels[spark]')")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java 17+: no java on PATH and no JAVA_HOME", allow_module_level=True)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("modelkernels-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def frame(spark: Any) -> Any:
    """A small make_classification-like DataFrame with string labels and named columns, as the seed's."""
    X, y = _data(1500, 6, 3)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    rows = [(*map(float, x), str(s)) for x, s in zip(X, names)]
    return spark.createDataFrame(rows, [f"f{i}" for i in range(6)] + ["species"]).repartition(2).cache()


def _pipeline(estimator: Any) -> Any:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    return Pipeline(stages=[VectorAssembler(inputCols=[f"f{i}" for i in range(6)], outputCol="features"),
                            StringIndexer(inputCol="species", outputCol="label"), estimator])


def test_seed_pipeline_end_to_end(frame: Any) -> None:
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    train, test = frame.randomSplit([0.7, 0.3], seed=42)
    model = _pipeline(RandomForestClassifier(labelCol="label", featuresCol="features", numTrees=6, maxDepth=5,
                                             seed=7)).fit(train)
    predictions = model.transform(test)
    accuracy = MulticlassClassificationEvaluator(labelCol="label", predictionCol="prediction",
                                                 metricName="accuracy").evaluate(predictions)
    assert accuracy > 0.85
    forest = model.stages[-1]
    rows = predictions.select("features", "rawPrediction", "probability", "prediction").collect()
    X = np.array([r["features"].toArray() for r in rows], np.float32)
    proba = forest.to_estimator().predict_proba(X)
    np.testing.assert_allclose(np.array([r["probability"].toArray() for r in rows]), proba, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array([r["rawPrediction"].toArray() for r in rows]), proba * 6, atol=1e-12)
    np.testing.assert_array_equal([r["prediction"] for r in rows], proba.argmax(1))
    assert forest.getNumTrees() == 6 and forest.numClasses == 3 and forest.numFeatures == 6
    assert forest.featureImportances.size == 6 and int(np.argmax(forest.featureImportances.toArray())) in (0, 1)
    assert forest.predict(rows[0]["features"]) == rows[0]["prediction"]


def test_spark_saved_model_predicts_as_spark(frame: Any, tmp_path: Path) -> None:
    from pyspark.ml.classification import RandomForestClassifier as SparkForest

    from modelkernels.kernels.forest.spark import read_spark_model

    model = _pipeline(SparkForest(numTrees=5, maxDepth=6, seed=3)).fit(frame)
    spark_forest = model.stages[-1]
    spark_forest.write().overwrite().save(str(tmp_path / "spark_rf"))
    est = read_spark_model(tmp_path / "spark_rf")
    rows = model.transform(frame).select("features", "probability", "prediction").collect()
    X = np.array([r["features"].toArray() for r in rows], np.float32)
    np.testing.assert_array_equal(est.predict(X), [r["prediction"] for r in rows])
    np.testing.assert_allclose(est.predict_proba(X), [r["probability"].toArray() for r in rows], atol=1e-6)
    np.testing.assert_allclose(est.feature_importances_, spark_forest.featureImportances.toArray(), atol=1e-9)
    assert est.n_nodes_ == spark_forest.totalNumNodes


def test_weights_write_load_and_estimator_round_trip(frame: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as sf

    from modelkernels.kernels.forest.spark import RandomForestClassificationModel, RandomForestClassifier

    weighted = frame.withColumn("w", sf.when(sf.col("species") == "virginica", 0.0).otherwise(1.0))
    data = _pipeline(RandomForestClassifier(numTrees=3, maxDepth=3, seed=1, weightCol="w")).fit(weighted)
    forest = data.stages[-1]
    virginica = data.stages[1].labels.index("virginica")  # rows of weight 0 teach nothing
    assert (forest.to_estimator().value_[:, virginica] == 0).all()
    forest.write().overwrite().save(str(tmp_path / "m"))
    forest.write().overwrite().save(str(tmp_path / "m"))  # overwrite replaces
    loaded = RandomForestClassificationModel.load(str(tmp_path / "m"))
    assert loaded.uid == forest.uid and loaded.getMaxDepth() == 3 and loaded.getNumTrees() == 3
    features = data.stages[0].transform(frame).select("features")
    a = forest.transform(features).select("probability").collect()
    b = loaded.transform(features).select("probability").collect()
    assert [r[0] for r in a] == [r[0] for r in b]
    again = RandomForestClassificationModel.from_estimator(loaded.to_estimator(), probabilityCol="p",
                                                           rawPredictionCol="")
    out = again.transform(features)
    assert "rawPrediction" not in out.columns and [r[0] for r in out.select("p").collect()] == [r[0] for r in a]
    est_path = tmp_path / "estimator"
    RandomForestClassifier(numTrees=4, maxBins=16).write().overwrite().save(str(est_path))
    assert RandomForestClassifier.load(str(est_path)).getMaxBins() == 16


def test_params_and_defaults_match_spark() -> None:
    from pyspark.ml.classification import RandomForestClassifier as SparkForest

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    ours, theirs = RandomForestClassifier(), SparkForest()
    for name in ("featuresCol", "labelCol", "predictionCol", "probabilityCol", "rawPredictionCol", "numTrees",
                 "maxDepth", "maxBins", "impurity", "featureSubsetStrategy", "subsamplingRate",
                 "minInstancesPerNode", "minInfoGain", "minWeightFractionPerNode", "bootstrap", "maxMemoryInMB"):
        assert ours.getOrDefault(name) == theirs.getOrDefault(name), name
    assert not ours.isSet("weightCol")
    assert RandomForestClassifier(numTrees=7).setMaxDepth(3).getMaxDepth() == 3


@pytest.mark.parametrize("params, match", [
    (dict(maxDepth=31), "maxDepth=31: must be in [0, 30]"),
    (dict(maxBins=300), "maxBins=300"),
    (dict(impurity="variance"), "impurity='variance'"),
    (dict(subsamplingRate=0.0), "subsamplingRate=0.0"),
    (dict(featureSubsetStrategy="most"), "featureSubsetStrategy='most'"),
])
def test_bad_params_name_the_param(frame: Any, params: dict[str, Any], match: str) -> None:
    from modelkernels.kernels.forest.spark import RandomForestClassifier

    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        _pipeline(RandomForestClassifier(**params)).fit(frame)


def test_bad_labels_and_columns(spark: Any) -> None:
    from pyspark.ml.linalg import Vectors

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    df = spark.createDataFrame([(Vectors.dense([0.0, 1.0]), 0.5), (Vectors.dense([1.0, 0.0]), 1.0)],
                               ["features", "label"])
    with pytest.raises(Exception, match=r"labelCol must hold class indices"):
        RandomForestClassifier(numTrees=1).fit(df)
    with pytest.raises(ValueError, match="column 'y' is not in the DataFrame"):
        RandomForestClassifier(labelCol="y").fit(df)
    with pytest.raises(ValueError, match="no rows"):
        RandomForestClassifier().fit(df.limit(0))


def test_packed_histograms_narrow_and_add_back() -> None:
    from modelkernels.kernels.forest.spark.engine import add_packed, narrow, pack_histograms, unpack_histograms

    assert narrow(np.array([0.0, 255.0])).dtype == np.uint8
    assert narrow(np.array([256.0])).dtype == np.uint16
    assert narrow(np.array([70000], np.int64)).dtype == np.uint32
    assert narrow(np.zeros(0)).dtype == np.uint8
    rng = np.random.default_rng(0)
    a = rng.integers(0, 300, (2, 3, 4, 3)).astype(np.float64)
    b = rng.integers(0, 70000, (2, 3, 4, 3)).astype(np.float64)
    for weighted in (False, True):
        counts_a, counts_b = a.sum(-1).astype(np.int64), b.sum(-1).astype(np.int64)
        pa_, pb = pack_histograms(a, counts_a, weighted), pack_histograms(b, counts_b, weighted)
        assert (pa_[1] is None) != weighted
        hist, counts = unpack_histograms(add_packed(pa_, pb))
        np.testing.assert_array_equal(hist, a + b)
        np.testing.assert_array_equal(counts, counts_a + counts_b)
        assert hist.dtype == np.float64 and counts.dtype == np.int64


@pytest.mark.parametrize("weighted", [False, True])
def test_spark_engine_sums_as_the_local_engine(spark: Any, monkeypatch: pytest.MonkeyPatch, weighted: bool) -> None:
    """Small Arrow batches merged into blocks, partitions coalesced onto the cores, packed histograms
    added on the driver (unweighted) or tree-reduced (weighted): the sums of the in-memory engine."""
    from pyspark.ml.linalg import Vectors

    from modelkernels.kernels.forest.levelwise import LevelPlan, LocalEngine, quantile_splits
    from modelkernels.kernels.forest.spark import engine

    monkeypatch.setattr(engine, "BLOCK_ROWS", 64)
    monkeypatch.setattr(engine, "DRIVER_SUM_TASKS", 0 if weighted else 16)
    X, y = _data(700, 5, 1)
    w = np.random.default_rng(2).integers(0, 4, 700) * 0.75
    df = spark.createDataFrame([(Vectors.dense(x.tolist()), float(c), float(v)) for x, c, v in zip(X, y, w)],
                               ["features", "label", "w"]).repartition(5)
    rows = engine.training_columns(df, "features", "label", "w" if weighted else None)
    n_bins, split_values, offsets = quantile_splits(X, 8)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "40")
    try:
        blocks = engine.bin_rows(rows, 5, 3, n_bins, split_values, offsets, 4, 1.0, True, seed=5)
        eng = engine.SparkEngine(blocks, 5, 4, weighted)
        parts = eng.blocks.glom().collect()
        rng = np.random.default_rng(3)
        plan = LevelPlan(np.full(4, -1, np.int32), np.zeros(4, np.int32), np.zeros(4, np.int32),
                         np.arange(4, dtype=np.int32), np.arange(5, dtype=np.int64),
                         np.stack([np.sort(rng.choice(5, 3, replace=False)) for _ in range(4)]).astype(np.int32),
                         n_bins, int(n_bins.max()), 3)
        hist, counts = eng.histograms(plan)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    eng.close()
    assert eng.tasks.getNumPartitions() == 2 and len(parts) == 5
    assert all(b[0].shape[0] >= 64 for p in parts for b in p[:-1])  # batches merged until BLOCK_ROWS
    got = [b for p in parts for b in p]
    bins, bag, yy = (np.concatenate([b[i] for b in got]) for i in range(3))
    assert bins.shape == (700, 5) and sorted(yy.tolist()) == sorted(y.tolist())
    ww = np.concatenate([b[3] for b in got]) if weighted else np.ones(700)
    assert all((b[3] is None) != weighted for b in got)
    want_hist, want_counts = LocalEngine(bins, yy, ww, bag).histograms(plan)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(hist, want_hist, rtol=1e-12, atol=0)
    assert counts.sum() == 3 * int(bag.sum())  # every bagged row in its tree's root, once per sampled feature
