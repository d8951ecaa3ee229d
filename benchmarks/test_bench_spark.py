"""The forest on Spark against Spark ML's RandomForestClassifier on the same cached DataFrame.

Data: make_classification-like rows generated on the executors (3 classes, each a Gaussian
cluster around a vertex of a hypercube in the informative features, the rest noise), 50
features, split 80 / 20. Both estimators: 20 trees, maxDepth 10, maxBins 32, seed 0. Timed: fit
(the whole ``fit``), transform (``transform`` of the test split written to Spark's ``noop``
sink, every output column computed, after one untimed warm-up), and test accuracy by
``MulticlassClassificationEvaluator``. Each case runs ``--repeats`` rounds, ours and Spark ML's
interleaved (the order alternating), and reports medians with [min-max]. Before the timings one
small fit and transform of each forest starts the Python workers (each imports the library) and
warms the JVM, as in a session that has run a job before.
Before timing, the library's Spark predictions are checked against its in-memory C++ predictor.

Full size (the issue's table, rows 100k / 300k / 1M, partitions = 2 x cores):

    python -m benchmarks.test_bench_spark --rows 100000 300000 1000000 --out spark.json

As pytest-benchmark suites (``spark_fit``, ``spark_transform``): 20k rows, local[2] (``--quick``: 5k
rows, 5 trees); test accuracy printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.harness import machine_info, verify
from modelkernels.kernels.registry import Tolerance

N_FEATURES, N_INFORMATIVE, N_CLASSES = 50, 10, 3


def session(cores: int, memory: str = "4g") -> Any:
    """A local Spark session with ``cores`` task slots (the benchmark's machine)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{cores}]").appName("modelkernels-bench-spark")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", memory)
             .config("spark.sql.shuffle.partitions", str(2 * cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def frame(spark: Any, n: int, partitions: int, seed: int = 0) -> Any:
    """n rows (features vector<50>, label double) generated per partition, cached."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as sf

    centers = np.random.default_rng(seed).choice([-1.0, 1.0], (N_CLASSES, N_INFORMATIVE)) * 1.0
    mixing = np.random.default_rng(seed + 1).standard_normal((N_INFORMATIVE, N_INFORMATIVE))

    def rows(batches: Any) -> Any:
        import pyarrow as pa

        for batch in batches:
            ids = batch.column("id").to_numpy()
            if ids.size == 0:
                continue
            rng = np.random.default_rng([seed, int(ids[0])])
            y = rng.integers(0, N_CLASSES, ids.size)
            x = np.empty((ids.size, N_FEATURES), np.float32)
            x[:, :N_INFORMATIVE] = (centers[y] + rng.standard_normal((ids.size, N_INFORMATIVE))) @ mixing
            x[:, N_INFORMATIVE:] = rng.standard_normal((ids.size, N_FEATURES - N_INFORMATIVE))
            flip = rng.random(ids.size) < 0.01
            y[flip] = rng.integers(0, N_CLASSES, int(flip.sum()))
            offsets = pa.array(np.arange(ids.size + 1, dtype=np.int32) * N_FEATURES)
            feats = pa.ListArray.from_arrays(offsets, pa.array(x.ravel().astype(np.float64)))
            yield pa.RecordBatch.from_arrays([feats, pa.array(y.astype(np.float64))], names=["x", "label"])

    df = spark.range(0, n, numPartitions=partitions).mapInArrow(rows, "x array<double>, label double")
    return df.select(array_to_vector("x").alias("features"), sf.col("label"))


def warm_workers(df: Any) -> None:
    """A long-running session's state before the timings: Python workers started (each imports the
    library) and the JVM's code warm, by one small untimed fit and transform of each forest."""
    from pyspark.ml.classification import RandomForestClassifier as SparkForest

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    small = df.limit(5000).cache()
    for est in (RandomForestClassifier(numTrees=2, maxDepth=3, seed=0), SparkForest(numTrees=2, maxDepth=3, seed=0)):
        est.fit(small).transform(small).write.format("noop").mode("overwrite").save()
    small.unpersist()


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _spread(values: list[float]) -> dict[str, Any]:
    return dict(median=float(np.median(values)), min=float(min(values)), max=float(max(values)), all=values)


def run_case(spark: Any, n: int, partitions: int, trees: int = 20, depth: int = 10, bins: int = 32,
             repeats: int = 3) -> dict[str, Any]:
    """Fit, transform and score both forests on one DataFrame, ``repeats`` rounds interleaved (the
    order alternates each round); returns medians with their spread, per-round ratios and
    accuracies."""
    from pyspark.ml.classification import RandomForestClassifier as SparkForest
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    train, test = frame(spark, n, partitions).randomSplit([0.8, 0.2], seed=1)
    train, test = train.cache(), test.cache()
    train.count(), test.count()
    warm_workers(train)
    makers = {"ours": lambda: RandomForestClassifier(numTrees=trees, maxDepth=depth, maxBins=bins, seed=0),
              "spark_ml": lambda: SparkForest(numTrees=trees, maxDepth=depth, maxBins=bins, seed=0)}
    names = list(makers)
    fits: dict[str, list[float]] = {k: [] for k in names}
    transforms: dict[str, list[float]] = {k: [] for k in names}
    models: dict[str, Any] = {}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            models[name], seconds = _timed(lambda make=makers[name]: make().fit(train))
            fits[name].append(seconds)
    outs = {name: models[name].transform(test) for name in names}
    check = outs["ours"].limit(2000).select("features", "probability").collect()
    X = np.array([row["features"].toArray() for row in check], np.float32)
    want = models["ours"].to_estimator().predict_proba(X)
    if not np.allclose(np.array([row["probability"].toArray() for row in check]), want, rtol=0, atol=1e-12):
        raise AssertionError("Spark transform disagrees with the in-memory C++ predictor")
    for out in outs.values():
        out.write.format("noop").mode("overwrite").save()  # warm-up: JIT, workers
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            _, seconds = _timed(lambda out=outs[name]: out.write.format("noop").mode("overwrite").save())
            transforms[name].append(seconds)
    score = MulticlassClassificationEvaluator(metricName="accuracy")
    result: dict[str, Any] = dict(rows=n, partitions=partitions, trees=trees, depth=depth, bins=bins, repeats=repeats)
    for name in names:
        result[name] = dict(fit=_spread(fits[name]), transform=_spread(transforms[name]),
                            accuracy=score.evaluate(outs[name]))
    train.unpersist(), test.unpersist()
    for what, runs in (("fit", fits), ("transform", transforms)):
        result[f"{what}_ratio"] = _spread([a / b for a, b in zip(runs["ours"], runs["spark_ml"])])
    result["accuracy_points"] = 100 * (result["ours"]["accuracy"] - result["spark_ml"]["accuracy"])
    return result


def _cell(s: dict[str, Any], digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def table(results: list[dict[str, Any]]) -> str:
    """Medians with [min-max] over the rounds; ratios are the median of the per-round ratios."""
    head = ("| rows | partitions | fit ours (s) | fit Spark ML (s) | fit ratio | transform ours (s) | "
            "transform Spark ML (s) | transform ratio | accuracy ours | accuracy Spark ML |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        o, s = r["ours"], r["spark_ml"]
        lines.append(f"| {r['rows']:,} | {r['partitions']} | {_cell(o['fit'], 1)} | {_cell(s['fit'], 1)} | "
                     f"{_cell(r['fit_ratio'], 2)} | {_cell(o['transform'], 2)} | {_cell(s['transform'], 2)} | "
                     f"{_cell(r['transform_ratio'], 2)} | {o['accuracy']:.4f} | {s['accuracy']:.4f} |")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def split(request: pytest.FixtureRequest) -> tuple[Any, Any, int]:
    quick = bool(request.config.getoption("--quick"))
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'modelkernels[spark]')")
    spark = session(2, "2g")
    n = 5000 if quick else 20000
    train, test = frame(spark, n, 2).randomSplit([0.8, 0.2], seed=1)
    train, test = train.cache(), test.cache()
    train.count(), test.count()
    return train, test, n


def _estimator(impl: str, trees: int) -> Any:
    from pyspark.ml.classification import RandomForestClassifier as SparkForest

    from modelkernels.kernels.forest.spark import RandomForestClassifier

    cls = RandomForestClassifier if impl == "kernels.forest.spark" else SparkForest
    return cls(numTrees=trees, maxDepth=10, maxBins=32, seed=0)


@pytest.mark.parametrize("impl", ["kernels.forest.spark", "Spark ML"])
def test_spark_fit_transform(bench, quick, split, impl: str) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    train, test, n = split
    trees = 5 if quick else 20
    model = _estimator(impl, trees).fit(train)
    out = model.transform(test)
    if impl == "kernels.forest.spark":
        check = out.limit(500).select("features", "probability").collect()
        X = np.array([r["features"].toArray() for r in check], np.float32)
        verify(np.array([r["probability"].toArray() for r in check]), model.to_estimator().predict_proba(X),
               Tolerance(atol=1e-12), what="Spark transform vs the in-memory C++ predictor")
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    role = "ours" if impl == "kernels.forest.spark" else "peer"
    bench(lambda: _estimator(impl, trees).fit(train), suite="spark_fit", case=f"n={n} trees={trees} depth=10",
          impl=impl, role=role, size=n, rounds=2)
    print(f"{impl}: test accuracy {accuracy:.4f}")


@pytest.mark.parametrize("impl", ["kernels.forest.spark", "Spark ML"])
def test_spark_transform(bench, quick, split, impl: str) -> None:  # type: ignore[no-untyped-def]
    train, test, n = split
    trees = 5 if quick else 20
    out = _estimator(impl, trees).fit(train).transform(test)
    bench(lambda: out.write.format("noop").mode("overwrite").save(), suite="spark_transform",
          case=f"n={n // 5} trees={trees} depth=10", impl=impl,
          role="ours" if impl == "kernels.forest.spark" else "peer", size=n, rounds=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100000, 300000, 1000000])
    parser.add_argument("--partitions", type=int, nargs="+", default=None,
                        help="partition counts to try (default: 2 x cores)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--memory", default="16g", help="spark.driver.memory")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case (medians reported)")
    parser.add_argument("--out", type=Path, default=Path("spark_bench.json"))
    args = parser.parse_args()
    spark = session(args.cores, args.memory)
    results = []
    for partitions in args.partitions or [2 * args.cores]:
        for n in args.rows:
            results.append(run_case(spark, n, partitions, trees=args.trees, depth=args.depth, repeats=args.repeats))
            print(table(results[-1:]), flush=True)
    print(table(results))
    args.out.write_text(json.dumps(dict(machine=machine_info(), cores=args.cores, results=results), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
