"""Level-wise growth of a random forest over rows that live elsewhere (Spark ML's
``RandomForest.run``): the driver keeps the partial trees, an engine sums class histograms over
its rows.

The engine interface is one method, ``histograms(plan) -> (hist, counts)``: sum
``kernels.forest.level.level_histograms`` over every row the engine holds (binned features,
labels, sample weights and per-tree bag counts, fixed for the whole fit) for the routing arrays
of ``plan``. ``LocalEngine`` holds NumPy arrays; ``kernels.forest.spark`` runs the same op in
each partition of a DataFrame. A Dask or Ray engine would map it over its partitions and add the
results. ``grow_forest`` is the driver: per level it samples each open node's features, asks the
engine for the open nodes' histograms (in groups of at most ``max_memory_mb``, as Spark's
``maxMemoryInMB``), picks splits with ``level_best_splits`` and opens the children that can
still split. The result is the library's packed model (``RandomForestClassifier``'s arrays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelkernels.kernels.forest.level import level_best_splits, level_histograms
from modelkernels.kernels.forest.ops import find_splits


@dataclass(frozen=True)
class LevelPlan:
    """What one pass over the rows needs: the partial trees in routing form (``bin > split_bin``
    goes to ``left + 1``; ``feature = -1`` ends the descent), the slot of each open node being
    measured (-1 otherwise), each slot's sampled features and the histogram shape."""

    feature: np.ndarray
    split_bin: np.ndarray
    left: np.ndarray
    slot: np.ndarray
    node_offsets: np.ndarray
    slot_features: np.ndarray
    n_bins: np.ndarray
    max_bins: int
    n_classes: int

    def empty(self) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed (hist, counts) for this plan."""
        S, K = self.slot_features.shape
        return (np.zeros((S, K, self.max_bins, self.n_classes)), np.zeros((S, K, self.max_bins), np.int64))

    def routing(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arguments of ``level_histograms`` after the rows: nodes, slots and bins."""
        return (self.feature, self.split_bin, self.left, self.slot, self.node_offsets, self.slot_features,
                self.n_bins)


class HistogramEngine(Protocol):
    """Holds the binned rows; sums their class histograms for a plan."""

    def histograms(self, plan: LevelPlan) -> tuple[np.ndarray, np.ndarray]: ...


class LocalEngine:
    """Rows in memory: ``bins`` (n, F) uint8, ``y`` (n,) int32, ``sample_weight`` (n,), ``bag``
    (n, n_trees) uint8; ``batch_rows`` rows per ``level_histograms`` call."""

    def __init__(self, bins: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, bag: np.ndarray,
                 batch_rows: int = 65536) -> None:
        self.bins, self.y, self.sample_weight, self.bag = bins, y, sample_weight, bag
        self.batch_rows = batch_rows

    def histograms(self, plan: LevelPlan) -> tuple[np.ndarray, np.ndarray]:
        hist, counts = plan.empty()
        for i in range(0, self.bins.shape[0], self.batch_rows):
            rows = slice(i, i + self.batch_rows)
            level_histograms(self.bins[rows], self.y[rows], self.sample_weight[rows], self.bag[rows],
                             *plan.routing(), hist, counts)
        return hist, counts


@dataclass(frozen=True)
class GrowthParams:
    """Spark's tree parameters, resolved: ``max_features`` features per node, ``criterion`` 0
    (gini) or 1 (entropy), ``min_weight`` = minWeightFractionPerNode x total weight."""

    n_trees: int
    max_depth: int
    max_features: int
    criterion: int
    min_instances: int
    min_info_gain: float
    min_weight: float
    max_memory_mb: int
    seed: int


@dataclass
class _Node:
    stats: np.ndarray  # weighted class counts
    count: int
    depth: int
    feature: int = -1
    bin: int = -1
    threshold: float = 0.0
    left: int = 0
    gain: float = 0.0


def _can_split(node: _Node, p: GrowthParams) -> bool:
    impure = int(np.count_nonzero(node.stats)) > 1
    return node.depth < p.max_depth and node.count >= 2 * p.min_instances and impure


def grow_forest(engine: HistogramEngine, p: GrowthParams, n_bins: np.ndarray, split_values: np.ndarray,
                split_offsets: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Grow ``p.n_trees`` trees level by level; returns the packed model (feature, threshold,
    child, value, node_offsets, leaf_offsets) and ``importance`` (n_trees, F) as Spark computes it
    (gain x node weight per split)."""
    F = int(n_bins.shape[0])
    rng = np.random.default_rng(p.seed)
    max_bins = int(n_bins.max())
    trees: list[list[_Node]] = [[_Node(np.zeros(n_classes), 0, 0)] for _ in range(p.n_trees)]
    open_nodes = [(t, 0) for t in range(p.n_trees)]
    first = True
    cell_bytes = max_bins * (n_classes + 1) * 8
    per_group = max(1, (p.max_memory_mb << 20) // (cell_bytes * p.max_features))
    while open_nodes:
        features = [np.sort(rng.choice(F, p.max_features, replace=False)) if p.max_features < F else np.arange(F)
                    for _ in open_nodes]
        next_open: list[tuple[int, int]] = []
        for g in range(0, len(open_nodes), per_group):
            group = open_nodes[g:g + per_group]
            plan = _plan(trees, group, np.stack(features[g:g + per_group]).astype(np.int32), n_bins, max_bins,
                         n_classes)
            hist, counts = engine.histograms(plan)
            best = level_best_splits(hist, counts, plan.slot_features, n_bins, split_values, split_offsets,
                                     p.criterion, p.min_instances, p.min_weight)
            for s, (t, k) in enumerate(group):
                node = trees[t][k]
                if first:  # the roots' statistics come from their first histograms
                    node.stats, node.count = best["node_stats"][s].copy(), int(best["node_count"][s])
                if not _can_split(node, p):
                    continue
                gain = float(best["gain"][s])
                if best["feature"][s] < 0 or not gain > 0.0 or gain < p.min_info_gain:
                    continue
                node.feature, node.bin = int(best["feature"][s]), int(best["bin"][s])
                node.threshold, node.gain = float(best["threshold"][s]), gain
                node.left = len(trees[t])
                ls, lc = best["left_stats"][s].copy(), int(best["left_count"][s])
                for stats, count in ((ls, lc), (node.stats - ls, node.count - lc)):
                    child = _Node(np.maximum(stats, 0.0), count, node.depth + 1)
                    trees[t].append(child)
                    if _can_split(child, p):
                        next_open.append((t, len(trees[t]) - 1))
        open_nodes = next_open
        first = False
    return _pack(trees, F, n_classes)


def _plan(trees: list[list[_Node]], group: list[tuple[int, int]], slot_features: np.ndarray, n_bins: np.ndarray,
          max_bins: int, n_classes: int) -> LevelPlan:
    sizes = [len(nodes) for nodes in trees]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    feature = np.array([nd.feature for nodes in trees for nd in nodes], np.int32)
    split_bin = np.array([nd.bin for nodes in trees for nd in nodes], np.int32)
    left = np.array([nd.left for nodes in trees for nd in nodes], np.int32)
    slot = np.full(int(offsets[-1]), -1, np.int32)
    for s, (t, k) in enumerate(group):
        slot[offsets[t] + k] = s
    return LevelPlan(feature, split_bin, left, slot, offsets, slot_features, n_bins, max_bins, n_classes)


def _pack(trees: list[list[_Node]], n_features: int, n_classes: int) -> dict[str, np.ndarray]:
    feature, threshold, child, value = [], [], [], []
    node_offsets, leaf_offsets = [0], [0]
    importance = np.zeros((len(trees), n_features))
    for t, nodes in enumerate(trees):
        n_leaves = 0
        for nd in nodes:
            feature.append(nd.feature)
            threshold.append(nd.threshold if nd.feature >= 0 else 0.0)
            if nd.feature >= 0:
                child.append(nd.left)
                importance[t, nd.feature] += nd.gain * float(nd.stats.sum())
            else:
                child.append(n_leaves)
                n_leaves += 1
                total = float(nd.stats.sum())
                value.append(nd.stats / total if total > 0 else np.full(n_classes, 1.0 / n_classes))
        node_offsets.append(len(feature))
        leaf_offsets.append(leaf_offsets[-1] + n_leaves)
    return dict(feature=np.array(feature, np.int32), threshold=np.array(threshold, np.float32),
                child=np.array(child, np.int32), value=np.array(value, np.float32).reshape(-1, n_classes),
                node_offsets=np.array(node_offsets, np.int64), leaf_offsets=np.array(leaf_offsets, np.int64),
                importance=importance)


def quantile_splits(rows: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_bins, split_values, split_offsets) of each feature from a (m, F) float32 row sample."""
    F = rows.shape[1]
    values, n_bins, offsets = [], np.empty(F, np.int32), np.zeros(F + 1, np.int64)
    for f in range(F):
        distinct, cnt = np.unique(rows[:, f], return_counts=True)
        s = find_splits(distinct.astype(np.float32), cnt.astype(np.float64), max_bins)
        values.append(s)
        n_bins[f] = s.shape[0] + 1
        offsets[f + 1] = offsets[f] + s.shape[0]
    split_values = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    return n_bins, split_values, offsets


def bag_counts(rng: np.random.Generator, n: int, n_trees: int, rate: float, bootstrap: bool) -> np.ndarray:
    """(n, n_trees) uint8 bag counts: Poisson(rate) (capped at 255) with bootstrap, else 1 with
    probability ``rate``."""
    if bootstrap:
        return np.minimum(rng.poisson(rate, (n, n_trees)), 255).astype(np.uint8)
    if rate >= 1.0:
        return np.ones((n, n_trees), np.uint8)
    return (rng.random((n, n_trees)) < rate).astype(np.uint8)


def spark_importances(importance: np.ndarray) -> np.ndarray:
    """Spark's featureImportances: each tree's importances normalised to sum 1, summed over the
    trees, normalised again (zeros when no tree split)."""
    totals = importance.sum(axis=1, keepdims=True)
    per_tree = np.divide(importance, totals, out=np.zeros_like(importance), where=totals > 0)
    total = per_tree.sum(axis=0)
    s = total.sum()
    return total / s if s > 0 else total


__all__ = ["GrowthParams", "HistogramEngine", "LevelPlan", "LocalEngine", "bag_counts", "grow_forest",
           "quantile_splits", "spark_importances"]

