"""Numba map kernels: the distance map (exact Euclidean distance transform, capped) and ray casting.

distance_map: Felzenszwalb & Huttenlocher, "Distance Transforms of Sampled Functions" (2012):
the squared distance to the nearest occupied cell by two passes of 1-D lower envelopes of
parabolas (columns, then rows), O(cells); then d = res·sqrt(d²) within int(max_dist / res) cells,
``max_dist`` beyond, the values of ``pyimpl.amcl.maps.distance_map`` (O(cells·r²)). Reads the
int8 grid once and writes one float64 per cell.

ray_cast: nav2's ``map_calc_range`` Bresenham walk per ray over a range of poses, GIL released so
``ops`` can split the poses over threads; a ray reads at most range / res + 2 cells.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FAR = 1e20  # "no obstacle" in the squared transform, as in Felzenszwalb's reference code


@njit(cache=True)
def _edt_1d(f: np.ndarray, d: np.ndarray, v: np.ndarray, z: np.ndarray) -> None:
    """d[q] = min_p (q - p)² + f[p]: the lower envelope of parabolas rooted at (p, f[p])."""
    n = f.shape[0]
    k = 0
    v[0] = 0
    z[0] = -_FAR
    z[1] = _FAR
    for q in range(1, n):
        s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * q - 2.0 * v[k])
        while s <= z[k]:
            k -= 1
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * q - 2.0 * v[k])
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = _FAR
    k = 0
    for q in range(n):
        while z[k + 1] < q:
            k += 1
        d[q] = (q - v[k]) * (q - v[k]) + f[v[k]]


@njit(cache=True)
def distance_map_numba(state: np.ndarray, resolution: float, max_dist: float) -> np.ndarray:
    h, w = state.shape
    out = np.full((h, w), max_dist)
    if h == 0 or w == 0:
        return out
    radius = int(max_dist / resolution)
    g = np.empty((h, w))
    n = max(h, w)
    f = np.empty(n)
    d = np.empty(n)
    v = np.empty(n, np.int64)
    z = np.empty(n + 1)
    for i in range(w):
        for j in range(h):
            f[j] = 0.0 if state[j, i] == 1 else _FAR
        _edt_1d(f[:h], d[:h], v[:h], z[:h + 1])
        for j in range(h):
            g[j, i] = d[j]
    r2 = float(radius * radius)
    for j in range(h):
        for i in range(w):
            f[i] = g[j, i]
        _edt_1d(f[:w], d[:w], v[:w], z[:w + 1])
        for i in range(w):
            if d[i] <= r2:
                out[j, i] = math.sqrt(d[i]) * resolution
    return out


@njit(cache=True)
def calc_range(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, ox: float, oy: float,
               dir_x: float, dir_y: float, max_range: float) -> float:
    """nav2 ``map_calc_range``: Bresenham from (ox, oy) along the unit direction (dir_x, dir_y) to
    the first non-free cell (off the map, occupied or unknown)."""
    h, w = state.shape
    cx = origin_x + (w // 2) * resolution
    cy = origin_y + (h // 2) * resolution
    x0 = int(math.floor((ox - cx) / resolution + 0.5) + w // 2)
    y0 = int(math.floor((oy - cy) / resolution + 0.5) + h // 2)
    x1 = int(math.floor((ox + max_range * dir_x - cx) / resolution + 0.5) + w // 2)
    y1 = int(math.floor((oy + max_range * dir_y - cy) / resolution + 0.5) + h // 2)
    steep = abs(y1 - y0) > abs(x1 - x0)
    if steep:
        x0, y0 = y0, x0
        x1, y1 = y1, x1
    deltax = abs(x1 - x0)
    deltay = abs(y1 - y0)
    error = 0
    x = x0
    y = y0
    xstep = 1 if x0 < x1 else -1
    ystep = 1 if y0 < y1 else -1
    end = x1 + xstep
    while True:
        ci, cj = (y, x) if steep else (x, y)
        if ci < 0 or ci >= w or cj < 0 or cj >= h or state[cj, ci] > -1:
            return math.sqrt(float((x - x0) * (x - x0) + (y - y0) * (y - y0))) * resolution
        if x == end:
            return max_range
        x += xstep
        error += deltay
        if 2 * error >= deltax:
            y += ystep
            error -= deltax


@njit(cache=True, nogil=True)
def ray_cast_range(start: int, stop: int, out: np.ndarray, state: np.ndarray, resolution: float, origin_x: float,
                   origin_y: float, poses: np.ndarray, bearings: np.ndarray, max_range: float) -> None:
    """Ranges of poses ``start:stop`` along every bearing into ``out`` (GIL released); the ray
    direction is the bearing's unit vector rotated by the pose's heading."""
    cb = np.cos(bearings)
    sb = np.sin(bearings)
    for k in range(start, stop):
        c = math.cos(poses[k, 2])
        s = math.sin(poses[k, 2])
        for m in range(bearings.shape[0]):
            out[k, m] = calc_range(state, resolution, origin_x, origin_y, poses[k, 0], poses[k, 1],
                                   c * cb[m] - s * sb[m], s * cb[m] + c * sb[m], max_range)
