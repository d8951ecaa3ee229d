"""Numba KLD-adaptive resampling and cluster statistics (nav2 ``pf_update_resample``,
``pf_cluster_stats``); formulas in ``pyimpl.amcl.kld``.

Resampling: one pass builds the cumulative weights, then each draw is a binary search
(O(log N)) and one insert into an open-addressing hash table of packed (x, y, θ) bin keys, so
the KLD bound n(k) is checked after every draw: O(N + n log N) in all, where nav2 scans the
cumulative weights linearly per draw (O(N·n)). Clusters: the same hash table maps each occupied
bin to its index; a depth-first search over the 26 neighbours labels connected bins; the
statistics are two passes over the particles (sums, then centred second moments). nav2's kd-tree
serving the same two uses is ``numba_kdtree.py``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_OFFSET = 1 << 20
_GOLDEN = np.uint64(11400714819323198485)


@njit(cache=True)
def _key(x: float, y: float, t: float, bx: float, by: float, bt: float, wrap: bool,
         n_theta: int) -> tuple[int, int, int]:
    # clamped before the integer conversion, so huge coordinates land on the edge bins
    kx = math.floor(min(max(x / bx, -_OFFSET), _OFFSET - 1))
    ky = math.floor(min(max(y / by, -_OFFSET), _OFFSET - 1))
    if wrap:
        tw = math.atan2(math.sin(t), math.cos(t))
        kt = math.floor((tw + math.pi) / bt) % n_theta
    else:
        kt = math.floor(min(max(t / bt, -_OFFSET), _OFFSET - 1))
    return int(kx), int(ky), kt


@njit(cache=True)
def _pack(kx: int, ky: int, kt: int) -> int:
    return ((kx + _OFFSET) << 42) | ((ky + _OFFSET) << 21) | (kt + _OFFSET)


@njit(cache=True)
def _in_range(kx: int, ky: int, kt: int) -> bool:
    return -_OFFSET <= kx < _OFFSET and -_OFFSET <= ky < _OFFSET and -_OFFSET <= kt < _OFFSET


@njit(cache=True)
def _slot(table: np.ndarray, key: int) -> int:
    """Slot of ``key`` in the open-addressing table (empty slots hold -1): found or free."""
    mask = table.shape[0] - 1
    s = int((np.uint64(key) * _GOLDEN) >> np.uint64(40)) & mask
    while table[s] != -1 and table[s] != key:
        s = (s + 1) & mask
    return s


@njit(cache=True)
def _table(n: int) -> np.ndarray:
    size = 64
    while size < 2 * n:
        size *= 2
    return np.full(size, -1, np.int64)


@njit(cache=True)
def _limit(k: int, pop_err: float, pop_z: float, min_particles: int, max_particles: int) -> int:
    if k <= 1:
        return max_particles
    b = 2.0 / (9.0 * (k - 1))
    x = 1.0 - b + math.sqrt(b) * pop_z
    n = math.ceil((k - 1) / (2.0 * pop_err) * x * x * x)
    return min(max(n, min_particles), max_particles)


@njit(cache=True)
def _cdf(weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Cumulative weights and their total; uniform when the total is not finite and > 0."""
    n = weights.shape[0]
    cdf = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc += weights[i]
        cdf[i] = acc
    if not (acc > 0 and acc < math.inf):
        for i in range(n):
            cdf[i] = i + 1.0
        acc = float(n)
    return cdf, acc


@njit(cache=True)
def _draw(m: int, cdf: np.ndarray, acc: float, u_select: np.ndarray, u_random: np.ndarray, w_diff: float) -> int:
    """Draw m: -1 (a random pose) with probability w_diff, else the particle a binary search of the cdf finds."""
    if u_random[m] < w_diff:
        return -1
    n = cdf.shape[0]
    r = u_select[m] * acc
    lo, hi = 0, n  # first index with cdf > r (searchsorted side="right")
    while lo < hi:
        mid = (lo + hi) >> 1
        if cdf[mid] <= r:
            lo = mid + 1
        else:
            hi = mid
    return min(lo, n - 1)


@njit(cache=True)
def kld_resample_numba(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                       random_poses: np.ndarray, w_diff: float, min_particles: int, max_particles: int,
                       pop_err: float, pop_z: float, bin_size: np.ndarray, wrap: bool) -> tuple[np.ndarray, int]:
    cdf, acc = _cdf(weights)
    bx, by, bt = bin_size[0], bin_size[1], bin_size[2]
    n_theta = max(1, round(2 * math.pi / bt))
    table = _table(max_particles)
    out = np.empty((max_particles, 3))
    k = 0
    m = 0
    while m < max_particles:
        i = _draw(m, cdf, acc, u_select, u_random, w_diff)
        src = random_poses[m] if i < 0 else poses[i]
        out[m, 0] = src[0]
        out[m, 1] = src[1]
        out[m, 2] = src[2]
        kx, ky, kt = _key(src[0], src[1], src[2], bx, by, bt, wrap, n_theta)
        key = _pack(kx, ky, kt)
        s = _slot(table, key)
        if table[s] == -1:
            table[s] = key
            k += 1
        m += 1
        if m > _limit(k, pop_err, pop_z, min_particles, max_particles):
            break
    return out[:m].copy(), k


@njit(cache=True)
def kld_bins_numba(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                   wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's bin (numbered by first particle) and each bin's summed weight."""
    n = poses.shape[0]
    bx, by, bt = bin_size[0], bin_size[1], bin_size[2]
    n_theta = max(1, round(2 * math.pi / bt))
    table = _table(n)
    bin_id = np.empty(table.shape[0], np.int64)
    total = np.empty(n)
    particle_bin = np.empty(n, np.int64)
    n_bins = 0
    for p in range(n):
        kx, ky, kt = _key(poses[p, 0], poses[p, 1], poses[p, 2], bx, by, bt, wrap, n_theta)
        key = _pack(kx, ky, kt)
        s = _slot(table, key)
        if table[s] == -1:
            table[s] = key
            bin_id[s] = n_bins
            total[n_bins] = weights[p]
            n_bins += 1
        else:
            total[bin_id[s]] += weights[p]
        particle_bin[p] = bin_id[s]
    return particle_bin, total[:n_bins].copy()


@njit(cache=True)
def cluster_labels_numba(poses: np.ndarray, bin_size: np.ndarray, wrap: bool) -> np.ndarray:
    n = poses.shape[0]
    bx, by, bt = bin_size[0], bin_size[1], bin_size[2]
    n_theta = max(1, round(2 * math.pi / bt))
    table = _table(n)
    bin_id = np.full(table.shape[0], -1, np.int64)
    keys = np.empty((n, 3), np.int64)  # keys of the bins, in order of first appearance
    particle_bin = np.empty(n, np.int64)
    n_bins = 0
    for p in range(n):
        kx, ky, kt = _key(poses[p, 0], poses[p, 1], poses[p, 2], bx, by, bt, wrap, n_theta)
        s = _slot(table, _pack(kx, ky, kt))
        if table[s] == -1:
            table[s] = _pack(kx, ky, kt)
            bin_id[s] = n_bins
            keys[n_bins, 0] = kx
            keys[n_bins, 1] = ky
            keys[n_bins, 2] = kt
            n_bins += 1
        particle_bin[p] = bin_id[s]
    label = np.full(n_bins, -1, np.int64)
    stack = np.empty(n_bins, np.int64)
    next_label = 0
    for b0 in range(n_bins):
        if label[b0] >= 0:
            continue
        label[b0] = next_label
        top = 0
        stack[top] = b0
        top += 1
        while top > 0:
            top -= 1
            b = stack[top]
            for dx in range(-1, 2):
                for dy in range(-1, 2):
                    for dt in range(-1, 2):
                        t = keys[b, 2] + dt
                        if wrap:
                            t = t % n_theta
                        x, y = keys[b, 0] + dx, keys[b, 1] + dy
                        if not _in_range(x, y, t):  # a key past the range would pack onto another bin
                            continue
                        s = _slot(table, _pack(x, y, t))
                        if table[s] != -1:
                            nb = bin_id[s]
                            if label[nb] < 0:
                                label[nb] = next_label
                                stack[top] = nb
                                top += 1
        next_label += 1
    out = np.empty(n, np.int64)
    for p in range(n):
        out[p] = label[particle_bin[p]]
    return out


@njit(cache=True)
def _moments(poses: np.ndarray, weights: np.ndarray, group: np.ndarray, n_groups: int,
             uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group g: Σw, means (x, y, circular θ), covariances (centred x-y, -2·log R for θ), with
    w = 1 for the groups whose weights are all zero. Two passes over the particles."""
    n = poses.shape[0]
    sums = np.zeros((n_groups, 5))  # Σw, Σw·x, Σw·y, Σw·cos θ, Σw·sin θ
    for p in range(n):
        g = group[p]
        w = 1.0 if uniform[g] else weights[p]
        sums[g, 0] += w
        sums[g, 1] += w * poses[p, 0]
        sums[g, 2] += w * poses[p, 1]
        sums[g, 3] += w * math.cos(poses[p, 2])
        sums[g, 4] += w * math.sin(poses[p, 2])
    mean = np.zeros((n_groups, 3))
    for g in range(n_groups):
        mean[g, 0] = sums[g, 1] / sums[g, 0]
        mean[g, 1] = sums[g, 2] / sums[g, 0]
        mean[g, 2] = math.atan2(sums[g, 4], sums[g, 3])
    second = np.zeros((n_groups, 3))  # Σw·dx², Σw·dx·dy, Σw·dy²
    for p in range(n):
        g = group[p]
        w = 1.0 if uniform[g] else weights[p]
        dx = poses[p, 0] - mean[g, 0]
        dy = poses[p, 1] - mean[g, 1]
        second[g, 0] += w * dx * dx
        second[g, 1] += w * dx * dy
        second[g, 2] += w * dy * dy
    cov = np.zeros((n_groups, 3, 3))
    for g in range(n_groups):
        sw = sums[g, 0]
        cov[g, 0, 0] = second[g, 0] / sw
        cov[g, 0, 1] = second[g, 1] / sw
        cov[g, 1, 0] = second[g, 1] / sw
        cov[g, 1, 1] = second[g, 2] / sw
        r = min(math.sqrt(sums[g, 3] * sums[g, 3] + sums[g, 4] * sums[g, 4]) / sw, 1.0)
        cov[g, 2, 2] = -2.0 * math.log(r) if r > 0 else math.inf
    return sums[:, 0].copy(), mean, cov


@njit(cache=True)
def cluster_stats_numba(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                        wrap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return cluster_stats_of_labels(poses, weights, cluster_labels_numba(poses, bin_size, wrap))


@njit(cache=True)
def cluster_stats_of_labels(poses: np.ndarray, weights: np.ndarray, labels: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, cluster weights, means, covariances, set mean, set covariance) for given labels."""
    n = poses.shape[0]
    n_clusters = 0
    for p in range(n):
        n_clusters = max(n_clusters, labels[p] + 1)
    totals = np.zeros(n_clusters)
    for p in range(n):
        totals[labels[p]] += weights[p]
    uniform = np.empty(n_clusters, np.bool_)
    for c in range(n_clusters):
        uniform[c] = not totals[c] > 0
    cw, cm, cc = _moments(poses, weights, labels, n_clusters, uniform)
    for c in range(n_clusters):
        if uniform[c]:
            cw[c] = 0.0
    if n == 0:
        return labels, cw, cm, cc, np.zeros(3), np.zeros((3, 3))
    total = 0.0
    for p in range(n):
        total += weights[p]
    _, mean, cov = _moments(poses, weights, np.zeros(n, np.int64), 1, np.array([not total > 0]))
    return labels, cw, cm, cc, mean[0].copy(), cov[0].copy()
