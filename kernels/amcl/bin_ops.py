"""The ops over (x, y, θ) bins and the two structures that hold the bins: nav2's kd-tree
(``numba_kdtree.py``, backend ``numba_kdtree``) and the hash table (``numba_kld.py``, backend ``numba``).

- ``amcl_kld_bins``: insert every particle with its weight and count the occupied bins
  (``pf_kdtree_insert`` and ``leaf_count``); reference ``pyimpl.amcl.kld.kld_bins``.
- ``amcl_bin_clusters``: label the clusters of touching bins (``pf_kdtree_cluster``); reference
  ``pyimpl.amcl.kld.bin_clusters``.
- ``amcl_kld_resample`` and ``amcl_cluster_stats`` (``ops.py``) get a ``numba_kdtree`` backend: the
  filter picks the structure with ``kld_bins="hash" | "kdtree"``.

Both structures give the same arrays (bins and labels numbered by first particle), so the filter
makes the same run with either. The hash table ranks first: it measures faster (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from modelkernels.kernels.amcl import ops
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.pyimpl.amcl import kld

F64 = ("float64",)
KD_PRIORITY = 5  # below the hash table's 10: the hash table is the measured winner


def _tree() -> ModuleType:
    from modelkernels.kernels.amcl import numba_kdtree

    return numba_kdtree


def _hash() -> ModuleType:
    from modelkernels.kernels.amcl import numba_kld

    return numba_kld


def _bin_args(poses: Any, bin_size: Any, weights: Any = None) -> tuple[np.ndarray, ...]:
    p, b = ops._f64(poses), ops._f64(bin_size)
    w = None if weights is None else ops._f64(weights)
    kld.check_bin_args(p, b, w)
    return (p, b) if w is None else (p, b, w)


# -- samples: duplicate keys, one bin, the key range's edges, θ at ±π, N = 0 / 1 / 50 000 ----------
def _cloud(n: int, seed: int, spread: float, strided: bool = False, weights: str = "random") -> ops.Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        rng = np.random.default_rng(seed)
        m = 2 * n if strided else n
        poses = np.stack([rng.normal(1.2, spread, m), rng.normal(-0.7, spread, m),
                          rng.uniform(-np.pi, np.pi, m)], 1)
        w = rng.random(m)
        if weights == "nan/inf":
            w[: m // 3] = np.nan
            w[m // 3: m // 2] = np.inf
        return (poses[::2] if strided else poses, w[::2] if strided else w, np.array(kld.BIN_SIZE)), {}
    return make


def _fixed(poses: list[list[float]], wrap: bool = True, repeat: int = 1) -> ops.Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        p = np.tile(np.array(poses, np.float64).reshape(-1, 3), (repeat, 1))
        w = np.random.default_rng(len(p)).random(len(p))
        return (p, w, np.array(kld.BIN_SIZE)), {"wrap_theta": wrap}
    return make


EDGE = kld.KEY_OFFSET * 0.5  # x, y where the keys reach the clamped range's ends (0.5 m bins)
EDGES = [[-EDGE, -EDGE, 0.0], [-EDGE - 0.3, -EDGE, 0.0], [EDGE - 0.5, EDGE - 0.5, 0.0], [EDGE, EDGE, 0.0],
         [1e12, -1e300, 0.1], [-EDGE + 0.5, -EDGE, 0.2], [EDGE - 0.5, EDGE - 1.0, 0.2], [0.0, 0.0, 1e6],
         [0.1, EDGE - 0.3, 0.05], [0.6, -EDGE, 0.05],  # y keys 2**20 - 1 and -2**20: packed, y + 1 would meet
         [5.1, 5.1, 1e7], [5.1, 5.6, -1e7]]  # the same for unwrapped theta keys
AT_PI = [[0.1, 0.1, np.pi - 0.01], [0.1, 0.1, -np.pi + 0.01], [0.6, 0.1, np.pi], [0.6, 0.1, -np.pi],
         [3.0, 3.0, 0.0], [0.1, 0.6, 3.0]]
ONE_BIN = [[0.3, 0.2, 0.05], [0.1, 0.4, 0.1], [0.49, 0.01, 0.0]]


def _samples(with_weights: bool) -> list[Sample]:
    def drop_weights(make: ops.Make) -> ops.Make:
        def made(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
            (poses, _, bins), kw = make(device, dtype)
            return (poses, bins), kw
        return made

    cases = [
        ("N=400 compact, many duplicate keys", _cloud(400, 0, 0.3)),
        ("N=301 spread", _cloud(301, 1, 8.0)),
        ("N=97 strided", _cloud(97, 2, 1.0, strided=True)),
        ("all particles in one bin", _fixed(ONE_BIN, repeat=40)),
        ("key range edges, clamped", _fixed(EDGES)),
        ("key range edges unwrapped", _fixed(EDGES, wrap=False)),
        ("theta at ±pi wrapped", _fixed(AT_PI, repeat=3)),
        ("theta at ±pi unwrapped", _fixed(AT_PI, wrap=False, repeat=3)),
        ("N=0", _cloud(0, 3, 1.0)),
        ("N=1", _cloud(1, 4, 1.0)),
        ("N=50000 spread", _cloud(50000, 5, 20.0)),
    ]
    if with_weights:
        cases.append(("N=60 NaN and Inf weights", _cloud(60, 6, 0.5, weights="nan/inf")))
    return [Sample(name, make if with_weights else drop_weights(make)) for name, make in cases]


def _errors(with_weights: bool) -> list[ErrorSample]:
    def args(poses: np.ndarray, bins: Any = kld.BIN_SIZE, n_weights: int | None = None) -> Callable[[], Any]:
        w = np.ones(len(poses) if n_weights is None else n_weights)
        return lambda: (((poses, w) if with_weights else (poses,)) + (np.asarray(bins, np.float64),), {})

    nan_pose = np.zeros((4, 3))
    nan_pose[2, 1] = np.nan
    inf_pose = np.zeros((3, 3))
    inf_pose[0, 2] = np.inf
    out = [
        ErrorSample("poses (3,)", args(np.zeros(3)), ValueError, "poses: shape (3,)"),
        ErrorSample("NaN pose", args(nan_pose), ValueError, "poses: 1 rows not finite, first row 2"),
        ErrorSample("Inf pose", args(inf_pose), ValueError, "poses: 1 rows not finite, first row 0"),
        ErrorSample("zero bin size", args(np.zeros((2, 3)), (0.5, 0.0, 0.1)), ValueError, "bin_size=[0.5, 0.0, 0.1]"),
        ErrorSample("two bin sizes", args(np.zeros((2, 3)), (0.5, 0.5)), ValueError, "bin_size=[0.5, 0.5]"),
    ]
    if with_weights:
        out.append(ErrorSample("weights length", args(np.zeros((3, 3)), n_weights=2), ValueError,
                               "weights: shape (2,)"))
    return out


# -- insert + count ---------------------------------------------------------------------------------
def kld_bins_kdtree(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                    wrap_theta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """nav2's kd-tree: insert each particle's bin with its weight; bins by first particle."""
    p, b, w = _bin_args(poses, bin_size, weights)
    return tuple(_tree().kld_bins_kdtree(p, w, b, bool(wrap_theta)))


def kld_bins_hash(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                  wrap_theta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The hash table: the same bins and summed weights, O(1) per insert."""
    p, b, w = _bin_args(poses, bin_size, weights)
    return tuple(_hash().kld_bins_numba(p, w, b, bool(wrap_theta)))


define_op(
    "amcl_kld_bins",
    reference=kld.kld_bins,
    dtypes=F64,
    samples=_samples(with_weights=True),
    error_samples=_errors(with_weights=True),
    doc="each particle's (x, y, theta) bin and each bin's summed weight; k = bins (nav2 pf_kdtree_insert)",
)
register_kernel("amcl_kld_bins", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=ops.numba_unavailable)(kld_bins_hash)
register_kernel("amcl_kld_bins", "numba_kdtree", devices=("cpu",), dtypes=F64, priority=KD_PRIORITY,
                available=ops.numba_unavailable)(kld_bins_kdtree)


# -- clusters -----------------------------------------------------------------------------------------
def bin_clusters_kdtree(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True) -> np.ndarray:
    """nav2's ``pf_kdtree_cluster`` on the tree (27 tree lookups per leaf), labels by first particle."""
    p, b = _bin_args(poses, bin_size)
    return _tree().cluster_labels_kdtree(p, b, bool(wrap_theta))


def bin_clusters_hash(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True) -> np.ndarray:
    """The same labels from the hash table (27 probes per bin)."""
    p, b = _bin_args(poses, bin_size)
    return _hash().cluster_labels_numba(p, b, bool(wrap_theta))


define_op(
    "amcl_bin_clusters",
    reference=kld.bin_clusters,
    dtypes=F64,
    samples=_samples(with_weights=False),
    error_samples=_errors(with_weights=False),
    doc="cluster label per particle: connected (26-neighbour) bins (nav2 pf_kdtree_cluster)",
)
register_kernel("amcl_bin_clusters", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=ops.numba_unavailable)(bin_clusters_hash)
register_kernel("amcl_bin_clusters", "numba_kdtree", devices=("cpu",), dtypes=F64, priority=KD_PRIORITY,
                available=ops.numba_unavailable)(bin_clusters_kdtree)


# -- the filter's two ops on the tree -----------------------------------------------------------------
def kld_resample_kdtree(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                        random_poses: np.ndarray, w_diff: float, min_particles: int, max_particles: int,
                        pop_err: float, pop_z: float, bin_size: np.ndarray,
                        wrap_theta: bool = True) -> tuple[np.ndarray, int]:
    """KLD-adaptive resampling with nav2's kd-tree counting the bins (binary-search draws)."""
    poses, weights, u_select, u_random, random_poses, bin_size = (
        ops._f64(a) for a in (poses, weights, u_select, u_random, random_poses, bin_size))
    kld.check_resample_args(poses, weights, u_select, u_random, random_poses, min_particles, max_particles, pop_err)
    out, k = _tree().kld_resample_kdtree(poses, weights, u_select, u_random, random_poses, float(w_diff),
                                         int(min_particles), int(max_particles), float(pop_err), float(pop_z),
                                         bin_size, bool(wrap_theta))
    return out, int(k)


def cluster_stats_kdtree(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                         wrap_theta: bool = True) -> tuple[np.ndarray, ...]:
    """Clusters from nav2's kd-tree and their weighted statistics (as ``cluster_stats_numba``)."""
    poses, weights, bin_size = (ops._f64(a) for a in (poses, weights, bin_size))
    if poses.ndim != 2 or poses.shape[1] != 3 or weights.shape != (poses.shape[0],):
        raise ValueError(f"poses {poses.shape}, weights {weights.shape}: expected (N, 3) and (N,)")
    return tuple(_tree().cluster_stats_kdtree(poses, weights, bin_size, bool(wrap_theta)))


register_kernel("amcl_kld_resample", "numba_kdtree", devices=("cpu",), dtypes=F64, priority=KD_PRIORITY,
                available=ops.numba_unavailable)(kld_resample_kdtree)
register_kernel("amcl_cluster_stats", "numba_kdtree", devices=("cpu",), dtypes=F64, priority=KD_PRIORITY,
                available=ops.numba_unavailable,
                tolerances={"*": Tolerance(atol=1e-10, rtol=1e-9)})(cluster_stats_kdtree)


# -- public functions -----------------------------------------------------------------------------------
def amcl_kld_bins(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True, *,
                  backend: str | None = None) -> Any:
    """(bin of each particle (N,), summed weight of each bin (k,)): see ``pyimpl.amcl.kld.kld_bins``."""
    return call("amcl_kld_bins", poses, weights, bin_size, wrap_theta, backend=backend)


def amcl_bin_clusters(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True, *,
                      backend: str | None = None) -> Any:
    """Cluster label per particle (N,): see ``pyimpl.amcl.kld.clusters``."""
    return call("amcl_bin_clusters", poses, bin_size, wrap_theta, backend=backend)
