"""nav2_amcl's kd-tree of (x, y, θ) bins (``pf_kdtree.c``), as a readable reference.

Each particle's bin key is (floor(x / 0.5 m), floor(y / 0.5 m), floor(θ / 10°)). Inserting a key
walks down by each node's pivot; at a leaf with another key the leaf splits on the dimension
where the two keys differ most, at the midpoint of the two values. ``leaf_count`` is the number
of occupied bins k that the KLD bound needs; ``cluster`` labels leaves so that bins that touch
(the 26 neighbours) share a label, visiting leaves from the last created, as nav2 does.

The tree is never rebalanced (nav2 neither): its shape follows the insertion order, so a depth of
O(log k) for scattered keys and up to O(k) for keys that arrive sorted along one axis.
``kernels/amcl/numba_kdtree.py`` is its compiled twin (same nodes, same numbering, same labels);
the hash table (``numba_kld.py``) gives the same bins and clusters with O(1) inserts.
``wrap_theta`` makes θ neighbours wrap around the circle (nav2's tree does not; its keys do not
wrap either: pass poses with θ in [-π, π) for the wrapped comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelkernels.pyimpl.amcl.kld import BIN_SIZE, bin_keys, theta_bins

Key = tuple[int, int, int]


@dataclass
class _Node:
    key: Key
    value: float
    leaf: bool = True
    pivot_dim: int = -1
    pivot_value: float = 0.0
    children: list[_Node] = field(default_factory=list)
    cluster: int = -1


class BinKdTree:
    """A kd-tree of occupied (x, y, θ) bins with summed weights, as nav2's ``pf_kdtree_t``."""

    def __init__(self, bin_size: tuple[float, float, float] = BIN_SIZE, wrap_theta: bool = False) -> None:
        self.bin_size = np.asarray(bin_size, np.float64)
        self.wrap_theta = wrap_theta
        self.root: _Node | None = None
        self.leaves: list[_Node] = []  # in creation order, as nav2's node array

    @property
    def leaf_count(self) -> int:
        return sum(1 for n in self.leaves if n.leaf)

    def key(self, pose: np.ndarray) -> Key:
        k = bin_keys(np.asarray(pose, np.float64).reshape(1, 3), self.bin_size, self.wrap_theta)[0]
        return int(k[0]), int(k[1]), int(k[2])

    def insert(self, pose: np.ndarray, value: float = 1.0) -> None:
        key = self.key(pose)
        if self.root is None:
            self.root = self._leaf(key, value)
            return
        node = self.root
        while not node.leaf:
            node = node.children[0] if key[node.pivot_dim] < node.pivot_value else node.children[1]
        if node.key == key:
            node.value += value
            return
        diffs = [abs(key[d] - node.key[d]) for d in range(3)]
        node.pivot_dim = int(np.argmax(diffs))  # the first dimension of the largest difference
        node.pivot_value = (key[node.pivot_dim] + node.key[node.pivot_dim]) / 2.0
        if key[node.pivot_dim] < node.pivot_value:  # children created left first, as nav2 numbers its nodes
            node.children = [self._leaf(key, value), self._leaf(node.key, node.value)]
        else:
            node.children = [self._leaf(node.key, node.value), self._leaf(key, value)]
        node.leaf = False

    def _leaf(self, key: Key, value: float) -> _Node:
        n = _Node(key, value)
        self.leaves.append(n)
        return n

    def find(self, key: Key) -> _Node | None:
        node = self.root
        while node is not None and not node.leaf:
            node = node.children[0] if key[node.pivot_dim] < node.pivot_value else node.children[1]
        return node if node is not None and node.key == key else None

    def cluster(self) -> int:
        """Label touching leaves alike; returns the number of clusters."""
        leaves = [n for n in self.leaves if n.leaf]
        for n in leaves:
            n.cluster = -1
        n_theta = theta_bins(float(self.bin_size[2]))
        count = 0
        for start in reversed(leaves):
            if start.cluster >= 0:
                continue
            start.cluster = count
            stack = [start]
            while stack:
                node = stack.pop()
                for i in range(27):
                    kt = node.key[2] + i % 3 - 1
                    nkey = (node.key[0] + i // 9 - 1, node.key[1] + (i % 9) // 3 - 1,
                            kt % n_theta if self.wrap_theta else kt)
                    nb = self.find(nkey)
                    if nb is not None and nb.cluster < 0:
                        nb.cluster = count
                        stack.append(nb)
            count += 1
        return count

    def cluster_of(self, pose: np.ndarray) -> int:
        node = self.find(self.key(pose))
        return -1 if node is None else node.cluster
