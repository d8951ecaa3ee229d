"""Numba laser sensor models (nav2 ``LikelihoodFieldModel``, ``LikelihoodFieldModelProb``,
``BeamModel``); formulas in ``pyimpl.amcl.sensors``.

One function scores one particle; a serial and a parallel (``prange``) loop run it over the
particles, and the caller picks the parallel one when there is enough work to repay waking the
thread pool (``ops.PARALLEL_MIN_WORK`` particle-beams). Each particle reads its pose, the B beams
(shared, in cache) and one distance-map cell per beam (likelihood field: N·B random 8-byte reads,
the cost that matters), or walks up to range / res cells per beam (beam model).
Work: N·B exp (+ log for the prob model) and N·B sincos.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.amcl.numba_maps import calc_range


@njit(cache=True)
def _laser_on(poses: np.ndarray, k: int, lx: float, ly: float, lth: float) -> tuple[float, float, float]:
    x, y, t = poses[k, 0], poses[k, 1], poses[k, 2]
    c = math.cos(t)
    s = math.sin(t)
    a = t + lth
    return x + lx * c - ly * s, y + lx * s + ly * c, math.atan2(math.sin(a), math.cos(a))


@njit(cache=True)
def _field(dist: np.ndarray, cx: float, cy: float, resolution: float, hx: float, hy: float,
           max_dist: float) -> float:
    """Distance-map value at a world point, ``inf`` off the map (caller substitutes max_dist)."""
    h, w = dist.shape
    fi = math.floor((hx - cx) / resolution + 0.5) + w // 2
    fj = math.floor((hy - cy) / resolution + 0.5) + h // 2
    if fi >= 0 and fi < w and fj >= 0 and fj < h:
        return dist[int(fj), int(fi)]
    return math.inf


@njit(cache=True)
def _field_particle(poses: np.ndarray, k: int, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                    cx: float, cy: float, resolution: float, max_dist: float, range_max: float, z_hit: float,
                    zr: float, denom: float, laser_pose: np.ndarray, log_sum: bool) -> float:
    """1 + Σ pz³ (or Σ log pz with ``log_sum``) over one particle's usable beams."""
    px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    p = 0.0 if log_sum else 1.0
    for b in range(ranges.shape[0]):
        r = ranges[b]
        if not r < range_max:  # max-range and NaN beams are ignored
            continue
        a = pt + bearings[b]
        z = _field(dist, cx, cy, resolution, px + r * math.cos(a), py + r * math.sin(a), max_dist)
        if z == math.inf:
            z = max_dist
        pz = z_hit * math.exp(-(z * z) / denom) + zr
        if log_sum:
            p += math.log(pz)
        else:
            p += pz * pz * pz
    return math.exp(p) if log_sum else p


@njit(cache=True)
def _field_setup(dist: np.ndarray, resolution: float, origin_x: float, origin_y: float, range_max: float,
                 z_rand: float, sigma_hit: float) -> tuple[float, float, float, float]:
    h, w = dist.shape
    return (origin_x + (w // 2) * resolution, origin_y + (h // 2) * resolution, z_rand * (1.0 / range_max),
            2 * sigma_hit * sigma_hit)


@njit(cache=True)
def likelihood_field_serial(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                            resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                            z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray,
                            log_sum: bool) -> np.ndarray:
    cx, cy, zr, denom = _field_setup(dist, resolution, origin_x, origin_y, range_max, z_rand, sigma_hit)
    out = np.empty(poses.shape[0])
    for k in range(poses.shape[0]):
        out[k] = _field_particle(poses, k, ranges, bearings, dist, cx, cy, resolution, max_dist, range_max, z_hit,
                                 zr, denom, laser_pose, log_sum)
    return out


@njit(cache=True, parallel=True)
def likelihood_field_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                              resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                              z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray,
                              log_sum: bool) -> np.ndarray:
    cx, cy, zr, denom = _field_setup(dist, resolution, origin_x, origin_y, range_max, z_rand, sigma_hit)
    out = np.empty(poses.shape[0])
    for k in prange(poses.shape[0]):
        out[k] = _field_particle(poses, k, ranges, bearings, dist, cx, cy, resolution, max_dist, range_max, z_hit,
                                 zr, denom, laser_pose, log_sum)
    return out


@njit(cache=True)
def _skip_logs(poses: np.ndarray, k: int, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray, cx: float,
               cy: float, resolution: float, max_dist: float, range_max: float, z_hit: float, zr: float, denom: float,
               laser_pose: np.ndarray, beam_skip_distance: float, logs: np.ndarray, near: np.ndarray) -> None:
    """One particle's log pz per beam, and whether each beam ends within beam_skip_distance of an obstacle."""
    px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    for b in range(ranges.shape[0]):
        r = ranges[b]
        if not r < range_max:
            continue
        a = pt + bearings[b]
        z = _field(dist, cx, cy, resolution, px + r * math.cos(a), py + r * math.sin(a), max_dist)
        near[k, b] = z < beam_skip_distance
        if z == math.inf:
            z = max_dist
        logs[k, b] = math.log(z_hit * math.exp(-(z * z) / denom) + zr)


@njit(cache=True)
def _skip_mask(near: np.ndarray, beam_skip_threshold: float, beam_skip_error_threshold: float) -> np.ndarray:
    n, nb = near.shape
    keep = np.ones(nb, np.bool_)
    if n == 0 or nb == 0:
        return keep
    kept = 0
    for b in range(nb):
        agree = 0
        for k in range(n):
            agree += near[k, b]
        keep[b] = agree / n > beam_skip_threshold
        kept += keep[b]
    if nb - kept >= nb * beam_skip_error_threshold:  # too many beams disagree: use them all
        keep[:] = True
    return keep


@njit(cache=True)
def _masked_exp_sum(logs: np.ndarray, k: int, keep: np.ndarray) -> float:
    log_p = 0.0
    for b in range(logs.shape[1]):
        if keep[b]:
            log_p += logs[k, b]
    return math.exp(log_p)


@njit(cache=True)
def likelihood_field_beamskip_serial(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                                    resolution: float, origin_x: float, origin_y: float, max_dist: float,
                                    range_max: float, z_hit: float, z_rand: float, sigma_hit: float,
                                    laser_pose: np.ndarray, beam_skip_distance: float,
                                    beam_skip_threshold: float, beam_skip_error_threshold: float) -> np.ndarray:
    cx, cy, zr, denom = _field_setup(dist, resolution, origin_x, origin_y, range_max, z_rand, sigma_hit)
    n, nb = poses.shape[0], ranges.shape[0]
    logs = np.zeros((n, nb))
    near = np.zeros((n, nb), np.bool_)
    for k in range(n):
        _skip_logs(poses, k, ranges, bearings, dist, cx, cy, resolution, max_dist, range_max, z_hit, zr, denom,
                   laser_pose, beam_skip_distance, logs, near)
    keep = _skip_mask(near, beam_skip_threshold, beam_skip_error_threshold)
    out = np.empty(n)
    for k in range(n):
        out[k] = _masked_exp_sum(logs, k, keep)
    return out


@njit(cache=True, parallel=True)
def likelihood_field_beamskip_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                                      resolution: float, origin_x: float, origin_y: float, max_dist: float,
                                      range_max: float, z_hit: float, z_rand: float, sigma_hit: float,
                                      laser_pose: np.ndarray, beam_skip_distance: float,
                                      beam_skip_threshold: float, beam_skip_error_threshold: float) -> np.ndarray:
    cx, cy, zr, denom = _field_setup(dist, resolution, origin_x, origin_y, range_max, z_rand, sigma_hit)
    n, nb = poses.shape[0], ranges.shape[0]
    logs = np.zeros((n, nb))
    near = np.zeros((n, nb), np.bool_)
    for k in prange(n):
        _skip_logs(poses, k, ranges, bearings, dist, cx, cy, resolution, max_dist, range_max, z_hit, zr, denom,
                   laser_pose, beam_skip_distance, logs, near)
    keep = _skip_mask(near, beam_skip_threshold, beam_skip_error_threshold)
    out = np.empty(n)
    for k in prange(n):
        out[k] = _masked_exp_sum(logs, k, keep)
    return out


@njit(cache=True)
def _beam_particle(poses: np.ndarray, k: int, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                   resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                   z_short: float, z_max: float, z_rand: float, denom: float, lambda_short: float,
                   laser_pose: np.ndarray) -> float:
    px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    p = 1.0
    for b in range(ranges.shape[0]):
        r = ranges[b]
        if r != r:
            continue
        expected = calc_range(state, resolution, origin_x, origin_y, px, py, pt + bearings[b], range_max)
        z = r - expected
        pz = z_hit * math.exp(-(z * z) / denom)
        if z < 0:
            pz += z_short * lambda_short * math.exp(-lambda_short * r)
        if r == range_max:
            pz += z_max
        if r < range_max:
            pz += z_rand / range_max
        p += pz * pz * pz
    return p


@njit(cache=True)
def beam_model_serial(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                      resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                      z_short: float, z_max: float, z_rand: float, sigma_hit: float, lambda_short: float,
                      laser_pose: np.ndarray) -> np.ndarray:
    denom = 2 * sigma_hit * sigma_hit
    out = np.empty(poses.shape[0])
    for k in range(poses.shape[0]):
        out[k] = _beam_particle(poses, k, ranges, bearings, state, resolution, origin_x, origin_y, range_max, z_hit,
                                z_short, z_max, z_rand, denom, lambda_short, laser_pose)
    return out


@njit(cache=True, parallel=True)
def beam_model_parallel(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                        resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                        z_short: float, z_max: float, z_rand: float, sigma_hit: float, lambda_short: float,
                        laser_pose: np.ndarray) -> np.ndarray:
    denom = 2 * sigma_hit * sigma_hit
    out = np.empty(poses.shape[0])
    for k in prange(poses.shape[0]):
        out[k] = _beam_particle(poses, k, ranges, bearings, state, resolution, origin_x, origin_y, range_max, z_hit,
                                z_short, z_max, z_rand, denom, lambda_short, laser_pose)
    return out
