"""Input and parameter checks with scikit-learn's messages (``sklearn.utils.validation``), so
that code written against scikit-learn sees the errors it expects; no scikit-learn needed."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

try:  # scikit-learn's exception types when it is installed, so its tooling recognizes them
    from sklearn.exceptions import DataConversionWarning, NotFittedError
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """The estimator is used before ``fit``."""

    class DataConversionWarning(UserWarning):  # type: ignore[no-redef]
        """Input data was converted (e.g. a column vector y raveled)."""


ESTIMATOR = "RandomForestClassifier"


def param_error(name: str, allowed: str, value: Any) -> ValueError:
    """scikit-learn's InvalidParameterError wording (a ValueError)."""
    return ValueError(f"The {name!r} parameter of {ESTIMATOR} must be {allowed}. Got {value!r} instead.")


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v: Any, lo: int, hi: float = math.inf, *, none: bool = False) -> None:
    if none and v is None:
        return
    if not is_int(v) or not lo <= v <= hi:
        rng = f"[{lo}, {'inf)' if hi == math.inf else str(hi) + ']'}"
        raise param_error(name, f"an int in the range {rng}" + (" or None" if none else ""), v)


def check_real(name: str, v: Any, lo: float, hi: float, *, closed: str = "both") -> None:
    ok = is_real(v) and not math.isnan(v)
    if ok:
        above = lo <= v if closed in ("both", "left") else lo < v
        below = v <= hi if closed in ("both", "right") else v < hi
        ok = above and below
    if not ok:
        left = "[" if closed in ("both", "left") else "("
        right = "]" if closed in ("both", "right") else ")"
        raise param_error(name, f"a float in the range {left}{lo}, {hi}{right}", v)


def _reject_sparse(x: Any, what: str) -> None:
    if hasattr(x, "tocsr") or hasattr(x, "toarray"):
        raise TypeError(f"Sparse {what} is not supported by kernels.forest.{ESTIMATOR}; pass a dense array "
                        "(x.toarray()).")


def check_X(X: Any, *, reset_features: int | None = None) -> np.ndarray:
    """A C-contiguous float32 2-D array; errors as scikit-learn's ``check_array``.

    NaN is rejected (this forest does not route missing values) and so is Inf, with the message
    naming the fix. ``reset_features``: the number of features seen in fit, to check predict."""
    _reject_sparse(X, "data")
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as e:
        raise ValueError(f"X could not be converted to a numeric array: {e}") from e
    if arr.dtype.kind == "c":
        raise ValueError("Complex data not supported: X has dtype " + str(arr.dtype))
    if arr.dtype.kind in "OUS":
        try:
            arr = arr.astype(np.float64)
        except TypeError as e:
            raise TypeError(f"could not convert X to float: {e}") from e
        except ValueError as e:
            raise ValueError(f"could not convert X to float: {e}") from e
    elif arr.dtype.kind not in "biuf":
        raise ValueError(f"X has dtype {arr.dtype}; expected numbers")
    if arr.ndim != 2:
        if arr.ndim == 1:
            raise ValueError(f"Expected 2D array, got 1D array instead:\narray={arr!r}.\nReshape your data either "
                             "using array.reshape(-1, 1) if your data has a single feature or array.reshape(1, -1) "
                             "if it contains a single sample.")
        raise ValueError(f"Found array with dim {arr.ndim}. {ESTIMATOR} expected <= 2.")
    if arr.shape[0] < 1:
        raise ValueError(f"Found array with 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required by "
                         f"{ESTIMATOR}.")
    if arr.shape[1] < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required by "
                         f"{ESTIMATOR}.")
    if reset_features is not None and arr.shape[1] != reset_features:
        raise ValueError(f"X has {arr.shape[1]} features, but {ESTIMATOR} is expecting {reset_features} features "
                         "as input.")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        if np.isnan(out).any():
            raise ValueError(f"Input X contains NaN. kernels.forest.{ESTIMATOR} does not accept missing values: "
                             "impute them first (e.g. sklearn.impute.SimpleImputer), or use scikit-learn's "
                             "RandomForestClassifier, which routes NaN since 1.4.")
        raise ValueError("Input X contains infinity or a value too large for dtype('float32').")
    return out


def check_y(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes_, encoded y as int32); labels of any sortable type."""
    _reject_sparse(y, "y")
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                      "(n_samples,), for example using ravel().", DataConversionWarning, stacklevel=3)
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"y should be a 1d array, got an array of shape {arr.shape} instead.")
    if arr.shape[0] != n:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n}, {arr.shape[0]}]")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError("Input y contains NaN.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"Input y contains infinity or a value too large for dtype({arr.dtype.name!r}).")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise ValueError("Unknown label type: continuous. Maybe you are trying to fit a classifier, which expects "
                         "discrete classes on a regression target with continuous values.")
    try:
        classes, encoded = np.unique(arr, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"y labels must be mutually comparable to be sorted into classes_: {e}") from e
    if classes.shape[0] < 2:
        raise ValueError(f"This solver needs samples of at least 2 classes in the data, but the data contains only "
                         f"one class: {classes[0]!r}")
    return classes, encoded.astype(np.int32).ravel()


def check_sample_weight(sample_weight: Any, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n, dtype=np.float64)
    if is_real(sample_weight):
        if not (math.isfinite(sample_weight) and sample_weight > 0):
            raise ValueError(f"sample_weight={sample_weight!r}: a scalar sample weight must be a finite number > 0")
        return np.full(n, float(sample_weight))
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.ndim != 1:
        raise ValueError("Sample weights must be 1D array or scalar")
    if sw.shape != (n,):
        raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}!")
    if not np.isfinite(sw).all():
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if (sw < 0).any():
        raise ValueError("Negative values in data passed to sample_weight")
    if not (sw > 0).any():
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return sw


def check_class_weight_values(weights: dict[Any, Any]) -> None:
    """Class weights of a dict must be finite numbers >= 0."""
    for label, wt in weights.items():
        if not is_real(wt) or not (math.isfinite(wt) and wt >= 0):
            raise ValueError(f"class_weight[{label!r}] = {wt!r}: class weights must be finite numbers >= 0")


def scale_weights(sample_weight: np.ndarray, counts: np.ndarray, class_weight: np.ndarray,
                  y: np.ndarray) -> np.ndarray:
    """``sample_weight`` times a power of two, so that node weights and their squares stay finite
    and normal. The largest node weight is at most ``sum(sample_weight) * max(counts) *
    max(class_weight)``; when that bound's binary exponent leaves [-400, 500] the weights are scaled
    to bring it near 1. A power of two is exact in floating point and the tree depends only on
    weight ratios, so the trees equal those of the unscaled weights. Raises when every sample ends
    up with weight 0."""
    top = float(sample_weight.max())
    effective = (sample_weight[None, :] > 0) & (counts > 0) & (np.take_along_axis(class_weight, y[None, :], 1) > 0)
    if not effective.any():
        raise ValueError("sample_weight, class_weight and the bootstrap leave every sample with weight 0; at least "
                         "one sample needs a weight > 0")
    relative = float((sample_weight / top).sum()) * float(counts.max()) * float(class_weight.max())
    exponent = math.frexp(top)[1] + math.frexp(relative)[1]
    if -400 <= exponent <= 500:
        return sample_weight
    return np.ldexp(sample_weight, -exponent)
