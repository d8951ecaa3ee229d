"""KLD-adaptive resampling and clusters over (x, y, θ) bins, as nav2_amcl's ``pf.c`` and
``pf_kdtree.c`` (Fox, "Adapting the sample size in particle filters through KLD-sampling", 2003).

Bins: key = (floor(x / 0.5 m), floor(y / 0.5 m), floor(θ / 10°)). nav2 keeps them in a kd-tree
(``kdtree.py`` has it); what it is used for, the number of occupied bins k and the clusters of
bins that touch (the 26 neighbours), is computed here with a hash table (same answers, checked
against the tree in the tests; O(1) per insert).

Sample-count bound for k occupied bins (nav2 ``pf_resample_limit``):
    n(k) = ceil((k-1)/(2ε) · (1 - 2/(9(k-1)) + sqrt(2/(9(k-1)))·z)³), clamped to [min, max];
    n = max for k <= 1. ε = pf_err, z the upper standard-normal quantile.

Resampling draws particle i with probability w_i / Σw (or, with probability w_diff, a random
free-space pose for recovery) until the count exceeds n(k). nav2 finds each draw by a linear scan
of the cumulative weights (O(N) per draw, O(N²) per update); here a binary search (O(log N)) or,
equivalently, ``searchsorted``: the same distribution. Pre-drawn uniforms make it reproducible.

Departures from nav2 (docs/amcl.md): θ bins wrap at ±π when ``wrap_theta`` (nav2 splits a
cluster there); a cluster's angular variance -2·log(R / w) uses its own weight w (nav2 uses R
unnormalised: a tight cluster of weight 0.2 gets variance 3.2 rad²); linear covariances are
centred sums (nav2's E[x²] - E[x]² loses digits far from the origin).
"""

from __future__ import annotations

import math

import numpy as np

BIN_SIZE = (0.5, 0.5, 10 * math.pi / 180)
KEY_OFFSET = 1 << 20  # keys are clamped to [-2**20, 2**20) and packed 21 bits each in an int64


def theta_bins(bin_size_theta: float) -> int:
    """Number of θ bins around the circle when θ wraps."""
    return max(1, round(2 * math.pi / bin_size_theta))


def bin_keys(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool) -> np.ndarray:
    """(N, 3) int64 bin keys. Wrapped θ bins count from -π: floor((θ' + π) / size) mod n_θ with
    θ' = atan2(sin θ, cos θ); unwrapped (nav2): floor(θ / size)."""
    poses = np.asarray(poses, np.float64)
    keys = np.empty(poses.shape, np.int64)
    for d in range(2):
        keys[:, d] = np.clip(np.floor(poses[:, d] / bin_size[d]), -KEY_OFFSET, KEY_OFFSET - 1)
    if wrap_theta:
        t = np.arctan2(np.sin(poses[:, 2]), np.cos(poses[:, 2]))
        keys[:, 2] = np.mod(np.floor((t + math.pi) / bin_size[2]).astype(np.int64), theta_bins(bin_size[2]))
    else:
        keys[:, 2] = np.clip(np.floor(poses[:, 2] / bin_size[2]), -KEY_OFFSET, KEY_OFFSET - 1)
    return keys


def pack_keys(keys: np.ndarray) -> np.ndarray:
    """One int64 per (kx, ky, kθ) key."""
    k = keys + KEY_OFFSET
    return (k[:, 0] << 42) | (k[:, 1] << 21) | k[:, 2]


def kld_limit(k: int, pop_err: float, pop_z: float, min_particles: int, max_particles: int) -> int:
    """nav2 ``pf_resample_limit``: particles needed for k occupied bins, within [min, max]."""
    if k <= 1:
        return max_particles
    b = 2.0 / (9.0 * (k - 1))
    x = 1.0 - b + math.sqrt(b) * pop_z
    n = math.ceil((k - 1) / (2.0 * pop_err) * x * x * x)
    return min(max(n, min_particles), max_particles)


def check_resample_args(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                        random_poses: np.ndarray, min_particles: int, max_particles: int, pop_err: float) -> None:
    if poses.ndim != 2 or poses.shape[1] != 3 or poses.shape[0] == 0:
        raise ValueError(f"poses: shape {poses.shape}: expected (N, 3) with N >= 1")
    if weights.shape != (poses.shape[0],):
        raise ValueError(f"weights: shape {weights.shape}: expected ({poses.shape[0]},)")
    if not 1 <= min_particles <= max_particles:
        raise ValueError(f"min_particles={min_particles}, max_particles={max_particles}: need 1 <= min <= max")
    for name, a in (("u_select", u_select), ("u_random", u_random)):
        if a.shape != (max_particles,):
            raise ValueError(f"{name}: shape {a.shape}: expected ({max_particles},), one uniform per draw")
    if random_poses.shape != (max_particles, 3):
        raise ValueError(f"random_poses: shape {random_poses.shape}: expected ({max_particles}, 3)")
    if not pop_err > 0:
        raise ValueError(f"pop_err={pop_err!r}: must be > 0")


def kld_resample(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                 random_poses: np.ndarray, w_diff: float, min_particles: int, max_particles: int, pop_err: float,
                 pop_z: float, bin_size: np.ndarray, wrap_theta: bool = True) -> tuple[np.ndarray, int]:
    """Draw the next particle set: (poses (n, 3), k occupied bins).

    Draw m (0-based) is ``random_poses[m]`` when ``u_random[m] < w_diff``, else particle
    ``i`` with cdf[i-1] <= u_select[m]·Σw < cdf[i]. Drawing stops after the first m with
    m + 1 > kld_limit(k_m), k_m the bins occupied by draws 0..m, or at ``max_particles``.
    Weights that are all zero or not finite are treated as uniform (nav2 does the same).
    """
    poses, weights = np.asarray(poses, np.float64), np.asarray(weights, np.float64)
    u_select, u_random = np.asarray(u_select, np.float64), np.asarray(u_random, np.float64)
    random_poses, bin_size = np.asarray(random_poses, np.float64), np.asarray(bin_size, np.float64)
    check_resample_args(poses, weights, u_select, u_random, random_poses, min_particles, max_particles, pop_err)
    cdf = np.cumsum(weights)
    total = cdf[-1]
    if not (np.isfinite(total) and total > 0):
        cdf = np.cumsum(np.ones(len(weights)))
        total = cdf[-1]
    idx = np.minimum(np.searchsorted(cdf, u_select * total, side="right"), len(weights) - 1)
    drawn = np.where((u_random < w_diff)[:, None], random_poses, poses[idx])
    packed = pack_keys(bin_keys(drawn, bin_size, wrap_theta))
    _, first = np.unique(packed, return_index=True)
    new_bin = np.zeros(max_particles, np.int64)
    new_bin[first] = 1
    k = np.cumsum(new_bin)  # bins occupied after each draw
    limits = np.array([kld_limit(int(kk), pop_err, pop_z, min_particles, max_particles) for kk in k])
    over = np.flatnonzero(np.arange(1, max_particles + 1) > limits)
    n = int(over[0]) + 1 if over.size else max_particles
    return drawn[:n].copy(), int(k[n - 1])


def check_bin_args(poses: np.ndarray, bin_size: np.ndarray, weights: np.ndarray | None = None) -> None:
    """The inputs of the bin ops: (N, 3) finite poses, (3,) positive finite bin sizes, (N,) weights."""
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"poses: shape {poses.shape}: expected (N, 3) rows of x, y, theta")
    if weights is not None and weights.shape != (poses.shape[0],):
        raise ValueError(f"weights: shape {weights.shape}: expected ({poses.shape[0]},)")
    if bin_size.shape != (3,) or not (np.isfinite(bin_size).all() and (bin_size > 0).all()):
        raise ValueError(f"bin_size={bin_size.tolist()}: expected three finite sizes > 0 (x m, y m, theta rad)")
    bad = np.flatnonzero(~np.isfinite(poses).all(axis=1))
    if bad.size:
        raise ValueError(f"poses: {bad.size} rows not finite, first row {int(bad[0])}: {poses[bad[0]].tolist()}; "
                         "a bin needs a finite pose")


def kld_bins(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
             wrap_theta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Insert every particle into its bin with its weight (nav2 ``pf_kdtree_insert``): (bin of each
    particle (N,), summed weight of each bin (k,)). Bins are numbered in the order of their first
    particle; k, the number of occupied bins, is the leaf count the KLD bound n(k) reads. Weights are
    summed in particle order, NaN and Inf included."""
    poses, weights = np.asarray(poses, np.float64), np.asarray(weights, np.float64)
    bin_size = np.asarray(bin_size, np.float64)
    check_bin_args(poses, bin_size, weights)
    bin_of: dict[tuple[int, int, int], int] = {}
    bin_index = np.empty(len(poses), np.int64)
    total: list[float] = []
    for p, key in enumerate(map(tuple, bin_keys(poses, bin_size, wrap_theta).tolist())):
        b = bin_index[p] = bin_of.setdefault(key, len(bin_of))
        if b == len(total):
            total.append(0.0)
        total[b] += float(weights[p])
    return bin_index, np.asarray(total, np.float64)


def bin_clusters(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True) -> np.ndarray:
    """``clusters`` with its inputs checked (finite poses, three positive bin sizes)."""
    poses, bin_size = np.asarray(poses, np.float64), np.asarray(bin_size, np.float64)
    check_bin_args(poses, bin_size)
    return clusters(poses, bin_size, wrap_theta)


def clusters(poses: np.ndarray, bin_size: np.ndarray, wrap_theta: bool = True) -> np.ndarray:
    """Cluster label per particle: bins that touch (26-neighbourhood, θ wrapping when asked)
    are one cluster (nav2 ``pf_kdtree_cluster``). Labels follow the first particle of each cluster."""
    keys = bin_keys(poses, np.asarray(bin_size, np.float64), wrap_theta)
    n_theta = theta_bins(bin_size[2])
    bin_of: dict[tuple[int, int, int], int] = {}
    bin_index = np.empty(len(keys), np.int64)
    for p, key in enumerate(map(tuple, keys.tolist())):
        bin_index[p] = bin_of.setdefault(key, len(bin_of))
    label = [-1] * len(bin_of)
    next_label = 0
    for key, b in bin_of.items():
        if label[b] >= 0:
            continue
        label[b] = next_label
        stack = [key]
        while stack:
            kx, ky, kt = stack.pop()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dt in (-1, 0, 1):
                        t = (kt + dt) % n_theta if wrap_theta else kt + dt
                        nb = bin_of.get((kx + dx, ky + dy, t))
                        if nb is not None and label[nb] < 0:
                            label[nb] = next_label
                            stack.append((kx + dx, ky + dy, t))
        next_label += 1
    return np.asarray(label, np.int64)[bin_index] if len(keys) else np.zeros(0, np.int64)


def _stats(poses: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weight, mean (x, y, circular θ) and covariance of one group (weights all zero: unweighted)."""
    total = float(w.sum())
    if not total > 0:
        w = np.ones(len(w))
        total = float(len(w))
        weight = 0.0
    else:
        weight = total
    mean = np.zeros(3)
    cov = np.zeros((3, 3))
    mean[:2] = (w[:, None] * poses[:, :2]).sum(axis=0) / total
    c, s = float((w * np.cos(poses[:, 2])).sum()), float((w * np.sin(poses[:, 2])).sum())
    mean[2] = math.atan2(s, c)
    d = poses[:, :2] - mean[:2]
    cov[:2, :2] = (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(axis=0) / total
    r = min(math.sqrt(c * c + s * s) / total, 1.0)
    cov[2, 2] = -2.0 * math.log(r) if r > 0 else math.inf
    return weight, mean, cov


def cluster_stats(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                  wrap_theta: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """nav2 ``pf_cluster_stats``: (labels (N,), cluster weights (C,), means (C, 3), covariances
    (C, 3, 3), set mean (3,), set covariance (3, 3)).

    Per group: mean x, y = Σ w·x / Σ w; θ = atan2(Σ w sin θ, Σ w cos θ); cov_xy = Σ w·d dᵀ / Σ w
    (d the offset from the mean); var_θ = -2·log(|Σ w·e^{iθ}| / Σ w). A cluster whose weights are
    all zero gets weight 0 and unweighted statistics. Empty input: no clusters, zero mean and covariance.
    """
    poses, weights = np.asarray(poses, np.float64), np.asarray(weights, np.float64)
    if poses.ndim != 2 or poses.shape[1] != 3 or weights.shape != (poses.shape[0],):
        raise ValueError(f"poses {poses.shape}, weights {weights.shape}: expected (N, 3) and (N,)")
    labels = clusters(poses, np.asarray(bin_size, np.float64), wrap_theta)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    cw = np.zeros(n_clusters)
    cm = np.zeros((n_clusters, 3))
    cc = np.zeros((n_clusters, 3, 3))
    for c in range(n_clusters):
        sel = labels == c
        cw[c], cm[c], cc[c] = _stats(poses[sel], weights[sel])
    if len(poses):
        _, mean, cov = _stats(poses, weights)
    else:
        mean, cov = np.zeros(3), np.zeros((3, 3))
    return labels, cw, cm, cc, mean, cov
