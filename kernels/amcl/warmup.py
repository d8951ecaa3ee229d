"""Compile (or load from the on-disk cache) every AMCL Numba kernel, and say how long each took.

    python -m modelkernels.kernels.amcl.warmup

The first process on a machine compiles (seconds per kernel) and writes Numba's cache next to
the modules (or under ``NUMBA_CACHE_DIR``); later processes load the machine code from it.
Call ``compile_all()`` at start-up to keep that cost out of the first filter update.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from modelkernels.kernels.amcl import bin_ops, ops
from modelkernels.pyimpl.amcl import kld


def compile_all() -> dict[str, float]:
    """Seconds spent on the first call of each kernel variant (compile or cache load)."""
    m = ops.sample_map(17, 13)
    t = time.perf_counter()
    for module in ("maps", "motion", "sensors", "kld", "kdtree"):
        ops._numba(module)
    out = {"import numba and the kernel modules": time.perf_counter() - t}
    t = time.perf_counter()
    dist = ops.distance_map_numba(m.state, m.resolution, 1.0)
    out["distance_map"] = time.perf_counter() - t
    poses = np.array([[0.2, 0.3, 0.1], [0.5, 0.1, -1.0]])
    ranges, bearings = np.array([0.5, 1.0, 4.0]), np.array([-1.0, 0.0, 1.0])
    lf = (poses, ranges, bearings, dist, *m.geometry, 1.0, 4.0, 0.5, 0.5, 0.2, np.zeros(3))
    beam = (poses, ranges, bearings, m.state, *m.geometry, 4.0, 0.5, 0.05, 0.05, 0.5, 0.2, 0.1, np.zeros(3))
    n = 8
    bins = np.array(kld.BIN_SIZE)
    calls = {
        "ray_cast": lambda: ops.ray_cast_numba(m.state, *m.geometry, poses, bearings, 3.0),
        "ray_cast (parallel)": lambda: ops.ray_cast_numba_parallel(m.state, *m.geometry, poses, bearings, 3.0),
        "motion": lambda: ops.motion_numba(poses, np.zeros(3), np.full(3, 0.1), np.full(5, 0.2), np.zeros((2, 3))),
        "likelihood_field": lambda: ops.likelihood_field_numba(*lf),
        "likelihood_field (parallel)": lambda: ops.likelihood_field_numba_parallel(*lf),
        "likelihood_field_prob beam skip": lambda: ops.likelihood_field_prob_numba(*lf, do_beamskip=True,
                                                                                   converged=True),
        "likelihood_field_prob (parallel)": lambda: ops.likelihood_field_prob_numba_parallel(
            *lf, do_beamskip=True, converged=True),
        "beam_model": lambda: ops.beam_model_numba(*beam),
        "beam_model (parallel)": lambda: ops.beam_model_numba_parallel(*beam),
        "kld_resample": lambda: ops.kld_resample_numba(np.zeros((n, 3)), np.ones(n), np.zeros(n), np.ones(n),
                                                       np.zeros((n, 3)), 0.0, 1, n, 0.05, 2.3, bins),
        "cluster_stats": lambda: ops.cluster_stats_numba(np.zeros((n, 3)), np.ones(n), bins),
        "kld_resample (kd-tree)": lambda: bin_ops.kld_resample_kdtree(np.zeros((n, 3)), np.ones(n), np.zeros(n),
                                                                      np.ones(n), np.zeros((n, 3)), 0.0, 1, n, 0.05,
                                                                      2.3, bins),
        "cluster_stats (kd-tree)": lambda: bin_ops.cluster_stats_kdtree(np.zeros((n, 3)), np.ones(n), bins),
        "kld_bins": lambda: bin_ops.kld_bins_hash(np.zeros((n, 3)), np.ones(n), bins),
        "kld_bins (kd-tree)": lambda: bin_ops.kld_bins_kdtree(np.zeros((n, 3)), np.ones(n), bins),
        "bin_clusters": lambda: bin_ops.bin_clusters_hash(np.zeros((n, 3)), bins),
        "bin_clusters (kd-tree)": lambda: bin_ops.bin_clusters_kdtree(np.zeros((n, 3)), bins),
    }
    for name, fn in calls.items():
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    return out


def main() -> int:
    t0 = time.perf_counter()
    times = compile_all()
    for name, s in times.items():
        print(f"{name:<36} {s * 1e3:9.1f} ms")
    print(f"{'total (with imports)':<36} {(time.perf_counter() - t0) * 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
