"""AMCL: the Numba kernels against the pyimpl reference and nav2's C core (the ``amcl`` package).

Cases (60 beams, likelihood field unless named; particles in a tracking cloud on nav2's
tb3_sandbox map from tests/data/maps):
- motion: N = 2000, 10 000, 50 000
- sensor: likelihood_field, likelihood_field_prob, beam at N = 2000, 10 000; 1 thread vs all
  (``kernels.amcl.ops.set_threads``)
- beams: N = 10 000 with 15 .. 240 beams (how time grows with beams)
- resample: fixed N = 2000, 10 000, 50 000 draws; nav2's sampler (a linear scan of the cumulative
  weights per draw) compiled with Numba as the peer, so the difference is the algorithm alone
- bins: the KLD bin structure alone, insert + count (``amcl_kld_bins``) and clustering
  (``amcl_bin_clusters``), for N = 2000, 10 000, 50 000 in a compact (tracking) and a spread
  (global localization) cloud: nav2's kd-tree (``numba_kdtree``), the hash table (``numba``), the reference
- update: a whole filter update (motion + sensor + resample + clusters) at fixed N = 2000, 10 000:
  ours (likelihood field with the hash table and with the kd-tree, ``kld_bins``, and beam model),
  the reference filter, and nav2's C core (beam model)
- compile: a fresh process (``python -m modelkernels.kernels.amcl.warmup``: Python,
  ``import modelkernels.kernels`` with its torch import, then every AMCL kernel) with an empty Numba
  cache, and one loading from the cache
Every case verifies its output against the reference before timing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest

from benchmarks.harness import verify
from modelkernels.kernels.amcl import (
    ParticleFilter,
    amcl_beam_model,
    amcl_bin_clusters,
    amcl_distance_map,
    amcl_kld_bins,
    amcl_kld_resample,
    amcl_likelihood_field,
    amcl_likelihood_field_prob,
    amcl_motion,
    amcl_ray_cast,
    load_map,
    ops,
)
from modelkernels.kernels.amcl.evaluate import NavAmclPeer, peer_unavailable
from modelkernels.kernels.amcl.simulator import simulate
from modelkernels.kernels.registry import Tolerance
from modelkernels.pyimpl.amcl import kld

MAPS = Path(__file__).resolve().parents[1] / "tests" / "data" / "maps"
CLOSE = Tolerance(atol=1e-9, rtol=1e-9)
BINS = np.array(kld.BIN_SIZE)


def _map() -> Any:
    return load_map(MAPS / "tb3_sandbox.yaml")


_STATE: dict[str, Any] = {}


def _world() -> dict[str, Any]:
    """The map, its distance map, a true pose, a 360-beam scan and a simulated run (built once)."""
    if not _STATE:
        m = _map()
        run = simulate(m, 120, seed=0, beams=360, range_max=8.0)
        dist = amcl_distance_map(m.state, m.resolution, 2.0)
        dist.setflags(write=False)  # as the filter keeps it: the likelihood table is built once and cached
        _STATE.update(map=m, dist=dist, run=run, truth=run.truth[0])
    return _STATE


def _cloud(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _world()["truth"] + rng.normal(0, [0.3, 0.3, 0.15], (n, 3))


def _scan(beams: int) -> tuple[np.ndarray, np.ndarray]:
    w = _world()
    bearings = np.linspace(-math.pi, math.pi, beams, endpoint=False)
    ranges = amcl_ray_cast(w["map"].state, *w["map"].geometry, w["truth"][None], bearings, 8.0)[0]
    ranges = ranges + np.random.default_rng(1).normal(0, 0.02, beams)
    return ranges, bearings


def _threads(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    def run() -> Any:
        prev = ops.get_threads()
        ops.set_threads(n)
        try:
            return fn()
        finally:
            ops.set_threads(prev)
    return run


ALL = ops.get_threads()


# -- motion -----------------------------------------------------------------------------------------
MOTION = [(n, impl) for n in (2000, 10000, 50000) for impl in ("numba", "reference")]


@pytest.mark.parametrize("n,impl", MOTION, ids=[f"N={n}-{i}" for n, i in MOTION])
def test_amcl_motion(bench, quick, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 10000:
        pytest.skip("--quick: N <= 10000")
    poses = _cloud(n)
    noise = np.random.default_rng(2).standard_normal((n, 3))
    args = (poses, np.array([1.0, 0.5, 0.3]), np.array([0.2, 0.05, 0.1]), np.full(5, 0.2), noise)
    verify(amcl_motion(*args, backend=impl), amcl_motion(*args, backend="reference"), CLOSE, f"motion N={n}")
    bench(lambda: amcl_motion(*args, backend=impl), suite="amcl_motion", case=f"N={n}", series="differential",
          size=n, impl=impl, role="ours" if impl == "numba" else "reference", work={"particles": n}, rounds=30)


# -- sensor models ----------------------------------------------------------------------------------
SENSOR = [(model, n, impl) for model in ("likelihood_field", "likelihood_field_prob", "beam") for n in (2000, 10000)
          for impl in ("numba", "numba-1-thread", "reference")]


def _sensor_call(model: str, n: int, beams: int, backend: str) -> Callable[[], Any]:
    w = _world()
    m, poses = w["map"], _cloud(n)
    ranges, bearings = _scan(beams)
    if model == "beam":
        return lambda: amcl_beam_model(poses, ranges, bearings, m.state, *m.geometry, 8.0, 0.5, 0.05, 0.05, 0.5,
                                       0.2, 0.1, np.zeros(3), backend=backend)
    fn = amcl_likelihood_field if model == "likelihood_field" else amcl_likelihood_field_prob
    return lambda: fn(poses, ranges, bearings, w["dist"], *m.geometry, 2.0, 8.0, 0.5, 0.5, 0.2, np.zeros(3),
                      backend=backend)


@pytest.mark.parametrize("model,n,impl", SENSOR, ids=[f"{m}-N={n}-{i}" for m, n, i in SENSOR])
def test_amcl_sensor(bench, quick, model: str, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 2000:
        pytest.skip("--quick: N = 2000")
    if impl == "reference" and model == "beam" and n > 2000:
        pytest.skip("the reference beam model (vectorised Bresenham) is slow: N = 2000 only")
    backend = "reference" if impl == "reference" else "numba_parallel"
    fn = _sensor_call(model, n, 60, backend)
    fn = _threads(fn, 1) if impl == "numba-1-thread" else fn
    if impl != "reference":
        verify(fn(), _sensor_call(model, n, 60, "reference")(), CLOSE, f"{model} N={n}")
    bench(fn, suite="amcl_sensor", case=f"{model} N={n}", series=model, size=n,
          impl=impl if impl != "numba" else f"numba-{ALL}-threads", role="reference" if impl == "reference" else "ours",
          work={"particle_beams": n * 60}, rounds=5 if impl == "reference" else 30)


BEAMS = [(b, impl) for b in (15, 30, 60, 120, 240) for impl in ("numba", "numba-1-thread")]


@pytest.mark.parametrize("beams,impl", BEAMS, ids=[f"B={b}-{i}" for b, i in BEAMS])
def test_amcl_beams(bench, quick, beams: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and beams > 60:
        pytest.skip("--quick: up to 60 beams")
    fn = _sensor_call("likelihood_field", 10000, beams, "numba_parallel")
    fn = _threads(fn, 1) if impl == "numba-1-thread" else fn
    verify(fn(), _sensor_call("likelihood_field", 10000, beams, "reference")(), CLOSE, f"likelihood_field B={beams}")
    bench(fn, suite="amcl_beams", case=f"N=10000 B={beams}", series=impl, size=beams, impl=impl, role="ours",
          work={"particle_beams": 10000 * beams}, rounds=30)


# -- resampling -------------------------------------------------------------------------------------
@numba.njit(cache=True)
def nav2_linear_scan_resample(poses: np.ndarray, weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """nav2's draw (pf_update_resample): for each draw, scan c[i] <= r < c[i+1] from i = 0."""
    n = poses.shape[0]
    c = np.zeros(n + 1)
    for i in range(n):
        c[i + 1] = c[i] + weights[i]
    out = np.empty((u.shape[0], 3))
    for m in range(u.shape[0]):
        r = u[m] * c[n]
        i = 0
        while i < n - 1 and not (c[i] <= r < c[i + 1]):
            i += 1
        out[m] = poses[i]
    return out


RESAMPLE = [(n, impl) for n in (2000, 10000, 50000) for impl in ("numba", "reference", "nav2-linear-scan")]


@pytest.mark.parametrize("n,impl", RESAMPLE, ids=[f"N={n}-{i}" for n, i in RESAMPLE])
def test_amcl_resample(bench, quick, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 10000:
        pytest.skip("--quick: N <= 10000")
    rng = np.random.default_rng(3)
    poses, w, u = _cloud(n), rng.random(n) ** 2, rng.random(n)
    args = (poses, w, u, np.ones(n), np.zeros((n, 3)), 0.0, n, n, 0.05, 2.326, BINS)
    ref, _ = amcl_kld_resample(*args, backend="reference")
    if impl == "nav2-linear-scan":
        fn: Callable[[], Any] = lambda: nav2_linear_scan_resample(poses, w, u)
        verify(fn(), ref, what=f"nav2 linear scan N={n}")
    else:
        fn = lambda: amcl_kld_resample(*args, backend=impl)
        verify(fn()[0], ref, what=f"resample N={n}")
    role = {"numba": "ours", "reference": "reference", "nav2-linear-scan": "peer"}[impl]
    bench(fn, suite="amcl_resample", case=f"N={n}", series="kld", size=n, impl=impl, role=role,
          work={"particles": n}, rounds=3 if impl == "nav2-linear-scan" and n > 10000 else 20)


# -- the bin structure: kd-tree vs hash table ---------------------------------------------------------
BIN_CASES = [(op, cloud, n, impl) for op in ("insert+count", "clustering") for cloud in ("compact", "spread")
             for n in (2000, 10000, 50000) for impl in ("numba_kdtree", "numba", "reference")]


def _spread_cloud(n: int, seed: int = 0) -> np.ndarray:
    """Global localization's cloud: uniform over the map, any heading."""
    xmin, xmax, ymin, ymax = _world()["map"].extent()
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(xmin, xmax, n), rng.uniform(ymin, ymax, n), rng.uniform(-math.pi, math.pi, n)], 1)


@pytest.mark.parametrize("op,cloud,n,impl", BIN_CASES, ids=[f"{o}-{c}-N={n}-{i}" for o, c, n, i in BIN_CASES])
def test_amcl_bins(bench, quick, op: str, cloud: str, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 10000:
        pytest.skip("--quick: N <= 10000")
    poses = _cloud(n) if cloud == "compact" else _spread_cloud(n)
    poses[:, 2] = np.arctan2(np.sin(poses[:, 2]), np.cos(poses[:, 2]))
    w = np.random.default_rng(4).random(n)
    if op == "insert+count":
        fn: Callable[[], Any] = lambda: amcl_kld_bins(poses, w, BINS, backend=impl)
        ref = amcl_kld_bins(poses, w, BINS, backend="reference")
    else:
        fn = lambda: amcl_bin_clusters(poses, BINS, backend=impl)
        ref = amcl_bin_clusters(poses, BINS, backend="reference")
    verify(fn(), ref, what=f"{op} {cloud} N={n} {impl}")
    bins = len(amcl_kld_bins(poses, w, BINS)[1])
    role = {"numba_kdtree": "ours", "numba": "ours", "reference": "reference"}[impl]
    bench(fn, suite="amcl_bins", case=f"{op} {cloud} N={n} (k={bins} bins)", series=f"{op} {cloud}", size=n,
          impl={"numba_kdtree": "kd-tree (numba)", "numba": "hash table (numba)"}.get(impl, impl), role=role,
          work={"particles": n}, rounds=(3 if n > 10000 else 5) if impl == "reference" else 30)


# -- the whole update ---------------------------------------------------------------------------------
UPDATE = [(n, impl) for n in (2000, 10000) for impl in ("numba", "numba-kdtree", "numba-beam", "reference",
                                                         "nav2-core-beam")]


def _updater(n: int, impl: str) -> tuple[Callable[[], Any], Any]:
    """A closure that feeds the next scan of the run to a fresh filter, and the filter."""
    w = _world()
    run = w["run"]
    if impl == "nav2-core-beam":
        filt: Any = NavAmclPeer(w["map"], particles=n)
    else:
        model = "beam" if impl.endswith("beam") else "likelihood_field"
        filt = ParticleFilter(w["map"], backend="reference" if impl.startswith("reference") else None,
                              random_seed=0, min_particles=n, max_particles=n, update_min_d=0.0, update_min_a=0.0,
                              laser_model_type=model, kld_bins="kdtree" if impl == "numba-kdtree" else "hash")
    filt.initialize(run.truth[0], (0.05, 0.05, 0.02))
    step = [0]

    def update() -> Any:
        k = step[0] % len(run)
        step[0] += 1
        return filt.update(run.odometry[k], run.scans[k])

    return update, filt


def _verify_update(n: int, impl: str) -> None:
    """Ours follows the reference filter particle for particle (same seed); the peer's estimate
    after a few scans is within 0.3 m of the reference's."""
    ref_impl = "reference-beam" if impl in ("numba-beam", "nav2-core-beam") else "reference"
    steps = 2
    (fa, a), (fb, b) = _updater(n, impl), _updater(min(n, 2000) if impl == "nav2-core-beam" else n, ref_impl)
    for _ in range(steps):
        fa(), fb()
    k = steps - 1
    if impl == "nav2-core-beam":
        odom = _world()["run"].odometry[k]
        gap = np.hypot(*(a.pose_at(odom)[:2] - b.pose_at(odom)[:2]))
        assert gap < 0.3, f"nav2 core and reference estimates differ by {gap:.2f} m"
    else:
        verify(a.poses, b.poses, CLOSE, f"filter update N={n} {impl}")


@pytest.mark.parametrize("n,impl", UPDATE, ids=[f"N={n}-{i}" for n, i in UPDATE])
def test_amcl_update(bench, quick, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 2000:
        pytest.skip("--quick: N = 2000")
    if impl == "nav2-core-beam" and peer_unavailable():
        pytest.skip(peer_unavailable())
    if impl != "reference" and (impl in ("numba", "numba-kdtree") or n <= 2000):
        _verify_update(n, impl)
    fn, _ = _updater(n, impl)
    fn()
    role = {"numba": "ours", "numba-kdtree": "ours", "numba-beam": "ours", "reference": "reference",
            "nav2-core-beam": "peer"}[impl]
    bench(fn, suite="amcl_update", case=f"N={n}", series="update", size=n, impl=impl, role=role,
          work={"particles": n}, rounds=5 if impl == "reference" else 20)


# -- compile time -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_amcl_compile(bench, quick, cache: str) -> None:  # type: ignore[no-untyped-def]
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="amcl-numba-cache-"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp), PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "modelkernels.kernels.amcl.warmup"]
    if cache == "warm":
        subprocess.run(cmd, env=env, check=True, capture_output=True)

    def fresh() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if cache == "cold":
            for f in tmp.rglob("*"):
                if f.is_file():
                    f.unlink()
        return (), {}

    bench(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True), suite="amcl_compile",
          case=f"{cache} cache", series="compile", impl=f"python -m modelkernels.kernels.amcl.warmup ({cache} cache)",
          role="ours", setup=fresh, rounds=3 if cache == "cold" else 5)
