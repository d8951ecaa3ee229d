"""Numba laser sensor models (nav2 ``LikelihoodFieldModel``, ``LikelihoodFieldModelProb``,
``BeamModel``); formulas in ``pyimpl.amcl.sensors``.

Every kernel scores the particles ``start:stop`` into ``out`` and releases the GIL (``nogil``),
so ``ops`` splits big calls over a small pool of Python threads (idle threads sleep instead of
spinning, unlike an OpenMP pool, which matters on a busy machine) and runs small ones inline.
The likelihood-field models read pz³ (or log pz) from a per-cell table (``field_table``: one exp
per cell, cached by ``ops`` for a read-only distance map) when the scan has more beam end points
than the map has cells / 4, and evaluate the exp per beam otherwise: the same bits either way.
Each particle reads its pose, the B beam end points in the laser frame (shared, in cache) and one
table or distance-map cell per beam (N·B random 8-byte reads: the cost that matters), or walks up
to range / res cells per beam (beam model).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from modelkernels.kernels.amcl.numba_maps import calc_range


@njit(cache=True)
def _laser_on(poses: np.ndarray, k: int, lx: float, ly: float, lth: float) -> tuple[float, float, float]:
    x, y, t = poses[k, 0], poses[k, 1], poses[k, 2]
    c = math.cos(t)
    s = math.sin(t)
    a = t + lth
    return x + lx * c - ly * s, y + lx * s + ly * c, math.atan2(math.sin(a), math.cos(a))


@njit(cache=True)
def _laser_frame(poses: np.ndarray, k: int, lx: float, ly: float, lth: float) -> tuple[float, float, float, float]:
    """The laser's position on particle k and the cos / sin of its heading θ + lth (two sincos
    only when the laser is turned on the robot)."""
    t = poses[k, 2]
    c0 = math.cos(t)
    s0 = math.sin(t)
    px = poses[k, 0] + lx * c0 - ly * s0
    py = poses[k, 1] + lx * s0 + ly * c0
    if lth == 0.0:
        return px, py, c0, s0
    return px, py, math.cos(t + lth), math.sin(t + lth)


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
def _field_particle(poses: np.ndarray, k: int, ranges: np.ndarray, bx: np.ndarray, by: np.ndarray, dist: np.ndarray,
                    cx: float, cy: float, resolution: float, max_dist: float, range_max: float, z_hit: float,
                    zr: float, denom: float, laser_pose: np.ndarray, log_sum: bool) -> float:
    """1 + Σ pz³ (or exp Σ log pz with ``log_sum``) over one particle's usable beams; (bx, by) are
    the beams' end points in the laser frame, rotated by the particle's heading (no sincos per beam)."""
    px, py, c, s = _laser_frame(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    p = 0.0 if log_sum else 1.0
    for b in range(ranges.shape[0]):
        if not ranges[b] < range_max:  # max-range and NaN beams are ignored
            continue
        z = _field(dist, cx, cy, resolution, px + c * bx[b] - s * by[b], py + s * bx[b] + c * by[b], max_dist)
        if z == math.inf:
            z = max_dist
        pz = z_hit * math.exp(-(z * z) / denom) + zr
        if log_sum:
            p += math.log(pz)
        else:
            p += pz * pz * pz
    return math.exp(p) if log_sum else p


@njit(cache=True)
def _field_setup(dist: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, resolution: float, origin_x: float,
                 origin_y: float, range_max: float, z_rand: float,
                 sigma_hit: float) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    h, w = dist.shape
    nb = ranges.shape[0]
    bx = np.zeros(nb)
    by = np.zeros(nb)
    for b in range(nb):
        if ranges[b] < range_max:
            bx[b] = ranges[b] * math.cos(bearings[b])
            by[b] = ranges[b] * math.sin(bearings[b])
    return (origin_x + (w // 2) * resolution, origin_y + (h // 2) * resolution, z_rand * (1.0 / range_max),
            2 * sigma_hit * sigma_hit, bx, by)


@njit(cache=True, nogil=True)
def field_table(dist: np.ndarray, z_hit: float, z_rand: float, sigma_hit: float, range_max: float,
                log_sum: bool) -> np.ndarray:
    """The likelihood field itself: pz³ (or log pz) of every cell, pz = z_hit·exp(-z²/(2σ²)) + z_rand / range_max.
    One exp per cell, so a scan costs one table read per beam instead of one exp."""
    zr = z_rand * (1.0 / range_max)
    denom = 2 * sigma_hit * sigma_hit
    h, w = dist.shape
    out = np.empty((h, w))
    for j in range(h):
        for i in range(w):
            z = dist[j, i]
            pz = z_hit * math.exp(-(z * z) / denom) + zr
            out[j, i] = math.log(pz) if log_sum else pz * pz * pz
    return out


@njit(cache=True)
def _table_particle(poses: np.ndarray, k: int, ranges: np.ndarray, bx: np.ndarray, by: np.ndarray,
                    table: np.ndarray, off_map: float, cx: float, cy: float, resolution: float, range_max: float,
                    laser_pose: np.ndarray, log_sum: bool) -> float:
    """``_field_particle`` reading pz³ / log pz from the table (``off_map`` off the map)."""
    px, py, c, s = _laser_frame(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    h, w = table.shape
    p = 0.0 if log_sum else 1.0
    for b in range(ranges.shape[0]):
        if not ranges[b] < range_max:
            continue
        fi = math.floor((px + c * bx[b] - s * by[b] - cx) / resolution + 0.5) + w // 2
        fj = math.floor((py + s * bx[b] + c * by[b] - cy) / resolution + 0.5) + h // 2
        if fi >= 0 and fi < w and fj >= 0 and fj < h:
            p += table[int(fj), int(fi)]
        else:
            p += off_map
    return math.exp(p) if log_sum else p


@njit(cache=True)
def _skip_logs(poses: np.ndarray, k: int, ranges: np.ndarray, bx: np.ndarray, by: np.ndarray, dist: np.ndarray,
               cx: float, cy: float, resolution: float, max_dist: float, range_max: float, z_hit: float, zr: float,
               denom: float, laser_pose: np.ndarray, beam_skip_distance: float, logs: np.ndarray,
               near: np.ndarray) -> None:
    """One particle's log pz per beam, and whether each beam ends within beam_skip_distance of an obstacle."""
    px, py, c, s = _laser_frame(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    for b in range(ranges.shape[0]):
        if not ranges[b] < range_max:
            continue
        z = _field(dist, cx, cy, resolution, px + c * bx[b] - s * by[b], py + s * bx[b] + c * by[b], max_dist)
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
def _beam_particle(poses: np.ndarray, k: int, ranges: np.ndarray, cb: np.ndarray, sb: np.ndarray,
                   state: np.ndarray, resolution: float, origin_x: float, origin_y: float, range_max: float,
                   z_hit: float, z_short: float, z_max: float, z_rand: float, denom: float, lambda_short: float,
                   laser_pose: np.ndarray) -> float:
    px, py, pt = _laser_on(poses, k, laser_pose[0], laser_pose[1], laser_pose[2])
    c = math.cos(pt)
    s = math.sin(pt)
    p = 1.0
    for b in range(ranges.shape[0]):
        r = ranges[b]
        if r != r:
            continue
        expected = calc_range(state, resolution, origin_x, origin_y, px, py, c * cb[b] - s * sb[b],
                              s * cb[b] + c * sb[b], range_max)
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


@njit(cache=True, nogil=True)
def likelihood_field_range(start: int, stop: int, out: np.ndarray, poses: np.ndarray, ranges: np.ndarray,
                           bx: np.ndarray, by: np.ndarray, dist: np.ndarray, cx: float, cy: float, resolution: float,
                           max_dist: float, range_max: float, z_hit: float, zr: float, denom: float,
                           laser_pose: np.ndarray, log_sum: bool) -> None:
    for k in range(start, stop):
        out[k] = _field_particle(poses, k, ranges, bx, by, dist, cx, cy, resolution, max_dist, range_max, z_hit,
                                 zr, denom, laser_pose, log_sum)


@njit(cache=True, nogil=True)
def likelihood_table_range(start: int, stop: int, out: np.ndarray, poses: np.ndarray, ranges: np.ndarray,
                           bx: np.ndarray, by: np.ndarray, table: np.ndarray, off_map: float, cx: float, cy: float,
                           resolution: float, range_max: float, laser_pose: np.ndarray, log_sum: bool) -> None:
    for k in range(start, stop):
        out[k] = _table_particle(poses, k, ranges, bx, by, table, off_map, cx, cy, resolution, range_max,
                                 laser_pose, log_sum)


@njit(cache=True, nogil=True)
def beamskip_logs_range(start: int, stop: int, logs: np.ndarray, near: np.ndarray, poses: np.ndarray,
                        ranges: np.ndarray, bx: np.ndarray, by: np.ndarray, dist: np.ndarray, cx: float, cy: float,
                        resolution: float, max_dist: float, range_max: float, z_hit: float, zr: float, denom: float,
                        laser_pose: np.ndarray, beam_skip_distance: float) -> None:
    for k in range(start, stop):
        _skip_logs(poses, k, ranges, bx, by, dist, cx, cy, resolution, max_dist, range_max, z_hit, zr, denom,
                   laser_pose, beam_skip_distance, logs, near)


@njit(cache=True, nogil=True)
def skip_mask(near: np.ndarray, beam_skip_threshold: float, beam_skip_error_threshold: float) -> np.ndarray:
    return _skip_mask(near, beam_skip_threshold, beam_skip_error_threshold)


@njit(cache=True, nogil=True)
def masked_exp_range(start: int, stop: int, out: np.ndarray, logs: np.ndarray, keep: np.ndarray) -> None:
    for k in range(start, stop):
        out[k] = _masked_exp_sum(logs, k, keep)


@njit(cache=True, nogil=True)
def field_setup(dist: np.ndarray, ranges: np.ndarray, bearings: np.ndarray, resolution: float, origin_x: float,
                origin_y: float, range_max: float, z_rand: float,
                sigma_hit: float) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    return _field_setup(dist, ranges, bearings, resolution, origin_x, origin_y, range_max, z_rand, sigma_hit)


@njit(cache=True, nogil=True)
def beam_model_range(start: int, stop: int, out: np.ndarray, poses: np.ndarray, ranges: np.ndarray,
                     bearings: np.ndarray, state: np.ndarray, resolution: float, origin_x: float, origin_y: float,
                     range_max: float, z_hit: float, z_short: float, z_max: float, z_rand: float, sigma_hit: float,
                     lambda_short: float, laser_pose: np.ndarray) -> None:
    denom = 2 * sigma_hit * sigma_hit
    cb = np.cos(bearings)
    sb = np.sin(bearings)
    for k in range(start, stop):
        out[k] = _beam_particle(poses, k, ranges, cb, sb, state, resolution, origin_x, origin_y, range_max, z_hit,
                                z_short, z_max, z_rand, denom, lambda_short, laser_pose)
