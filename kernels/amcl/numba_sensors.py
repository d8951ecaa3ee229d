"""Numba laser sensor models (nav2 ``LikelihoodFieldModel``, ``LikelihoodFieldModelProb``,
``BeamModel``); formulas in ``pyimpl.amcl.sensors``.

Particles run in parallel (``prange``); each reads its pose, the B beams (shared, in cache) and
one distance-map cell per beam (likelihood field: N·B random 8-byte reads, the cost that
matters) or walks up to range / res cells per beam (beam model). Work: N·B exp + 2 sincos.
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


@njit(cache=True, parallel=True)
def likelihood_field_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                           resolution: float, origin_x: float, origin_y: float, max_dist: float, range_max: float,
                           z_hit: float, z_rand: float, sigma_hit: float, laser_pose: np.ndarray) -> np.ndarray:
    n = poses.shape[0]
    nb = ranges.shape[0]
    h, w = dist.shape
    cx = origin_x + (w // 2) * resolution
    cy = origin_y + (h // 2) * resolution
    denom = 2 * sigma_hit * sigma_hit
    zr = z_rand * (1.0 / range_max)
    out = np.empty(n)
    for k in prange(n):
        px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
        p = 1.0
        for b in range(nb):
            r = ranges[b]
            if not r < range_max:  # max-range and NaN beams are ignored
                continue
            a = pt + bearings[b]
            z = _field(dist, cx, cy, resolution, px + r * math.cos(a), py + r * math.sin(a), max_dist)
            if z == math.inf:
                z = max_dist
            pz = z_hit * math.exp(-(z * z) / denom) + zr
            p += pz * pz * pz
        out[k] = p
    return out


@njit(cache=True, parallel=True)
def likelihood_field_prob_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, dist: np.ndarray,
                                resolution: float, origin_x: float, origin_y: float, max_dist: float,
                                range_max: float, z_hit: float, z_rand: float, sigma_hit: float,
                                laser_pose: np.ndarray, skip: bool, beam_skip_distance: float,
                                beam_skip_threshold: float, beam_skip_error_threshold: float) -> np.ndarray:
    n = poses.shape[0]
    nb = ranges.shape[0]
    h, w = dist.shape
    cx = origin_x + (w // 2) * resolution
    cy = origin_y + (h // 2) * resolution
    denom = 2 * sigma_hit * sigma_hit
    zr = z_rand * (1.0 / range_max)
    out = np.empty(n)
    if not skip:
        for k in prange(n):
            px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
            log_p = 0.0
            for b in range(nb):
                r = ranges[b]
                if not r < range_max:
                    continue
                a = pt + bearings[b]
                z = _field(dist, cx, cy, resolution, px + r * math.cos(a), py + r * math.sin(a), max_dist)
                if z == math.inf:
                    z = max_dist
                log_p += math.log(z_hit * math.exp(-(z * z) / denom) + zr)
            out[k] = math.exp(log_p)
        return out
    logs = np.zeros((n, nb))
    near = np.zeros((n, nb), np.bool_)
    for k in prange(n):
        px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
        for b in range(nb):
            r = ranges[b]
            if not r < range_max:
                continue
            a = pt + bearings[b]
            z = _field(dist, cx, cy, resolution, px + r * math.cos(a), py + r * math.sin(a), max_dist)
            near[k, b] = z < beam_skip_distance
            if z == math.inf:
                z = max_dist
            logs[k, b] = math.log(z_hit * math.exp(-(z * z) / denom) + zr)
    keep = np.ones(nb, np.bool_)
    if n > 0 and nb > 0:
        kept = 0
        for b in range(nb):
            agree = 0
            for k in range(n):
                agree += near[k, b]
            keep[b] = agree / n > beam_skip_threshold
            kept += keep[b]
        if nb - kept >= nb * beam_skip_error_threshold:  # too many beams disagree: use them all
            keep[:] = True
    for k in prange(n):
        log_p = 0.0
        for b in range(nb):
            if keep[b]:
                log_p += logs[k, b]
        out[k] = math.exp(log_p)
    return out


@njit(cache=True, parallel=True)
def beam_model_numba(poses: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, state: np.ndarray,
                     resolution: float, origin_x: float, origin_y: float, range_max: float, z_hit: float,
                     z_short: float, z_max: float, z_rand: float, sigma_hit: float, lambda_short: float,
                     laser_pose: np.ndarray) -> np.ndarray:
    n = poses.shape[0]
    nb = ranges.shape[0]
    denom = 2 * sigma_hit * sigma_hit
    out = np.empty(n)
    for k in prange(n):
        px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
        p = 1.0
        for b in range(nb):
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
        out[k] = p
    return out
