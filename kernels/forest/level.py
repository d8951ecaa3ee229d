"""The two halves of one level of level-wise forest growth (Spark ML's ``findBestSplits``):
``level_histograms`` (partition side: route rows, sum class histograms of the open nodes) and
``level_best_splits`` (driver side: the library's histogram split search per open node).
References: ``pyimpl.forest_level``; C++: ``csrc/forest_level.cpp``. Engines that spread the
rows over machines (``kernels.forest.levelwise``, ``kernels.forest.spark``) call these two ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelkernels.kernels.native import native, native_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.pyimpl import forest_level as ref

_TOL = {"*": Tolerance(atol=1e-9, rtol=1e-12)}
_F64 = lambda dt: "float64"  # the float arrays stay float64 on both sides


def _partial_forest(n: int, F: int, C: int, T: int, K: int, max_bins: int, seed: int) -> dict[str, np.ndarray]:
    """A batch of binned rows and T partial trees (a root split, one child split again) whose
    unsplit nodes are the open slots."""
    rng = np.random.default_rng(seed)
    n_bins = rng.integers(max(1, max_bins // 2), max_bins + 1, F).astype(np.int32)
    n_bins[0] = max_bins
    bins = (rng.random((n, F)) * n_bins).astype(np.uint8)
    feature, split_bin, left, slot, offsets = [], [], [], [], [0]
    n_slots = 0
    for t in range(T):
        if t % 3 == 2:  # a root that is still open
            feature += [-1]
            split_bin += [0]
            left += [0]
            slot += [n_slots]
            n_slots += 1
        else:  # root -> (1, 2); node 1 -> (3, 4); 2, 3, 4 open (4 closed in every other tree)
            f0, f1 = rng.integers(0, F, 2)
            feature += [int(f0), int(f1), -1, -1, -1]
            split_bin += [int(rng.integers(0, n_bins[f0])), int(rng.integers(0, n_bins[f1])), 0, 0, 0]
            left += [1, 3, 0, 0, 0]
            open_nodes = [n_slots, n_slots + 1, n_slots + 2 if t % 2 == 0 else -1]
            slot += [-1, -1, *open_nodes]
            n_slots += 3 if t % 2 == 0 else 2
        offsets.append(len(feature))
    slot_features = np.stack([rng.choice(F, K, replace=False) for _ in range(n_slots)]).astype(np.int32)
    return dict(bins=bins, y=rng.integers(0, C, n).astype(np.int32), sample_weight=rng.integers(1, 4, n) * 0.5,
                bag=rng.poisson(1.0, (n, T)).astype(np.uint8), feature=np.array(feature, np.int32),
                split_bin=np.array(split_bin, np.int32), left=np.array(left, np.int32),
                slot=np.array(slot, np.int32), node_offsets=np.array(offsets, np.int64),
                slot_features=slot_features, n_bins=n_bins,
                hist=np.zeros((n_slots, K, max_bins, C)), counts=np.zeros((n_slots, K, max_bins), np.int64))


_HIST_ORDER = ("bins", "y", "sample_weight", "bag", "feature", "split_bin", "left", "slot", "node_offsets",
               "slot_features", "n_bins", "hist", "counts")


def _hist_sample(n: int, F: int, C: int, T: int, K: int, max_bins: int, seed: int, *, strided: bool = False) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        d = _partial_forest(n, F, C, T, K, max_bins, seed)
        if strided:  # every other column of a wider array: not contiguous
            wide = np.zeros((n, 2 * F), np.uint8)
            wide[:, ::2] = d["bins"]
            d["bins"] = wide[:, ::2]
        return tuple(d[k] for k in _HIST_ORDER), {}

    return Sample(f"n={n} F={F} C={C} trees={T} k={K} bins={max_bins}" + (" strided" if strided else ""), make)


def _bad(make: Callable[[dict[str, np.ndarray]], None]) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def build() -> tuple[tuple[Any, ...], dict[str, Any]]:
        d = _partial_forest(6, 3, 2, 2, 2, 4, 0)
        make(d)
        return tuple(d[k] for k in _HIST_ORDER), {}

    return build


def _child_outside(d: dict[str, np.ndarray]) -> None:
    d["left"][1] = 4  # tree 0 has 5 nodes: a right child at 5 would be outside it


def _label_outside(d: dict[str, np.ndarray]) -> None:
    d["y"][2] = 2


def _feature_outside(d: dict[str, np.ndarray]) -> None:
    d["slot_features"][0, 1] = 3


def _slot_outside(d: dict[str, np.ndarray]) -> None:
    d["slot"][2] = 99


def _bin_outside(d: dict[str, np.ndarray]) -> None:
    d["bins"][1, 0] = 4


def _negative_weight(d: dict[str, np.ndarray]) -> None:
    d["sample_weight"][3] = -1.0


def _float32_hist(d: dict[str, np.ndarray]) -> None:
    d["hist"] = d["hist"].astype(np.float32)


def _hist_reference(*args: Any) -> None:
    _check_shapes(*args)
    ref.level_histograms(*args)


def _check_shapes(bins: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, bag: np.ndarray, feature: np.ndarray,
                  split_bin: np.ndarray, left: np.ndarray, slot: np.ndarray, node_offsets: np.ndarray,
                  slot_features: np.ndarray, n_bins: np.ndarray, hist: np.ndarray, counts: np.ndarray) -> None:
    """The shapes that tie the arrays together (the C++ checks them too, before any index)."""
    if np.ndim(bins) != 2:
        raise ValueError(f"bins must be 2-D (n_rows, n_features), got shape {np.shape(bins)}")
    n = bins.shape[0]
    if np.shape(y) != (n,) or np.shape(sample_weight) != (n,) or np.ndim(bag) != 2 or bag.shape[0] != n:
        raise ValueError(f"y and sample_weight must have shape ({n},) and bag ({n}, n_trees)")
    N = np.shape(feature)[0]
    if not all(np.shape(a) == (N,) for a in (split_bin, left, slot)) or np.shape(node_offsets) != (bag.shape[1] + 1,):
        raise ValueError("feature, split_bin, left and slot must be 1-D of one length, node_offsets n_trees + 1 "
                         "long")
    if np.ndim(hist) != 4 or np.shape(counts) != np.shape(hist)[:3] or np.shape(slot_features) != np.shape(hist)[:2]:
        raise ValueError("hist must be (n_slots, k, max_bins, n_classes), counts hist.shape[:3] and slot_features "
                         "(n_slots, k)")
    if node_offsets[0] != 0 or node_offsets[-1] != N or (np.diff(node_offsets) < 1).any():
        raise ValueError("node_offsets must increase from 0 to the number of nodes")
    for name, a, dtype in (("hist", hist, np.float64), ("counts", counts, np.int64)):
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            raise ValueError(f"{name} must be a {np.dtype(dtype).name} array (it is accumulated in place), got "
                             f"{getattr(a, 'dtype', type(a).__name__)}")


_HIST_ERRORS = [
    ErrorSample("child outside its tree", _bad(_child_outside), ValueError, "has its children outside its tree"),
    ErrorSample("label outside", _bad(_label_outside), ValueError, "labels must be in [0, n_classes=2)"),
    ErrorSample("feature outside", _bad(_feature_outside), ValueError, "slot_features holds feature 3"),
    ErrorSample("slot outside", _bad(_slot_outside), ValueError, "slot[2]=99"),
    ErrorSample("bin outside", _bad(_bin_outside), ValueError, "bins[1, 0]=4"),
    ErrorSample("negative weight", _bad(_negative_weight), ValueError, "sample_weight[3] must be finite and >= 0"),
    ErrorSample("float32 hist", _bad(_float32_hist), ValueError, "hist must be a float64 array"),
]

define_op("level_histograms", reference=_hist_reference, dtypes=("uint8",),
          samples=[_hist_sample(0, 3, 2, 2, 2, 4, 1), _hist_sample(37, 5, 3, 4, 2, 8, 2),
                   _hist_sample(101, 7, 2, 3, 3, 5, 3), _hist_sample(64, 4, 3, 5, 4, 16, 4, strided=True)],
          error_samples=_HIST_ERRORS, result=lambda args, kwargs, out: (args[-2], args[-1]),
          reference_dtype=_F64, doc="route rows down partial trees; sum the open nodes' class histograms in place")


@register_kernel("level_histograms", "native", devices=("cpu",), dtypes=("uint8",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def level_histograms_native(*args: Any) -> None:
    """C++ (csrc/forest_level.cpp): one pass over the rows per tree, GIL released."""
    _check_shapes(*args)
    *inputs, hist, counts = args
    for name, a in (("hist", hist), ("counts", counts)):
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a writable C-contiguous array (it is accumulated in place)")
    native().level_histograms(*inputs, hist, counts)


def level_histograms(bins: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, bag: np.ndarray,
                     feature: np.ndarray, split_bin: np.ndarray, left: np.ndarray, slot: np.ndarray,
                     node_offsets: np.ndarray, slot_features: np.ndarray, n_bins: np.ndarray, hist: np.ndarray,
                     counts: np.ndarray, backend: str | None = None) -> None:
    """Add a batch of binned rows to ``hist`` (n_slots, k, max_bins, n_classes) and ``counts``
    (n_slots, k, max_bins) in place; see ``pyimpl.forest_level`` for the arguments."""
    call("level_histograms", bins, y, sample_weight, bag, feature, split_bin, left, slot, node_offsets,
         slot_features, n_bins, hist, counts, backend=backend)


def _split_sample(n: int, F: int, C: int, T: int, K: int, max_bins: int, seed: int, criterion: int = 0,
                  min_instances: int = 1, min_weight: float = 0.0) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        del device, dtype
        d = _partial_forest(n, F, C, T, K, max_bins, seed)
        ref.level_histograms(*(d[k] for k in _HIST_ORDER))
        rng = np.random.default_rng(seed + 1)
        values = [np.sort(rng.standard_normal(int(nb) - 1)).astype(np.float32) for nb in d["n_bins"]]
        offsets = np.concatenate([[0], np.cumsum([v.shape[0] for v in values])]).astype(np.int64)
        return (d["hist"], d["counts"], d["slot_features"], d["n_bins"], np.concatenate(values), offsets,
                criterion, min_instances, min_weight), {}

    return Sample(f"n={n} F={F} C={C} k={K} bins={max_bins} criterion={criterion} min_instances={min_instances} "
                  f"min_weight={min_weight}", make)


def _split_error(change: dict[str, Any]) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def build() -> tuple[tuple[Any, ...], dict[str, Any]]:
        base: dict[str, Any] = dict(hist=np.zeros((1, 1, 4, 2)), counts=np.zeros((1, 1, 4), np.int64),
                                    slot_features=np.zeros((1, 1), np.int32), n_bins=np.array([4], np.int32),
                                    split_values=np.arange(3, dtype=np.float32),
                                    split_offsets=np.array([0, 3], np.int64), criterion=0, min_instances=1,
                                    min_weight=0.0)
        base.update(change)
        return tuple(base.values()), {}

    return build


def _check_split_shapes(hist: np.ndarray, counts: np.ndarray, slot_features: np.ndarray, n_bins: np.ndarray,
                        split_values: np.ndarray, split_offsets: np.ndarray, criterion: int, min_instances: int,
                        min_weight: float) -> None:
    if np.ndim(hist) != 4 or np.shape(counts) != np.shape(hist)[:3] or np.shape(slot_features) != np.shape(hist)[:2]:
        raise ValueError("hist must be (n_slots, k, max_bins, n_classes), counts hist.shape[:3] and slot_features "
                         "(n_slots, k)")
    if criterion not in (0, 1):
        raise ValueError(f"criterion={criterion}: 0 (gini) or 1 (entropy)")
    if int(min_instances) < 1:
        raise ValueError(f"min_instances={min_instances}: must be >= 1")
    F = np.shape(n_bins)[0]
    if np.shape(split_offsets) != (F + 1,) or split_offsets[0] != 0 or split_offsets[-1] != np.shape(split_values)[0]:
        raise ValueError(f"split_offsets must have n_features + 1 = {F + 1} entries running from 0 to "
                         "len(split_values)")


def _best_splits_reference(*args: Any) -> dict[str, np.ndarray]:
    _check_split_shapes(*args)
    return ref.level_best_splits(*args)


define_op("level_best_splits", reference=_best_splits_reference, dtypes=("float64",),
          samples=[_split_sample(0, 3, 2, 2, 2, 4, 1), _split_sample(53, 5, 3, 4, 2, 8, 2),
                   _split_sample(97, 6, 2, 3, 3, 6, 3, criterion=1),
                   _split_sample(88, 4, 3, 5, 4, 16, 4, min_instances=9),
                   _split_sample(75, 5, 2, 4, 3, 8, 5, min_weight=12.0)],
          error_samples=[ErrorSample("criterion", _split_error(dict(criterion=2)), ValueError, "criterion=2"),
                         ErrorSample("feature outside", _split_error(dict(slot_features=np.array([[1]], np.int32))),
                                     ValueError, "slot_features holds feature 1"),
                         ErrorSample("split values", _split_error(dict(split_offsets=np.array([0, 2], np.int64),
                                                                       split_values=np.zeros(2, np.float32))),
                                     ValueError, "it needs n_bins - 1 = 3")],
          reference_dtype=_F64, doc="each open node's best split from its summed class histograms (driver side)")


@register_kernel("level_best_splits", "native", devices=("cpu",), dtypes=("float64",), priority=10,
                 available=native_unavailable, tolerances=_TOL)
def level_best_splits_native(*args: Any) -> dict[str, np.ndarray]:
    """C++ (csrc/forest_level.cpp) over histogram_feature_split, the library's split scan."""
    _check_split_shapes(*args)
    return dict(native().level_best_splits(*args))


def level_best_splits(hist: np.ndarray, counts: np.ndarray, slot_features: np.ndarray, n_bins: np.ndarray,
                      split_values: np.ndarray, split_offsets: np.ndarray, criterion: int, min_instances: int,
                      min_weight: float, backend: str | None = None) -> dict[str, np.ndarray]:
    """Best split per open node: see ``pyimpl.forest_level.level_best_splits``."""
    return call("level_best_splits", hist, counts, slot_features, n_bins, split_values, split_offsets, criterion,
                min_instances, min_weight, backend=backend)
