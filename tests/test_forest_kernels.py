"""The forest's kernels beyond the registry's samples: the hybrid sort against numpy on random
inputs, split search against brute force, Spark's findSplits rules, histogram subtraction and
thread-count independence of whole forests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelkernels import kernels
from modelkernels.kernels.forest import ops
from modelkernels.kernels.native import native_unavailable
from modelkernels.pyimpl import forest as ref
from modelkernels.pyimpl import sort as sort_ref

needs_native = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))
BACKENDS = ["reference", pytest.param("native", marks=needs_native)]

values_strategy = st.sampled_from(["float32", "float64", "int32", "int64"]).flatmap(
    lambda dt: hnp.arrays(dt, st.integers(0, 300), elements=(
        (st.floats(-1e6, 1e6, width=32 if dt == "float32" else 64) | st.just(float("nan")))
        if dt.startswith("float")
        else st.integers(-(2**31), 2**31 - 1)))
)


@pytest.mark.parametrize("backend", BACKENDS)
@given(values=values_strategy)
def test_hybrid_sort_matches_numpy(backend: str, values: np.ndarray) -> None:
    out = values.copy()
    _, idx = kernels.hybrid_sort(out, return_indices=True, backend=backend)
    np.testing.assert_array_equal(out, np.sort(values))
    assert sorted(idx.tolist()) == list(range(values.shape[0]))  # a permutation...
    np.testing.assert_array_equal(values[idx], out)  # ...that carries each value with its index


@needs_native
@pytest.mark.parametrize("n", [17, 63, 64, 65, 1000, 4095, 4096, 20001])
@pytest.mark.parametrize("kind", ["random", "few", "equal", "sorted", "reversed"])
def test_hybrid_sort_layers(n: int, kind: str) -> None:
    """Every layer (insertion, introsort, 8-bit and 11-bit radix) and their boundaries."""
    from modelkernels.kernels.sort.ops import _values

    base = _values(n, "float32", kind, seed=n)
    base[::97] = -base[::97]  # negative values through the radix key map
    out = base.copy()
    _, idx = kernels.hybrid_sort(out, return_indices=True, backend="native")
    np.testing.assert_array_equal(out, np.sort(base))
    np.testing.assert_array_equal(base[idx], out)
    want = sort_ref.canonical_ties(np.sort(base), np.argsort(base, kind="stable"))
    np.testing.assert_array_equal(sort_ref.canonical_ties(out, idx), want)


@needs_native
def test_hybrid_sort_extremes_and_signed_zero() -> None:
    v = np.array([np.inf, -0.0, 0.0, -np.inf, np.nan, 3.0, -3.0, np.finfo(np.float64).max] * 20)
    out = v.copy()
    kernels.hybrid_sort(out, backend="native")
    np.testing.assert_array_equal(out, np.sort(v))
    i = np.array([2**63 - 1, -(2**63), 0, -1, 1] * 30, dtype=np.int64)
    out_i = i.copy()
    kernels.hybrid_sort(out_i, backend="native")
    np.testing.assert_array_equal(out_i, np.sort(i))


def _brute_force_split(x: np.ndarray, y: np.ndarray, w: np.ndarray, C: int, msl: int) -> float:
    """Best Gini proxy over all thresholds between distinct values (numpy, independent of pyimpl)."""
    best = -np.inf
    for t in np.unique(x)[:-1]:
        left = x <= t
        if left.sum() < msl or (~left).sum() < msl:
            continue
        cl = np.bincount(y[left], w[left], C)
        cr = np.bincount(y[~left], w[~left], C)
        best = max(best, (cl**2).sum() / cl.sum() + (cr**2).sum() / cr.sum())
    return best


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_best_split_exact_is_the_brute_force_optimum(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, C = 57, 3
    x = rng.integers(0, 9, m).astype(np.float32) + (rng.random(m) < 0.5)
    y = rng.integers(0, C, m).astype(np.int32)
    w = rng.integers(1, 4, m).astype(np.float64)
    varies, thr, nl, proxy = ops.best_split_exact(x, y, w, C, "gini", 3, backend=backend)
    assert varies
    assert proxy == pytest.approx(_brute_force_split(x, y, w, C, 3), rel=1e-12)
    assert nl == int((x <= thr).sum())
    assert x[x <= thr].max() < thr < x[x > thr].min() or thr == x[x <= thr].max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_best_split_exact_skips_ties_and_constant(backend: str) -> None:
    x = np.array([1, 1, 1, 2, 2, 2], np.float32)
    y = np.array([0, 0, 1, 1, 1, 1], np.int32)
    varies, thr, nl, _ = ops.best_split_exact(x, y, np.ones(6), 2, backend=backend)
    assert varies and thr == 1.5 and nl == 3  # never between two equal values
    varies, thr, nl, proxy = ops.best_split_exact(np.full(6, 3.0, np.float32), y, np.ones(6), 2, backend=backend)
    assert not varies and np.isnan(thr) and proxy == -np.inf
    # within 1e-7 two floats are one value (scikit-learn's FEATURE_THRESHOLD)
    a = np.float32(1e-3)
    near = np.array([a, np.nextafter(a, np.float32(1)), a, np.nextafter(a, np.float32(1))], np.float32)
    varies, *_ = ops.best_split_exact(near, y[:4], np.ones(4), 2, backend=backend)
    assert not varies


@pytest.mark.parametrize("backend", BACKENDS)
def test_find_splits_follows_spark(backend: str) -> None:
    d = np.array([1, 2, 4], np.float32)
    np.testing.assert_array_equal(ops.find_splits(d, np.ones(3), 32, backend=backend), [1.5, 3.0])
    many = np.arange(1000, dtype=np.float32)
    s = ops.find_splits(many, np.ones(1000), 5, backend=backend)
    assert s.shape[0] <= 4
    np.testing.assert_allclose(s, [199.5, 399.5, 599.5, 799.5])  # equal-count bins, midpoints
    assert ops.find_splits(np.array([7], np.float32), np.ones(1), 8, backend=backend).shape == (0,)


def test_find_splits_threshold_stays_below_upper_value() -> None:
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2))  # midpoint rounds to b in float32: keep a
    assert ref.threshold_between(float(a), float(b)) == float(a)


@needs_native
@pytest.mark.parametrize("hist_bins", [None, 6])
def test_forest_is_independent_of_thread_count(hist_bins: int | None) -> None:
    d = ops._forest_inputs(300, 8, 3, 6, seed=3)
    kw = dict(n_classes=3, criterion="gini", max_depth=-1, min_samples_split=2, min_samples_leaf=1,
              min_weight_fraction_leaf=0.0, min_impurity_decrease=0.0, min_info_gain=0.0, max_features=3)
    X_cols = d.pop("X_cols")
    if hist_bins:
        kw.update(ops.binned(X_cols, hist_bins))
    one = ops.build_forest(X_cols, backend="native", n_threads=1, **d, **kw)
    two = ops.build_forest(X_cols, backend="native", n_threads=2, **d, **kw)
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_histogram_subtraction_gives_the_direct_histograms(backend: str) -> None:
    """All features at every node: the larger child's histograms come from parent - sibling for
    every feature; the tree must equal one grown with histograms summed directly (no cache)."""
    d = ops._forest_inputs(140, 4, 2, 1, seed=5)
    X_cols = d.pop("X_cols")
    kw: dict = dict(n_classes=2, criterion="gini", max_depth=-1, min_samples_split=2, min_samples_leaf=1,
                    min_weight_fraction_leaf=0.0, min_impurity_decrease=0.0, min_info_gain=0.0, max_features=4)
    kw.update(ops.binned(X_cols, 8))
    with_sub = ops.build_forest(X_cols, backend=backend, n_threads=1, **d, **kw)
    builder = ref._TreeBuilder(X_cols, [int(c) for c in d["y"]], {**kw, "criterion": "gini"},
                               {k: kw[k] for k in ("bins", "n_bins", "split_values", "split_offsets")})
    builder._histogram = lambda f, samples, start, end, w, parent, s0, s1: builder._accumulate(  # type: ignore
        f, samples, start, end, w)
    direct = builder.build(d["counts"][0], d["sample_weight"], d["class_weight"][0], int(d["seeds"][0]))
    np.testing.assert_array_equal(with_sub["feature"], direct["feature"])
    np.testing.assert_array_equal(with_sub["child"], direct["child"])
    assert len(direct["feature"]) > 15


def test_splitmix64_known_values() -> None:
    """The first outputs for seed 0 (the reference sequence of splitmix64)."""
    out, state = ref.splitmix64(0)
    assert out == 0xE220A8397B1DCDAF
    out, _ = ref.splitmix64(state)
    assert out == 0x6E789E6AA1B965F4
