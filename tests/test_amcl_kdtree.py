"""nav2's kd-tree in Numba against its reference twin (``pyimpl.amcl.kdtree``) node for node, and
the filter's ``kld_bins`` choice: the same run with the hash table and the tree, each really used.
The generated parity tests (``test_parity.py``) hold the bin ops of both structures to the reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelkernels import kernels
from modelkernels.kernels.amcl import ParticleFilter, amcl_bin_clusters, amcl_kld_bins, numba_kdtree
from modelkernels.kernels.amcl.simulator import SimulatedRun, generate_map, simulate
from modelkernels.pyimpl.amcl import kld
from modelkernels.pyimpl.amcl.kdtree import BinKdTree
from modelkernels.pyimpl.amcl.maps import OccupancyMap

BINS = np.array(kld.BIN_SIZE)


def _poses(n: int, seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    th = rng.normal(3.0, 0.4, n)
    return np.stack([rng.normal(0, spread, n), rng.normal(1, spread, n), np.arctan2(np.sin(th), np.cos(th))], 1)


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("spread", [0.4, 3.0])
def test_numba_tree_is_nav2s_tree_node_for_node(wrap: bool, spread: float) -> None:
    poses = _poses(700, 3, spread)
    weights = np.random.default_rng(4).random(700)
    tree = BinKdTree(wrap_theta=wrap)
    for p, w in zip(poses, weights):
        tree.insert(p, float(w))
    tree.cluster()
    inode, fnode, count, leaf = numba_kdtree.build(poses, weights, BINS, wrap)
    labels = numba_kdtree.cluster_leaves(inode, count, kld.theta_bins(BINS[2]), wrap)
    nodes = tree.leaves  # every node, in creation order
    assert count == len(nodes)
    assert [tuple(k) for k in inode[:count, :3].tolist()] == [n.key for n in nodes]
    assert (inode[:count, 3] < 0).tolist() == [n.leaf for n in nodes]
    assert inode[:count, 3].tolist() == [n.pivot_dim for n in nodes]
    inner = inode[:count, 3] >= 0
    assert (inode[:count, 7][inner] / 2).tolist() == [n.pivot_value for n in nodes if not n.leaf]
    assert fnode[:count][~inner].tolist() == [n.value for n in nodes if n.leaf]
    assert labels.tolist() == [n.cluster if n.leaf else -1 for n in nodes]  # nav2's numbering
    assert [nodes[i].key for i in leaf] == [tree.key(p) for p in poses]
    assert (~inner).sum() == tree.leaf_count == len(amcl_kld_bins(poses, weights, BINS, wrap)[1])


def test_sorted_keys_make_a_chain_and_still_count_right() -> None:
    """No rebalancing, as nav2: keys arriving in x order give a tree as deep as it has leaves."""
    n = 600
    poses = np.stack([np.arange(n) * 0.5 + 0.1, np.zeros(n), np.zeros(n)], 1)
    inode, _, count, _ = numba_kdtree.build(poses, np.ones(n), BINS, True)
    depth, i = 0, 0
    while inode[i, 3] >= 0:
        i, depth = inode[i, 5], depth + 1
    assert depth == n - 1 and count == 2 * n - 1
    np.testing.assert_array_equal(amcl_kld_bins(poses, np.ones(n), BINS, backend="numba_kdtree")[0], np.arange(n))
    np.testing.assert_array_equal(amcl_bin_clusters(poses, BINS, backend="numba_kdtree"), np.zeros(n, np.int64))


def test_the_hash_table_ranks_first() -> None:
    for op in ("amcl_kld_bins", "amcl_bin_clusters", "amcl_kld_resample", "amcl_cluster_stats"):
        order = [b.name for b in kernels.registry.backends_for(op)]
        assert order.index("numba") < order.index("numba_kdtree"), (op, order)


# -- the filter's choice ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def floor() -> OccupancyMap:
    return generate_map(2, width_m=8.0, height_m=6.0, resolution=0.1, boxes=4)


@pytest.fixture(scope="module")
def run(floor: OccupancyMap) -> SimulatedRun:
    return simulate(floor, 30, seed=2, beams=90)


def _calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of every backend of the two bin ops the filter uses."""
    seen: dict[str, int] = {}
    for op in ("amcl_kld_resample", "amcl_cluster_stats"):
        for name, be in kernels.get_op(op).backends.items():
            def counted(*a: Any, _fn: Any = be.fn, _key: str = f"{op}:{name}", **k: Any) -> Any:
                seen[_key] = seen.get(_key, 0) + 1
                return _fn(*a, **k)
            monkeypatch.setattr(be, "fn", counted)
    return seen


def _trajectory(floor: OccupancyMap, run: SimulatedRun, kld_bins: str, global_start: bool) -> tuple[np.ndarray, ...]:
    pf = ParticleFilter(floor, random_seed=9, kld_bins=kld_bins, update_min_d=0.05, min_particles=100,
                        max_particles=3000 if global_start else 500, recovery_alpha_slow=0.001,
                        recovery_alpha_fast=0.1)
    if global_start:
        pf.global_localization()
    else:
        pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
    poses, est = [], []
    for k in range(12):
        pf.update(run.odometry[k], run.scans[k])
        poses.append(pf.poses.copy())
        est.append(pf.estimate().pose)
    return np.concatenate(poses), np.array(est), np.array([len(p) for p in poses])


@pytest.mark.parametrize("global_start", [False, True], ids=["tracking", "global"])
def test_same_seed_same_run_with_either_structure(floor: OccupancyMap, run: SimulatedRun, global_start: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch)
    hashed = _trajectory(floor, run, "hash", global_start)
    assert calls.get("amcl_kld_resample:numba", 0) > 0 and "amcl_kld_resample:numba_kdtree" not in calls
    calls.clear()
    tree = _trajectory(floor, run, "kdtree", global_start)
    assert calls.get("amcl_kld_resample:numba_kdtree", 0) > 0 and calls.get("amcl_cluster_stats:numba_kdtree", 0) > 0
    assert "amcl_kld_resample:numba" not in calls and "amcl_cluster_stats:numba" not in calls
    for a, b in zip(hashed, tree):
        np.testing.assert_array_equal(a, b)  # bit-identical particles, estimates and counts
    if not global_start:
        assert len(set(hashed[2].tolist())) > 1  # KLD changed the particle count along the way


def test_a_forced_backend_wins_over_kld_bins(floor: OccupancyMap, run: SimulatedRun,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch)
    with kernels.use_backend("reference"):
        pf = ParticleFilter(floor, random_seed=1, kld_bins="kdtree", min_particles=50, max_particles=100)
        pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
    assert set(calls) == {"amcl_cluster_stats:reference"}


def test_unknown_kld_bins_is_named(floor: OccupancyMap) -> None:
    with pytest.raises(ValueError, match="kld_bins='tree': expected one of 'hash', 'kdtree'"):
        ParticleFilter(floor, kld_bins="tree")
