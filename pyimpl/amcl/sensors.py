"""Laser sensor models as nav2_amcl's ``sensors/laser``: the factor each particle's weight is
multiplied by, given one scan (already subsampled to the beams the model uses).

Every model places the laser on the particle (``coord_add(laser_pose, pose)``) and, per beam of
range r and bearing b, looks at the map from there:

- likelihood_field: end point e = pose + R(θ)·r·(cos b, sin b); z = distance map at e
  (``max_dist`` off the map); pz = z_hit·exp(-z²/(2σ²)) + z_rand / range_max;
  p = 1 + Σ pz³ (nav2's ad-hoc combination). Max-range (r ≥ range_max) and NaN beams are ignored.
- likelihood_field_prob: the same pz, combined as p = exp(Σ log pz). With ``do_beamskip`` on a
  converged filter, beams that fewer than ``beam_skip_threshold`` of the particles see within
  ``beam_skip_distance`` of an obstacle are left out, unless at least ``beam_skip_error_threshold``
  of the beams would be (then all are used, as nav2).
- beam: the expected range m by ray casting (``maps.ray_cast``); z = r - m;
  pz = z_hit·exp(-z²/(2σ²)) + [z<0]·z_short·λ·exp(-λ r) + [r = range_max]·z_max
  + [r < range_max]·z_rand / range_max; p = 1 + Σ pz³. NaN beams are ignored.

Departure from nav2 (docs/amcl.md): with beam skipping, ignored (max-range, NaN) beams count as
pz = 1; nav2 reads a stale or zero entry (log 0 = -inf) for them and counts the skip ratio over
``max_beams`` even when the scan has fewer beams.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from modelkernels.pyimpl.amcl.maps import distance_map as distance_map  # re-exported for the sensor's users
from modelkernels.pyimpl.amcl.maps import ray_cast, world_to_cell
from modelkernels.pyimpl.amcl.poses import coord_add

LASER_MODELS = ("likelihood_field", "likelihood_field_prob", "beam")


def beam_indices(range_count: int, max_beams: int, model: str) -> np.ndarray:
    """Indices of the beams a model reads (nav2's step rule); empty when ``max_beams`` < 2.

    likelihood_field and beam: step = (range_count - 1) // (max_beams - 1);
    likelihood_field_prob: step = ceil(range_count / max_beams); both at least 1.
    """
    if model not in LASER_MODELS:
        raise ValueError(f"laser_model_type={model!r}: expected one of {', '.join(LASER_MODELS)}")
    if max_beams < 2 or range_count <= 0:
        return np.zeros(0, np.int64)
    if model == "likelihood_field_prob":
        step = int(np.ceil(range_count / max_beams))
    else:
        step = (range_count - 1) // (max_beams - 1)
    return np.arange(0, range_count, max(step, 1), dtype=np.int64)


# The models divide by 2 sigma_hit²: below this it is no longer a positive normal float.
SIGMA_HIT_MIN = 1e-150


def check_sigma_hit(sigma_hit: Any) -> None:
    if isinstance(sigma_hit, bool) or not isinstance(sigma_hit, numbers.Real) or not (
            math.isfinite(sigma_hit) and float(sigma_hit) >= SIGMA_HIT_MIN):
        raise ValueError(f"sigma_hit={sigma_hit!r}: must be a finite number >= {SIGMA_HIT_MIN} (the models divide by "
                         "2 sigma_hit², which must stay a positive float)")


def check_scan_args(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, laser_pose: np.ndarray,
                    range_max: float, sigma_hit: float) -> None:
    check_sigma_hit(sigma_hit)
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"poses: shape {poses.shape}: expected (N, 3) rows of x, y, theta")
    if ranges.ndim != 1 or bearings.shape != ranges.shape:
        raise ValueError(f"ranges {ranges.shape} and bearings {bearings.shape}: expected two 1-D arrays of one length")
    if laser_pose.shape != (3,):
        raise ValueError(f"laser_pose: shape {laser_pose.shape}: expected (3,)")
    if not range_max > 0:
        raise ValueError(f"range_max={range_max!r}: must be > 0")


def _endpoint_cells(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, shape: tuple[int, int],
                    resolution: float, origin_x: float, origin_y: float,
                    laser_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell (i, j) of every beam's end point (N, B) and whether it lies on the map.

    The laser sits at pose + R(θ)·(lx, ly) with heading θ + lyaw; a beam's end point is the
    laser-frame point r·(cos b, sin b) rotated by that heading (the same point as
    laser + r·(cos(θ+lyaw+b), sin(θ+lyaw+b)), without a sincos per beam)."""
    c0, s0 = np.cos(poses[:, 2:3]), np.sin(poses[:, 2:3])
    lx = poses[:, 0:1] + laser_pose[0] * c0 - laser_pose[1] * s0
    ly = poses[:, 1:2] + laser_pose[0] * s0 + laser_pose[1] * c0
    c, s = np.cos(poses[:, 2:3] + laser_pose[2]), np.sin(poses[:, 2:3] + laser_pose[2])
    bx, by = ranges * np.cos(bearings), ranges * np.sin(bearings)
    hx = lx + c * bx[None, :] - s * by[None, :]
    hy = ly + s * bx[None, :] + c * by[None, :]
    h, w = shape
    fi, fj = world_to_cell(hx, hy, w, h, resolution, origin_x, origin_y)
    valid = (fi >= 0) & (fi < w) & (fj >= 0) & (fj < h)
    i = np.where(valid, fi, 0).astype(np.int64)
    j = np.where(valid, fj, 0).astype(np.int64)
    return i, j, valid


def _field_pz(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray, resolution: float,
              origin_x: float, origin_y: float, max_dist: float, range_max: float, z_hit: float, z_rand: float,
              sigma_hit: float, laser_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pz (N, B), which beams count (B,), and the distance z (N, B) (inf off the map)."""
    used = ~np.isnan(ranges) & (ranges < range_max)
    r = np.where(used, ranges, 0.0)
    i, j, valid = _endpoint_cells(poses, r, bearings, dist.shape, resolution, origin_x, origin_y, laser_pose)
    z = np.where(valid, dist[j, i], max_dist)
    pz = z_hit * np.exp(-(z * z) / (2 * sigma_hit * sigma_hit)) + z_rand * (1.0 / range_max)
    return pz, used, np.where(valid, z, np.inf)


def likelihood_field(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                     resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                     z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray) -> np.ndarray:
    """Weight factors (N,) of nav2's ``LikelihoodFieldModel``: p = 1 + Σ pz³ over the usable beams."""
    poses, ranges, bearings, laser_pose = (np.asarray(a, np.float64) for a in (poses, ranges, bearings, laser_pose))
    check_scan_args(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    pz, used, _ = _field_pz(poses, ranges, bearings, np.asarray(dist, np.float64), resolution, origin_x, origin_y,
                            max_dist, range_max, z_hit, z_rand, sigma_hit, laser_pose)
    return 1.0 + (np.where(used[None, :], pz, 0.0) ** 3).sum(axis=1)


def likelihood_field_prob(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                          resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                          z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray,
                          do_beamskip: bool = False, converged: bool = False, beam_skip_distance: float = 0.5,
                          beam_skip_threshold: float = 0.3, beam_skip_error_threshold: float = 0.9) -> np.ndarray:
    """Weight factors (N,) of nav2's ``LikelihoodFieldModelProb``: p = exp(Σ log pz), beam skipping
    only when ``do_beamskip`` and the filter has ``converged``."""
    poses, ranges, bearings, laser_pose = (np.asarray(a, np.float64) for a in (poses, ranges, bearings, laser_pose))
    check_scan_args(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    pz, used, z = _field_pz(poses, ranges, bearings, np.asarray(dist, np.float64), resolution, origin_x, origin_y,
                            max_dist, range_max, z_hit, z_rand, sigma_hit, laser_pose)
    use = np.broadcast_to(used[None, :], pz.shape)
    n, b = pz.shape
    if do_beamskip and converged and n > 0 and b > 0:
        agree = ((z < beam_skip_distance) & use).sum(axis=0)  # particles that see each beam near an obstacle
        keep = agree / n > beam_skip_threshold
        if (b - int(keep.sum())) < b * beam_skip_error_threshold:
            use = use & keep[None, :]
    return np.exp(np.where(use, np.log(pz), 0.0).sum(axis=1))


def beam_model(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray, resolution: float,
               origin_x: float, origin_y: float, range_max: float, z_hit: float, z_short: float, z_max: float,
               z_rand: float, sigma_hit: float, lambda_short: float, laser_pose: np.ndarray) -> np.ndarray:
    """Weight factors (N,) of nav2's ``BeamModel``: p = 1 + Σ pz³ with ray-cast expected ranges."""
    poses, ranges, bearings, laser_pose = (np.asarray(a, np.float64) for a in (poses, ranges, bearings, laser_pose))
    check_scan_args(poses, ranges, bearings, laser_pose, range_max, sigma_hit)
    lp = coord_add(laser_pose, poses)
    expected = ray_cast(state, resolution, origin_x, origin_y, lp, bearings, range_max)
    used = ~np.isnan(ranges)
    r = np.where(used, ranges, 0.0)[None, :]
    z = r - expected
    pz = z_hit * np.exp(-(z * z) / (2 * sigma_hit * sigma_hit))
    pz = pz + np.where(z < 0, z_short * lambda_short * np.exp(-lambda_short * r), 0.0)
    pz = pz + np.where(r == range_max, z_max, 0.0) + np.where(r < range_max, z_rand / range_max, 0.0)
    return 1.0 + (np.where(used[None, :], pz, 0.0) ** 3).sum(axis=1)
