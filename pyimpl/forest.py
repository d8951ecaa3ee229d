"""Random-forest training and prediction in plain Python: the executable spec of csrc/forest*.

Impurity as scikit-learn's tree criteria (Breiman, Friedman, Olshen, Stone 1984): Gini
``1 - sum_c p_c**2`` and entropy ``-sum_c p_c log2 p_c`` of the weighted class fractions ``p_c``
of a node. Candidate splits are ranked by scikit-learn's proxy (Gini:
``sum_c L_c**2 / W_L + sum_c R_c**2 / W_R``, the sums of squares kept as running sums in the
exact scan; entropy: ``-(W_L H_L + W_R H_R)``); the first maximum wins. Thresholds sit at the
midpoint of two neighbouring distinct values (within 1e-7 they are one value), rounded to
float32 and kept strictly below the upper value. The gain
``H - W_L/W H_L - W_R/W H_R`` is compared with Spark's ``minInfoGain`` (when > 0), and
``W/W_root`` times it with scikit-learn's ``min_impurity_decrease``.

Trees grow depth first from an explicit stack; after a split the larger child is built next
(so its histograms can be the parent's minus its sibling's: histogram subtraction). Finished
trees are renumbered breadth first (the top levels, visited by every prediction, sit together). At each
node the features are visited in the order of a Fisher-Yates shuffle driven by splitmix64
(Steele, Lea, Flood 2014) seeded per tree, until ``max_features`` were visited and at least
one of them was not constant (scikit-learn's rule). Histogram mode bins each feature at the
thresholds of Spark's ``findSplits`` (``RandomForest.findSplitsForContinuousFeature``).

The reference performs the same float operations in the same order as the C++ code, so the
same inputs (bootstrap counts, class weights, seeds) give the same trees node for node.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FEATURE_THRESHOLD = 1e-7
EPSILON = float(np.finfo(np.float64).eps)
CRITERIA = {"gini": 0, "entropy": 1}
_MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64: returns ``(output, new_state)``, both 64-bit unsigned."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31), state


def impurity(counts: list[float], w: float, criterion: int) -> float:
    """Gini (criterion 0) or entropy in bits (1) of weighted class counts summing to ``w``."""
    if criterion == 0:
        sq = 0.0
        for c in counts:
            sq += c * c
        return 1.0 - sq / (w * w)
    h = 0.0
    for c in counts:
        if c > 0.0:
            q = c / w
            h -= q * math.log2(q)
    return h


def proxy_gain(left: list[float], right: list[float], wl: float, wr: float, criterion: int) -> float:
    """scikit-learn's proxy of the impurity decrease: larger is better, same argmax."""
    if criterion == 0:
        sl = sr = 0.0
        for a, b in zip(left, right):
            sl += a * a
            sr += b * b
        return sl / wl + sr / wr
    return -(wl * impurity(left, wl, criterion) + wr * impurity(right, wr, criterion))


def threshold_between(a: float, b: float) -> float:
    """A float32 ``t`` with ``a <= t < b``: the midpoint rounded to float32, or ``a`` when that reaches ``b``."""
    t = float(np.float32(a / 2.0 + b / 2.0))
    return a if t >= b else t


def _exact_scan(vals: list[float], ids: list[int], y: Any, w: Any, n_classes: int, criterion: int,
                min_samples_leaf: int, node_counts: list[float], node_w: float,
                min_weight_leaf: float) -> tuple[bool, float, int, float]:
    """Sorted-values scan of one feature: (varies, threshold, n_left, proxy)."""
    m = len(vals)
    best = (-math.inf, math.nan, 0)
    if m < 2 or max(vals) <= min(vals) + FEATURE_THRESHOLD:
        return False, best[1], best[2], best[0]
    order = sorted(range(m), key=lambda i: vals[i])
    sv = [vals[i] for i in order]
    si = [ids[i] for i in order]
    left = [0.0] * n_classes
    right = list(node_counts)
    sl = sr = 0.0  # Gini: running sums of squares of the left and right class weights
    for c in right:
        sr += c * c
    wl = 0.0
    nl = 0
    for i in range(1, m):
        s = si[i - 1]
        c, ws = y[s], w[s]
        if criterion == 0:
            sl += ws * (2.0 * left[c] + ws)
            sr += ws * (ws - 2.0 * right[c])
            right[c] -= ws
        left[c] += ws
        wl += ws
        nl += 1
        if sv[i] <= sv[i - 1] + FEATURE_THRESHOLD:
            continue
        if nl < min_samples_leaf:
            continue
        if m - nl < min_samples_leaf:
            break
        wr = node_w - wl
        if wl < min_weight_leaf or wr < min_weight_leaf:
            continue
        if criterion == 0:
            pr = sl / wl + sr / wr
        else:
            pr = proxy_gain(left, [node_counts[k] - left[k] for k in range(n_classes)], wl, wr, criterion)
        if pr > best[0]:
            best = (pr, threshold_between(sv[i - 1], sv[i]), nl)
    return True, best[1], best[2], best[0]


def _hist_scan(hist: list[float], counts: list[int], m: int, edges: Any, n_classes: int, criterion: int,
               min_samples_leaf: int, node_counts: list[float], node_w: float,
               min_weight_leaf: float) -> tuple[bool, int, float, int, float]:
    """Histogram scan of one feature: (varies, bin, threshold, n_left, proxy)."""
    best: tuple[float, int, float, int] = (-math.inf, -1, math.nan, 0)
    if sum(1 for c in counts if c > 0) <= 1:
        return False, best[1], best[2], best[3], best[0]
    left = [0.0] * n_classes
    wl = 0.0
    nl = 0
    for b in range(len(counts) - 1):
        if counts[b] == 0:
            continue
        for c in range(n_classes):
            left[c] += hist[b * n_classes + c]
            wl += hist[b * n_classes + c]
        nl += counts[b]
        if nl == m:
            break
        if nl < min_samples_leaf:
            continue
        if m - nl < min_samples_leaf:
            break
        wr = node_w - wl
        if wl < min_weight_leaf or wr < min_weight_leaf:
            continue
        right = [node_counts[c] - left[c] for c in range(n_classes)]
        pr = proxy_gain(left, right, wl, wr, criterion)
        if pr > best[0]:
            best = (pr, b, float(edges[b]), nl)
    return True, best[1], best[2], best[3], best[0]


def _class_counts(y: Any, w: Any, n_classes: int) -> tuple[list[float], float]:
    counts = [0.0] * n_classes
    total = 0.0
    for c, wi in zip(y, w):
        counts[int(c)] += float(wi)
        total += float(wi)
    return counts, total


def best_split_exact(values: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int, criterion: str = "gini",
                     min_samples_leaf: int = 1, min_weight_leaf: float = 0.0) -> tuple[bool, float, int, float]:
    """Best split of one node on one feature by sorting its values.

    values: float32 feature values of the node's samples; y: class ids in ``[0, n_classes)``;
    w: sample weights. Returns ``(varies, threshold, n_left, proxy)``: ``varies`` is False for a
    constant feature; without a valid split threshold is NaN and proxy ``-inf``. Samples with
    ``x <= threshold`` go left.
    """
    vals = [float(v) for v in np.asarray(values, dtype=np.float32)]
    yy = [int(c) for c in y]
    ww = [float(x) for x in w]
    node, total = _class_counts(yy, ww, n_classes)
    varies, thr, nl, pr = _exact_scan(vals, list(range(len(vals))), yy, ww, n_classes, CRITERIA[criterion],
                                      min_samples_leaf, node, total, min_weight_leaf)
    return varies, float(np.float32(thr)), nl, pr


def best_split_hist(bins: np.ndarray, y: np.ndarray, w: np.ndarray, edges: np.ndarray, n_classes: int,
                    criterion: str = "gini", min_samples_leaf: int = 1,
                    min_weight_leaf: float = 0.0) -> tuple[bool, int, float, int, float]:
    """Best split of one node on one binned feature from its class histogram.

    bins: bin of each sample in ``[0, len(edges) + 1)``; edges: float32 upper edges of bins
    ``0 .. len(edges) - 1``. Returns ``(varies, bin, threshold, n_left, proxy)``: bins ``<= bin``
    go left, ``threshold = edges[bin]``; ``varies`` is False when one bin holds every sample.
    """
    nb = len(edges) + 1
    hist = [0.0] * (nb * n_classes)
    counts = [0] * nb
    for b, c, wi in zip(bins, y, w):
        hist[int(b) * n_classes + int(c)] += float(wi)
        counts[int(b)] += 1
    node, total = _class_counts(y, w, n_classes)
    varies, b, thr, nl, pr = _hist_scan(hist, counts, len(bins), edges, n_classes, CRITERIA[criterion],
                                        min_samples_leaf, node, total, min_weight_leaf)
    return varies, b, float(np.float32(thr)), nl, pr


def find_splits(distinct: np.ndarray, counts: np.ndarray, max_bins: int) -> np.ndarray:
    """Spark's findSplits for a continuous feature: at most ``max_bins - 1`` float32 thresholds.

    distinct: the feature's sorted distinct values (of a sample of rows); counts: how often each
    occurs. With few distinct values every midpoint is a split; otherwise a split is placed where
    the running count passes the next multiple of ``total / max_bins`` (the closer side wins).
    """
    vals = [float(v) for v in np.asarray(distinct, dtype=np.float32)]
    cnt = [float(c) for c in counts]
    out: list[float] = []
    if len(vals) >= 2:
        if len(vals) - 1 <= max_bins - 1:
            out = [threshold_between(vals[i - 1], vals[i]) for i in range(1, len(vals))]
        else:
            total = 0.0
            for c in cnt:
                total += c
            stride = total / float(max_bins)
            current, target = cnt[0], stride
            for i in range(1, len(vals)):
                previous = current
                current += cnt[i]
                if abs(previous - target) < abs(current - target):
                    out.append(threshold_between(vals[i - 1], vals[i]))
                    target += stride
    return np.asarray(out, dtype=np.float32)


def _breadth_first(feature: list[int], threshold: list[float], child: list[int]) -> tuple[list[int], list[float],
                                                                                      list[int]]:
    """Renumber nodes level by level (children stay adjacent, after their parent); leaves keep
    their value rows."""
    order = [0]
    renum = [0] * len(feature)
    head = 0
    while head < len(order):
        k = order[head]
        renum[k] = head
        if feature[k] >= 0:
            order += [child[k], child[k] + 1]
        head += 1
    return ([feature[k] for k in order], [threshold[k] for k in order],
            [renum[child[k]] if feature[k] >= 0 else child[k] for k in order])


class _TreeBuilder:
    """One tree, exactly as csrc/forest.cpp's TreeBuilder (see the module docstring)."""

    def __init__(self, X_cols: np.ndarray, y: list[int], params: dict[str, Any], hist: dict[str, Any] | None):
        self.X = X_cols
        self.y = y
        self.p = params
        self.hist = hist

    def build(self, counts: np.ndarray, sample_weight: np.ndarray, class_weight: np.ndarray,
              seed: int) -> dict[str, Any]:
        p, y = self.p, self.y
        n_features, n = self.X.shape
        C = p["n_classes"]
        crit = CRITERIA[p["criterion"]] if isinstance(p["criterion"], str) else int(p["criterion"])
        cw = [float(v) for v in class_weight]
        w = [float(counts[i]) * float(sample_weight[i]) * cw[y[i]] for i in range(n)]
        samples = [i for i in range(n) if counts[i] > 0 and w[i] > 0.0]
        w_root = 0.0
        for s in samples:
            w_root += w[s]
        mwl = p["min_weight_fraction_leaf"] * w_root
        feature, threshold, child = [-1], [0.0], [0]
        value: list[list[float]] = []
        importance = [0.0] * n_features
        rng = int(seed)
        cache: dict[int, tuple[list[float], list[int]]] = {}
        stack = [(0, len(samples), 0, 0, 0, 0, False)]
        while stack:
            start, end, node, depth, sib_start, sib_end, after_parent = stack.pop()
            m = end - start
            node_counts = [0.0] * C
            w_node = 0.0
            for s in samples[start:end]:
                node_counts[y[s]] += w[s]
                w_node += w[s]
            imp = impurity(node_counts, w_node, crit) if m > 0 else 0.0
            leaf = ((p["max_depth"] >= 0 and depth >= p["max_depth"]) or m < p["min_samples_split"]
                    or m < 2 * p["min_samples_leaf"] or w_node < 2.0 * mwl or imp <= EPSILON)
            best_f, best = -1, (-math.inf, 0.0, 0, -1)  # (proxy, threshold, n_left, bin)
            if not leaf:
                feats = list(range(n_features))
                visited, found = 0, False
                new_cache: dict[int, tuple[list[float], list[int]]] = {}
                for j in range(n_features):
                    if visited >= p["max_features"] and found:
                        break
                    r, rng = splitmix64(rng)
                    r = j + r % (n_features - j)
                    feats[j], feats[r] = feats[r], feats[j]
                    f = feats[j]
                    visited += 1
                    if self.hist is None:
                        vals = [float(self.X[f, s]) for s in samples[start:end]]
                        varies, thr, nl, pr = _exact_scan(vals, samples[start:end], y, w, C, crit,
                                                          p["min_samples_leaf"], node_counts, w_node, mwl)
                        cand = (pr, thr, nl, -1)
                    else:
                        hh, cc = self._histogram(f, samples, start, end, w, cache if after_parent else {},
                                                 sib_start, sib_end)
                        new_cache[f] = (hh, cc)
                        varies, b, thr, nl, pr = _hist_scan(hh, cc, m, self._edges(f), C, crit,
                                                            p["min_samples_leaf"], node_counts, w_node, mwl)
                        cand = (pr, thr, nl, b)
                    found = found or varies
                    if varies and cand[0] > best[0]:
                        best, best_f = cand, f
                if self.hist is not None:
                    cache = new_cache
            if best_f >= 0:
                left_s, right_s = [], []
                cl, cr = [0.0] * C, [0.0] * C
                wl = wr = 0.0
                for s in samples[start:end]:
                    if self.hist is not None:
                        goes_left = int(self.hist["bins"][best_f, s]) <= best[3]
                    else:
                        goes_left = float(self.X[best_f, s]) <= best[1]
                    if goes_left:
                        left_s.append(s)
                        cl[y[s]] += w[s]
                        wl += w[s]
                    else:
                        right_s.append(s)
                        cr[y[s]] += w[s]
                        wr += w[s]
                samples[start:end] = left_s + right_s
                nl, nr = len(left_s), len(right_s)
                imp_l, imp_r = impurity(cl, wl, crit), impurity(cr, wr, crit)
                gain = imp - (wl / w_node) * imp_l - (wr / w_node) * imp_r
                improvement = (w_node / w_root) * gain
                if ((p["min_info_gain"] > 0.0 and gain < p["min_info_gain"])
                        or improvement + EPSILON < p["min_impurity_decrease"]):
                    best_f = -1
                else:
                    importance[best_f] += w_node * imp - wl * imp_l - wr * imp_r
                    left = len(feature)
                    feature[node], threshold[node], child[node] = best_f, best[1], left
                    feature += [-1, -1]
                    threshold += [0.0, 0.0]
                    child += [0, 0]
                    le = (start, start + nl, left, depth + 1)
                    re = (start + nl, end, left + 1, depth + 1)
                    if nl >= nr:
                        stack.append((*re, 0, 0, False))
                        stack.append((*le, re[0], re[1], True))
                    else:
                        stack.append((*le, 0, 0, False))
                        stack.append((*re, le[0], le[1], True))
            if best_f < 0:
                feature[node] = -1
                child[node] = len(value)
                value.append([float(np.float32(c / w_node)) if w_node > 0.0 else 0.0 for c in node_counts])
        feature, threshold, child = _breadth_first(feature, threshold, child)
        return {"feature": feature, "threshold": threshold, "child": child, "value": value, "importance": importance}

    def _edges(self, f: int) -> np.ndarray:
        h = self.hist
        assert h is not None
        return h["split_values"][h["split_offsets"][f]:h["split_offsets"][f + 1]]

    def _accumulate(self, f: int, samples: list[int], start: int, end: int, w: list[float]) -> tuple[list[float],
                                                                                                     list[int]]:
        assert self.hist is not None
        C = self.p["n_classes"]
        nb = int(self.hist["n_bins"][f])
        hist = [0.0] * (nb * C)
        counts = [0] * nb
        col = self.hist["bins"][f]
        for s in samples[start:end]:
            b = int(col[s])
            hist[b * C + self.y[s]] += w[s]
            counts[b] += 1
        return hist, counts

    def _histogram(self, f: int, samples: list[int], start: int, end: int, w: list[float],
                   parent: dict[int, tuple[list[float], list[int]]], sib_start: int,
                   sib_end: int) -> tuple[list[float], list[int]]:
        if f in parent:
            sh, sc = self._accumulate(f, samples, sib_start, sib_end, w)
            ph, pc = parent[f]
            return [a - b for a, b in zip(ph, sh)], [a - b for a, b in zip(pc, sc)]
        return self._accumulate(f, samples, start, end, w)


def build_forest(X_cols: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, counts: np.ndarray,
                 class_weight: np.ndarray, seeds: np.ndarray, n_classes: int, criterion: int | str = "gini",
                 max_depth: int = -1, min_samples_split: int = 2, min_samples_leaf: int = 1,
                 min_weight_fraction_leaf: float = 0.0, min_impurity_decrease: float = 0.0,
                 min_info_gain: float = 0.0, max_features: int = 1, n_threads: int = 1,
                 bins: np.ndarray | None = None, n_bins: np.ndarray | None = None,
                 split_values: np.ndarray | None = None,
                 split_offsets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Build ``len(seeds)`` trees; the packed arrays of csrc's ``build_forest``.

    X_cols: float32 ``(n_features, n_samples)``; y: int class ids; counts: ``(n_trees, n)`` in-bag
    counts; class_weight: ``(n_trees, n_classes)``; seeds: uint64 per tree. Sample weight of
    sample i in tree t: ``counts[t, i] * sample_weight[i] * class_weight[t, y[i]]``. Histogram
    mode when ``bins`` (uint8 ``(n_features, n)``) is given with ``n_bins``, ``split_values``
    and ``split_offsets``. ``n_threads`` is accepted for signature parity and ignored.

    Returns feature (int32, -1 at leaves), threshold (float32), child (int32: left child, the
    right one follows it; at a leaf its row in value), value (float32 class fractions per leaf),
    node_offsets / leaf_offsets (int64, per tree) and importance (float64 ``(n_trees, n_features)``).
    """
    del n_threads
    X_cols = np.asarray(X_cols, dtype=np.float32)
    yy = [int(c) for c in y]
    params = dict(n_classes=int(n_classes), criterion=criterion, max_depth=int(max_depth),
                  min_samples_split=int(min_samples_split), min_samples_leaf=int(min_samples_leaf),
                  min_weight_fraction_leaf=float(min_weight_fraction_leaf),
                  min_impurity_decrease=float(min_impurity_decrease), min_info_gain=float(min_info_gain),
                  max_features=int(max_features))
    hist = None
    if bins is not None:
        hist = {"bins": np.asarray(bins), "n_bins": np.asarray(n_bins), "split_values": np.asarray(split_values),
                "split_offsets": np.asarray(split_offsets)}
    builder = _TreeBuilder(X_cols, yy, params, hist)
    trees = [builder.build(counts[t], sample_weight, class_weight[t], int(seeds[t])) for t in range(len(seeds))]
    node_offsets = np.cumsum([0] + [len(t["feature"]) for t in trees]).astype(np.int64)
    leaf_offsets = np.cumsum([0] + [len(t["value"]) for t in trees]).astype(np.int64)
    value = [v for t in trees for v in t["value"]]
    return {
        "feature": np.asarray([v for t in trees for v in t["feature"]], dtype=np.int32),
        "threshold": np.asarray([v for t in trees for v in t["threshold"]], dtype=np.float32),
        "child": np.asarray([v for t in trees for v in t["child"]], dtype=np.int32),
        "value": np.asarray(value, dtype=np.float32).reshape(len(value), int(n_classes)),
        "node_offsets": node_offsets,
        "leaf_offsets": leaf_offsets,
        "importance": np.asarray([t["importance"] for t in trees], dtype=np.float64).reshape(len(trees), -1),
    }


def _check_offsets(name: str, off: np.ndarray, end: int, exact: bool) -> None:
    head = "node_offsets / leaf_offsets must increase and stay inside the arrays: "
    if off[0] != 0:
        raise ValueError(f"{head}{name}[0] = {int(off[0])}, expected 0")
    step = np.flatnonzero(off[1:] <= off[:-1])  # compared, not subtracted: no int64 wrap-around
    if step.size:
        t = int(step[0])
        raise ValueError(f"{head}{name}[{t + 1}] = {int(off[t + 1])} is not above {name}[{t}] = {int(off[t])}")
    last = int(off[-1])
    if (last != end) if exact else (last > end):
        want = "the number of nodes, " if exact else "at most the number of value rows, "
        raise ValueError(f"{head}{name}[{off.shape[0] - 1}] = {last}, expected {want}{end}")


def check_trees(feature: np.ndarray, threshold: np.ndarray, child: np.ndarray, n_leaf_rows: int,
                node_offsets: np.ndarray, leaf_offsets: np.ndarray, n_features: int) -> None:
    """Raise ``ValueError`` naming the first bad entry unless the packed arrays describe trees:
    offsets strictly increasing from 0 to the array lengths, every internal node's children after
    it inside its tree, every leaf (feature -1) naming a value row of its tree, every split feature
    below ``n_features``. (A cycle would make prediction loop forever; an index outside would read
    outside the arrays.) The C++ check (csrc/forest_predict.cpp) raises the same messages."""
    feature = np.asarray(feature).astype(np.int64)
    child = np.asarray(child).astype(np.int64)
    no, lo = np.asarray(node_offsets).astype(np.int64), np.asarray(leaf_offsets).astype(np.int64)
    n = feature.shape[0]
    if feature.ndim != 1 or np.shape(threshold) != (n,) or child.shape != (n,):
        raise ValueError("node arrays must be 1-D of one length")
    if no.ndim != 1 or no.shape != lo.shape or no.shape[0] < 2:
        raise ValueError("node_offsets and leaf_offsets must have n_trees + 1 entries, n_trees >= 1")
    _check_offsets("node_offsets", no, n, exact=True)
    _check_offsets("leaf_offsets", lo, int(n_leaf_rows), exact=False)
    tree = np.repeat(np.arange(no.shape[0] - 1), np.diff(no))
    local = np.arange(n) - no[tree]
    size, leaves = np.diff(no)[tree], np.diff(lo)[tree]
    ok_inner = (feature < n_features) & (child > local) & (child + 1 < size)
    ok_leaf = (feature == -1) & (child >= 0) & (child < leaves)
    bad = np.flatnonzero(~np.where(feature >= 0, ok_inner, ok_leaf))
    if not bad.size:
        return
    i = int(bad[0])
    t, k, f, c = int(tree[i]), int(local[i]), int(feature[i]), int(child[i])
    if f < -1:
        raise ValueError(f"node arrays do not describe trees: feature[{i}] = {f}: must be -1 at a leaf or a feature "
                         f"index in [0, {n_features})")
    if f >= n_features:
        raise ValueError(f"X has {n_features} features, but a node splits on feature {f} (feature[{i}])")
    if f >= 0:
        raise ValueError(f"node arrays do not describe trees: child[{i}] = {c}: the children of split node {k} of tree "
                         f"{t} must be local nodes in ({k}, {int(size[i]) - 1}) (a child outside its tree or before "
                         "its parent)")
    raise ValueError(f"node arrays do not describe trees: child[{i}] = {c}: leaf {k} of tree {t} must name a value "
                     f"row in [0, {int(leaves[i])}) (a leaf row outside the tree's rows)")


def predict_proba(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, child: np.ndarray, value: np.ndarray,
                  node_offsets: np.ndarray, leaf_offsets: np.ndarray, n_threads: int = 1,
                  inbag: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean over trees of the class fractions of the leaf each row reaches (``x <= threshold``
    goes left). With ``inbag`` ``(n_trees, n)``, tree t skips row i where ``inbag[t, i] > 0``
    (out-of-bag). Returns ``(proba float64 (n, n_classes), trees used per row int64)``."""
    del n_threads
    X = np.asarray(X, dtype=np.float32)
    check_trees(feature, threshold, child, value.shape[0], node_offsets, leaf_offsets, X.shape[1])
    n, C = X.shape[0], value.shape[1]
    out = np.zeros((n, C), dtype=np.float64)
    used = np.zeros(n, dtype=np.int64)
    for t in range(len(node_offsets) - 1):
        no, lo = int(node_offsets[t]), int(leaf_offsets[t])
        for r in range(n):
            if inbag is not None and inbag[t, r] > 0:
                continue
            k = 0
            while feature[no + k] >= 0:
                k = int(child[no + k]) + (1 if X[r, feature[no + k]] > threshold[no + k] else 0)
            out[r] += value[lo + child[no + k]].astype(np.float64)
            used[r] += 1
    nz = used > 0
    out[nz] /= used[nz, None]
    return out, used
