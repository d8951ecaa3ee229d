"""The Spark engine of level-wise growth (``kernels.forest.levelwise.HistogramEngine``).

Set-up, as Spark's ``RandomForest.run``: split candidates from a row sample of
``max(maxBins**2, 10000)`` rows (``levelwise.quantile_splits``: Spark's ``findSplits`` on the
sample's distinct values), then one ``mapInArrow`` pass bins every row (``bin = number of split
values < x``) and draws its per-tree bag counts (Poisson(subsamplingRate) with ``bootstrap``,
Bernoulli otherwise; numpy's generator seeded by (seed, partition id), so a recomputed partition
draws the same counts). Feature vectors reach the workers as float32 arrays (``vector_to_array``
in the JVM: Spark ships those to Arrow several times faster than the vector type's struct).

The binned rows are cached on the executors as blocks of NumPy arrays (one byte per feature and
per tree, up to ``BLOCK_ROWS`` rows a block): a Python RDD, so a level's pass hands each worker
its pickled blocks with no per-row conversion (Spark ML caches its ``TreePoint``s the same way).
Each level is one job of at most ``defaultParallelism`` tasks (the cached partitions coalesced
onto the cores): a task runs the C++ ``level_histograms`` over its blocks into one pair of arrays
and sends them back compacted: without a weight column every histogram cell is an integer (bag
counts), so it travels as the narrowest unsigned integer that holds it and the row counts, which
are then its sum over the classes, are not sent at all. The driver adds the tasks' arrays (a tree
reduce on the executors when there are many tasks). Only histograms and the split-candidate sample
ever reach the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel, TaskContext
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as sf

from modelkernels.kernels.forest.level import level_histograms
from modelkernels.kernels.forest.levelwise import LevelPlan, bag_counts

BINNED_SCHEMA = "bins binary, bag binary, y binary, w binary"
BLOCK_ROWS = 1 << 18
# At most this many tasks' histograms are added on the driver; more are tree-reduced on executors.
DRIVER_SUM_TASKS = 16

Block = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
Packed = tuple[np.ndarray, np.ndarray | None]


def list_matrix(arr: pa.Array, width: int, name: str) -> np.ndarray:
    """A list<float> Arrow column of ``width``-long rows as a float32 (n, width) matrix."""
    if arr.null_count:
        raise ValueError(f"{name} holds null rows; every row needs a feature vector")
    lengths = pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != width).any():
        raise ValueError(f"{name} holds a vector of size {int(lengths[lengths != width][0])}; the model has "
                         f"{width} features")
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(arr), width)


def training_columns(df: DataFrame, features: str, label: str, weight: str | None) -> DataFrame:
    """(x array<float>, label double[, weight double]) of the training rows; without a weight
    column every row weighs 1. The vectors become arrays in the JVM: Spark ships a float array to
    Arrow several times faster than its vector type's struct."""
    cols: list[Column] = [vector_to_array(sf.col(features), "float32").alias("x"),
                          sf.col(label).cast("double").alias("label")]
    if weight:
        cols.append(sf.col(weight).cast("double").alias("weight"))
    return df.select(*cols)


def _bytes(a: np.ndarray) -> pa.Array:
    """One binary value holding ``a``'s bytes, without a copy."""
    data = np.ascontiguousarray(a)
    offsets = np.array([0, data.nbytes], np.int32)
    return pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def bin_rows(rows: DataFrame, n_features: int, n_classes: int, n_bins: np.ndarray, split_values: np.ndarray,
             split_offsets: np.ndarray, n_trees: int, rate: float, bootstrap: bool, seed: int) -> RDD:
    """The binned rows with their bag counts, as an RDD of ``Block`` (bins (n, F) uint8, bag
    (n, n_trees) uint8, y (n,) int32, w (n,) float64 or None); labels and weights checked."""
    cuts = [split_values[split_offsets[f]:split_offsets[f + 1]] for f in range(n_features)]
    weighted = "weight" in rows.columns

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
            w = np.zeros(0)
            if weighted:
                w = batch.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
                if not (np.isfinite(w).all() and (w >= 0).all()):
                    raise ValueError("weightCol must hold finite weights >= 0")
            bins = np.empty(x.shape, np.uint8)
            for f in range(n_features):
                bins[:, f] = np.searchsorted(cuts[f], x[:, f], side="left")
            bag = bag_counts(rng, x.shape[0], n_trees, rate, bootstrap)
            yield pa.RecordBatch.from_arrays([_bytes(bins), _bytes(bag), _bytes(y), _bytes(w)], names=["bins", "bag",
                                                                                                        "y", "w"])

    def blocks(parts: Iterable[Any]) -> Iterator[Block]:
        pending: list[Block] = []
        rows_pending = 0
        for r in parts:
            y = np.frombuffer(r["y"], np.int32)
            n = y.shape[0]
            block = (np.frombuffer(r["bins"], np.uint8).reshape(n, n_features),
                     np.frombuffer(r["bag"], np.uint8).reshape(n, n_trees), y,
                     np.frombuffer(r["w"], np.float64) if weighted else None)
            pending.append(block)
            rows_pending += n
            if rows_pending >= BLOCK_ROWS:
                yield _concat(pending)
                pending, rows_pending = [], 0
        if pending:
            yield _concat(pending)

    return rows.mapInArrow(per_partition, BINNED_SCHEMA).rdd.mapPartitions(blocks)


def _concat(blocks: list[Block]) -> Block:
    if len(blocks) == 1:
        return blocks[0]
    w = [b[3] for b in blocks]
    return (np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]),
            np.concatenate([b[2] for b in blocks]), None if w[0] is None else np.concatenate(w))  # type: ignore[arg-type]


def narrow(a: np.ndarray) -> np.ndarray:
    """A non-negative integer-valued array in the narrowest unsigned dtype that holds it."""
    top = int(a.max()) if a.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return a.astype(dt)
    return a.astype(np.uint64)


def pack_histograms(hist: np.ndarray, counts: np.ndarray, weighted: bool) -> Packed:
    """What a task sends: unweighted, the histogram alone (integer bag counts, narrowed); weighted,
    the float64 histogram and the narrowed row counts."""
    return (hist, narrow(counts)) if weighted else (narrow(hist), None)


def unpack_histograms(packed: Packed) -> tuple[np.ndarray, np.ndarray]:
    """(hist float64, counts int64) from ``pack_histograms``."""
    hist, counts = packed
    if counts is None:
        wide = hist.astype(np.int64)
        return wide.astype(np.float64), wide.sum(axis=-1)
    return hist.astype(np.float64), counts.astype(np.int64)


def add_packed(a: Packed, b: Packed) -> Packed:
    """The sum of two packed histograms, packed again (a tree-reduce step)."""
    if a[1] is None:
        return narrow(a[0].astype(np.uint64) + b[0].astype(np.uint64)), None
    return a[0] + b[0], narrow(a[1].astype(np.uint64) + b[1].astype(np.uint64))  # type: ignore[union-attr]


class SparkEngine:
    """Binned blocks cached on the executors; ``histograms`` is one job over them."""

    def __init__(self, blocks: RDD, n_features: int, n_trees: int, weighted: bool) -> None:
        self.blocks = blocks.persist(StorageLevel.MEMORY_AND_DISK)
        self.n_features, self.n_trees, self.weighted = n_features, n_trees, weighted
        tasks = min(self.blocks.getNumPartitions(), max(1, self.blocks.context.defaultParallelism))
        self.tasks = self.blocks.coalesce(tasks) if tasks < self.blocks.getNumPartitions() else self.blocks
        self.passes = 0

    def histograms(self, plan: LevelPlan) -> tuple[np.ndarray, np.ndarray]:
        weighted = self.weighted

        def per_task(blocks: Iterable[Block]) -> Iterator[Packed]:
            hist, counts = plan.empty()
            for bins, bag, y, w in blocks:
                level_histograms(bins, y, np.ones(y.shape[0]) if w is None else w, bag, *plan.routing(), hist,
                                 counts)
            yield pack_histograms(hist, counts, weighted)

        outputs = self.tasks.mapPartitions(per_task)
        self.passes += 1
        if outputs.getNumPartitions() > DRIVER_SUM_TASKS:
            return unpack_histograms(outputs.treeReduce(add_packed, depth=2))
        hist, counts = plan.empty()
        for h, c in outputs.collect():
            hist += h  # integer-valued without weights: float64 adds them exactly
            if c is not None:
                counts += c.astype(np.int64)
        if not weighted:
            counts += hist.sum(axis=-1).astype(np.int64)
        return hist, counts

    def close(self) -> None:
        self.blocks.unpersist()


def sample_rows(rows: DataFrame, n: int, max_bins: int, seed: int) -> np.ndarray:
    """The split-candidate sample, (m, F) float32: Spark's ``max(maxBins**2, 10000)`` rows."""
    k = max(max_bins * max_bins, 10000)
    part = rows if n <= k else rows.sample(False, min(1.0, k / n), seed)
    col = part.select("x").toArrow().column("x")
    if len(col) == 0:  # a fractional sample can come back empty: take the first row
        col = rows.select("x").limit(1).toArrow().column("x")
    col = col.combine_chunks()
    return list_matrix(col, len(col[0]) if len(col) else 0, "featuresCol")


def spark_seed(value: Any) -> int:
    """Spark's 64-bit seed as a non-negative int for numpy."""
    return int(value) & 0xFFFFFFFFFFFFFFFF
