"""Accuracy on simulated runs: pose tracking error and global-localization convergence.

``track``: the filter starts from the true pose (with ``init_cov``) and follows the run; after
each scan the robot's map pose is the estimate carried forward by odometry (``pose_at``, what
nav2's map -> odom transform gives); errors are |Δxy| and |angle_diff(Δθ)| per step after a
warm-up. ``global_localization``: the filter starts from particles spread over the free space;
it has converged at the first step after which the pose stays within ``pos_tol`` / ``ang_tol``
of the truth to the end of the run.

``fine_scenario``: fine maps (``resolution`` 0.02-0.03 m: generated floor plans and warehouses of
long repeated aisles), dense scans (360 beams), every scan used by every filter, the peer in the
same runs; per-filter medians over the runs with their spread (``python -m modelkernels.kernels.amcl.evaluate
--fine``).

``NavAmclPeer`` drives nav2's C core through the ``amcl`` package (GPL, a benchmark-only peer):
its driver updates on every call (no update gating) and uses the beam model. nav2's own
likelihood-field models are not in that package's compiled module: ``--nav2-source`` builds them
from its sources (``kernels.amcl.nav2_source_peer``) and runs them in the same fine runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from modelkernels.kernels.amcl.simulator import SimulatedRun
from modelkernels.pyimpl.amcl.filter import ParticleFilter, Scan
from modelkernels.pyimpl.amcl.poses import angle_diff_array


@dataclass
class TrackingResult:
    position_error: np.ndarray
    heading_error: np.ndarray
    seconds: float
    updates: int

    def summary(self) -> dict[str, float]:
        pe, he = self.position_error, self.heading_error
        return dict(pos_median=float(np.median(pe)), pos_p95=float(np.percentile(pe, 95)),
                    heading_median=float(np.median(he)), heading_p95=float(np.percentile(he, 95)),
                    ms_per_update=1e3 * self.seconds / max(1, self.updates))


def _errors(poses: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.hypot(poses[:, 0] - truth[:, 0], poses[:, 1] - truth[:, 1])
    return pos, np.abs(angle_diff_array(poses[:, 2], truth[:, 2]))


def track(run: SimulatedRun, make_filter: Callable[[], ParticleFilter], init_cov: Any = (0.01, 0.01, 0.005),
          warmup: int = 10) -> TrackingResult:
    """Tracking error of a filter that starts at the true pose."""
    pf = make_filter()
    pf.initialize(run.truth[0], init_cov)
    out = np.empty_like(run.truth)
    t0 = time.perf_counter()
    updates = 0
    for k in range(len(run)):
        updates += pf.update(run.odometry[k], run.scans[k])
        out[k] = pf.pose_at(run.odometry[k])
    seconds = time.perf_counter() - t0
    pe, he = _errors(out[warmup:], run.truth[warmup:])
    return TrackingResult(pe, he, seconds, updates)


@dataclass
class GlobalResult:
    converged: bool
    steps: int  # steps until it stayed converged (len(run) when it never did)
    distance: float  # metres driven until then
    seconds: float


def global_localization(run: SimulatedRun, make_filter: Callable[[], ParticleFilter], pos_tol: float = 0.5,
                        ang_tol: float = 0.35) -> GlobalResult:
    """Whether and when a filter started from uniform particles finds the robot and stays on it."""
    pf = make_filter()
    pf.global_localization()
    out = np.empty_like(run.truth)
    t0 = time.perf_counter()
    for k in range(len(run)):
        pf.update(run.odometry[k], run.scans[k])
        out[k] = pf.pose_at(run.odometry[k])
    seconds = time.perf_counter() - t0
    pe, he = _errors(out, run.truth)
    bad = np.flatnonzero((pe > pos_tol) | (he > ang_tol))
    steps = 0 if bad.size == 0 else int(bad[-1]) + 1
    converged = steps < len(run) - 5  # held for the last few steps at least
    travelled = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(run.truth[:, :2], axis=0).T))])
    return GlobalResult(converged, steps if converged else len(run),
                        float(travelled[min(steps, len(run) - 1)]), seconds)


def peer_unavailable() -> str | None:
    try:
        import amcl  # noqa: F401
    except ImportError:
        return "the amcl package (nav2's C core, GPL) is not installed: pip install amcl"
    return None


class NavAmclPeer:
    """nav2's C core through the ``amcl`` package, driven like ``ParticleFilter`` (beam model)."""

    def __init__(self, run_map: Any, particles: int = 2000, alphas: tuple[float, ...] = (0.2,) * 5,
                 max_beams: int = 60, min_particles: int | None = None) -> None:
        import amcl

        self._amcl = amcl
        self.loc = amcl.AMCL(min_particles or particles, particles, 0.0, 0.0, amcl.MotionParameters(*alphas),
                             amcl.LaserParameters(0.5, 0.05, 0.05, 0.5, 0.2, 0.1, 0.05, max_beams), "differential")
        values = np.where(run_map.state == 1, 100, np.where(run_map.state == -1, 0, -1)).astype(int)
        self.loc.set_map(amcl.create_occupancy_grid_from_list(values.tolist(), run_map.resolution,
                                                              run_map.origin_x, run_map.origin_y))
        self.loc.set_laser_pose(amcl.Vector3D(0.0, 0.0, 0.0))

    def initialize(self, pose: Any, cov: Any) -> None:
        c = np.asarray(cov, np.float64)
        c = np.diag(c) if c.shape == (3, 3) else c
        self.loc.set_initial_pose(self._amcl.Vector3D(*map(float, pose)),
                                  self._amcl.create_diagonal_covariance(*map(float, c)))

    def update(self, odom_pose: Any, scan: Scan) -> bool:
        r = np.where(np.isnan(scan.ranges) | (scan.ranges <= scan.range_min), scan.range_max, scan.ranges)
        pairs = np.stack([np.minimum(r, scan.range_max), scan.bearings], 1).tolist()
        self.loc.update(self._amcl.create_laser_scan_from_list(pairs, scan.range_max),
                        self._amcl.Vector3D(*map(float, odom_pose)))
        return True

    def pose_at(self, odom_pose: Any) -> np.ndarray:
        p = self.loc.get_pose_mean()
        return np.array([p.x, p.y, p.theta])


def track_peer(run: SimulatedRun, particles: int = 2000, init_cov: Any = (0.01, 0.01, 0.005),
               warmup: int = 10, peer: Any = None) -> TrackingResult:
    """``track`` for the nav2 core peer (every scan updates it: no gating in its driver); ``peer``:
    another driver with the same methods (``Nav2SourcePeer``) instead of the ``amcl`` package's."""
    peer = NavAmclPeer(run.map, particles) if peer is None else peer
    peer.initialize(run.truth[0], init_cov)
    out = np.empty_like(run.truth)
    t0 = time.perf_counter()
    for k in range(len(run)):
        peer.update(run.odometry[k], run.scans[k])
        out[k] = peer.pose_at(run.odometry[k])
    seconds = time.perf_counter() - t0
    pe, he = _errors(out[warmup:], run.truth[warmup:])
    return TrackingResult(pe, he, seconds, len(run))


def _maps(real: str | None, generated: int) -> list[tuple[str, Any]]:
    from modelkernels.kernels.amcl.map_io import load_map
    from modelkernels.kernels.amcl.simulator import generate_map

    out: list[tuple[str, Any]] = [(f"generated-{k}", generate_map(k)) for k in range(generated)]
    if real:
        for name in ("tb3_sandbox", "depot"):
            path = Path(real) / f"{name}.yaml"
            if path.is_file():
                out.append((name, load_map(path)))
    return out


def _track_all(m: Any, run: SimulatedRun, seed: int, reference: bool, peer: bool) -> dict[str, TrackingResult]:
    from modelkernels.kernels.amcl.filter import ParticleFilter

    every: dict[str, Any] = dict(update_min_d=0.0, update_min_a=0.0, min_particles=2000)
    out = {
        "ours (nav2 defaults, gated)": track(run, lambda: ParticleFilter(m, random_seed=seed)),
        "ours (every scan, 2000)": track(run, lambda: ParticleFilter(m, random_seed=seed, **every)),
        "ours beam model (every scan, 2000)": track(run, lambda: ParticleFilter(
            m, random_seed=seed, laser_model_type="beam", **every)),
    }
    if reference:
        out["reference (nav2 defaults, gated)"] = track(
            run, lambda: ParticleFilter(m, random_seed=seed, backend="reference"))
    if peer and peer_unavailable() is None:
        out["nav2 core via amcl (beam, every scan, 2000)"] = track_peer(run, 2000)
    return out


FINE_FILTERS: dict[str, dict[str, Any]] = {
    "ours, beam model": dict(laser_model_type="beam"),
    "ours, likelihood field": dict(laser_model_type="likelihood_field"),
    "ours, likelihood field, sigma_hit 0.1": dict(laser_model_type="likelihood_field", sigma_hit=0.1),
    "ours, likelihood_field_prob": dict(laser_model_type="likelihood_field_prob"),
}


def fine_maps(resolution: float, floors: int, warehouses: int) -> list[tuple[str, Any]]:
    """Generated floor plans and aisle warehouses at ``resolution``."""
    from modelkernels.kernels.amcl.simulator import generate_aisles, generate_map

    return ([(f"floor-{k}", generate_map(k, resolution=resolution)) for k in range(floors)]
            + [(f"aisles-{k}", generate_aisles(k, resolution=resolution)) for k in range(warehouses)])


# nav2's laser models built from source (``--nav2-source``), with their rows' labels as ours have them
NAV2_SOURCE_MODELS = {"likelihood_field": "likelihood field", "likelihood_field_prob": "likelihood_field_prob",
                      "beam": "beam model"}


def fine_scenario(resolution: float = 0.025, floors: int = 1, warehouses: int = 1, seeds: int = 10,
                  steps: int = 150, beams: int = 360, particles: int = 3000, peer: bool = True, scan_upsample: int = 4,
                  filters: dict[str, dict[str, Any]] | None = None,
                  log: Callable[[str], None] | None = None, nav2_library: Path | None = None,
                  nav2_models: tuple[str, ...] = tuple(NAV2_SOURCE_MODELS)) -> dict[str, list[dict[str, float]]]:
    """Per filter, the ``summary`` of every (map, seed) run: the robot drives ``steps`` steps of
    0.1 m (1 m/s, 0.1 s), ``beams``-beam 360° scans with 2 cm noise cast on the map split into
    ``scan_upsample``² sub-cells (not the filters' own ray caster), 5 % odometry noise; every
    filter (and the peer) updates on every scan with ``particles`` particles. ``nav2_library``: nav2's
    core built from the ``amcl`` package's sources (``nav2_source_peer.build``), run in the same runs
    with each of ``nav2_models``."""
    from modelkernels.kernels.amcl.filter import ParticleFilter
    from modelkernels.kernels.amcl.nav2_source_peer import Nav2SourcePeer
    from modelkernels.kernels.amcl.simulator import simulate

    unknown = [mo for mo in nav2_models if mo not in NAV2_SOURCE_MODELS]
    if unknown:
        raise ValueError(f"nav2_models: {unknown} unknown: expected some of {tuple(NAV2_SOURCE_MODELS)}")
    every: dict[str, Any] = dict(update_min_d=0.0, update_min_a=0.0, min_particles=particles,
                                 max_particles=particles)
    rows: dict[str, list[dict[str, float]]] = {}
    for name, m in fine_maps(resolution, floors, warehouses):
        for seed in range(seeds):
            run = simulate(m, steps, seed=seed, speed=1.0, beams=beams, scan_upsample=scan_upsample)
            results = {label: track(run, partial(ParticleFilter, m, random_seed=seed, **every, **extra))
                       for label, extra in (FINE_FILTERS if filters is None else filters).items()}
            if peer and peer_unavailable() is None:
                results["nav2 core (amcl package), beam model"] = track_peer(run, particles)
            for model in nav2_models:
                if nav2_library is not None:
                    results[f"nav2 core built from source, {NAV2_SOURCE_MODELS[model]}"] = track_peer(
                        run, particles, peer=Nav2SourcePeer(nav2_library, m, particles, model, seed=seed))
            for label, result in results.items():
                rows.setdefault(label, []).append(result.summary())
            if log:
                log(f"{name} seed {seed}: " + ", ".join(f"{k} {v.summary()['pos_median']:.3f}"
                                                      for k, v in results.items()))
    return rows


def spread_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: median over the runs of each run's median / p95 error, with the runs' 10th-90th
    percentile range in brackets, and ms per update."""
    out = ["| filter | runs | position median (m) | position p95 (m) | heading median (rad) | ms per update |",
           "|---|---|---|---|---|---|"]
    def cell(summaries: list[dict[str, float]], key: str) -> str:
        lo, mid, hi = np.percentile([s[key] for s in summaries], [10, 50, 90])
        return f"{mid:.3f} [{lo:.3f}-{hi:.3f}]"

    for label, summaries in rows.items():
        ms = np.median([s["ms_per_update"] for s in summaries])
        out.append(f"| {label} | {len(summaries)} | {cell(summaries, 'pos_median')} | "
                   f"{cell(summaries, 'pos_p95')} | {cell(summaries, 'heading_median')} | {ms:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Accuracy table: tracking error and global-localization convergence over maps and seeds."""
    import argparse

    from modelkernels.kernels.amcl.filter import ParticleFilter
    from modelkernels.kernels.amcl.simulator import simulate

    ap = argparse.ArgumentParser(prog="python -m modelkernels.kernels.amcl.evaluate", description=main.__doc__)
    ap.add_argument("--generated", type=int, default=3, help="generated floor plans (default 3)")
    ap.add_argument("--real-maps", help="folder with tb3_sandbox.yaml / depot.yaml to add")
    ap.add_argument("--seeds", type=int, help="seeds per map (default 3; --fine: 10)")
    ap.add_argument("--steps", type=int, help="steps per run (default 300; --fine: 150)")
    ap.add_argument("--no-peer", action="store_true", help="skip nav2's C core even when installed")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference filter")
    ap.add_argument("--fine", action="store_true", help="the fine-map / dense-scan scenario instead "
                    "(--seeds default 10, --steps default 150)")
    ap.add_argument("--resolution", type=float, default=0.025, help="--fine: map resolution (m)")
    ap.add_argument("--floors", type=int, default=1, help="--fine: generated floor plans")
    ap.add_argument("--warehouses", type=int, default=1, help="--fine: aisle warehouses")
    ap.add_argument("--beams", type=int, default=360, help="--fine: beams per scan")
    ap.add_argument("--particles", type=int, default=3000, help="--fine: particles (fixed)")
    ap.add_argument("--scan-upsample", type=int, default=4, help="--fine: scans cast on k x k sub-cells")
    ap.add_argument("--nav2-source", metavar="SDIST", default=os.environ.get("KERNELS_NAV2_AMCL_SOURCE"),
                    help="--fine: also run nav2's own laser models, built from the amcl package's sources: "
                    "its source archive (amcl-<version>.tar.gz), the unpacked folder, or 'pip' (pip download "
                    "of the installed version's sources); needs a C/C++ compiler "
                    "(default: $KERNELS_NAV2_AMCL_SOURCE)")
    ap.add_argument("--nav2-models", default=",".join(NAV2_SOURCE_MODELS),
                    help="--fine --nav2-source: comma-separated laser models (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.fine:
        library = None
        if args.nav2_source:
            from modelkernels.kernels.amcl.nav2_source_peer import build, find_source

            library = build(find_source(args.nav2_source))
        fine = fine_scenario(args.resolution, args.floors, args.warehouses,
                             10 if args.seeds is None else args.seeds, 150 if args.steps is None else args.steps,
                             args.beams, args.particles, not args.no_peer, args.scan_upsample,
                             log=partial(print, flush=True), nav2_library=library,
                             nav2_models=tuple(m for m in args.nav2_models.split(",") if m))
        print("\n" + spread_table(fine))
        return 0
    args.seeds = 3 if args.seeds is None else args.seeds
    args.steps = 300 if args.steps is None else args.steps
    rows: dict[str, list[dict[str, float]]] = {}
    glob: list[tuple[str, GlobalResult]] = []
    for name, m in _maps(args.real_maps, args.generated):
        for seed in range(args.seeds):
            run = simulate(m, args.steps, seed=seed)
            for label, result in _track_all(m, run, seed, not args.no_reference, not args.no_peer).items():
                rows.setdefault(label, []).append(result.summary())
            res = global_localization(run, partial(ParticleFilter, m, random_seed=seed, max_particles=20000,
                                                   min_particles=500, update_min_d=0.1, update_min_a=0.1,
                                                   recovery_alpha_slow=0.001, recovery_alpha_fast=0.1))
            glob.append((name, res))
            print(f"{name} seed {seed}: global {'converged' if res.converged else 'NOT converged'} after "
                  f"{res.steps} steps ({res.distance:.1f} m)", flush=True)
    print("\n| filter | runs | position median (m) | position p95 (m) | heading median (rad) | heading p95 (rad) "
          "| ms per update |\n|---|---|---|---|---|---|---|")
    for label, summaries in rows.items():
        agg = {k: float(np.median([s[k] for s in summaries])) for k in summaries[0]}
        print(f"| {label} | {len(summaries)} | {agg['pos_median']:.3f} | {agg['pos_p95']:.3f} | "
              f"{agg['heading_median']:.3f} | {agg['heading_p95']:.3f} | {agg['ms_per_update']:.2f} |")
    ok = [r for _, r in glob if r.converged]
    print(f"\nglobal localization (20000 particles, recovery 0.001/0.1): {len(ok)}/{len(glob)} converged; "
          f"median {np.median([r.steps for r in ok]) if ok else float('nan'):.0f} steps, "
          f"{np.median([r.distance for r in ok]) if ok else float('nan'):.1f} m driven, "
          f"{np.median([r.seconds for _, r in glob]):.1f} s per {args.steps}-step run")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
