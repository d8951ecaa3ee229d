"""Fuzzing the C++ entry points directly (no Python checks in front): valid forests, bins and
sort inputs with one entry mutated to a hostile value. Each call must either raise a Python
exception naming the problem or return a correct result; never read or write outside its
arrays. ``.ci/sanitize`` runs this file against an AddressSanitizer / UBSan build, where any
stray access aborts the run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelkernels.kernels.forest import ops
from modelkernels.kernels.native import native, native_unavailable
from modelkernels.pyimpl import forest as ref

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))

HOSTILE = st.sampled_from([-(2**31), -(2**31) + 1, -10**7, -2, -1, 0, 1, 2, 3, 7, 255, 256, 2**31 - 2, 2**31 - 1])
HOSTILE64 = HOSTILE | st.sampled_from([-(2**63), -(2**40), 2**40, 2**63 - 1])
BUILD = dict(n_classes=3, criterion=0, max_depth=-1, min_samples_split=2, min_samples_leaf=1,
             min_weight_fraction_leaf=0.0, min_impurity_decrease=0.0, min_info_gain=0.0, max_features=2)


def _data(n: int = 40, n_features: int = 3, n_trees: int = 3) -> dict[str, Any]:
    return ops._forest_inputs(n, n_features, 3, n_trees, seed=5)


def _forest() -> dict[str, np.ndarray]:
    d = _data()
    return dict(native().build_forest(d["X_cols"], d["y"], d["sample_weight"], d["counts"], d["class_weight"],
                                      d["seeds"], *BUILD.values(), 2))


FOREST = _forest() if native_unavailable() is None else {}
X = np.random.default_rng(3).standard_normal((29, 3)).astype(np.float32)


def _predict(model: dict[str, np.ndarray], backend: str) -> tuple[np.ndarray, np.ndarray]:
    args = (X, model["feature"], model["threshold"], model["child"], model["value"], model["node_offsets"],
            model["leaf_offsets"])
    if backend == "native":
        return native().predict_proba(*args, 2)
    return ref.predict_proba(*args)


@given(name=st.sampled_from(["feature", "child", "node_offsets", "leaf_offsets"]), where=st.integers(0, 10**6),
       value=HOSTILE64)
def test_mutated_forest_is_refused_or_predicted_as_the_reference(name: str, where: int, value: int) -> None:
    model = {k: v.copy() for k, v in FOREST.items()}
    a = model[name]
    info = np.iinfo(a.dtype)
    a[where % a.shape[0]] = min(max(value, info.min), info.max)
    try:
        want = _predict(model, "reference")
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            _predict(model, "native")
        assert str(got.value) == str(e)
        return
    proba, used = _predict(model, "native")
    np.testing.assert_allclose(proba, want[0], rtol=1e-6)
    np.testing.assert_array_equal(used, want[1])


@given(rows=st.integers(-3, 3), trees=st.integers(-2, 2), threads=HOSTILE64)
def test_shapes_and_thread_counts_never_crash_prediction(rows: int, trees: int, threads: int) -> None:
    m = FOREST
    value = m["value"][: max(0, m["value"].shape[0] + rows)]
    T = m["node_offsets"].shape[0] - 1
    no, lo = m["node_offsets"][: T + 1 + min(trees, 0)], m["leaf_offsets"][: T + 1 + min(trees, 0)]
    try:
        proba, _ = native().predict_proba(X, m["feature"], m["threshold"], m["child"], value, no, lo,
                                          int(np.clip(threads, -(2**63), 2**63 - 1)))
    except ValueError:
        return
    assert proba.shape == (X.shape[0], 3) and np.isfinite(proba).all()


@given(f=st.integers(0, 2), i=st.integers(0, 39), b=st.integers(0, 255), nb_at=st.integers(0, 2), nb=HOSTILE,
       off_at=st.integers(0, 3), off=HOSTILE64, which=st.sampled_from(["bins", "n_bins", "split_offsets"]))
def test_mutated_histogram_inputs_are_refused_or_built(f: int, i: int, b: int, nb_at: int, nb: int, off_at: int,
                                                       off: int, which: str) -> None:
    d = _data(n_trees=1)
    hist = ops.binned(d["X_cols"], 8, backend="reference")
    if which == "bins":
        hist["bins"][f, i] = b
    elif which == "n_bins":
        hist["n_bins"][nb_at] = nb
    else:
        hist["split_offsets"][off_at] = off
    try:
        out = native().build_forest(d["X_cols"], d["y"], d["sample_weight"], d["counts"], d["class_weight"],
                                    d["seeds"], *BUILD.values(), 1, **hist)
    except ValueError:
        assert which != "bins" or b >= hist["n_bins"][f]
        return
    ref.check_trees(out["feature"], out["threshold"], out["child"], out["value"].shape[0], out["node_offsets"],
                    out["leaf_offsets"], 3)


@given(m=st.integers(0, 30), n_edges=st.integers(0, 6), n_classes=HOSTILE, criterion=HOSTILE,
       bins=st.lists(st.integers(0, 255), min_size=30, max_size=30), y=st.lists(HOSTILE, min_size=30, max_size=30))
def test_split_searches_refuse_bad_indices(m: int, n_edges: int, n_classes: int, criterion: int, bins: list[int],
                                           y: list[int]) -> None:
    yy = np.asarray(y[:m], np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
    w = np.ones(m)
    edges = np.arange(n_edges, dtype=np.float32)
    for call in (lambda: native().best_split_hist(np.asarray(bins[:m], np.uint8), yy, w, edges, n_classes, criterion,
                                                  1, 0.0),
                 lambda: native().best_split_exact(np.arange(m, dtype=np.float32), yy, w, n_classes, criterion, 1,
                                                   0.0)):
        try:
            call()
        except ValueError:
            continue
        assert 1 <= n_classes <= 2**16 and criterion in (0, 1) and all(0 <= c < n_classes for c in yy.tolist())


@given(n=st.integers(0, 50), counts_n=st.integers(0, 50), max_bins=HOSTILE)
def test_find_splits_never_reads_past_its_inputs(n: int, counts_n: int, max_bins: int) -> None:
    distinct = np.arange(n, dtype=np.float32)
    try:
        out = native().find_splits(distinct, np.ones(counts_n), max_bins)
    except ValueError:
        assert counts_n != n or max_bins < 2
        return
    assert out.shape[0] <= max(0, min(n - 1, max_bins - 1))


SORT_DTYPES = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.float16, np.uint8])


@given(n=st.integers(0, 5000), dtype=SORT_DTYPES, index_dtype=SORT_DTYPES, n_idx=st.integers(0, 5000),
       step=st.sampled_from([1, 2, -1, -3]), first=HOSTILE64, last=HOSTILE64, seed=st.integers(0, 2**16))
def test_native_sorts_refuse_or_sort(n: int, dtype: Any, index_dtype: Any, n_idx: int, step: int, first: int,
                                     last: int, seed: int) -> None:
    before = (np.random.default_rng(seed).standard_normal(n) * 100).astype(dtype)

    def fresh() -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(n * abs(step), dtype)[::step]
        values[...] = before
        return values, np.arange(n_idx * abs(step)).astype(index_dtype)[::step]

    values, indices = fresh()
    try:
        native().hybrid_sort(values, indices)
        np.testing.assert_array_equal(values, np.sort(before))
    except (ValueError, TypeError):
        np.testing.assert_array_equal(values, before)
    values, indices = fresh()
    lo, hi = (first, last) if seed % 2 else (first % (n + 3) - 1, last % (n + 3) - 1)  # far off, or near the ends
    try:
        native().insertion_sort(values, lo, hi, indices)
    except (ValueError, TypeError, IndexError):
        np.testing.assert_array_equal(values, before)
        return
    np.testing.assert_array_equal(values[lo:hi], np.sort(before[lo:hi]))
