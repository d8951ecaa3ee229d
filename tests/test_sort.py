"""Insertion sort: the seed's range bug, property tests against numpy.sort, defined behaviour."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelkernels import kernels
from modelkernels.kernels.native import native_unavailable
from modelkernels.pyimpl import sort as ref

BACKENDS = ["reference", pytest.param("native", marks=pytest.mark.skipif(
    native_unavailable() is not None, reason=str(native_unavailable())))]


def test_seed_loop_moves_elements_from_before_the_range() -> None:
    seed = [5, 1, 0]
    ref.insertion_sort_seed(seed, 1, 3)
    assert seed == [0, 5, 1]  # the 5 before `first` moved into the range, the 0 out of it
    fixed = np.array([5, 1, 0], dtype=np.int32)
    kernels.insertion_sort(fixed, 1, 3)
    assert fixed.tolist() == [5, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_range_changes(backend: str) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(50)
    before = a.copy()
    kernels.insertion_sort(a, 7, 31, backend=backend)
    assert np.array_equal(a[:7], before[:7]) and np.array_equal(a[31:], before[31:])
    assert np.array_equal(a[7:31], np.sort(before[7:31]))


values_strategy = st.sampled_from(["float32", "float64", "int32", "int64"]).flatmap(
    lambda dt: hnp.arrays(dt, st.integers(0, 200), elements=(
        (st.floats(-1e6, 1e6, width=32 if dt == "float32" else 64) | st.just(float("nan")))
        if dt.startswith("float")
        else st.integers(-(2**31), 2**31 - 1)))
)


@pytest.mark.parametrize("backend", BACKENDS)
@given(values=values_strategy, data=st.data())
def test_matches_numpy_sort(backend: str, values: np.ndarray, data: st.DataObject) -> None:
    n = values.shape[0]
    first = data.draw(st.integers(0, n))
    last = data.draw(st.integers(first, n))
    out = values.copy()
    _, idx = kernels.insertion_sort(out, first, last, return_indices=True, backend=backend)
    expect = values.copy()
    expect[first:last] = np.sort(values[first:last], kind="stable")
    np.testing.assert_array_equal(out, expect)  # NaN compares equal position-wise here
    order = np.argsort(values[first:last], kind="stable") + first
    np.testing.assert_array_equal(idx[first:last], order)
    np.testing.assert_array_equal(values[idx], out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["duplicates", "sorted", "reversed", "equal"])
def test_input_shapes_against_numpy(backend: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    base = {"duplicates": rng.integers(0, 3, 257), "sorted": np.arange(257), "reversed": np.arange(257)[::-1],
            "equal": np.full(257, 4)}[kind].astype(np.float32)
    a = base.copy()
    kernels.insertion_sort(a, backend=backend)
    np.testing.assert_array_equal(a, np.sort(base))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_sorted_last_and_stable_indices(backend: str) -> None:
    a = np.array([np.nan, 2.0, np.nan, -1.0, 2.0], dtype=np.float64)
    _, idx = kernels.insertion_sort(a, return_indices=True, backend=backend)
    assert a[:3].tolist() == [-1.0, 2.0, 2.0] and np.isnan(a[3:]).all()
    assert idx.tolist() == [3, 1, 4, 0, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_negative_stride_views(backend: str) -> None:
    base = np.arange(40, dtype=np.int64)[::-1].copy()
    view = base[::-3]  # negative stride, non-contiguous
    expect = np.sort(view)
    untouched = base.copy()
    untouched[::-3] = expect
    kernels.insertion_sort(view, backend=backend)
    np.testing.assert_array_equal(base, untouched)


@pytest.mark.parametrize("backend", BACKENDS)
def test_carried_int32_indices_in_place(backend: str) -> None:
    v = np.array([3, 1, 2], dtype=np.int64)
    idx = np.array([10, 11, 12], dtype=np.int32)
    out_v, out_i = kernels.insertion_sort(v, indices=idx, backend=backend)
    assert out_v is v and out_i is idx
    assert v.tolist() == [1, 2, 3] and idx.tolist() == [11, 12, 10]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,first,last", [(0, 0, 0), (1, 0, 1), (5, 2, 2), (5, 5, 5)])
def test_empty_and_single_ranges(backend: str, n: int, first: int, last: int) -> None:
    a = np.arange(n, dtype=np.float32)[::-1].copy()
    before = a.copy()
    kernels.insertion_sort(a, first, last, backend=backend)
    assert np.array_equal(a, before)


def test_numpy_twin_agrees_with_plain_python() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        v = rng.integers(0, 6, 60).astype(np.float64)
        v[rng.integers(0, 60, 4)] = np.nan
        a, b = v.copy(), v.copy()
        ra = ref.insertion_sort(a, 4, 55, return_indices=True)
        rb = ref.insertion_sort_numpy(b, 4, 55, return_indices=True)
        np.testing.assert_array_equal(ra[0], rb[0])
        np.testing.assert_array_equal(ra[1], rb[1])


def test_shared_memory_indices_rejected() -> None:
    buf = np.zeros(8, dtype=np.int64)
    with pytest.raises(ValueError, match="share memory"):
        kernels.insertion_sort(buf, indices=buf)


def test_automatic_dispatch_with_unsupported_dtype_lists_backends() -> None:
    with pytest.raises(NotImplementedError, match="dtype=float16: supported float32"):
        kernels.insertion_sort(np.zeros(3, dtype=np.float16))


@pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))
def test_native_releases_the_gil_and_threads_agree() -> None:
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(3000) for _ in range(4)]
    expect = [np.sort(a) for a in arrays]
    threads = [threading.Thread(target=kernels.insertion_sort, args=(a,), kwargs={"backend": "native"})
               for a in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, e in zip(arrays, expect):
        np.testing.assert_array_equal(a, e)


def test_native_is_the_automatic_choice_when_built() -> None:
    chosen = kernels.registry.select("insertion_sort", (np.zeros(4),), {}).name
    assert chosen == ("native" if native_unavailable() is None else "reference")


def test_explain_runs_the_calls_argument_checks() -> None:
    text = kernels.explain("insertion_sort", np.zeros((2, 3)))
    assert text.splitlines()[-1].startswith("-> raises ValueError: values must be 1-D, got shape (2, 3)")
    assert "-> raises TypeError: values is a masked array" in kernels.explain("hybrid_sort", np.ma.zeros(4))
    assert kernels.explain("hybrid_sort", np.zeros(4)).splitlines()[-1].startswith("-> runs")
