"""The forest's ops: exact and histogram split search, Spark's findSplits, tree building and
prediction. References: ``pyimpl.forest``; C++: ``csrc/forest*.cpp`` (GIL released, trees and
prediction rows in parallel std::threads). Each op's samples feed the registry's parity tests:
whole trees are compared node for node, because both sides consume the same bootstrap counts,
class weights and per-tree splitmix64 seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from modelkernels.kernels.native import native, native_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.pyimpl import forest as ref

CRITERIA = ref.CRITERIA
# Proxies and importances are sums in the same order on both sides; the slack only covers a
# libm that rounds log2 differently from Python's math.log2.
_TOL = {"*": Tolerance(atol=1e-12, rtol=1e-12)}
_F64 = lambda dt: "float64"  # float32 inputs are exact in float64; the references cast back


def _threads(n_threads: Any) -> int:
    """``n_threads`` checked and clamped to [1, cores]: more threads than cores only add start-up cost."""
    if not isinstance(n_threads, (int, np.integer)) or isinstance(n_threads, bool):
        raise ValueError(f"n_threads={n_threads!r}: must be an int (values above the core count run on every core)")
    return max(1, min(int(n_threads), os.cpu_count() or 1))


def _criterion(criterion: Any) -> int:
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion={criterion!r}: supported {', '.join(CRITERIA)}")
        return CRITERIA[criterion]
    return int(criterion)


# ---------------------------------------------------------------------------------------------
# Sample data


def _node(m: int, n_classes: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        x = rng.standard_normal(m)
    elif kind == "few":
        x = rng.integers(0, 4, m).astype(np.float64)
    elif kind == "constant":
        x = np.full(m, 2.5)
    else:
        raise ValueError(f"kind={kind!r}: expected continuous, few or constant")
    y = ((x > 0.3) + (rng.random(m) < 0.25)).astype(np.int32) % n_classes
    w = rng.integers(1, 4, m).astype(np.float64)
    return x.astype(np.float32), y, w


def _split_sample(m: int, n_classes: int, kind: str, *, criterion: str = "gini", min_samples_leaf: int = 1,
                  min_weight_leaf: float = 0.0, seed: int = 0, hist: bool = False) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        x, y, w = _node(m, n_classes, kind, seed)
        kw = dict(criterion=criterion, min_samples_leaf=min_samples_leaf, min_weight_leaf=min_weight_leaf)
        if hist:
            edges = np.unique(np.quantile(x, [0.2, 0.4, 0.6, 0.8]).astype(np.float32)) if m else np.zeros(0, np.float32)
            bins = np.searchsorted(edges, x, side="left").astype(np.uint8)
            return (bins, y, w, edges, n_classes), kw
        return (x, y, w, n_classes), kw

    name = f"m={m} C={n_classes} {kind} {criterion} msl={min_samples_leaf} mwl={min_weight_leaf}"
    return Sample(name, make)


SPLIT_SAMPLES = [
    _split_sample(0, 2, "continuous"),
    _split_sample(1, 2, "continuous"),
    _split_sample(37, 2, "continuous", seed=1),
    _split_sample(101, 3, "continuous", criterion="entropy", seed=2),
    _split_sample(129, 3, "few", seed=3),
    _split_sample(33, 2, "constant"),
    _split_sample(77, 2, "continuous", min_samples_leaf=30, seed=4),
    _split_sample(63, 3, "continuous", min_weight_leaf=40.0, criterion="entropy", seed=5),
]
HIST_SAMPLES = [
    _split_sample(0, 2, "continuous", hist=True),
    _split_sample(45, 2, "continuous", hist=True, seed=6),
    _split_sample(99, 3, "few", criterion="entropy", hist=True, seed=7),
    _split_sample(31, 2, "constant", hist=True),
    _split_sample(81, 3, "continuous", min_samples_leaf=25, hist=True, seed=8),
]


def _bad(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Callable[[], Any]:
    return lambda: (args, kwargs or {})


def _check_split_args(y: np.ndarray, w: np.ndarray, m: int, n_classes: int) -> None:
    if y.shape != (m,) or w.shape != (m,):
        raise ValueError(f"y and w must have shape ({m},) like the values, got {y.shape} and {w.shape}")
    if m and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"y must hold class ids in [0, n_classes={n_classes}), got {int(y.min())}..{int(y.max())}")


SPLIT_ERRORS = [
    ErrorSample("y out of range", _bad((np.zeros(3, np.float32), np.array([0, 1, 2], np.int32), np.ones(3), 2)),
                ValueError, "n_classes=2"),
    ErrorSample("length mismatch", _bad((np.zeros(3, np.float32), np.zeros(2, np.int32), np.ones(3), 2)),
                ValueError, "shape (3,)"),
    ErrorSample("unknown criterion", _bad((np.zeros(3, np.float32), np.zeros(3, np.int32), np.ones(3), 2),
                                          {"criterion": "mse"}), ValueError, "criterion='mse'"),
]


# ---------------------------------------------------------------------------------------------
# best_split_exact


def _best_split_exact_reference(values: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int,
                                criterion: str = "gini", min_samples_leaf: int = 1,
                                min_weight_leaf: float = 0.0) -> tuple[bool, float, int, float]:
    _criterion(criterion)
    _check_split_args(np.asarray(y), np.asarray(w), len(values), n_classes)
    return ref.best_split_exact(values, y, w, n_classes, criterion, min_samples_leaf, min_weight_leaf)


define_op("best_split_exact", reference=_best_split_exact_reference, dtypes=("float32",), samples=SPLIT_SAMPLES,
          error_samples=SPLIT_ERRORS, reference_dtype=_F64,
          doc="best threshold of one feature for one node: sort (hybrid sort), scan distinct-value boundaries")


@register_kernel("best_split_exact", "native", devices=("cpu",), dtypes=("float32",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def best_split_exact_native(values: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int,
                            criterion: str = "gini", min_samples_leaf: int = 1,
                            min_weight_leaf: float = 0.0) -> tuple[bool, float, int, float]:
    """C++ split search (csrc/forest.cpp exact_feature_split): hybrid sort, then one scan."""
    crit = _criterion(criterion)
    y, w = np.asarray(y, np.int32), np.asarray(w, np.float64)
    _check_split_args(y, w, len(values), n_classes)
    varies, thr, nl, pr = native().best_split_exact(np.asarray(values, np.float32), y, w, n_classes, crit,
                                                   min_samples_leaf, min_weight_leaf)
    return bool(varies), float(thr), int(nl), float(pr)


def best_split_exact(values: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int, criterion: str = "gini",
                     min_samples_leaf: int = 1, min_weight_leaf: float = 0.0,
                     backend: str | None = None) -> tuple[bool, float, int, float]:
    """Best split of one node on one feature: ``(varies, threshold, n_left, proxy)``; see
    ``pyimpl.forest.best_split_exact``."""
    return call("best_split_exact", values, y, w, n_classes, criterion=criterion, min_samples_leaf=min_samples_leaf,
                min_weight_leaf=min_weight_leaf, backend=backend)


# ---------------------------------------------------------------------------------------------
# best_split_hist


def _check_hist_args(bins: np.ndarray, edges: np.ndarray) -> None:
    n_bins = len(edges) + 1
    if n_bins > 256:
        raise ValueError(f"edges has {len(edges)} entries: at most 255 (bins are uint8: at most 256 bins)")
    b = np.asarray(bins)
    if b.size and int(b.max()) >= n_bins:
        i = int(np.argmax(b >= n_bins))
        raise ValueError(f"bins[{i}] = {int(b[i])}: must be in [0, len(edges) + 1 = {n_bins})")


def _best_split_hist_reference(bins: np.ndarray, y: np.ndarray, w: np.ndarray, edges: np.ndarray, n_classes: int,
                               criterion: str = "gini", min_samples_leaf: int = 1,
                               min_weight_leaf: float = 0.0) -> tuple[bool, int, float, int, float]:
    _criterion(criterion)
    _check_split_args(np.asarray(y), np.asarray(w), len(bins), n_classes)
    _check_hist_args(bins, edges)
    return ref.best_split_hist(bins, y, w, edges, n_classes, criterion, min_samples_leaf, min_weight_leaf)


HIST_ERRORS = [
    ErrorSample("y out of range", _bad((np.zeros(3, np.uint8), np.array([0, 1, 2], np.int32), np.ones(3),
                                        np.zeros(1, np.float32), 2)), ValueError, "n_classes=2"),
    ErrorSample("unknown criterion", _bad((np.zeros(3, np.uint8), np.zeros(3, np.int32), np.ones(3),
                                           np.zeros(1, np.float32), 2), {"criterion": "mse"}), ValueError, "'mse'"),
    ErrorSample("bin past the edges", _bad((np.array([0, 2, 1], np.uint8), np.zeros(3, np.int32), np.ones(3),
                                            np.zeros(1, np.float32), 2)), ValueError, "bins[1] = 2"),
    ErrorSample("too many edges", _bad((np.zeros(3, np.uint8), np.zeros(3, np.int32), np.ones(3),
                                        np.arange(256, dtype=np.float32), 2)), ValueError, "at most 255"),
]

define_op("best_split_hist", reference=_best_split_hist_reference, dtypes=("uint8",), samples=HIST_SAMPLES,
          error_samples=HIST_ERRORS, reference_dtype=_F64,
          doc="best bin boundary of one binned feature for one node, from its class histogram")


@register_kernel("best_split_hist", "native", devices=("cpu",), dtypes=("uint8",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def best_split_hist_native(bins: np.ndarray, y: np.ndarray, w: np.ndarray, edges: np.ndarray, n_classes: int,
                           criterion: str = "gini", min_samples_leaf: int = 1,
                           min_weight_leaf: float = 0.0) -> tuple[bool, int, float, int, float]:
    """C++ histogram split search (csrc/forest.cpp histogram_feature_split)."""
    crit = _criterion(criterion)
    y, w = np.asarray(y, np.int32), np.asarray(w, np.float64)
    _check_split_args(y, w, len(bins), n_classes)
    _check_hist_args(bins, edges)
    varies, b, thr, nl, pr = native().best_split_hist(np.asarray(bins, np.uint8), y, w, np.asarray(edges, np.float32),
                                                      n_classes, crit, min_samples_leaf, min_weight_leaf)
    return bool(varies), int(b), float(thr), int(nl), float(pr)


def best_split_hist(bins: np.ndarray, y: np.ndarray, w: np.ndarray, edges: np.ndarray, n_classes: int,
                    criterion: str = "gini", min_samples_leaf: int = 1, min_weight_leaf: float = 0.0,
                    backend: str | None = None) -> tuple[bool, int, float, int, float]:
    """Best split of one binned feature: ``(varies, bin, threshold, n_left, proxy)``; see
    ``pyimpl.forest.best_split_hist``."""
    return call("best_split_hist", bins, y, w, edges, n_classes, criterion=criterion,
                min_samples_leaf=min_samples_leaf, min_weight_leaf=min_weight_leaf, backend=backend)


# ---------------------------------------------------------------------------------------------
# find_splits


def _find_splits_sample(n_distinct: int, max_bins: int, seed: int = 0) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        rng = np.random.default_rng(seed)
        distinct = np.unique(rng.standard_normal(n_distinct).astype(np.float32))
        counts = rng.integers(1, 20, distinct.shape[0]).astype(np.float64)
        return (distinct, counts, max_bins), {}

    return Sample(f"distinct={n_distinct} max_bins={max_bins}", make)


def _check_find_splits(distinct: np.ndarray, counts: np.ndarray, max_bins: int) -> None:
    if not isinstance(max_bins, (int, np.integer)) or isinstance(max_bins, bool) or max_bins < 2:
        raise ValueError(f"max_bins={max_bins!r}: must be an integer >= 2")
    if np.shape(distinct) != np.shape(counts) or np.ndim(distinct) != 1:
        raise ValueError(f"distinct and counts must be 1-D of one length, got {np.shape(distinct)} and "
                         f"{np.shape(counts)}")


def _find_splits_reference(distinct: np.ndarray, counts: np.ndarray, max_bins: int) -> np.ndarray:
    _check_find_splits(distinct, counts, max_bins)
    return ref.find_splits(distinct, counts, max_bins)


define_op("find_splits", reference=_find_splits_reference, dtypes=("float32",),
          samples=[_find_splits_sample(0, 32), _find_splits_sample(1, 32), _find_splits_sample(20, 32, 1),
                   _find_splits_sample(31, 32, 2), _find_splits_sample(500, 32, 3),
                   _find_splits_sample(1000, 7, 4), _find_splits_sample(300, 2, 5)],
          error_samples=[ErrorSample("max_bins=1", _bad((np.zeros(2, np.float32), np.ones(2), 1)), ValueError,
                                     "max_bins=1"),
                         ErrorSample("length mismatch", _bad((np.zeros(2, np.float32), np.ones(3), 8)), ValueError,
                                     "one length")],
          reference_dtype=_F64, doc="Spark's findSplits: quantile thresholds of one feature (max_bins - 1 at most)")


@register_kernel("find_splits", "native", devices=("cpu",), dtypes=("float32",), priority=10,
                 available=native_unavailable)
def find_splits_native(distinct: np.ndarray, counts: np.ndarray, max_bins: int) -> np.ndarray:
    """C++ findSplits (csrc/forest.cpp)."""
    _check_find_splits(distinct, counts, max_bins)
    return np.asarray(native().find_splits(np.asarray(distinct, np.float32), np.asarray(counts, np.float64),
                                           int(max_bins)))


def find_splits(distinct: np.ndarray, counts: np.ndarray, max_bins: int, backend: str | None = None) -> np.ndarray:
    """Spark's findSplits thresholds (float32) from sorted distinct values and their counts."""
    return call("find_splits", distinct, counts, max_bins, backend=backend)


# ---------------------------------------------------------------------------------------------
# build_forest and forest_predict_proba

_BUILD_KEYS = ("n_classes", "criterion", "max_depth", "min_samples_split", "min_samples_leaf",
               "min_weight_fraction_leaf", "min_impurity_decrease", "min_info_gain", "max_features", "n_threads")


def _forest_inputs(n: int, n_features: int, n_classes: int, n_trees: int, seed: int, *, few: bool = False,
                   constant: bool = False, class_weight: tuple[float, ...] | None = None,
                   sample_weight: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features))
    if few:
        X[:, 0] = rng.integers(0, 3, n)
        X[:, 1] = rng.integers(0, 5, n)
    if constant:
        X[:, -1] = 1.25
    logits = X[:, :2] @ rng.standard_normal((2, n_classes)) + 0.7 * rng.standard_normal((n, n_classes))
    y = logits.argmax(1).astype(np.int32)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_trees)]).astype(np.int32)
    cw = np.ones((n_trees, n_classes)) if class_weight is None else np.tile(class_weight, (n_trees, 1))
    sw = rng.integers(0, 3, n).astype(np.float64) if sample_weight else np.ones(n)
    return dict(X_cols=np.ascontiguousarray(X.T, dtype=np.float32), y=y, sample_weight=sw, counts=counts,
                class_weight=np.asarray(cw, dtype=np.float64),
                seeds=rng.integers(0, 2**64, n_trees, dtype=np.uint64, endpoint=False))


def binned(X_cols: np.ndarray, max_bins: int, seed: int = 0, backend: str | None = None) -> dict[str, np.ndarray]:
    """Histogram inputs of ``build_forest``: per feature, Spark's findSplits on the distinct
    values of a row sample of ``max(max_bins**2, 10000)`` rows (Spark's size), then each value's
    bin ``= number of split values < x`` (so ``x <= split_values[b]`` iff bin <= b)."""
    n_features, n = X_cols.shape
    rng = np.random.default_rng(seed)
    k = max(max_bins * max_bins, 10000)
    rows = np.sort(rng.choice(n, k, replace=False)) if n > k else slice(None)
    bins = np.empty((n_features, n), dtype=np.uint8)
    values, n_bins, offsets = [], np.empty(n_features, np.int32), np.zeros(n_features + 1, np.int64)
    for f in range(n_features):
        distinct, cnt = np.unique(X_cols[f, rows], return_counts=True)
        s = find_splits(distinct.astype(np.float32), cnt.astype(np.float64), max_bins, backend=backend)
        values.append(s)
        n_bins[f] = s.shape[0] + 1
        offsets[f + 1] = offsets[f] + s.shape[0]
        bins[f] = np.searchsorted(s, X_cols[f], side="left")
    split_values = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    return dict(bins=bins, n_bins=n_bins, split_values=split_values, split_offsets=offsets)


def _forest_sample(name: str, n: int, n_features: int, n_classes: int, n_trees: int, *, seed: int = 0,
                   hist_bins: int | None = None, data: dict[str, Any] | None = None, **params: Any) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        d = _forest_inputs(n, n_features, n_classes, n_trees, seed, **(data or {}))
        kw: dict[str, Any] = dict(n_classes=n_classes, criterion="gini", max_depth=-1, min_samples_split=2,
                                  min_samples_leaf=1, min_weight_fraction_leaf=0.0, min_impurity_decrease=0.0,
                                  min_info_gain=0.0, max_features=max(1, int(np.sqrt(n_features))), n_threads=2)
        kw.update(params)
        if hist_bins is not None:
            kw.update(binned(d["X_cols"], hist_bins, seed, backend="reference"))
        return (d.pop("X_cols"),), {**d, **kw}

    return Sample(name, make)


FOREST_SAMPLES = [
    _forest_sample("n=61 F=5 C=2 exact", 61, 5, 2, 3, seed=1),
    _forest_sample("n=97 F=7 C=3 exact entropy depth 4", 97, 7, 3, 2, seed=2, criterion="entropy", max_depth=4),
    _forest_sample("n=83 F=6 C=3 exact few-distinct + constant columns", 83, 6, 3, 3, seed=3,
                   data=dict(few=True, constant=True)),
    _forest_sample("n=75 F=4 C=2 exact msl=5 mss=12 all features", 75, 4, 2, 2, seed=4, min_samples_leaf=5,
                   min_samples_split=12, max_features=4),
    _forest_sample("n=90 F=5 C=3 exact class/sample weights, min_weight_fraction", 90, 5, 3, 2, seed=5,
                   data=dict(class_weight=(0.5, 2.0, 1.5), sample_weight=True), min_weight_fraction_leaf=0.05),
    _forest_sample("n=70 F=5 C=2 exact minInfoGain 0.05 min_impurity_decrease 0.01", 70, 5, 2, 2, seed=6,
                   min_info_gain=0.05, min_impurity_decrease=0.01),
    _forest_sample("n=101 F=6 C=3 hist 8 bins", 101, 6, 3, 3, seed=7, hist_bins=8),
    _forest_sample("n=88 F=5 C=2 hist 4 bins all features (subtraction)", 88, 5, 2, 2, seed=8, hist_bins=4,
                   max_features=5),
    _forest_sample("n=79 F=6 C=3 hist 16 bins few-distinct entropy", 79, 6, 3, 2, seed=9, hist_bins=16,
                   criterion="entropy", data=dict(few=True, constant=True)),
    _forest_sample("n=1 F=3 C=2 single sample", 1, 3, 2, 2, seed=10),
    _forest_sample("n=50 F=4 C=2 max_depth 0", 50, 4, 2, 1, seed=11, max_depth=0),
]


def _check_build(X_cols: np.ndarray, kw: dict[str, Any]) -> None:
    if not isinstance(X_cols, np.ndarray) or X_cols.ndim != 2:
        raise ValueError(f"X_cols must be a 2-D array (n_features, n_samples), got {type(X_cols).__name__} "
                         f"of shape {np.shape(X_cols)}")
    n_features, n = X_cols.shape
    if np.shape(kw["y"]) != (n,):
        raise ValueError(f"y must have shape ({n},), got {np.shape(kw['y'])}")
    if not 1 <= int(kw["max_features"]) <= n_features:
        raise ValueError(f"max_features={kw['max_features']}: must be in [1, n_features={n_features}]")
    _criterion(kw["criterion"])
    _threads(kw["n_threads"])
    y = np.asarray(kw["y"])
    bad = np.flatnonzero((y < 0) | (y >= kw["n_classes"]))
    if bad.size:
        raise ValueError(f"y[{bad[0]}] = {y[bad[0]]}: must be in [0, n_classes)")
    if kw.get("bins") is not None:
        _check_bins(np.asarray(kw["bins"]), np.asarray(kw["n_bins"]), n_features, n)


def _check_bins(bins: np.ndarray, n_bins: np.ndarray, n_features: int, n: int) -> None:
    """Every bin of feature f below ``n_bins[f]`` (the histograms have ``n_bins[f]`` slots)."""
    if bins.shape != (n_features, n) or n_bins.shape != (n_features,):
        raise ValueError(f"bins must be (n_features, n_samples) = {(n_features, n)} and n_bins (n_features,), got "
                         f"{bins.shape} and {n_bins.shape}")
    if n_features and n:
        bad = np.argwhere(bins.astype(np.int64) >= n_bins.astype(np.int64)[:, None])
        if bad.size:
            f, i = (int(v) for v in bad[0])
            raise ValueError(f"bins[{f}, {i}] = {int(bins[f, i])}: feature {f} has n_bins = {int(n_bins[f])}, so its "
                             f"bins must be in [0, {int(n_bins[f])})")


def _build_forest_reference(X_cols: np.ndarray, **kw: Any) -> dict[str, np.ndarray]:
    _check_build(X_cols, kw)
    return ref.build_forest(X_cols, **kw)


_BUILD_ERRORS_BASE = dict(y=np.zeros(4, np.int32), sample_weight=np.ones(4), counts=np.ones((1, 4), np.int32),
                          class_weight=np.ones((1, 2)), seeds=np.zeros(1, np.uint64), n_classes=2, criterion="gini",
                          max_depth=-1, min_samples_split=2, min_samples_leaf=1, min_weight_fraction_leaf=0.0,
                          min_impurity_decrease=0.0, min_info_gain=0.0, max_features=1, n_threads=1)

_BAD_BINS = dict(bins=np.array([[0, 1, 0, 1], [0, 1, 1, 200]], np.uint8), n_bins=np.array([2, 2], np.int32),
                 split_values=np.zeros(2, np.float32), split_offsets=np.array([0, 1, 2], np.int64))

define_op("build_forest", reference=_build_forest_reference, dtypes=("float32",), samples=FOREST_SAMPLES,
          error_samples=[
              ErrorSample("1-D X", _bad((np.zeros(4, np.float32),), dict(_BUILD_ERRORS_BASE)), ValueError, "2-D"),
              ErrorSample("max_features too large", _bad((np.zeros((2, 4), np.float32),),
                                                         {**_BUILD_ERRORS_BASE, "max_features": 3}),
                          ValueError, "max_features=3"),
              ErrorSample("y length", _bad((np.zeros((2, 4), np.float32),),
                                           {**_BUILD_ERRORS_BASE, "y": np.zeros(3, np.int32)}), ValueError, "(4,)"),
              ErrorSample("y past n_classes", _bad((np.zeros((2, 4), np.float32),),
                                                   {**_BUILD_ERRORS_BASE, "y": np.array([0, 1, 2, 0], np.int32)}),
                          ValueError, "y[2] = 2: must be in [0, n_classes)"),
              ErrorSample("bin past n_bins", _bad((np.zeros((2, 4), np.float32),),
                                                  {**_BUILD_ERRORS_BASE, **_BAD_BINS}),
                          ValueError, "bins[1, 3] = 200: feature 1 has n_bins = 2"),
              ErrorSample("n_threads not an int", _bad((np.zeros((2, 4), np.float32),),
                                                       {**_BUILD_ERRORS_BASE, "n_threads": 2.5}),
                          ValueError, "n_threads=2.5"),
          ],
          reference_dtype=_F64, doc="grow trees from bootstrap counts and seeds: packed node arrays")


@register_kernel("build_forest", "native", devices=("cpu",), dtypes=("float32",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def build_forest_native(X_cols: np.ndarray, **kw: Any) -> dict[str, np.ndarray]:
    """C++ trees (csrc/forest.cpp), in parallel std::threads with the GIL released."""
    _check_build(X_cols, kw)
    hist = {k: kw.pop(k) for k in ("bins", "n_bins", "split_values", "split_offsets") if k in kw}
    data = [kw.pop(k) for k in ("y", "sample_weight", "counts", "class_weight", "seeds")]
    y, sw, counts, cw, seeds = data
    args = [kw[k] for k in _BUILD_KEYS]
    args[1] = _criterion(args[1])
    args[-1] = _threads(args[-1])
    out = native().build_forest(np.ascontiguousarray(X_cols, np.float32), np.asarray(y, np.int32),
                                np.asarray(sw, np.float64), np.asarray(counts, np.int32),
                                np.asarray(cw, np.float64), np.asarray(seeds, np.uint64), *args, **hist)
    return dict(out)


def build_forest(X_cols: np.ndarray, backend: str | None = None, **kw: Any) -> dict[str, np.ndarray]:
    """Grow one tree per seed; see ``pyimpl.forest.build_forest`` for the arguments and result."""
    return call("build_forest", X_cols, backend=backend, **kw)


def _predict_sample(name: str, n_fit: int, n_predict: int, n_features: int, n_classes: int, n_trees: int, seed: int,
                    oob: bool = False) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        d = _forest_inputs(n_fit, n_features, n_classes, n_trees, seed)
        kw: dict[str, Any] = dict(n_classes=n_classes, criterion="gini", max_depth=-1, min_samples_split=2,
                                  min_samples_leaf=1,
                  min_weight_fraction_leaf=0.0, min_impurity_decrease=0.0, min_info_gain=0.0,
                  max_features=max(1, int(np.sqrt(n_features))), n_threads=1)
        model = ref.build_forest(d["X_cols"], d["y"], d["sample_weight"], d["counts"], d["class_weight"], d["seeds"],
                                 **kw)
        X = np.random.default_rng(seed + 100).standard_normal((n_predict, n_features)).astype(np.float32)
        if oob:
            X = np.ascontiguousarray(d["X_cols"].T)
        args = (X, model["feature"], model["threshold"], model["child"], model["value"], model["node_offsets"],
                model["leaf_offsets"])
        return args, {"n_threads": 2, "inbag": d["counts"] if oob else None}

    return Sample(name, make)


def _check_predict(X: np.ndarray, n_threads: Any) -> None:
    """X's shape and the thread count; the trees are checked by the backend
    (``pyimpl.forest.check_trees`` or C++, with the same messages)."""
    _threads(n_threads)
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got shape {np.shape(X)}")
    if X.shape[1] < 1:
        raise ValueError(f"X has {X.shape[1]} features; the trees need at least one")


def _predict_reference(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, child: np.ndarray,
                       value: np.ndarray, node_offsets: np.ndarray, leaf_offsets: np.ndarray, n_threads: int = 1,
                       inbag: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    _check_predict(X, n_threads)
    return ref.predict_proba(X, feature, threshold, child, value, node_offsets, leaf_offsets, n_threads, inbag)


_TINY_MODEL = (np.array([0, -1, -1], np.int32), np.array([0.5, 0, 0], np.float32), np.array([1, 0, 1], np.int32),
               np.array([[1, 0], [0, 1]], np.float32), np.array([0, 3], np.int64), np.array([0, 2], np.int64))


def _tiny(array: str, index: int, value: int) -> tuple[np.ndarray, ...]:
    """_TINY_MODEL with one entry of one array replaced."""
    names = ("feature", "threshold", "child", "value", "node_offsets", "leaf_offsets")
    arrays = [a.copy() for a in _TINY_MODEL]
    arrays[names.index(array)][index] = value
    return tuple(arrays)


_BAD_MODELS = [  # (name, array, index, value, message)
    ("child + 1 overflows int32", "child", 0, 2**31 - 1, "child[0] = 2147483647: the children of split node 0"),
    ("negative leaf offset", "leaf_offsets", 0, -2, "leaf_offsets[0] = -2, expected 0"),
    ("negative node offset", "node_offsets", 0, -(10**7), "node_offsets[0] = -10000000, expected 0"),
    ("offsets past the nodes", "node_offsets", 1, 4, "node_offsets[1] = 4, expected the number of nodes, 3"),
    ("leaf row outside the tree", "child", 2, 2, "child[2] = 2: leaf 2 of tree 0 must name a value row in [0, 2)"),
    ("feature below -1", "feature", 1, -5, "feature[1] = -5: must be -1 at a leaf"),
    ("split feature past X", "feature", 0, 1, "X has 1 features, but a node splits on feature 1 (feature[0])"),
]

define_op("forest_predict_proba", reference=_predict_reference, dtypes=("float32",),
          samples=[_predict_sample("fit 60, predict 37, F=5, C=3, 4 trees", 60, 37, 5, 3, 4, seed=1),
                   _predict_sample("fit 80, predict 0 rows", 80, 0, 4, 2, 2, seed=2),
                   _predict_sample("fit 70, predict 301 rows, F=6, C=2, 5 trees", 70, 301, 6, 2, 5, seed=3),
                   _predict_sample("out-of-bag: fit 50, F=4, C=3, 6 trees", 50, 0, 4, 3, 6, seed=4, oob=True)],
          error_samples=[ErrorSample("too few features", _bad((np.zeros((2, 0), np.float32), *_TINY_MODEL)),
                                     ValueError, "X has 0 features"),
                         ErrorSample("1-D X", _bad((np.zeros(3, np.float32), *_TINY_MODEL)), ValueError, "2-D"),
                         *[ErrorSample(name, _bad((np.zeros((2, 1), np.float32), *_tiny(array, index, bad))),
                                       ValueError, match)
                           for name, array, index, bad, match in _BAD_MODELS]],
          reference_dtype=_F64, doc="mean leaf class fractions over trees (optionally out-of-bag)")


@register_kernel("forest_predict_proba", "native", devices=("cpu",), dtypes=("float32",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def forest_predict_proba_native(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, child: np.ndarray,
                                value: np.ndarray, node_offsets: np.ndarray, leaf_offsets: np.ndarray,
                                n_threads: int = 1, inbag: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """C++ batch prediction: rows in parallel blocks, 8 rows descending each tree together."""
    _check_predict(X, n_threads)
    proba, used = native().predict_proba(np.ascontiguousarray(X, np.float32), feature, threshold, child, value,
                                         node_offsets, leaf_offsets, _threads(n_threads), inbag)
    return proba, used


def forest_predict_proba(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, child: np.ndarray,
                         value: np.ndarray, node_offsets: np.ndarray, leaf_offsets: np.ndarray, n_threads: int = 1,
                         inbag: np.ndarray | None = None, backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean class fractions over the packed trees; see ``pyimpl.forest.predict_proba``."""
    return call("forest_predict_proba", X, feature, threshold, child, value, node_offsets, leaf_offsets,
                n_threads=n_threads, inbag=inbag, backend=backend)
