"""Level-wise forest growth in plain Python: the executable spec of csrc/forest_level.cpp.

Spark ML grows all trees of a random forest together, one level at a time
(``org.apache.spark.ml.tree.impl.RandomForest.findBestSplits``; Meng et al., "MLlib: Machine
Learning in Apache Spark", JMLR 2016): each data partition routes its rows down the partial trees
and sums, for every open node, a class histogram of each feature sampled for that node; the sums
meet on the driver, which picks each node's split from its histograms.

``level_histograms`` is the partition half. Row i with bag count ``c = bag[i, t]`` for tree t
descends from the root (``bins[i, feature] > split_bin`` goes right) to node k; if
``slot[k] >= 0`` it adds ``c * sample_weight[i]`` to ``hist[slot, j, bins[i, f_j], y[i]]`` and
``c`` to ``counts[slot, j, bins[i, f_j]]`` for each feature ``f_j = slot_features[slot, j]``.
Accumulates in place.

``level_best_splits`` is the driver half: per slot the node's class weights are the sum of any
feature's histogram; each sampled feature is scanned by the library's histogram split search
(``pyimpl.forest._hist_scan``, scikit-learn's proxy, ``min_instances`` samples and
``min_weight`` weight per child), the first maximum over the features wins, and the winner's gain
is Spark's ``H - W_L/W H_L - W_R/W H_R`` (``ImpurityCalculator``, Gini or entropy in bits).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelkernels.pyimpl.forest import _hist_scan, impurity


def _check_n_bins(n_bins: np.ndarray, max_bins: int) -> int:
    for f, nb in enumerate(np.asarray(n_bins).tolist()):
        if not 1 <= nb <= max_bins:
            raise ValueError(f"n_bins[{f}]={nb}: must be in [1, max_bins={max_bins}]")
    return int(np.shape(n_bins)[0])


def _check_slot_features(slot_features: np.ndarray, n_features: int) -> None:
    for f in np.asarray(slot_features).ravel().tolist():
        if not 0 <= f < n_features:
            raise ValueError(f"slot_features holds feature {f}; features are [0, {n_features})")


def level_histograms(bins: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, bag: np.ndarray,
                     feature: np.ndarray, split_bin: np.ndarray, left: np.ndarray, slot: np.ndarray,
                     node_offsets: np.ndarray, slot_features: np.ndarray, n_bins: np.ndarray, hist: np.ndarray,
                     counts: np.ndarray) -> None:
    """Add one batch of rows to the open nodes' histograms (see the module docstring)."""
    n, F = bins.shape
    S, K, B, C = hist.shape
    if _check_n_bins(n_bins, B) != F:
        raise ValueError(f"n_bins must have one entry per column of bins ({F})")
    _check_slot_features(slot_features, F)
    for t in range(len(node_offsets) - 1):
        base, size = int(node_offsets[t]), int(node_offsets[t + 1] - node_offsets[t])
        for j in range(size):
            g = base + j
            f, lc, s = int(feature[g]), int(left[g]), int(slot[g])
            if f >= F:
                raise ValueError(f"node {g} splits on feature {f}; features are [0, {F})")
            if f >= 0 and not (j < lc and lc + 1 < size):
                raise ValueError(f"node {g} has its children outside its tree")
            if not -1 <= s < S:
                raise ValueError(f"slot[{g}]={s}: must be in [-1, {S})")
    for i in range(n):
        if not 0 <= int(y[i]) < C:
            raise ValueError(f"y[{i}]={int(y[i])}: labels must be in [0, n_classes={C})")
        if not (sample_weight[i] >= 0.0 and math.isfinite(sample_weight[i])):
            raise ValueError(f"sample_weight[{i}] must be finite and >= 0")
        for f in range(F):
            if bins[i, f] >= n_bins[f]:
                raise ValueError(f"bins[{i}, {f}]={int(bins[i, f])}: must be < n_bins[{f}]={int(n_bins[f])}")
    for t in range(len(node_offsets) - 1):
        base = int(node_offsets[t])
        for i in range(n):
            c = int(bag[i, t])
            if c == 0:
                continue
            k = 0
            while feature[base + k] >= 0:
                k = int(left[base + k]) + (1 if bins[i, feature[base + k]] > split_bin[base + k] else 0)
            s = int(slot[base + k])
            if s < 0:
                continue
            wc = float(c) * float(sample_weight[i])
            for j in range(K):
                b = int(bins[i, slot_features[s, j]])
                hist[s, j, b, int(y[i])] += wc
                counts[s, j, b] += c


def level_best_splits(hist: np.ndarray, counts: np.ndarray, slot_features: np.ndarray, n_bins: np.ndarray,
                      split_values: np.ndarray, split_offsets: np.ndarray, criterion: int, min_instances: int,
                      min_weight: float) -> dict[str, np.ndarray]:
    """Each open node's best split from its summed histograms. Returns arrays per slot: feature
    (-1: no valid split), bin (``bin <= bin`` goes left), threshold (the bin's upper split value),
    gain, impurity, node_stats (n_slots, C) and node_count, left_stats and left_count."""
    S, K, B, C = hist.shape
    F = _check_n_bins(n_bins, B)
    _check_slot_features(slot_features, F)
    for f in range(F):
        if split_offsets[f + 1] - split_offsets[f] != n_bins[f] - 1:
            raise ValueError(f"split_offsets give feature {f} {int(split_offsets[f + 1] - split_offsets[f])} split "
                             f"values; it needs n_bins - 1 = {int(n_bins[f]) - 1}")
    out: dict[str, Any] = dict(feature=np.full(S, -1, np.int32), bin=np.full(S, -1, np.int32),
                               threshold=np.full(S, np.nan, np.float32), gain=np.zeros(S),
                               impurity=np.zeros(S), node_stats=np.zeros((S, C)),
                               node_count=np.zeros(S, np.int64), left_stats=np.zeros((S, C)),
                               left_count=np.zeros(S, np.int64))
    for s in range(S):
        ns = [0.0] * C
        m = 0
        for b in range(B):
            for c in range(C):
                ns[c] += float(hist[s, 0, b, c])
            m += int(counts[s, 0, b])
        w = 0.0
        for c in range(C):
            w += ns[c]
        out["node_stats"][s] = ns
        out["node_count"][s] = m
        out["impurity"][s] = impurity(ns, w, criterion) if w > 0.0 else 0.0
        if w <= 0.0:
            continue
        best = (-math.inf, -1, math.nan, 0, -1, -1)  # proxy, bin, threshold, n_left, feature, j
        for j in range(K):
            f = int(slot_features[s, j])
            nb = int(n_bins[f])
            edges = split_values[int(split_offsets[f]):int(split_offsets[f + 1])]
            flat = [float(v) for v in hist[s, j, :nb].ravel()]
            _, b, thr, nl, pr = _hist_scan(flat, [int(v) for v in counts[s, j, :nb]], m, edges, C, criterion,
                                           min_instances, ns, w, min_weight)
            if pr > best[0]:
                best = (pr, b, thr, nl, f, j)
        if best[4] < 0:
            continue
        _, b, thr, nl, f, j = best
        ls = [0.0] * C
        for bb in range(b + 1):
            for c in range(C):
                ls[c] += float(hist[s, j, bb, c])
        wl = 0.0
        for c in range(C):
            wl += ls[c]
        wr = w - wl
        right = [ns[c] - ls[c] for c in range(C)]
        out["feature"][s], out["bin"][s], out["threshold"][s], out["left_count"][s] = f, b, thr, nl
        out["left_stats"][s] = ls
        out["gain"][s] = out["impurity"][s] - wl / w * impurity(ls, wl, criterion) - wr / w * impurity(right, wr,
                                                                                                       criterion)
    return out
