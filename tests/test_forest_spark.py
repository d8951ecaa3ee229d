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
