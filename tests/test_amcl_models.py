"""AMCL motion and sensor models, KLD resampling and clusters: behaviour the parity samples cannot
express, and each improvement over nav2 shown against nav2's own rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelkernels.kernels.amcl import (
    OccupancyMap,
    amcl_beam_model,
    amcl_cluster_stats,
    amcl_distance_map,
    amcl_kld_resample,
    amcl_likelihood_field,
    amcl_likelihood_field_prob,
    amcl_motion,
    amcl_ray_cast,
)
from modelkernels.kernels.amcl.ops import sample_map
from modelkernels.pyimpl.amcl import kld, sensors
from modelkernels.pyimpl.amcl.params import AmclParameters
from modelkernels.pyimpl.amcl.poses import angle_diff, angle_diff_array

BACKENDS = ["reference", "numba"]
BINS = np.array(kld.BIN_SIZE)


def test_angle_diff_matches_nav2_definition() -> None:
    assert angle_diff(0.1, -0.1) == pytest.approx(0.2)
    assert angle_diff(math.pi - 0.1, -math.pi + 0.1) == pytest.approx(-0.2)
    assert angle_diff(7.0, 0.0) == pytest.approx(7.0 - 2 * math.pi)
    a = np.linspace(-7, 7, 29)
    assert np.allclose(angle_diff_array(a, 0.3), [angle_diff(x, 0.3) for x in a])


# -- motion -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["differential", "omni"])
def test_motion_without_noise_applies_odometry_in_each_particles_frame(backend: str, model: str) -> None:
    odom_old = np.array([1.0, 2.0, 0.5])
    step = np.array([0.3, 0.1, 0.2])  # forward, left, turn in the robot frame
    c, s = math.cos(odom_old[2]), math.sin(odom_old[2])
    odom_new = odom_old + np.array([c * step[0] - s * step[1], s * step[0] + c * step[1], step[2]])
    delta = odom_new - odom_old
    poses = np.array([[0.0, 0.0, 0.0], [5.0, -1.0, 2.0], [-3.0, 4.0, -3.0]])
    out = amcl_motion(poses, odom_new, delta, np.zeros(5), np.random.default_rng(0).standard_normal((3, 3)),
                      model=model, backend=backend)
    for p, q in zip(poses, out):
        cp, sp = math.cos(p[2]), math.sin(p[2])
        assert q[0] == pytest.approx(p[0] + cp * step[0] - sp * step[1], abs=1e-12)
        assert q[1] == pytest.approx(p[1] + sp * step[0] + cp * step[1], abs=1e-12)
        assert angle_diff(q[2], p[2] + step[2]) == pytest.approx(0.0, abs=1e-12)
        assert -math.pi <= q[2] <= math.pi  # wrapped (nav2 lets θ grow)


@pytest.mark.parametrize("backend", BACKENDS)
def test_differential_noise_grows_with_alphas_and_treats_backward_like_forward(backend: str) -> None:
    rng = np.random.default_rng(1)
    n = 4000
    poses = np.zeros((n, 3))
    noise = rng.standard_normal((n, 3))

    def spread(delta: list[float], alphas: list[float]) -> np.ndarray:
        out = amcl_motion(poses, np.array(delta), np.array(delta), np.array(alphas), noise, backend=backend)
        return np.asarray(out.std(axis=0))

    small, large = spread([0.5, 0.0, 0.0], [0.05] * 5), spread([0.5, 0.0, 0.0], [0.4] * 5)
    assert (large > 2 * small).all()
    fwd, back = spread([0.5, 0.0, 0.0], [0.2] * 5), spread([-0.5, 0.0, 0.0], [0.2] * 5)
    np.testing.assert_allclose(np.sort(fwd), np.sort(back), rtol=0.05)
    # in-place rotation (under 1 cm): rot1 = 0, so any (noise) translation is along the particle's
    # heading; nav2's alpha4 turns rotation into translation noise, so it is not small
    turn = amcl_motion(poses, np.array([0.0, 0.0, 1.0]), np.array([0.001, 0.0, 1.0]), np.array([0.2] * 5), noise,
                       backend=backend)
    along = np.abs(np.arctan2(np.abs(turn[:, 1]), np.abs(turn[:, 0])))
    assert np.percentile(along, 99) < 0.01


# -- sensors ----------------------------------------------------------------------------------------
def test_beam_indices_follow_nav2_steps() -> None:
    assert len(sensors.beam_indices(360, 60, "likelihood_field")) == 60  # step (359 // 59) = 6
    assert sensors.beam_indices(181, 60, "beam").tolist()[:3] == [0, 3, 6]
    assert sensors.beam_indices(181, 60, "likelihood_field_prob").tolist()[:3] == [0, 4, 8]  # ceil(181 / 60)
    assert len(sensors.beam_indices(30, 60, "likelihood_field")) == 30
    assert len(sensors.beam_indices(30, 1, "likelihood_field")) == 0
    with pytest.raises(ValueError, match="laser_model_type='sonar'"):
        sensors.beam_indices(30, 60, "sonar")


@pytest.fixture(scope="module")
def room() -> tuple[OccupancyMap, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m = sample_map(seed=6)
    truth = np.array([0.9, 0.7, 0.4])
    bearings = np.linspace(-math.pi, math.pi, 72, endpoint=False)
    ranges = amcl_ray_cast(m.state, *m.geometry, truth[None], bearings, 5.0)[0]
    dist = amcl_distance_map(m.state, m.resolution, 1.0)
    return m, truth, bearings, ranges, dist


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["likelihood_field", "likelihood_field_prob", "beam"])
def test_true_pose_scores_highest(room, backend: str, model: str) -> None:  # type: ignore[no-untyped-def]
    m, truth, bearings, ranges, dist = room
    wrong = truth + np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.3],
                              [1.5, 0.8, 2.0]])
    if model == "beam":
        p = amcl_beam_model(wrong, ranges, bearings, m.state, *m.geometry, 5.0, 0.5, 0.05, 0.05, 0.5, 0.2, 0.1,
                            np.zeros(3), backend=backend)
    else:
        fn = amcl_likelihood_field if model == "likelihood_field" else amcl_likelihood_field_prob
        p = fn(wrong, ranges, bearings, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3), backend=backend)
    assert np.argmax(p) == 0 and (p[0] > p[1:]).all()
    assert np.isfinite(p).all() and (p >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_likelihood_field_formula_and_ignored_beams(room, backend: str) -> None:  # type: ignore[no-untyped-def]
    m, truth, bearings, ranges, dist = room
    pose = truth[None]
    one = amcl_likelihood_field(pose, ranges[:1], bearings[:1], dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2,
                                np.zeros(3), backend=backend)
    end = truth[:2] + ranges[0] * np.array([math.cos(truth[2] + bearings[0]), math.sin(truth[2] + bearings[0])])
    i, j = m.world_to_cell(end[0], end[1])
    z = dist[int(j), int(i)]
    pz = 0.5 * math.exp(-z * z / (2 * 0.2 * 0.2)) + 0.5 / 5.0
    assert one[0] == pytest.approx(1 + pz**3, rel=1e-12)
    # NaN, max-range and beyond-range beams add nothing
    extra_r = np.concatenate([ranges[:1], [math.nan, 5.0, 7.0]])
    extra_b = np.concatenate([bearings[:1], [0.1, 0.2, 0.3]])
    more = amcl_likelihood_field(pose, extra_r, extra_b, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3),
                                 backend=backend)
    assert more[0] == one[0]
    # a laser mounted 0.2 m ahead sees the map as from a pose 0.2 m ahead
    fwd = truth + np.array([0.2 * math.cos(truth[2]), 0.2 * math.sin(truth[2]), 0.0])
    a = amcl_likelihood_field(pose, ranges, bearings, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2,
                              np.array([0.2, 0.0, 0.0]), backend=backend)
    b = amcl_likelihood_field(fwd[None], ranges, bearings, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3),
                              backend=backend)
    assert a[0] == pytest.approx(b[0], rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_beam_skipping_drops_beams_the_cloud_disagrees_on(room, backend: str) -> None:  # type: ignore[no-untyped-def]
    m, truth, bearings, ranges, dist = room
    rng = np.random.default_rng(2)
    cloud = truth + rng.normal(0, 0.02, (50, 3))
    blocked = ranges.copy()
    blocked[:20] = 0.3  # a person in front of 20 beams: the map disagrees
    args = (cloud, blocked, bearings, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3))
    plain = amcl_likelihood_field_prob(*args, backend=backend)
    skipped = amcl_likelihood_field_prob(*args, do_beamskip=True, converged=True, backend=backend)
    clean = amcl_likelihood_field_prob(cloud, ranges[20:], bearings[20:], dist, *m.geometry, 1.0, 5.0, 0.5, 0.5,
                                       0.2, np.zeros(3), backend=backend)
    np.testing.assert_allclose(skipped, clean, rtol=1e-9)
    assert (skipped > plain).all()
    unconverged = amcl_likelihood_field_prob(*args, do_beamskip=True, converged=False, backend=backend)
    np.testing.assert_array_equal(unconverged, plain)


# -- KLD resampling and clusters ---------------------------------------------------------------------
def test_kld_limit_formula_and_the_normal_quantile_parameter() -> None:
    k, err, z = 10, 0.05, 2.326
    b = 2 / (9 * (k - 1))
    expect = math.ceil((k - 1) / (2 * err) * (1 - b + math.sqrt(b) * z) ** 3)
    assert kld.kld_limit(k, err, z, 10, 100000) == expect
    assert kld.kld_limit(1, err, z, 10, 777) == 777
    assert kld.kld_limit(3, err, z, 100, 777) == 100
    assert AmclParameters().pop_z == pytest.approx(2.3263, abs=1e-4)  # kld_confidence 0.99
    assert AmclParameters(kld_confidence=0.95).pop_z == pytest.approx(1.6449, abs=1e-4)
    nav2 = AmclParameters(pf_z=0.99)  # a nav2 config: pf_z used as the quantile, as nav2 does
    assert nav2.pop_z == 0.99
    ours = kld.kld_limit(k, err, AmclParameters().pop_z, 1, 10**6)
    theirs = kld.kld_limit(k, err, nav2.pop_z, 1, 10**6)
    assert (ours, theirs) == (217, 131)  # nav2's default asks for too few particles for a 99 % bound


def _nav2_linear_scan(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """nav2's naive discrete sampler: c[i] <= r < c[i+1], scanning from the start for each draw."""
    c = np.concatenate([[0.0], np.cumsum(weights)])
    out = []
    for r in u * c[-1]:
        i = 0
        while not (c[i] <= r < c[i + 1]):
            i += 1
        out.append(i)
    return np.array(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resampling_draws_exactly_what_nav2s_linear_scan_draws(backend: str) -> None:
    rng = np.random.default_rng(3)
    n, m = 300, 400
    poses = np.stack([np.arange(n) * 10.0, np.zeros(n), np.zeros(n)], 1)  # one bin per particle: draws identifiable
    w = rng.random(n) ** 3
    w[::7] = 0.0
    u = rng.random(m)
    out, k = amcl_kld_resample(poses, w, u, np.ones(m), np.zeros((m, 3)), 0.0, m, m, 0.05, 2.326, BINS,
                               backend=backend)
    drawn = np.rint(out[:, 0] / 10.0).astype(int)
    assert drawn.tolist() == _nav2_linear_scan(w, u).tolist()
    assert (w[drawn] > 0).all() and k == len(np.unique(drawn))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resampling_stops_at_the_kld_bound_and_recovers(backend: str) -> None:
    rng = np.random.default_rng(4)
    n = 2000
    tight = np.stack([rng.normal(1, 0.05, n), rng.normal(1, 0.05, n), rng.normal(0, 0.02, n)], 1)
    args = (np.ones(n), rng.random(n), np.ones(n), np.zeros((n, 3)), 0.0, 100, n, 0.05, 2.326, BINS)
    out, k = amcl_kld_resample(tight, *args, backend=backend)
    assert len(out) == kld.kld_limit(k, 0.05, 2.326, 100, n) + 1 < n  # the first draw past n(k) stops it
    wide = np.stack([rng.uniform(-20, 20, n), rng.uniform(-20, 20, n), rng.uniform(-3, 3, n)], 1)
    out_wide, k_wide = amcl_kld_resample(wide, *args, backend=backend)
    assert k_wide > k and len(out_wide) > len(out)
    random_poses = np.full((n, 3), 42.0)
    rec, _ = amcl_kld_resample(tight, np.ones(n), rng.random(n), rng.random(n), random_poses, 0.5, n, n, 0.05,
                               2.326, BINS, backend=backend)
    assert len(rec) == n
    share = (rec[:, 0] == 42.0).mean()
    assert 0.4 < share < 0.6  # w_diff = 0.5 of the draws are random poses


@pytest.mark.parametrize("backend", BACKENDS)
def test_clusters_wrap_theta_at_pi(backend: str) -> None:
    rng = np.random.default_rng(6)
    n = 400
    th = np.arctan2(np.sin(math.pi + rng.normal(0, 0.1, n)), np.cos(math.pi + rng.normal(0, 0.1, n)))
    poses = np.stack([rng.normal(3, 0.1, n), rng.normal(3, 0.1, n), th], 1)
    w = np.full(n, 1.0 / n)
    _, cw, means, _, _, _ = amcl_cluster_stats(poses, w, BINS, True, backend=backend)
    assert len(cw) == 1 and abs(angle_diff(means[0, 2], math.pi)) < 0.05
    _, cw_nav2, _, _, _, _ = amcl_cluster_stats(poses, w, BINS, False, backend=backend)
    assert len(cw_nav2) == 2  # nav2: the ±π seam splits one heading into two clusters


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_covariance_is_normalised_by_cluster_weight(backend: str) -> None:
    rng = np.random.default_rng(7)
    a = np.stack([rng.normal(0, 0.1, 300), rng.normal(0, 0.1, 300), rng.normal(0.5, 0.01, 300)], 1)
    b = np.stack([rng.normal(9, 0.1, 700), rng.normal(9, 0.1, 700), rng.normal(-1.0, 0.01, 700)], 1)
    poses = np.concatenate([a, b])
    w = np.full(1000, 1e-3)
    labels, cw, _, cc, _, _ = amcl_cluster_stats(poses, w, BINS, backend=backend)
    small = int(labels[0])
    assert cw[small] == pytest.approx(0.3)
    var_theta = 1 - abs(np.mean(np.exp(1j * a[:, 2])))
    assert cc[small, 2, 2] == pytest.approx(-2 * math.log(1 - var_theta), rel=1e-6)
    assert cc[small, 2, 2] < 1e-3
    nav2 = -2 * math.log(abs((w[:300] * np.exp(1j * a[:, 2])).sum()))  # nav2: resultant not divided by weight
    assert nav2 > 2.0
    np.testing.assert_allclose(cc[small, :2, :2], np.cov(a[:, :2].T, bias=True), rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cluster_covariance_far_from_the_origin(backend: str) -> None:
    rng = np.random.default_rng(8)
    poses = np.stack([1e5 + rng.normal(0, 0.01, 500), -2e5 + rng.normal(0, 0.01, 500), np.zeros(500)], 1)
    w = np.full(500, 1 / 500)
    *_, cov = amcl_cluster_stats(poses, w, BINS, backend=backend)
    exact = np.cov((poses[:, :2] - poses[:, :2].mean(0)).T, bias=True)
    np.testing.assert_allclose(cov[:2, :2], exact, rtol=1e-6)
    nav2 = (w[:, None] * poses[:, :1] ** 2).sum() - ((w * poses[:, 0]).sum()) ** 2  # E[x²] - E[x]²
    assert abs(nav2 - exact[0, 0]) > 10 * abs(cov[0, 0] - exact[0, 0])


def test_threads_split_the_work_without_changing_the_result(room) -> None:  # type: ignore[no-untyped-def]
    from modelkernels.kernels.amcl import ops

    m, truth, bearings, ranges, dist = room
    cloud = truth + np.random.default_rng(9).normal(0, 0.2, (3001, 3))
    args = (cloud, ranges, bearings, dist, *m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3))
    before = ops.get_threads()
    try:
        ops.set_threads(1)
        one = amcl_likelihood_field(*args)
        ops.set_threads(3)
        np.testing.assert_array_equal(amcl_likelihood_field(*args, backend="numba_parallel"), one)
        np.testing.assert_array_equal(amcl_likelihood_field(*args), one)
        with pytest.raises(ValueError, match="n=0"):
            ops.set_threads(0)
    finally:
        ops.set_threads(before)


def test_cached_table_follows_the_map_it_was_built_from(room) -> None:  # type: ignore[no-untyped-def]
    m, truth, bearings, ranges, dist = room
    cloud = truth + np.random.default_rng(10).normal(0, 0.2, (500, 3))
    frozen = dist.copy()
    frozen.setflags(write=False)
    args = (cloud, ranges, bearings)
    rest = (*m.geometry, 1.0, 5.0, 0.5, 0.5, 0.2, np.zeros(3))
    a = amcl_likelihood_field(*args, frozen, *rest)
    other = np.minimum(dist * 0.5, 1.0)
    other.setflags(write=False)
    b = amcl_likelihood_field(*args, other, *rest)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, amcl_likelihood_field(*args, other, *rest, backend="reference"), rtol=1e-12)
    writable = dist.copy()
    first = amcl_likelihood_field(*args, writable, *rest)
    writable *= 0.5  # changed in place: a writable map is never served from a cache
    np.testing.assert_allclose(amcl_likelihood_field(*args, writable, *rest),
                               amcl_likelihood_field(*args, writable, *rest, backend="reference"), rtol=1e-12)
    assert not np.array_equal(first, amcl_likelihood_field(*args, writable, *rest))


@pytest.mark.parametrize("wrap", [False, True])
def test_hash_table_bins_and_clusters_agree_with_nav2s_kd_tree(wrap: bool) -> None:
    from modelkernels.pyimpl.amcl.kdtree import BinKdTree

    rng = np.random.default_rng(11)
    centres = rng.uniform(-4, 4, (5, 2))
    c = centres[rng.integers(0, 5, 600)]
    th = np.arctan2(np.sin(rng.normal(3.0, 0.3, 600)), np.cos(rng.normal(3.0, 0.3, 600)))
    poses = np.stack([c[:, 0] + rng.normal(0, 0.5, 600), c[:, 1] + rng.normal(0, 0.5, 600), th], 1)
    tree = BinKdTree(wrap_theta=wrap)
    for p in poses:
        tree.insert(p)
    assert tree.leaf_count == len(np.unique(kld.pack_keys(kld.bin_keys(poses, BINS, wrap))))
    tree.cluster()
    by_tree = np.array([tree.cluster_of(p) for p in poses])
    for labels in (kld.clusters(poses, BINS, wrap), amcl_cluster_stats(poses, np.ones(600), BINS, wrap)[0]):
        # the same partition of the particles (labels may be numbered differently)
        pairs = set(zip(by_tree.tolist(), np.asarray(labels).tolist()))
        assert len(pairs) == len(set(by_tree.tolist())) == len(set(np.asarray(labels).tolist()))
    assert len(set(by_tree.tolist())) > 1
