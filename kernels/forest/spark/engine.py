"""The Spark engine of level-wise growth (``kernels.forest.levelwise.HistogramEngine``).

Set-up, as Spark's ``RandomForest.run``: split candidates from a row sample of
``max(maxBins**2, 10000)`` rows (``levelwise.quantile_splits``: Spark's ``findSplits`` on the
sample's distinct values), then one ``mapInArrow`` pass bins every row (``bin = number of split
values < x``) and draws its per-tree bag counts (Poisson(subsamplingRate) with ``bootstrap``,
Bernoulli otherwise; numpy's generator seeded by (seed, partition id), so a recomputed partition
draws the same counts). The binned rows (one byte per feature and per tree) stay cached on the
executors. Each level is one more ``mapInArrow`` pass: the partition runs the C++
``level_histograms`` over its Arrow batches into one pair of arrays and sends those to the driver,
which adds them up. Only histograms and the split-candidate sample ever reach the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel, TaskContext
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as sf

from modelkernels.kernels.forest.level import level_histograms
from modelkernels.kernels.forest.levelwise import LevelPlan, bag_counts

BINNED_SCHEMA = "bins binary, bag binary, y int, w double"


def list_matrix(arr: pa.Array, width: int, name: str) -> np.ndarray:
    """A list<float> Arrow column of ``width``-long rows as a float32 (n, width) matrix."""
    if arr.null_count:
        raise ValueError(f"{name} holds null rows; every row needs a feature vector")
    lengths = pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != width).any():
        raise ValueError(f"{name} holds a vector of size {int(lengths[lengths != width][0])}; the model has "
                         f"{width} features")
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), width)


def binary_matrix(arr: pa.Array, width: int) -> np.ndarray:
    """A binary Arrow column of ``width``-byte rows as a uint8 (n, width) matrix (no copy)."""
    n = len(arr)
    large = pa.types.is_large_binary(arr.type)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64 if large else np.int32, count=n + 1, offset=arr.offset *
                            (8 if large else 4))
    if n and (np.diff(offsets) != width).any():
        raise ValueError(f"binned rows must hold {width} bytes each")
    if n == 0:
        return np.zeros((0, width), np.uint8)
    return np.frombuffer(data_buf, np.uint8, count=n * width, offset=int(offsets[0])).reshape(n, width)


def binary_column(matrix: np.ndarray) -> pa.Array:
    """A uint8 (n, width) matrix as a binary Arrow column of one row each."""
    n, width = matrix.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix.tobytes())])


def training_columns(df: DataFrame, features: str, label: str, weight: str | None) -> DataFrame:
    """(x array<float>, label double, weight double) of the training rows."""
    w: Column = sf.col(weight).cast("double") if weight else sf.lit(1.0)
    return df.select(vector_to_array(sf.col(features), "float32").alias("x"), sf.col(label).cast("double")
                     .alias("label"), w.alias("weight"))


def bin_rows(rows: DataFrame, n_features: int, n_classes: int, n_bins: np.ndarray, split_values: np.ndarray,
             split_offsets: np.ndarray, n_trees: int, rate: float, bootstrap: bool, seed: int) -> DataFrame:
    """The binned rows with their bag counts (``BINNED_SCHEMA``); labels and weights checked."""
    cuts = [split_values[split_offsets[f]:split_offsets[f + 1]] for f in range(n_features)]

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ctx = TaskContext.get()
        rng = np.random.default_rng([seed & 0xFFFFFFFF, ctx.partitionId() if ctx else 0])
        for batch in batches:
            x = list_matrix(batch.column("x"), n_features, "featuresCol")
            if np.isnan(x).any():
                raise ValueError("featuresCol holds NaN; the forest needs numbers (impute or drop those rows)")
            label = batch.column("label").to_numpy(zero_copy_only=False)
            y = label.astype(np.int32)
            if not (np.isfinite(label).all() and (y == label).all() and (y >= 0).all() and (y < n_classes).all()):
                raise ValueError(f"labelCol must hold class indices 0..{n_classes - 1} (as StringIndexer gives)")
            w = batch.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
            if not (np.isfinite(w).all() and (w >= 0).all()):
                raise ValueError("weightCol must hold finite weights >= 0")
            bins = np.empty(x.shape, np.uint8)
            for f in range(n_features):
                bins[:, f] = np.searchsorted(cuts[f], x[:, f], side="left")
            bag = bag_counts(rng, x.shape[0], n_trees, rate, bootstrap)
            yield pa.RecordBatch.from_arrays([binary_column(bins), binary_column(bag), pa.array(y), pa.array(w)],
                                             names=["bins", "bag", "y", "w"])

    return rows.mapInArrow(per_partition, BINNED_SCHEMA)


class SparkEngine:
    """Binned rows cached on the executors; ``histograms`` is one pass over them."""

    def __init__(self, binned: DataFrame, n_features: int, n_trees: int) -> None:
        self.binned = binned.persist(StorageLevel.MEMORY_AND_DISK)
        self.n_features, self.n_trees = n_features, n_trees
        self.passes = 0

    def histograms(self, plan: LevelPlan) -> tuple[np.ndarray, np.ndarray]:
        spark = self.binned.sparkSession
        shared = spark.sparkContext.broadcast(plan)
        F, T = self.n_features, self.n_trees

        def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            p: LevelPlan = shared.value
            hist, counts = p.empty()
            for batch in batches:
                level_histograms(binary_matrix(batch.column("bins"), F),
                                 batch.column("y").to_numpy(zero_copy_only=False).astype(np.int32),
                                 batch.column("w").to_numpy(zero_copy_only=False),
                                 binary_matrix(batch.column("bag"), T), *p.routing(), hist, counts)
            yield pa.RecordBatch.from_arrays([pa.array([hist.tobytes()], pa.binary()),
                                              pa.array([counts.tobytes()], pa.binary())],
                                             names=["hist", "counts"])

        hist, counts = plan.empty()
        for row in self.binned.mapInArrow(per_partition, "hist binary, counts binary").collect():
            hist += np.frombuffer(row["hist"], np.float64).reshape(hist.shape)
            counts += np.frombuffer(row["counts"], np.int64).reshape(counts.shape)
        shared.unpersist()
        self.passes += 1
        return hist, counts

    def close(self) -> None:
        self.binned.unpersist()


def sample_rows(rows: DataFrame, n: int, max_bins: int, seed: int) -> np.ndarray:
    """The split-candidate sample, (m, F) float32: Spark's ``max(maxBins**2, 10000)`` rows."""
    k = max(max_bins * max_bins, 10000)
    part = rows if n <= k else rows.sample(False, min(1.0, k / n), seed)
    table = part.select("x").toArrow()
    col = table.column("x").combine_chunks()
    width = int(pa.compute.list_value_length(col)[0].as_py()) if len(col) else 0
    return list_matrix(col, width, "featuresCol")


def spark_seed(value: Any) -> int:
    """Spark's 64-bit seed as a non-negative int for numpy."""
    return int(value) & 0xFFFFFFFFFFFFFFFF
