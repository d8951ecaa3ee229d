"""nav2's KLD kd-tree (``pf_kdtree.c``) in Numba: the twin of ``pyimpl.amcl.kdtree.BinKdTree``.

Keys are the (x, y, θ) bins of ``numba_kld._key``. Insert walks from the root by each node's pivot
(left when key[dim] < pivot); an equal key adds its weight to the leaf; another key splits the
leaf on the first dimension of largest |difference| at the midpoint, creating the left child, then
the right, as nav2 numbers its nodes. The tree is never rebalanced (nav2 neither): a lookup costs
the depth, about log2 k for scattered keys and up to k for keys that arrive sorted along one axis.
n inserts make at most 2n - 1 nodes, so the node arrays are sized up front and nothing grows.

Clustering (``pf_kdtree_cluster``): leaves are visited from the last created; an unlabelled one
starts a new label, spread to every leaf found among the 26 neighbours of a labelled leaf by a
lookup in the tree (27 lookups per leaf). The ops renumber the labels in the order of each
cluster's first particle, as the hash table (``numba_kld.py``) numbers them, so both structures give
the same arrays; ``cluster_leaves`` keeps nav2's numbering.

A node is one 64-byte row of ``inode`` (one cache line a step of a descent): kx, ky, kθ, the pivot
dimension (-1 for a leaf), left child, right child, the node the leaf's key moved to when it split,
and twice the pivot value (key[dim] < (a + b) / 2 is 2·key[dim] < a + b, exact in integers);
``fnode`` holds the weights.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from modelkernels.kernels.amcl.numba_kld import _cdf, _draw, _key, _limit, cluster_stats_of_labels

_DIM, _LEFT, _RIGHT, _MOVED, _PIVOT2 = 3, 4, 5, 6, 7


@njit(cache=True)
def new_tree(n_inserts: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty node arrays for up to ``n_inserts`` inserts."""
    capacity = max(1, 2 * n_inserts - 1)
    return np.empty((capacity, 8), np.int64), np.empty(capacity)


@njit(cache=True)
def _leaf(inode: np.ndarray, fnode: np.ndarray, i: int, kx: int, ky: int, kt: int, value: float) -> None:
    inode[i, 0] = kx
    inode[i, 1] = ky
    inode[i, 2] = kt
    inode[i, _DIM] = -1
    inode[i, _MOVED] = -1
    fnode[i] = value


@njit(cache=True)
def insert(inode: np.ndarray, fnode: np.ndarray, count: int, kx: int, ky: int, kt: int,
           value: float) -> tuple[int, int, bool]:
    """Insert one key with its weight into a tree of ``count`` nodes: (the leaf holding the key,
    the new node count, whether the key is new)."""
    if count == 0:
        _leaf(inode, fnode, 0, kx, ky, kt, value)
        return 0, 1, True
    i = _descend(inode, kx, ky, kt)
    if inode[i, 0] == kx and inode[i, 1] == ky and inode[i, 2] == kt:
        fnode[i] += value
        return i, count, False
    d = 0
    best = abs(kx - inode[i, 0])
    if abs(ky - inode[i, 1]) > best:
        d = 1
        best = abs(ky - inode[i, 1])
    if abs(kt - inode[i, 2]) > best:
        d = 2
    kd = kx if d == 0 else (ky if d == 1 else kt)
    pivot2 = kd + inode[i, d]
    if 2 * kd < pivot2:
        new, old = count, count + 1
    else:
        old, new = count, count + 1
    _leaf(inode, fnode, old, inode[i, 0], inode[i, 1], inode[i, 2], fnode[i])
    _leaf(inode, fnode, new, kx, ky, kt, value)
    inode[i, _DIM] = d
    inode[i, _LEFT] = count
    inode[i, _RIGHT] = count + 1
    inode[i, _MOVED] = old
    inode[i, _PIVOT2] = pivot2
    return new, count + 2, True


@njit(cache=True)
def _descend(inode: np.ndarray, kx: int, ky: int, kt: int) -> int:
    """The leaf where the key's descent from the root ends."""
    i = 0
    while inode[i, _DIM] >= 0:
        d = inode[i, _DIM]
        kd = kx if d == 0 else (ky if d == 1 else kt)
        i = inode[i, _LEFT] if 2 * kd < inode[i, _PIVOT2] else inode[i, _RIGHT]
    return i


@njit(cache=True)
def find(inode: np.ndarray, count: int, kx: int, ky: int, kt: int) -> int:
    """The leaf holding the key, or -1."""
    if count == 0:
        return -1
    i = _descend(inode, kx, ky, kt)
    return i if inode[i, 0] == kx and inode[i, 1] == ky and inode[i, 2] == kt else -1


@njit(cache=True)
def build(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
          wrap: bool) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Insert every particle with its weight: (inode, fnode, node count, each particle's leaf)."""
    n = poses.shape[0]
    bx, by, bt = bin_size[0], bin_size[1], bin_size[2]
    n_theta = max(1, round(2 * math.pi / bt))
    inode, fnode = new_tree(n)
    count = 0
    leaf = np.empty(n, np.int64)
    for p in range(n):
        kx, ky, kt = _key(poses[p, 0], poses[p, 1], poses[p, 2], bx, by, bt, wrap, n_theta)
        i, count, _ = insert(inode, fnode, count, kx, ky, kt, weights[p])
        leaf[p] = i
    for p in range(n):  # a leaf that split handed its key to a child: follow the moves
        i = leaf[p]
        while inode[i, _DIM] >= 0:
            i = inode[i, _MOVED]
        leaf[p] = i
    return inode, fnode, count, leaf


@njit(cache=True)
def kld_bins_kdtree(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                    wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's bin (numbered by first particle) and each bin's summed weight, from the tree."""
    _, fnode, count, leaf = build(poses, weights, bin_size, wrap)
    n = poses.shape[0]
    bin_id = np.full(count, -1, np.int64)
    total = np.empty(n)
    particle_bin = np.empty(n, np.int64)
    n_bins = 0
    for p in range(n):
        i = leaf[p]
        if bin_id[i] < 0:
            bin_id[i] = n_bins
            total[n_bins] = fnode[i]
            n_bins += 1
        particle_bin[p] = bin_id[i]
    return particle_bin, total[:n_bins].copy()


@njit(cache=True)
def cluster_leaves(inode: np.ndarray, count: int, n_theta: int, wrap: bool) -> np.ndarray:
    """nav2's ``pf_kdtree_cluster``: a label per node (-1 for inner nodes), leaves visited from the last created."""
    cluster = np.full(count, -1, np.int64)
    stack = np.empty(count, np.int64)
    label = 0
    for start in range(count - 1, -1, -1):
        if inode[start, _DIM] >= 0 or cluster[start] >= 0:
            continue
        cluster[start] = label
        stack[0] = start
        top = 1
        while top > 0:
            top -= 1
            i = stack[top]
            for j in range(27):
                kt = inode[i, 2] + j % 3 - 1
                if wrap:
                    kt = kt % n_theta
                nb = find(inode, count, inode[i, 0] + j // 9 - 1, inode[i, 1] + (j % 9) // 3 - 1, kt)
                if nb >= 0 and cluster[nb] < 0:
                    cluster[nb] = label
                    stack[top] = nb
                    top += 1
        label += 1
    return cluster


@njit(cache=True)
def cluster_labels_kdtree(poses: np.ndarray, bin_size: np.ndarray, wrap: bool) -> np.ndarray:
    """Cluster label per particle, numbered in the order of each cluster's first particle."""
    n = poses.shape[0]
    inode, _, count, leaf = build(poses, np.zeros(n), bin_size, wrap)
    cluster = cluster_leaves(inode, count, max(1, round(2 * math.pi / bin_size[2])), wrap)
    renumber = np.full(count, -1, np.int64)
    out = np.empty(n, np.int64)
    next_label = 0
    for p in range(n):
        c = cluster[leaf[p]]
        if renumber[c] < 0:
            renumber[c] = next_label
            next_label += 1
        out[p] = renumber[c]
    return out


@njit(cache=True)
def cluster_stats_kdtree(poses: np.ndarray, weights: np.ndarray, bin_size: np.ndarray,
                         wrap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return cluster_stats_of_labels(poses, weights, cluster_labels_kdtree(poses, bin_size, wrap))


@njit(cache=True)
def kld_resample_kdtree(poses: np.ndarray, weights: np.ndarray, u_select: np.ndarray, u_random: np.ndarray,
                        random_poses: np.ndarray, w_diff: float, min_particles: int, max_particles: int,
                        pop_err: float, pop_z: float, bin_size: np.ndarray, wrap: bool) -> tuple[np.ndarray, int]:
    """``numba_kld.kld_resample_numba`` with each draw inserted into the tree (weight 1, as nav2),
    k its leaf count."""
    cdf, acc = _cdf(weights)
    bx, by, bt = bin_size[0], bin_size[1], bin_size[2]
    n_theta = max(1, round(2 * math.pi / bt))
    inode, fnode = new_tree(max_particles)
    out = np.empty((max_particles, 3))
    count = 0
    k = 0
    m = 0
    while m < max_particles:
        i = _draw(m, cdf, acc, u_select, u_random, w_diff)
        src = random_poses[m] if i < 0 else poses[i]
        out[m, 0] = src[0]
        out[m, 1] = src[1]
        out[m, 2] = src[2]
        kx, ky, kt = _key(src[0], src[1], src[2], bx, by, bt, wrap, n_theta)
        _, count, new = insert(inode, fnode, count, kx, ky, kt, 1.0)
        if new:
            k += 1
        m += 1
        if m > _limit(k, pop_err, pop_z, min_particles, max_particles):
            break
    return out[:m].copy(), k
