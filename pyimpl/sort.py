"""Insertion sort, as the seed's C function ``insertion_sort(int array[], int first, int last)``.

The seed sorts ``array[first:last]`` in place, but its inner loop tests ``j >= 0`` instead of
``j >= first``: with ``first > 0`` it shifts elements from before the range into it.
``insertion_sort`` implements the intended behaviour (only ``[first, last)`` changes);
``insertion_sort_seed`` keeps the seed's loop verbatim so tests can show the difference.

Order: ascending, stable, NaN after every number (as ``numpy.sort``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

SORT_DTYPES = ("float32", "float64", "int32", "int64")
INDEX_DTYPES = ("int32", "int64")
_SORT_NP = frozenset(np.dtype(d) for d in SORT_DTYPES)
_INDEX_NP = frozenset(np.dtype(d) for d in INDEX_DTYPES)


def check_sort_args(values: Any, first: Any, last: Any, indices: Any) -> tuple[int, int]:
    """Validate the arguments shared by every backend; return ``(first, last)`` as ints.

    values: a writeable 1-D NumPy array of float32, float64, int32 or int64 (any stride).
    first, last: integers with ``0 <= first <= last <= len(values)``; ``last=None`` means the end.
    indices: None or a writeable 1-D int32/int64 array of the same length, permuted alongside.
    """
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy.ndarray, got {type(values).__name__}")
    for name, a in (("values", values), ("indices", indices)):
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{name} is a masked array: an in-place sort would move the data under a mask that "
                            f"stays put; sort {name}.filled(fill) or use numpy.ma.sort")
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if values.dtype not in _SORT_NP:
        raise TypeError(f"values.dtype={values.dtype.name}: supported {', '.join(SORT_DTYPES)}")
    if not values.flags.writeable:
        raise ValueError("values is read-only: the sort works in place; pass values.copy()")
    n = values.shape[0]
    for name, v in (("first", first), ("last", last)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    lo = 0 if first is None else operator.index(first)
    hi = n if last is None else operator.index(last)
    if not 0 <= lo <= n:
        raise IndexError(f"first={lo} is out of range for values of length {n} (allowed 0..{n})")
    if not 0 <= hi <= n:
        raise IndexError(f"last={hi} is out of range for values of length {n} (allowed 0..{n})")
    if lo > hi:
        raise ValueError(f"first={lo} > last={hi}: the range [first, last) is reversed")
    if indices is not None:
        if not isinstance(indices, np.ndarray):
            raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
        if indices.ndim != 1 or indices.shape[0] != n:
            raise ValueError(f"indices must be 1-D of length {n} like values, got shape {indices.shape}")
        if indices.dtype not in _INDEX_NP:
            raise TypeError(f"indices.dtype={indices.dtype.name}: supported {', '.join(INDEX_DTYPES)}")
        if not indices.flags.writeable:
            raise ValueError("indices is read-only: it is permuted in place; pass indices.copy()")
        if np.shares_memory(values, indices):
            raise ValueError("values and indices share memory")
    return lo, hi


def sort_args(values: Any, first: Any, last: Any, indices: Any,
              return_indices: bool) -> tuple[int, int, np.ndarray | None]:
    """``check_sort_args``, then the index array to carry along: ``indices`` itself, a fresh
    ``arange(len(values))`` (int64) when ``return_indices`` asks for one, or None."""
    lo, hi = check_sort_args(values, first, last, indices)
    if indices is None and return_indices:
        indices = np.arange(values.shape[0], dtype=np.int64)
    return lo, hi, indices


def _after(a: float, b: float) -> bool:
    """True when ``a`` sorts strictly after ``b``: greater, or NaN against a number."""
    if a > b:
        return True
    return isinstance(a, float) and math.isnan(a) and not math.isnan(b)


def insertion_sort(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
) -> Any:
    """Sort ``values[first:last]`` in place by insertion sort; elements outside never move.

    With ``indices`` (or ``return_indices=True``, which starts from ``arange(len(values))``) the
    index array is permuted alongside: the key-value sort a tree splitter needs. Returns
    ``values``, or ``(values, indices)`` when indices are carried. O(n^2) compares, stable.
    """
    lo, hi, indices = sort_args(values, first, last, indices, return_indices)
    keys = values[lo:hi].tolist()
    idx = None if indices is None else indices[lo:hi].tolist()
    for i in range(1, len(keys)):
        key = keys[i]
        carried = None if idx is None else idx[i]
        j = i - 1
        while j >= 0 and _after(keys[j], key):
            keys[j + 1] = keys[j]
            if idx is not None:
                idx[j + 1] = idx[j]
            j -= 1
        keys[j + 1] = key
        if idx is not None:
            idx[j + 1] = carried
    values[lo:hi] = keys
    if indices is None:
        return values
    indices[lo:hi] = idx
    return values, indices


def insertion_sort_seed(array: list[Any] | np.ndarray, first: int, last: int) -> None:
    """The seed's loop verbatim, including its ``j >= 0`` bound (a bug when ``first > 0``)."""
    for i in range(first + 1, last):
        temp = array[i]
        j = i - 1
        while j >= 0 and array[j] > temp:
            array[j + 1] = array[j]
            j -= 1
        if j != i - 1:
            array[j + 1] = temp


def insertion_sort_numpy(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
) -> Any:
    """NumPy-level twin of ``insertion_sort`` (stable ``argsort``), for checking at any size."""
    lo, hi, indices = sort_args(values, first, last, indices, return_indices)
    order = np.argsort(values[lo:hi], kind="stable")
    values[lo:hi] = values[lo:hi][order]
    if indices is None:
        return values
    indices[lo:hi] = indices[lo:hi][order]
    return values, indices


def hybrid_sort(
    values: np.ndarray,
    first: int = 0,
    last: int | None = None,
    *,
    indices: np.ndarray | None = None,
    return_indices: bool = False,
) -> Any:
    """Sort ``values[first:last]`` in place, carrying ``indices``: what csrc/hybrid_sort.hpp computes.

    Ascending, NaN after every number; the order of indices among equal values is unspecified
    (the C++ sort is not stable), so results are compared after ordering each run of equal
    values by index (``canonical_ties``). Same arguments and result as ``insertion_sort``.
    """
    return insertion_sort_numpy(values, first, last, indices=indices, return_indices=return_indices)


def canonical_ties(values: np.ndarray, indices: np.ndarray, first: int = 0, last: int | None = None) -> np.ndarray:
    """``indices`` with each run of equal values in ``values[first:last]`` ordered by index (NaNs
    are one run): the unique form of an unstable key-value sort's output."""
    hi = values.shape[0] if last is None else last
    out = indices.copy()
    order = np.lexsort((indices[first:hi], values[first:hi]))
    out[first:hi] = indices[first:hi][order]
    return out
