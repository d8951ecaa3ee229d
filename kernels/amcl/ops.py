"""The AMCL ops: each with its reference (``pyimpl.amcl``), samples, error samples and the Numba
backend. ``tests/test_parity.py`` compares every backend with its reference on every sample.

The Numba modules are imported on first use, so ``import modelkernels.kernels`` stays cheap; compiled code is
cached on disk (``cache=True``), so a second process starts without compiling. The sensor models
and ray casting split big calls over a pool of ``set_threads(n)`` threads (``nogil`` kernels
writing disjoint rows); small calls run on the caller's thread.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import math
import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from modelkernels.kernels.availability import numba_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.pyimpl.amcl import kld, maps, motion, sensors

F64 = ("float64",)
GRID = ("int8",)
CLOSE = {"*": Tolerance(atol=1e-12, rtol=1e-12)}


PARALLEL_MIN_WORK = 16384  # particle-beams (or rays) below which handing work to threads does not pay


def _default_threads() -> int:
    value = os.environ.get("KERNELS_AMCL_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


_THREADS = [_default_threads()]
_POOL: list[ThreadPoolExecutor | None] = [None]


def set_threads(n: int) -> None:
    """Threads the sensor models and ray casting split big calls over (default: the CPU count,
    or ``KERNELS_AMCL_THREADS``); 1 runs everything on the calling thread."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected an integer >= 1")
    _THREADS[0] = n
    pool, _POOL[0] = _POOL[0], None
    if pool is not None:
        pool.shutdown(wait=True)


def get_threads() -> int:
    return _THREADS[0]


def _launch(kernel: Callable[..., None], n: int, work: int, force_parallel: bool, *args: Any) -> None:
    """Run ``kernel(start, stop, *args)`` over 0..n: inline when the work is small or one thread is
    set, else in equal chunks on the pool (the kernels release the GIL and write disjoint rows)."""
    threads = min(_THREADS[0], n)
    if threads <= 1 or not (force_parallel or work >= PARALLEL_MIN_WORK):
        kernel(0, n, *args)
        return
    pool = _POOL[0]
    if pool is None:
        pool = _POOL[0] = ThreadPoolExecutor(max_workers=_THREADS[0], thread_name_prefix="amcl")
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    futures = [pool.submit(kernel, int(a), int(b), *args) for a, b in itertools.pairwise(bounds[1:])]
    kernel(0, int(bounds[1]), *args)
    for f in futures:
        f.result()


@cache
def _numba(module: str) -> ModuleType:
    return importlib.import_module(f"modelkernels.kernels.amcl.numba_{module}")


def _f64(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


# -- sample inputs: a room with boxes, unknown cells and odd sizes --------------------------------
def sample_map(width: int = 53, height: int = 41, seed: int = 0) -> maps.OccupancyMap:
    """A small test room: walls, a few boxes, a patch of unknown cells; origin off zero."""
    rng = np.random.default_rng(seed)
    st = np.full((height, width), maps.FREE, np.int8)
    st[0, :] = st[-1, :] = st[:, 0] = st[:, -1] = maps.OCCUPIED
    for _ in range(4 if min(width, height) > 12 else 0):
        j, i = rng.integers(3, height - 8), rng.integers(3, width - 8)
        st[j:j + rng.integers(2, 6), i:i + rng.integers(2, 6)] = maps.OCCUPIED
    st[height // 2:height // 2 + 3, width - 6:width - 2] = maps.UNKNOWN
    return maps.OccupancyMap(st, 0.1, -1.3, -0.7)


def _poses(m: maps.OccupancyMap, n: int, seed: int, off_map: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xmin, xmax, ymin, ymax = m.extent()
    p = np.stack([rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n), rng.uniform(-math.pi, math.pi, n)], 1)
    if off_map and n >= 3:
        p[0, :2] = (xmin - 3.0, ymin - 2.0)
        p[1, :2] = (xmax + 0.05, (ymin + ymax) / 2)
        p[2, 2] = math.pi
    return p


def _scan(n_beams: int, seed: int, range_max: float = 4.0, special: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ranges = rng.uniform(0.1, range_max * 1.1, n_beams)
    bearings = np.linspace(-math.pi, math.pi, n_beams, endpoint=False)
    if special and n_beams >= 5:
        ranges[1], ranges[2], ranges[3], ranges[4] = math.nan, range_max, math.inf, range_max * 2
    return ranges, bearings


Make = Callable[[str, str], tuple[tuple[Any, ...], dict[str, Any]]]


def _grid_sample(name: str, make: Make) -> Sample:
    return Sample(name, make, dtypes=GRID)


# -- distance map ---------------------------------------------------------------------------------
def _dm(width: int, height: int, max_dist: float, empty: bool = False, seed: int = 0) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        m = sample_map(width, height, seed)
        st = np.full_like(m.state, maps.FREE) if empty else m.state
        return (st, m.resolution, max_dist), {}
    return make


def distance_map_numba(state: np.ndarray, resolution: float, max_dist: float) -> np.ndarray:
    """Exact Euclidean distance transform (Felzenszwalb-Huttenlocher), capped as nav2's cspace."""
    maps._check_positive("resolution", resolution)
    maps._check_positive("max_dist", max_dist)
    return _numba("maps").distance_map_numba(np.ascontiguousarray(state, np.int8), float(resolution),
                                             float(max_dist))


def _distance_map_ref(state: np.ndarray, resolution: float, max_dist: float) -> np.ndarray:
    maps._check_positive("resolution", resolution)
    maps._check_positive("max_dist", max_dist)
    return maps.distance_map(state, resolution, max_dist)


define_op(
    "amcl_distance_map",
    reference=_distance_map_ref,
    dtypes=GRID,
    samples=[
        _grid_sample("room 53x41 max 1.0", _dm(53, 41, 1.0)),
        _grid_sample("room 53x41 max 0.55", _dm(53, 41, 0.55, seed=1)),
        _grid_sample("room 17x30 max 2.0", _dm(17, 30, 2.0, seed=2)),
        _grid_sample("no obstacles 11x9", _dm(11, 9, 0.5, empty=True)),
    ],
    error_samples=[
        ErrorSample("zero resolution", lambda: ((np.zeros((3, 3), np.int8), 0.0, 1.0), {}), ValueError,
                    "resolution=0.0"),
        ErrorSample("negative max_dist", lambda: ((np.zeros((3, 3), np.int8), 0.1, -1.0), {}), ValueError,
                    "max_dist=-1.0"),
    ],
    doc="distance (m) to the nearest occupied cell, capped at max_dist (nav2 map_update_cspace)",
)
register_kernel("amcl_distance_map", "numba", devices=("cpu",), dtypes=GRID, priority=10,
                available=numba_unavailable, tolerances=CLOSE)(distance_map_numba)


# -- ray casting ----------------------------------------------------------------------------------
def _rc(n: int, n_beams: int, max_range: float, seed: int) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        m = sample_map(seed=seed)
        _, bearings = _scan(n_beams, seed)
        return (m.state, *m.geometry, _poses(m, n, seed, off_map=True), bearings, max_range), {}
    return make


def _check_ray_args(poses: np.ndarray, bearings: np.ndarray, max_range: float) -> None:
    if np.ndim(poses) != 2 or np.shape(poses)[1] != 3:
        raise ValueError(f"poses: shape {np.shape(poses)}: expected (N, 3) rows of x, y, theta")
    if np.ndim(bearings) != 1:
        raise ValueError(f"bearings: shape {np.shape(bearings)}: expected a 1-D array")
    maps._check_positive("max_range", max_range)


def _ray_cast_ref(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, poses: np.ndarray,
                  bearings: np.ndarray, max_range: float) -> np.ndarray:
    _check_ray_args(poses, bearings, max_range)
    return maps.ray_cast(state, resolution, origin_x, origin_y, poses, bearings, max_range)


def _ray_cast(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, poses: np.ndarray,
              bearings: np.ndarray, max_range: float, force_parallel: bool) -> np.ndarray:
    _check_ray_args(poses, bearings, max_range)
    poses, bearings = _f64(poses), _f64(bearings)
    out = np.empty((len(poses), len(bearings)))
    _launch(_numba("maps").ray_cast_range, len(poses), len(poses) * len(bearings), force_parallel, out,
            np.ascontiguousarray(state, np.int8), float(resolution), float(origin_x), float(origin_y), poses,
            bearings, float(max_range))
    return out


def ray_cast_numba(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, poses: np.ndarray,
                   bearings: np.ndarray, max_range: float) -> np.ndarray:
    """nav2's Bresenham ``map_calc_range`` for every (pose, bearing); poses split over threads when many."""
    return _ray_cast(state, resolution, origin_x, origin_y, poses, bearings, max_range, False)


def ray_cast_numba_parallel(state: np.ndarray, resolution: float, origin_x: float, origin_y: float,
                            poses: np.ndarray, bearings: np.ndarray, max_range: float) -> np.ndarray:
    """``ray_cast_numba`` always split over the threads, whatever the size."""
    return _ray_cast(state, resolution, origin_x, origin_y, poses, bearings, max_range, True)


define_op(
    "amcl_ray_cast",
    reference=_ray_cast_ref,
    dtypes=GRID,
    reference_dtype=lambda dt: "float64",  # the dtype names the grid; poses and bearings stay float64
    samples=[
        _grid_sample("N=29 B=23 max 4 m", _rc(29, 23, 4.0, 0)),
        _grid_sample("N=7 B=90 max 12 m", _rc(7, 90, 12.0, 1)),
        _grid_sample("N=0", _rc(0, 5, 3.0, 2)),
        _grid_sample("N=13 B=7 max 0.04 m (under a cell)", _rc(13, 7, 0.04, 3)),
    ],
    error_samples=[
        ErrorSample("poses (3,)", lambda: ((np.zeros((3, 3), np.int8), 0.1, 0.0, 0.0, np.zeros(3), np.zeros(2), 1.0),
                                           {}), ValueError, "poses: shape (3,)"),
        ErrorSample("max_range 0", lambda: ((np.zeros((3, 3), np.int8), 0.1, 0.0, 0.0, np.zeros((1, 3)),
                                             np.zeros(2), 0.0), {}), ValueError, "max_range=0.0"),
    ],
    doc="range to the first non-free cell along each bearing from each pose (nav2 map_calc_range)",
)
register_kernel("amcl_ray_cast", "numba", devices=("cpu",), dtypes=GRID, priority=10,
                available=numba_unavailable, tolerances=CLOSE)(ray_cast_numba)
register_kernel("amcl_ray_cast", "numba_parallel", devices=("cpu",), dtypes=GRID, priority=5,
                available=numba_unavailable, tolerances=CLOSE)(ray_cast_numba_parallel)


# -- motion ---------------------------------------------------------------------------------------
def _mo(n: int, delta: tuple[float, float, float], model: str, seed: int, strided: bool = False) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        rng = np.random.default_rng(seed)
        poses = np.stack([rng.normal(1, 1, 2 * n), rng.normal(-2, 1, 2 * n), rng.uniform(-3.2, 3.2, 2 * n)], 1)
        poses = poses[::2] if strided else poses[:n].copy()
        odom = np.array([0.7, -0.4, 3.0])
        alphas = np.array([0.2, 0.1, 0.3, 0.05, 0.15])
        return (poses, odom, np.array(delta), alphas, rng.standard_normal((n, 3))), {"model": model}
    return make


def motion_numba(poses: np.ndarray, odom_pose: np.ndarray, delta: np.ndarray, alphas: np.ndarray,
                 noise: np.ndarray, model: str = "differential") -> np.ndarray:
    """nav2's differential / omni odometry sampling, with pre-drawn standard normals."""
    poses, odom_pose, delta, alphas, noise = (_f64(a) for a in (poses, odom_pose, delta, alphas, noise))
    motion.check_motion_args(poses, odom_pose, delta, alphas, noise, model)
    return _numba("motion").motion_numba(poses, odom_pose, delta, alphas, noise, model == "omni")


define_op(
    "amcl_motion",
    reference=motion.motion,
    dtypes=F64,
    samples=[
        Sample("differential N=101 forward", _mo(101, (0.3, 0.1, 0.2), "differential", 0)),
        Sample("differential N=37 backward", _mo(37, (-0.2, -0.05, -0.1), "differential", 1)),
        Sample("differential N=23 turn in place", _mo(23, (0.001, 0.002, 0.9), "differential", 2)),
        Sample("differential N=19 strided", _mo(19, (0.1, 0.4, -3.0), "differential", 3, strided=True)),
        Sample("omni N=55", _mo(55, (0.2, -0.3, 0.4), "omni", 4)),
        Sample("omni N=0", _mo(0, (0.2, -0.3, 0.4), "omni", 5)),
    ],
    error_samples=[
        ErrorSample("unknown model", lambda: ((np.zeros((2, 3)), np.zeros(3), np.zeros(3), np.zeros(5),
                                               np.zeros((2, 3))), {"model": "tank"}), ValueError, "model='tank'"),
        ErrorSample("noise shape", lambda: ((np.zeros((2, 3)), np.zeros(3), np.zeros(3), np.zeros(5),
                                             np.zeros((3, 3))), {}), ValueError, "noise: shape (3, 3)"),
        ErrorSample("4 alphas", lambda: ((np.zeros((2, 3)), np.zeros(3), np.zeros(3), np.zeros(4),
                                          np.zeros((2, 3))), {}), ValueError, "alphas: shape (4,)"),
    ],
    doc="move particles by an odometry increment with nav2's differential / omni noise model",
)
register_kernel("amcl_motion", "numba", devices=("cpu",), dtypes=F64, priority=10, available=numba_unavailable,
                tolerances=CLOSE)(motion_numba)


# -- sensor models --------------------------------------------------------------------------------
LF_PARAMS = dict(max_dist=1.0, z_hit=0.5, z_rand=0.5, sigma_hit=0.2)


def _lf(n: int, n_beams: int, seed: int, laser: tuple[float, float, float] = (0.0, 0.0, 0.0),
        prob: dict[str, Any] | None = None, near: bool = False, read_only: bool = False) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        m = sample_map(seed=seed)
        poses = _poses(m, n, seed, off_map=True)
        if near:  # a converged cloud, so beam skipping engages
            poses = np.array([0.9, 0.8, 0.3]) + np.random.default_rng(seed).normal(0, 0.05, (n, 3))
        ranges, bearings = _scan(n_beams, seed)
        dist = maps.distance_map(m.state, m.resolution, LF_PARAMS["max_dist"])
        dist.setflags(write=not read_only)
        args = (poses, ranges, bearings, dist, *m.geometry, LF_PARAMS["max_dist"], 4.0, LF_PARAMS["z_hit"],
                LF_PARAMS["z_rand"], LF_PARAMS["sigma_hit"], np.array(laser))
        return args, dict(prob or {})
    return make


def _check_lf(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, laser_pose: np.ndarray,
              range_max: float, sigma_hit: float) -> tuple[np.ndarray, ...]:
    poses, ranges, bearings, laser_pose = (_f64(a) for a in (poses, ranges, bearings, laser_pose))
    sensors.check_scan_args(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    return poses, ranges, bearings, laser_pose


_TABLES: dict[tuple[Any, ...], tuple[weakref.ref[np.ndarray], np.ndarray]] = {}


def _field_table(dist: np.ndarray, key: tuple[Any, ...], log_sum: bool) -> np.ndarray | None:
    """The per-cell pz³ / log pz table for a read-only distance map (built once, kept while that
    array object lives); None for a writable map, which could change under a cached table."""
    if dist.flags.writeable or dist.dtype != np.float64 or not dist.flags.c_contiguous:
        return None
    full = (id(dist), dist.shape, log_sum, *key)
    hit = _TABLES.get(full)
    if hit is not None and hit[0]() is dist:
        return hit[1]
    z_hit, z_rand, sigma_hit, range_max = key
    table = _numba("sensors").field_table(dist, z_hit, z_rand, sigma_hit, range_max, log_sum)
    for k in [k for k, (ref, _) in _TABLES.items() if ref() is None]:
        del _TABLES[k]
    _TABLES[full] = (weakref.ref(dist), table)
    return table


@functools.lru_cache(maxsize=64)
def _off_map_term(max_dist: float, key: tuple[float, ...], log_sum: bool) -> float:
    """pz³ (or log pz) of an end point off the map, where z = max_dist."""
    return float(_numba("sensors").field_table(np.full((1, 1), max_dist), *key, log_sum)[0, 0])


def _likelihood_field(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                      resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                      z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray, log_sum: bool,
                      force_parallel: bool) -> np.ndarray:
    poses, ranges, bearings, laser_pose = _check_lf(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    mod = _numba("sensors")
    d = _f64(dist)
    key = (float(z_hit), float(z_rand), float(sigma_hit), float(range_max))
    n, work = len(poses), len(poses) * len(ranges)
    cx, cy, zr, denom, bx, by = mod.field_setup(d, ranges, bearings, float(resolution), float(origin_x),
                                                float(origin_y), float(range_max), float(z_rand), float(sigma_hit))
    out = np.empty(n)
    table = _field_table(dist, key, log_sum) if isinstance(dist, np.ndarray) else None
    if table is None and work * 4 > d.size:  # one exp per cell beats one per beam
        table = mod.field_table(d, *key, log_sum)
    if table is not None:
        off = _off_map_term(float(max_dist), key, log_sum)
        _launch(mod.likelihood_table_range, n, work, force_parallel, out, poses, ranges, bx, by, table, off, cx, cy,
                float(resolution), float(range_max), laser_pose, log_sum)
    else:
        _launch(mod.likelihood_field_range, n, work, force_parallel, out, poses, ranges, bx, by, d, cx, cy,
                float(resolution), float(max_dist), float(range_max), float(z_hit), zr, denom, laser_pose, log_sum)
    return out


def likelihood_field_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                           resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                           z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray) -> np.ndarray:
    """nav2's likelihood field (p = 1 + Σ pz³); particles split over threads when there are many."""
    return _likelihood_field(poses, ranges, bearings, dist, resolution, origin_x, origin_y, max_dist, range_max,
                             z_hit, z_rand, sigma_hit, laser_pose, False, False)


def likelihood_field_numba_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                                    resolution: float, origin_x: float, origin_y: float, max_dist: float,
                                    range_max: float, z_hit: float, z_rand: float, sigma_hit: float,
                                    laser_pose: np.ndarray) -> np.ndarray:
    """``likelihood_field_numba`` always split over the threads."""
    return _likelihood_field(poses, ranges, bearings, dist, resolution, origin_x, origin_y, max_dist, range_max,
                             z_hit, z_rand, sigma_hit, laser_pose, False, True)


def _lf_errors(extra: dict[str, Any]) -> list[ErrorSample]:
    def args(n_ranges: int, n_bearings: int, range_max: float = 4.0, sigma_hit: float = 0.2) -> tuple[Any, ...]:
        return (np.zeros((2, 3)), np.ones(n_ranges), np.zeros(n_bearings), np.zeros((3, 3)), 0.1, 0.0, 0.0, 1.0,
                range_max, 0.5, 0.5, sigma_hit, np.zeros(3))
    return [
        ErrorSample("bearings length", lambda: (args(5, 4), dict(extra)), ValueError, "bearings (4,)"),
        ErrorSample("range_max 0", lambda: (args(5, 5, 0.0), dict(extra)), ValueError, "range_max=0.0"),
        ErrorSample("sigma_hit 1e-300", lambda: (args(5, 5, sigma_hit=1e-300), dict(extra)), ValueError,
                    "sigma_hit=1e-300: must be a finite number >= 1e-150"),
    ]


LF_SAMPLES = [
    Sample("N=37 B=61 NaN/inf/max beams", _lf(37, 61, 0)),
    Sample("N=3 B=11 (exp per beam)", _lf(3, 11, 8)),
    Sample("N=97 B=45 read-only map (cached table)", _lf(97, 45, 9, read_only=True)),
    Sample("N=64 B=17 laser offset", _lf(64, 17, 1, laser=(0.2, -0.05, 0.3))),
    Sample("N=0 B=9", _lf(0, 9, 2)),
    Sample("N=5 B=0", _lf(5, 0, 3)),
]

define_op(
    "amcl_likelihood_field",
    reference=sensors.likelihood_field,
    dtypes=F64,
    samples=LF_SAMPLES,
    error_samples=_lf_errors({}),
    doc="nav2 likelihood-field weight factors: 1 + sum of pz^3 over the scan's beams",
)
register_kernel("amcl_likelihood_field", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=numba_unavailable, tolerances=CLOSE)(likelihood_field_numba)
register_kernel("amcl_likelihood_field", "numba_parallel", devices=("cpu",), dtypes=F64, priority=5,
                available=numba_unavailable, tolerances=CLOSE)(likelihood_field_numba_parallel)


def _likelihood_field_prob(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                           resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                           z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray, do_beamskip: bool,
                           converged: bool, beam_skip_distance: float, beam_skip_threshold: float,
                           beam_skip_error_threshold: float, force_parallel: bool) -> np.ndarray:
    if not (do_beamskip and converged):
        return _likelihood_field(poses, ranges, bearings, dist, resolution, origin_x, origin_y, max_dist, range_max,
                                 z_hit, z_rand, sigma_hit, laser_pose, True, force_parallel)
    poses, ranges, bearings, laser_pose = _check_lf(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    mod = _numba("sensors")
    d = _f64(dist)
    n, nb = len(poses), len(ranges)
    cx, cy, zr, denom, bx, by = mod.field_setup(d, ranges, bearings, float(resolution), float(origin_x),
                                                float(origin_y), float(range_max), float(z_rand), float(sigma_hit))
    logs = np.zeros((n, nb))
    near = np.zeros((n, nb), np.bool_)
    _launch(mod.beamskip_logs_range, n, n * nb, force_parallel, logs, near, poses, ranges, bx, by, d, cx, cy,
            float(resolution), float(max_dist), float(range_max), float(z_hit), zr, denom, laser_pose,
            float(beam_skip_distance))
    keep = mod.skip_mask(near, float(beam_skip_threshold), float(beam_skip_error_threshold))
    out = np.empty(n)
    _launch(mod.masked_exp_range, n, n * nb, force_parallel, out, logs, keep)
    return out


def likelihood_field_prob_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                                resolution: float, origin_x: float, origin_y: float, max_dist: float,
                                range_max: float, z_hit: float, z_rand: float, sigma_hit: float,
                                laser_pose: np.ndarray, do_beamskip: bool = False, converged: bool = False,
                                beam_skip_distance: float = 0.5, beam_skip_threshold: float = 0.3,
                                beam_skip_error_threshold: float = 0.9) -> np.ndarray:
    """nav2's likelihood_field_prob (p = exp Σ log pz, beam skipping when converged); threads when big."""
    return _likelihood_field_prob(poses, ranges, bearings, dist, resolution, origin_x, origin_y, max_dist, range_max,
                                  z_hit, z_rand, sigma_hit, laser_pose, do_beamskip, converged, beam_skip_distance,
                                  beam_skip_threshold, beam_skip_error_threshold, False)


def likelihood_field_prob_numba_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray,
                                         dist: np.ndarray, resolution: float, origin_x: float, origin_y: float,
                                         max_dist: float, range_max: float, z_hit: float, z_rand: float,
                                         sigma_hit: float, laser_pose: np.ndarray, do_beamskip: bool = False,
                                         converged: bool = False, beam_skip_distance: float = 0.5,
                                         beam_skip_threshold: float = 0.3,
                                         beam_skip_error_threshold: float = 0.9) -> np.ndarray:
    """``likelihood_field_prob_numba`` always split over the threads."""
    return _likelihood_field_prob(poses, ranges, bearings, dist, resolution, origin_x, origin_y, max_dist, range_max,
                                  z_hit, z_rand, sigma_hit, laser_pose, do_beamskip, converged, beam_skip_distance,
                                  beam_skip_threshold, beam_skip_error_threshold, True)


SKIP = dict(do_beamskip=True, converged=True)
define_op(
    "amcl_likelihood_field_prob",
    reference=sensors.likelihood_field_prob,
    dtypes=F64,
    samples=[
        *LF_SAMPLES,
        Sample("N=41 B=31 beam skip, converged", _lf(41, 31, 4, prob=SKIP, near=True)),
        Sample("N=41 B=31 beam skip, threshold 0.9", _lf(41, 31, 5, prob=dict(SKIP, beam_skip_threshold=0.9),
                                                         near=True)),
        Sample("N=33 B=29 beam skip, not converged", _lf(33, 29, 6, prob=dict(do_beamskip=True), near=True)),
        Sample("N=29 B=23 beam skip, error 0.2", _lf(29, 23, 7, prob=dict(SKIP, beam_skip_error_threshold=0.2),
                                                     near=True)),
    ],
    error_samples=_lf_errors({"do_beamskip": True}),
    doc="nav2 likelihood_field_prob weight factors: exp(sum of log pz), beam skipping when converged",
)
register_kernel("amcl_likelihood_field_prob", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=numba_unavailable, tolerances=CLOSE)(likelihood_field_prob_numba)
register_kernel("amcl_likelihood_field_prob", "numba_parallel", devices=("cpu",), dtypes=F64, priority=5,
                available=numba_unavailable, tolerances=CLOSE)(likelihood_field_prob_numba_parallel)


BEAM_PARAMS = dict(z_hit=0.5, z_short=0.05, z_max=0.05, z_rand=0.5, sigma_hit=0.2, lambda_short=0.1)


def _bm(n: int, n_beams: int, seed: int, laser: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        m = sample_map(seed=seed)
        ranges, bearings = _scan(n_beams, seed)
        return (_poses(m, n, seed, off_map=True), ranges, bearings, m.state, *m.geometry, 4.0,
                *BEAM_PARAMS.values(), np.array(laser)), {}
    return make


def _beam_model(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray, resolution: float,
                origin_x: float, origin_y: float, range_max: float, z_hit: float, z_short: float, z_max: float,
                z_rand: float, sigma_hit: float, lambda_short: float, laser_pose: np.ndarray,
                force_parallel: bool) -> np.ndarray:
    poses, ranges, bearings, laser_pose = _check_lf(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    out = np.empty(len(poses))
    # a beam walks up to range / res cells: threads pay off sooner than for the likelihood field
    _launch(_numba("sensors").beam_model_range, len(poses), 8 * len(poses) * len(ranges), force_parallel, out, poses,
            ranges, bearings, np.ascontiguousarray(state, np.int8), float(resolution), float(origin_x),
            float(origin_y), float(range_max), float(z_hit), float(z_short), float(z_max), float(z_rand),
            float(sigma_hit), float(lambda_short), laser_pose)
    return out


def beam_model_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                     resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                     z_short: float, z_max: float, z_rand: float, sigma_hit: float, lambda_short: float,
                     laser_pose: np.ndarray) -> np.ndarray:
    """nav2's beam model (ray-cast expected ranges, p = 1 + Σ pz³); threads when big."""
    return _beam_model(poses, ranges, bearings, state, resolution, origin_x, origin_y, range_max, z_hit, z_short,
                       z_max, z_rand, sigma_hit, lambda_short, laser_pose, False)


def beam_model_numba_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                              resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                              z_short: float, z_max: float, z_rand: float, sigma_hit: float, lambda_short: float,
                              laser_pose: np.ndarray) -> np.ndarray:
    """``beam_model_numba`` always split over the threads."""
    return _beam_model(poses, ranges, bearings, state, resolution, origin_x, origin_y, range_max, z_hit, z_short,
                       z_max, z_rand, sigma_hit, lambda_short, laser_pose, True)


def _bm_error(n_ranges: int, n_bearings: int, range_max: float = 4.0) -> Callable[[], Any]:
    return lambda: ((np.zeros((2, 3)), np.ones(n_ranges), np.zeros(n_bearings), np.zeros((3, 3), np.int8), 0.1,
                     0.0, 0.0, range_max, *BEAM_PARAMS.values(), np.zeros(3)), {})


define_op(
    "amcl_beam_model",
    reference=sensors.beam_model,
    dtypes=F64,
    samples=[
        Sample("N=31 B=37 NaN/inf/max beams", _bm(31, 37, 0)),
        Sample("N=17 B=12 laser offset", _bm(17, 12, 1, laser=(0.15, 0.05, -0.4))),
        Sample("N=0 B=7", _bm(0, 7, 2)),
    ],
    error_samples=[
        ErrorSample("bearings length", _bm_error(5, 6), ValueError, "bearings (6,)"),
        ErrorSample("range_max -1", _bm_error(5, 5, -1.0), ValueError, "range_max=-1.0"),
        ErrorSample("sigma_hit 0", lambda: ((np.zeros((2, 3)), np.ones(5), np.zeros(5), np.zeros((3, 3), np.int8),
                                             0.1, 0.0, 0.0, 4.0, *{**BEAM_PARAMS, "sigma_hit": 0.0}.values(),
                                             np.zeros(3)), {}), ValueError, "sigma_hit=0.0"),
    ],
    doc="nav2 beam-model weight factors: 1 + sum of pz^3 with ray-cast expected ranges",
)
register_kernel("amcl_beam_model", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=numba_unavailable, tolerances=CLOSE)(beam_model_numba)
register_kernel("amcl_beam_model", "numba_parallel", devices=("cpu",), dtypes=F64, priority=5,
                available=numba_unavailable, tolerances=CLOSE)(beam_model_numba_parallel)


# -- KLD resampling and clusters -------------------------------------------------------------------
def _rs(n: int, max_particles: int, min_particles: int, seed: int, w_diff: float = 0.0, spread: float = 1.0,
        weights: str = "random", pop_z: float = 2.326, wrap: bool = True) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        rng = np.random.default_rng(seed)
        poses = np.stack([rng.normal(2, spread, n), rng.normal(-1, spread, n), rng.uniform(-math.pi, math.pi, n)], 1)
        w = {"random": rng.random(n) ** 4, "zero": np.zeros(n), "one-hot": np.eye(1, n, n // 2)[0],
             "nan": np.full(n, np.nan)}[weights]
        random_poses = np.stack([rng.uniform(-5, 5, max_particles), rng.uniform(-5, 5, max_particles),
                                 rng.uniform(-math.pi, math.pi, max_particles)], 1)
        return (poses, w, rng.random(max_particles), rng.random(max_particles), random_poses, w_diff, min_particles,
                max_particles, 0.05, pop_z, np.array(kld.BIN_SIZE), wrap), {}
    return make


def kld_resample_numba(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                       random_poses: np.ndarray, w_diff: float, min_particles: int, max_particles: int,
                       pop_err: float, pop_z: float, bin_size: np.ndarray,
                       wrap_theta: bool = True) -> tuple[np.ndarray, int]:
    """KLD-adaptive resampling with binary-search draws and a hash table of bins: O(N + n log N)."""
    poses, weights, u_select, u_random, random_poses, bin_size = (
        _f64(a) for a in (poses, weights, u_select, u_random, random_poses, bin_size))
    kld.check_resample_args(poses, weights, u_select, u_random, random_poses, min_particles, max_particles, pop_err)
    out, k = _numba("kld").kld_resample_numba(poses, weights, u_select, u_random, random_poses, float(w_diff),
                                              int(min_particles), int(max_particles), float(pop_err), float(pop_z),
                                              bin_size, bool(wrap_theta))
    return out, int(k)


def _rs_error(**change: Any) -> Callable[[], Any]:
    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        a: dict[str, Any] = dict(poses=np.zeros((4, 3)), weights=np.ones(4), u_select=np.zeros(6), u_random=np.zeros(6),
                                 random_poses=np.zeros((6, 3)), w_diff=0.0, min_particles=2, max_particles=6,
                                 pop_err=0.05, pop_z=2.3, bin_size=np.array(kld.BIN_SIZE))
        a.update(change)
        return tuple(a.values()), {}
    return make


define_op(
    "amcl_kld_resample",
    reference=kld.kld_resample,
    dtypes=F64,
    samples=[
        Sample("N=500 -> max 700 spread", _rs(500, 700, 50, 0)),
        Sample("N=301 -> max 2000 wide", _rs(301, 2000, 100, 1, spread=8.0)),
        Sample("N=97 one-hot weight", _rs(97, 300, 20, 2, weights="one-hot")),
        Sample("N=97 zero weights", _rs(97, 300, 20, 3, weights="zero")),
        Sample("N=41 NaN weights", _rs(41, 200, 10, 4, weights="nan")),
        Sample("N=250 recovery w_diff=0.3", _rs(250, 400, 30, 5, w_diff=0.3)),
        Sample("N=250 nav2 pf_z=0.99 unwrapped", _rs(250, 800, 30, 6, pop_z=0.99, wrap=False)),
        Sample("N=1 max 1", _rs(1, 1, 1, 7)),
    ],
    error_samples=[
        ErrorSample("min > max", _rs_error(min_particles=7), ValueError, "min_particles=7"),
        ErrorSample("u_select length", _rs_error(u_select=np.zeros(5)), ValueError, "u_select: shape (5,)"),
        ErrorSample("weights length", _rs_error(weights=np.ones(3)), ValueError, "weights: shape (3,)"),
        ErrorSample("no particles", _rs_error(poses=np.zeros((0, 3)), weights=np.ones(0)), ValueError,
                    "poses: shape (0, 3)"),
    ],
    doc="KLD-adaptive resampling (nav2 pf_update_resample) with O(log N) draws",
)
register_kernel("amcl_kld_resample", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=numba_unavailable)(kld_resample_numba)


def _cs(n: int, seed: int, wrap: bool = True, weights: str = "random", around_pi: bool = False) -> Make:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        rng = np.random.default_rng(seed)
        centres = rng.uniform(-6, 6, (4, 2))
        c = centres[rng.integers(0, 4, n)]
        th = rng.normal(math.pi if around_pi else 0.0, 0.15, n)
        poses = np.stack([c[:, 0] + rng.normal(0, 0.3, n), c[:, 1] + rng.normal(0, 0.3, n),
                          np.arctan2(np.sin(th), np.cos(th))], 1)
        w = rng.random(n) if weights == "random" else np.zeros(n)
        if weights == "partly zero":
            w[: n // 2] = rng.random(n // 2)
        return (poses, w, np.array(kld.BIN_SIZE), wrap), {}
    return make


def cluster_stats_numba(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                        wrap_theta: bool = True) -> tuple[np.ndarray, ...]:
    """Clusters of touching bins and their weighted statistics (nav2 pf_cluster_stats, normalised)."""
    poses, weights, bin_size = (_f64(a) for a in (poses, weights, bin_size))
    if poses.ndim != 2 or poses.shape[1] != 3 or weights.shape != (poses.shape[0],):
        raise ValueError(f"poses {poses.shape}, weights {weights.shape}: expected (N, 3) and (N,)")
    return tuple(_numba("kld").cluster_stats_numba(poses, weights, bin_size, bool(wrap_theta)))


define_op(
    "amcl_cluster_stats",
    reference=kld.cluster_stats,
    dtypes=F64,
    samples=[
        Sample("N=400 four clusters", _cs(400, 0)),
        Sample("N=257 around ±π wrapped", _cs(257, 1, around_pi=True)),
        Sample("N=257 around ±π unwrapped", _cs(257, 2, wrap=False, around_pi=True)),
        Sample("N=90 zero weights", _cs(90, 3, weights="zero")),
        Sample("N=90 half zero weights", _cs(90, 4, weights="partly zero")),
        Sample("N=0", _cs(0, 5)),
    ],
    error_samples=[
        ErrorSample("weights length", lambda: ((np.zeros((3, 3)), np.ones(2), np.array(kld.BIN_SIZE)), {}),
                    ValueError, "weights (2,)"),
    ],
    doc="clusters of touching (x, y, theta) bins with weight, mean and covariance (nav2 pf_cluster_stats)",
)
register_kernel("amcl_cluster_stats", "numba", devices=("cpu",), dtypes=F64, priority=10,
                available=numba_unavailable, tolerances={"*": Tolerance(atol=1e-10, rtol=1e-9)})(cluster_stats_numba)


# -- public functions -----------------------------------------------------------------------------
def amcl_distance_map(state: np.ndarray, resolution: float, max_dist: float, *, backend: str | None = None) -> Any:
    """Distance (m) from each cell of an int8 grid (-1 free, 0 unknown, +1 occupied) to the nearest
    occupied cell, ``max_dist`` beyond int(max_dist / resolution) cells (nav2 map_update_cspace)."""
    return call("amcl_distance_map", state, resolution, max_dist, backend=backend)


def amcl_ray_cast(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, poses: np.ndarray,
                  bearings: np.ndarray, max_range: float, *, backend: str | None = None) -> Any:
    """(N, B) ranges from each pose along each bearing to the first non-free cell (nav2 map_calc_range)."""
    return call("amcl_ray_cast", state, resolution, origin_x, origin_y, poses, bearings, max_range, backend=backend)


def amcl_motion(poses: np.ndarray, odom_pose: np.ndarray, delta: np.ndarray, alphas: np.ndarray, noise: np.ndarray,
                model: str = "differential", *, backend: str | None = None) -> Any:
    """Particles (N, 3) moved by the odometry increment ``delta`` ending at ``odom_pose``; alphas
    alpha1..alpha5; noise (N, 3) standard normals; model 'differential' or 'omni'."""
    return call("amcl_motion", poses, odom_pose, delta, alphas, noise, model=model, backend=backend)


def amcl_likelihood_field(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """Weight factors (N,): see ``pyimpl.amcl.sensors.likelihood_field`` for the arguments."""
    return call("amcl_likelihood_field", *args, backend=backend, **kwargs)


def amcl_likelihood_field_prob(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """Weight factors (N,): see ``pyimpl.amcl.sensors.likelihood_field_prob`` for the arguments."""
    return call("amcl_likelihood_field_prob", *args, backend=backend, **kwargs)


def amcl_beam_model(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """Weight factors (N,): see ``pyimpl.amcl.sensors.beam_model`` for the arguments."""
    return call("amcl_beam_model", *args, backend=backend, **kwargs)


def amcl_kld_resample(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """(poses (n, 3), bins k): see ``pyimpl.amcl.kld.kld_resample`` for the arguments."""
    return call("amcl_kld_resample", *args, backend=backend, **kwargs)


def amcl_cluster_stats(*args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """(labels, weights, means, covariances, set mean, set covariance): see ``pyimpl.amcl.kld.cluster_stats``."""
    return call("amcl_cluster_stats", *args, backend=backend, **kwargs)
