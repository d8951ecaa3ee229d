"""The whole localizer as nav2_amcl's ``AmclNode`` drives ``pf.c``: the reference filter.

``update(odom_pose, scan)`` follows ``laserReceived``: the first scan after (re)initialisation
anchors the odometry and forces a sensor update; afterwards the filter moves only when the
odometry has changed by more than ``update_min_d`` in x or y or ``update_min_a`` in θ; then the
motion model moves every particle, the sensor model reweights them (``pf_update_sensor``: weights
normalised, w_slow / w_fast running averages), and every ``resample_interval``-th update
resamples (KLD, with random free-space poses at rate max(0, 1 - w_fast / w_slow)) and recomputes
the clusters; the estimate is the mean of the heaviest cluster with the whole set's covariance.

All randomness comes from one ``numpy.random.Generator`` seeded by ``random_seed``, drawn here
and passed to the kernels: the same seed gives the same run, on every backend.

Bad input never crashes a running filter nor yields NaN: non-finite odometry, a scan whose
``range_max`` is not > 0 or whose ranges are all unusable is skipped (``update`` returns False,
with a warning); NaN / negative / below-``range_min`` ranges follow nav2 (mapped to range_max,
NaN ignored), +Inf is a max-range reading; weights that vanish or overflow fall back to uniform.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelkernels.pyimpl.amcl import kld, maps, motion, sensors
from modelkernels.pyimpl.amcl.params import AmclParameters
from modelkernels.pyimpl.amcl.poses import angle_diff

REFERENCE_KERNELS: dict[str, Callable[..., Any]] = {
    "motion": motion.motion,
    "likelihood_field": sensors.likelihood_field,
    "likelihood_field_prob": sensors.likelihood_field_prob,
    "beam": sensors.beam_model,
    "kld_resample": kld.kld_resample,
    "cluster_stats": kld.cluster_stats,
    "distance_map": maps.distance_map,
}


@dataclass
class Scan:
    """One laser scan as ``sensor_msgs/LaserScan``: ranges (m) at bearings angle_min + i·angle_increment
    in the laser's frame, or at explicit ``angles``."""

    ranges: np.ndarray
    angle_min: float = -math.pi
    angle_increment: float = 0.0
    range_min: float = 0.0
    range_max: float = 30.0
    angles: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ranges = np.asarray(self.ranges, np.float64)
        if self.ranges.ndim != 1:
            raise ValueError(f"ranges: shape {self.ranges.shape}: expected a 1-D array")
        if self.angles is not None:
            self.angles = np.asarray(self.angles, np.float64)
            if self.angles.shape != self.ranges.shape:
                raise ValueError(f"angles: {self.angles.size} values for {self.ranges.size} ranges: expected one "
                                 "angle per range")
            if not np.isfinite(self.angles).all():
                raise ValueError("angles: must be finite")
        for name in ("angle_min", "angle_increment", "range_min", "range_max"):
            setattr(self, name, float(getattr(self, name)))
        if not (math.isfinite(self.angle_min) and math.isfinite(self.angle_increment)):
            raise ValueError(f"angle_min={self.angle_min!r}, angle_increment={self.angle_increment!r}: must be finite")

    @property
    def bearings(self) -> np.ndarray:
        if self.angles is not None:
            return self.angles
        return self.angle_min + np.arange(self.ranges.size) * self.angle_increment


@dataclass
class Estimate:
    """The filter's answer: pose (x, y, θ) of the heaviest cluster, the particle set's covariance
    (3 x 3: x, y, θ), that cluster's weight, and how many clusters there are."""

    pose: np.ndarray
    covariance: np.ndarray
    weight: float
    clusters: int


# Particles farther out than this are refused (odometry jumps that would put them there are
# rejected): far beyond any map, and small enough that sums of squared coordinates over every
# particle stay finite.
MAX_COORDINATE = 1e15


def _poses_in_range(poses: np.ndarray) -> bool:
    return bool(np.isfinite(poses).all() and (np.abs(poses[:, :2]) <= MAX_COORDINATE).all())


class ParticleFilter:
    """nav2_amcl's particle filter over an ``OccupancyMap`` (reference kernels; the fast one is
    ``kernels.amcl.ParticleFilter``). Parameters: nav2's names (``AmclParameters``)."""

    def __init__(self, occupancy_map: maps.OccupancyMap, kernels: dict[str, Callable[..., Any]] | None = None,
                 **params: Any) -> None:
        if not isinstance(occupancy_map, maps.OccupancyMap):
            raise TypeError(f"occupancy_map: {type(occupancy_map).__name__}: expected an OccupancyMap "
                            "(kernels.amcl.load_map or OccupancyMap.from_grid)")
        self.map = occupancy_map
        self.params = AmclParameters.from_kwargs(**params)
        self.kernels = dict(REFERENCE_KERNELS, **(kernels or {}))
        p = self.params
        self.rng = np.random.default_rng(None if p.random_seed < 0 else p.random_seed)
        self.bin_size = np.array(kld.BIN_SIZE)
        self.free_cells = occupancy_map.free_cells()
        self.distance: np.ndarray | None = None
        if p.laser_model_type != "beam":
            self.distance = np.array(self.kernels["distance_map"](occupancy_map.state, occupancy_map.resolution,
                                                                   p.laser_likelihood_max_dist))
            self.distance.setflags(write=False)  # fixed for the filter's life: kernels may cache tables of it
        self.poses = np.zeros((0, 3))
        self.weights = np.zeros(0)
        self.w_slow = self.w_fast = 0.0
        self.converged = False
        self.odom_pose: np.ndarray | None = None  # odometry at the last filter update (pf_odom_pose_)
        self.resample_count = 0
        self.updates = 0
        self.force_update = False
        self._stats: tuple[np.ndarray, ...] | None = None
        self._ones = np.ones(p.max_particles)
        self._zeros = np.zeros((p.max_particles, 3))

    # -- initialisation ---------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return self.poses.shape[0] > 0

    def initialize(self, pose: Any, cov: Any = (0.25, 0.25, (math.pi / 12) ** 2)) -> None:
        """``pf_init``: max_particles poses from N(pose, cov); cov (3, 3), or (3,) variances."""
        mean = np.asarray(pose, np.float64).reshape(-1)
        if mean.shape != (3,) or not np.isfinite(mean).all() or (np.abs(mean[:2]) > MAX_COORDINATE).any():
            raise ValueError(f"pose: {pose!r}: expected three finite numbers (x, y, theta) with |x|, |y| <= "
                             f"{MAX_COORDINATE:g} m")
        c = np.asarray(cov, np.float64)
        c = np.diag(c) if c.shape == (3,) else c
        if c.shape != (3, 3) or not np.isfinite(c).all():
            raise ValueError(f"cov: shape {np.shape(cov)}: expected a finite (3, 3) matrix or (3,) variances")
        evals, evecs = np.linalg.eigh((c + c.T) / 2)
        if evals.min() < -1e-9 * max(1.0, float(np.abs(evals).max())):
            raise ValueError(f"cov: eigenvalues {evals.tolist()}: a covariance must be positive semi-definite")
        n = self.params.max_particles
        r = self.rng.standard_normal((n, 3)) * np.sqrt(np.clip(evals, 0.0, None))
        poses = mean + r @ evecs.T
        poses[:, 2] = np.arctan2(np.sin(poses[:, 2]), np.cos(poses[:, 2]))
        self._reset(poses)

    def global_localization(self) -> None:
        """``pf_init_model`` with nav2's uniform generator: max_particles poses on free cells, θ uniform."""
        if len(self.free_cells) == 0:
            raise ValueError("global_localization: the map has no free cell to draw poses from")
        self._reset(self._random_poses(self.params.max_particles))

    def _random_poses(self, n: int) -> np.ndarray:
        cells = self.free_cells[self.rng.integers(0, len(self.free_cells), n)]
        x, y = self.map.cell_to_world(cells[:, 0], cells[:, 1])
        th = self.rng.random(n) * 2 * math.pi - math.pi
        return np.stack([x, y, th], axis=1).astype(np.float64)

    def _reset(self, poses: np.ndarray) -> None:
        self.poses = np.ascontiguousarray(poses, np.float64)
        self.weights = np.full(len(poses), 1.0 / len(poses))
        self.w_slow = self.w_fast = 0.0
        self.converged = False
        self.odom_pose = None
        self._cluster()

    # -- the update -------------------------------------------------------------------------------
    def update(self, odom_pose: Any, scan: Scan) -> bool:
        """One scan with the odometry pose it was taken at. Returns True when the filter updated
        (motion + sensor, and resampling on its interval), False when gated or skipped."""
        if not self.initialized:
            raise RuntimeError("update: the filter has no particles: call initialize(pose, cov) or "
                               "global_localization() first")
        if not isinstance(scan, Scan):
            raise TypeError(f"scan: {type(scan).__name__}: expected a Scan")
        pose = np.asarray(odom_pose, np.float64).reshape(-1)
        if pose.shape != (3,) or not np.isfinite(pose).all():
            warnings.warn(f"update: odom_pose {odom_pose!r} is not three finite numbers; scan skipped", stacklevel=2)
            return False
        data = self._laser_data(scan)
        if data is None:
            return False
        if self.odom_pose is None:
            self.odom_pose = pose
            self.resample_count = 0
        else:
            delta = np.array([pose[0] - self.odom_pose[0], pose[1] - self.odom_pose[1],
                              angle_diff(float(pose[2]), float(self.odom_pose[2]))])
            p = self.params
            moved = abs(delta[0]) > p.update_min_d or abs(delta[1]) > p.update_min_d or abs(delta[2]) > p.update_min_a
            if not (moved or self.force_update):
                return False
            noise = self.rng.standard_normal(self.poses.shape)
            moved_poses = np.asarray(self.kernels["motion"](self.poses, pose, delta, np.array(p.alphas), noise,
                                                            model=p.robot_model_type))
            if not _poses_in_range(moved_poses):
                warnings.warn(f"update: the odometry jump {delta.tolist()} would move particles to non-finite poses "
                              f"or beyond ±{MAX_COORDINATE:g} m; the jump is rejected (particles stay, scan skipped) "
                              "and this odometry pose is the reference for the next update", stacklevel=2)
                self.odom_pose = pose
                return False
            self.poses = moved_poses
            self.force_update = False
        self._sensor_update(*data)
        self.odom_pose = pose
        self.updates += 1
        self.resample_count += 1
        if self.resample_count % self.params.resample_interval == 0:
            self.resample()
        return True

    def _laser_data(self, scan: Scan) -> tuple[np.ndarray, np.ndarray, float] | None:
        """nav2 ``updateFilter``'s range rules and the beams the model reads; None to skip the scan."""
        p = self.params
        if not (scan.range_max > 0 and math.isfinite(scan.range_max)):
            warnings.warn(f"update: scan.range_max={scan.range_max!r} must be finite and > 0; scan skipped",
                          stacklevel=3)
            return None
        range_max = min(scan.range_max, p.laser_max_range) if p.laser_max_range > 0 else scan.range_max
        range_min = max(scan.range_min, p.laser_min_range) if p.laser_min_range > 0 else scan.range_min
        idx = sensors.beam_indices(scan.ranges.size, p.max_beams, p.laser_model_type)
        ranges = scan.ranges[idx].copy()
        with np.errstate(invalid="ignore"):
            ranges[(ranges <= range_min) | (ranges == np.inf)] = range_max
        bearings = scan.bearings[idx] + p.laser_pose[2]
        if not (np.isfinite(ranges) & (ranges < range_max)).any() and p.laser_model_type != "beam":
            warnings.warn("update: no usable range in the scan (all NaN or max-range); scan skipped", stacklevel=3)
            return None
        return ranges, bearings, float(range_max)

    def _sensor_update(self, ranges: np.ndarray, bearings: np.ndarray, range_max: float) -> None:
        """``pf_update_sensor``: weights *= model factor, normalised; w_slow / w_fast updated."""
        p, m = self.params, self.map
        lp = np.array([p.laser_pose[0], p.laser_pose[1], 0.0])
        if p.laser_model_type == "beam":
            f = self.kernels["beam"](self.poses, ranges, bearings, m.state, m.resolution, m.origin_x, m.origin_y,
                                     range_max, p.z_hit, p.z_short, p.z_max, p.z_rand, p.sigma_hit, p.lambda_short, lp)
        else:
            args = (self.poses, ranges, bearings, self.distance, m.resolution, m.origin_x, m.origin_y,
                    p.laser_likelihood_max_dist, range_max, p.z_hit, p.z_rand, p.sigma_hit, lp)
            if p.laser_model_type == "likelihood_field":
                f = self.kernels["likelihood_field"](*args)
            else:
                f = self.kernels["likelihood_field_prob"](
                    *args, do_beamskip=p.do_beamskip, converged=self.converged,
                    beam_skip_distance=p.beam_skip_distance, beam_skip_threshold=p.beam_skip_threshold,
                    beam_skip_error_threshold=p.beam_skip_error_threshold)
        w = self.weights * np.asarray(f)
        w[~np.isfinite(w) | (w < 0)] = 0.0
        total = float(w.sum())
        if total > 0 and math.isfinite(total):
            w_avg = total / len(w)
            self.weights = w / total
            self.w_slow = w_avg if self.w_slow == 0.0 else self.w_slow + p.recovery_alpha_slow * (w_avg - self.w_slow)
            self.w_fast = w_avg if self.w_fast == 0.0 else self.w_fast + p.recovery_alpha_fast * (w_avg - self.w_fast)
        else:
            self.weights = np.full(len(w), 1.0 / len(w))

    def resample(self) -> None:
        """``pf_update_resample``: KLD-adaptive draw, recovery poses, clusters, convergence."""
        p = self.params
        w_diff = max(0.0, 1.0 - self.w_fast / self.w_slow) if self.w_slow > 0 else 0.0
        u_select = self.rng.random(p.max_particles)
        if w_diff > 0:
            u_random = self.rng.random(p.max_particles)
            random_poses = self._random_poses(p.max_particles) if len(self.free_cells) else self._zeros
        else:
            u_random, random_poses = self._ones, self._zeros
        poses, _ = self.kernels["kld_resample"](self.poses, self.weights, u_select, u_random, random_poses, w_diff,
                                                p.min_particles, p.max_particles, p.pf_err, p.pop_z, self.bin_size,
                                                p.wrap_theta)
        if w_diff > 0:
            self.w_slow = self.w_fast = 0.0
        self.poses = np.ascontiguousarray(poses)
        self.weights = np.full(len(poses), 1.0 / len(poses))
        self._cluster()
        mean = self.poses[:, :2].mean(axis=0)
        self.converged = bool((np.abs(self.poses[:, :2] - mean) <= 0.5).all())

    def _cluster(self) -> None:
        self._stats = tuple(self.kernels["cluster_stats"](self.poses, self.weights, self.bin_size,
                                                           self.params.wrap_theta))

    # -- answers ----------------------------------------------------------------------------------
    def estimate(self) -> Estimate:
        """The heaviest cluster's mean and the particle set's covariance (nav2's published pose)."""
        if self._stats is None:
            raise RuntimeError("estimate: the filter has no particles yet")
        _, cw, cm, _, mean, cov = self._stats
        if len(cw) and cw.max() > 0:
            best = int(np.argmax(cw))
            return Estimate(cm[best].copy(), cov.copy(), float(cw[best]), len(cw))
        return Estimate(mean.copy(), cov.copy(), 0.0, len(cw))

    def pose_at(self, odom_pose: Any) -> np.ndarray:
        """The robot's map pose now: the estimate carried forward by the odometry since the last
        filter update (what nav2's map -> odom transform gives between updates)."""
        est = self.estimate().pose
        pose = np.asarray(odom_pose, np.float64).reshape(-1)
        if self.odom_pose is None or pose.shape != (3,) or not np.isfinite(pose).all():
            return est
        ref = self.odom_pose
        c, s = math.cos(ref[2]), math.sin(ref[2])
        dx, dy = pose[0] - ref[0], pose[1] - ref[1]
        local = (c * dx + s * dy, -s * dx + c * dy, angle_diff(float(pose[2]), float(ref[2])))
        ce, se = math.cos(est[2]), math.sin(est[2])
        th = est[2] + local[2]
        return np.array([est[0] + ce * local[0] - se * local[1], est[1] + se * local[0] + ce * local[1],
                         math.atan2(math.sin(th), math.cos(th))])

    def cluster_summary(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(weight, mean, covariance) of every cluster, heaviest first."""
        if self._stats is None:
            return []
        _, cw, cm, cc, _, _ = self._stats
        order = np.argsort(-cw, kind="stable")
        return [(float(cw[i]), cm[i].copy(), cc[i].copy()) for i in order]
