"""The ``insertion_sort`` and ``hybrid_sort`` ops: references, samples, error inputs, C++ backends.

Both sort ``values[first:last]`` in place (NaN last), optionally carrying an index array.
insertion_sort: stable, O(n^2); reference ``pyimpl.sort.insertion_sort``, C++ ``csrc/sort.hpp``.
hybrid_sort: the forest splitter's sort (radix passes for long ranges, 3-way introsort below,
insertion sort at the bottom), not stable; reference ``pyimpl.sort.hybrid_sort``, C++
``csrc/hybrid_sort.hpp``. GIL released in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelkernels.kernels.native import native, native_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, call, define_op, register_kernel
from modelkernels.pyimpl import sort as ref

DTYPES = ref.SORT_DTYPES


def _values(n: int, dtype: str, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        v = rng.standard_normal(n) * 1000
    elif kind == "sorted":
        v = np.sort(rng.standard_normal(n) * 1000)
    elif kind == "reversed":
        v = np.sort(rng.standard_normal(n) * 1000)[::-1]
    elif kind == "few":
        v = rng.integers(0, 5, n).astype(np.float64)
    elif kind == "equal":
        v = np.full(n, 7.0)
    else:
        raise ValueError(f"kind={kind!r}: expected random, sorted, reversed, few or equal")
    return np.ascontiguousarray(v).astype(dtype)


def _sample(n: int, kind: str, first: int = 0, last: int | None = None, *, nan: bool = False,
            strided: bool = False, indices: str | None = None, seed: int = 0) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device
        v = _values(2 * n if strided else n, dtype, kind, seed)
        if strided:
            v = v[::2]
        if nan:
            v[np.random.default_rng(seed + 1).integers(0, n, max(1, n // 7))] = np.nan
        kw: dict[str, Any] = {}
        if indices == "int32":
            kw["indices"] = np.arange(n, dtype=np.int32)[::-1].copy()
        elif indices == "return":
            kw["return_indices"] = True
        return (v, first, last), kw

    parts = [f"n={n}", kind, f"[{first}:{last}]"]
    parts += [p for p, on in (("nan", nan), ("strided", strided)) if on]
    if indices:
        parts.append(f"indices={indices}")
    return Sample(" ".join(parts), make, dtypes=("float32", "float64") if nan else None)


SAMPLES = [
    _sample(0, "random"),
    _sample(1, "random"),
    _sample(2, "reversed"),
    _sample(37, "random", seed=1),
    _sample(101, "sorted"),
    _sample(101, "reversed"),
    _sample(129, "few", seed=2),
    _sample(33, "equal"),
    _sample(77, "random", 5, 61, seed=3),
    _sample(77, "random", 40, 40, seed=4),
    _sample(63, "random", nan=True, seed=5),
    _sample(45, "random", 3, 40, strided=True, seed=6),
    _sample(53, "few", indices="int32", seed=7),
    _sample(47, "random", 2, 45, indices="return", seed=8),
]


MakeArgs = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def _bad(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> MakeArgs:
    return lambda: (args, kwargs or {})


def _f64(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)[::-1].copy()


def _readonly() -> np.ndarray:
    a = _f64(5)
    a.flags.writeable = False
    return a


ERROR_SAMPLES = [
    ErrorSample("first past the end", _bad((_f64(5), 6, None)), IndexError, "first=6"),
    ErrorSample("negative last", _bad((_f64(5), 0, -1)), IndexError, "last=-1"),
    ErrorSample("first > 2**31", _bad((_f64(5), 2**31 + 3, None)), IndexError, "first=2147483651"),
    ErrorSample("reversed range", _bad((_f64(5), 4, 2)), ValueError, "reversed"),
    ErrorSample("2-D values", _bad((np.zeros((2, 3)), 0, None)), ValueError, "1-D"),
    ErrorSample("float16 values", _bad((np.zeros(4, np.float16), 0, None)), TypeError, "float16"),
    ErrorSample("list values", _bad(([3, 1, 2], 0, None)), TypeError, "numpy.ndarray"),
    ErrorSample("read-only values", lambda: ((_readonly(), 0, None), {}), ValueError, "read-only"),
    ErrorSample("float first", _bad((_f64(5), 1.0, None)), TypeError, "first must be an integer"),
    ErrorSample("indices length", _bad((_f64(5), 0, None), {"indices": np.arange(4)}), ValueError, "length 5"),
    ErrorSample("float indices", _bad((_f64(5), 0, None), {"indices": np.zeros(5)}), TypeError, "indices.dtype"),
    ErrorSample("masked values", lambda: ((np.ma.masked_array(_f64(5), mask=np.arange(5) % 2 == 1), 0, None), {}),
                TypeError, "masked array"),
    ErrorSample("masked indices", lambda: ((_f64(5), 0, None), {"indices": np.ma.masked_array(np.arange(5))}),
                TypeError, "masked array"),
]


def _check_call(values: Any, first: Any = 0, last: Any = None, *, indices: Any = None,
                return_indices: bool = False) -> None:
    """The argument checks every backend runs (``kernels.explain`` runs them too)."""
    del return_indices
    ref.check_sort_args(values, first, last, indices)


OP = define_op(
    "insertion_sort",
    reference=ref.insertion_sort,
    dtypes=DTYPES,
    samples=SAMPLES,
    error_samples=ERROR_SAMPLES,
    doc="sort values[first:last] in place (stable, NaN last), optionally carrying indices",
    check=_check_call,
)


@register_kernel(
    "insertion_sort",
    "native",
    devices=("cpu",),
    dtypes=DTYPES,
    priority=10,
    available=native_unavailable,
)
def insertion_sort_native(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
) -> Any:
    """C++ insertion sort (csrc/sort.hpp): in place, any stride, GIL released."""
    lo, hi, indices = ref.sort_args(values, first, last, indices, return_indices)
    native().insertion_sort(values, lo, hi, indices)
    return values if indices is None else (values, indices)


def insertion_sort(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
    backend: str | None = None,
) -> Any:
    """Sort ``values[first:last]`` in place by insertion sort; only that range changes.

    values: 1-D NumPy array of float32, float64, int32 or int64 (any stride, writeable).
    indices: optional int32/int64 array of the same length, permuted alongside; or
    ``return_indices=True`` to carry ``arange(len(values))``. Order: ascending, stable, NaN last.
    Returns ``values``, or ``(values, indices)``. ``backend``: 'native' or 'reference'.
    """
    return call("insertion_sort", values, first, last, indices=indices, return_indices=return_indices, backend=backend)


def _canonical(args: tuple[Any, ...], kwargs: dict[str, Any], returned: Any) -> Any:
    """hybrid_sort's comparable result: the values, and indices with ties ordered by index."""
    if not isinstance(returned, tuple):
        return returned
    values, indices = returned
    return values, ref.canonical_ties(values, indices, args[1], args[2])


HYBRID_SAMPLES = [
    *SAMPLES,
    _sample(1000, "random", indices="return", seed=9),
    _sample(1500, "few", 7, 1400, indices="int32", seed=10),
    _sample(700, "equal", indices="return"),
    _sample(2049, "random", 1, 2048, nan=True, indices="return", seed=11),
    _sample(300, "reversed", strided=True, indices="return", seed=12),
    _sample(97, "few", indices="return", seed=13),
]

HYBRID_OP = define_op(
    "hybrid_sort",
    reference=ref.hybrid_sort,
    dtypes=DTYPES,
    samples=HYBRID_SAMPLES,
    error_samples=ERROR_SAMPLES,
    result=_canonical,
    doc="sort values[first:last] in place (NaN last, ties in any order), optionally carrying indices",
    check=_check_call,
)


@register_kernel(
    "hybrid_sort",
    "native",
    devices=("cpu",),
    dtypes=DTYPES,
    priority=10,
    available=native_unavailable,
)
def hybrid_sort_native(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
) -> Any:
    """C++ hybrid sort (csrc/hybrid_sort.hpp); a strided range is sorted in a contiguous copy."""
    lo, hi, indices = ref.sort_args(values, first, last, indices, return_indices)
    v = values[lo:hi]
    idx = indices[lo:hi] if indices is not None else np.empty(hi - lo, dtype=np.int64)
    vc = v if v.flags.c_contiguous else np.ascontiguousarray(v)
    ic = idx if idx.flags.c_contiguous else np.ascontiguousarray(idx)
    native().hybrid_sort(vc, ic)
    if vc is not v:
        v[...] = vc
    if indices is not None and ic is not idx:
        idx[...] = ic
    return values if indices is None else (values, indices)


def hybrid_sort(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
    backend: str | None = None,
) -> Any:
    """Sort ``values[first:last]`` in place; the forest splitter's sort of (value, sample) pairs.

    LSD radix passes (11- or 8-bit digits, passes with one digit value skipped) from 64 elements
    up, a 3-way-partition introsort below, the insertion sort under 17. Ascending, NaN last;
    equal values keep no particular index order. Arguments and result as ``insertion_sort``.
    """
    return call("hybrid_sort", values, first, last, indices=indices, return_indices=return_indices, backend=backend)
