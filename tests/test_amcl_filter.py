"""The AMCL localizer: nav2's parameters and update gating, seeded reproducibility (Numba and
reference give the same run), tracking and global localization on simulated runs, bad input in a
running filter, pictures and the demo command."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelkernels import kernels
from modelkernels.kernels.amcl import AmclParameters, OccupancyMap, ParticleFilter, Scan, demo, draw, evaluate
from modelkernels.kernels.amcl.simulator import SimulatedRun, generate_map, simulate

NAV2_DEFAULTS = dict(min_particles=500, max_particles=2000, pf_err=0.05, update_min_d=0.25, update_min_a=0.2,
                     resample_interval=1, recovery_alpha_slow=0.0, recovery_alpha_fast=0.0,
                     laser_model_type="likelihood_field", z_hit=0.5, z_short=0.05, z_max=0.05, z_rand=0.5,
                     sigma_hit=0.2, lambda_short=0.1, laser_likelihood_max_dist=2.0, max_beams=60, alpha1=0.2,
                     alpha2=0.2, alpha3=0.2, alpha4=0.2, alpha5=0.2, robot_model_type="differential",
                     do_beamskip=False, beam_skip_distance=0.5, beam_skip_threshold=0.3,
                     beam_skip_error_threshold=0.9, laser_max_range=100.0, laser_min_range=-1.0)
SMALL = dict(min_particles=100, max_particles=400)


@pytest.fixture(scope="module")
def floor() -> OccupancyMap:
    return generate_map(1, width_m=8.0, height_m=6.0, resolution=0.1, boxes=5)


@pytest.fixture(scope="module")
def run(floor: OccupancyMap) -> SimulatedRun:
    return simulate(floor, 90, seed=1, beams=120)


# -- parameters -------------------------------------------------------------------------------------
def test_parameters_default_to_nav2() -> None:
    p = AmclParameters()
    for name, value in NAV2_DEFAULTS.items():
        assert getattr(p, name) == value, name
    assert p.pf_z is None and p.kld_confidence == 0.99


def test_nav2_config_is_accepted(floor: OccupancyMap) -> None:
    with pytest.warns(UserWarning, match="base_frame_id"):
        pf = ParticleFilter(floor, base_frame_id="base_link", robot_model_type="nav2_amcl::OmniMotionModel",
                            pf_z=0.99, **SMALL)
    assert pf.params.robot_model_type == "omni" and pf.params.pop_z == 0.99


@pytest.mark.parametrize("name,value,match", [
    ("min_particles", 0, "min_particles=0"), ("max_particles", 50, "max_particles=50"),
    ("pf_err", 0.0, "pf_err=0.0"), ("pf_z", -1.0, "pf_z=-1.0"), ("kld_confidence", 1.0, "kld_confidence=1.0"),
    ("update_min_d", -0.1, "update_min_d=-0.1"), ("resample_interval", 0, "resample_interval=0"),
    ("recovery_alpha_fast", 1.5, "recovery_alpha_fast=1.5"), ("alpha3", math.nan, "alpha3=nan"),
    ("laser_model_type", "sonar", "laser_model_type='sonar'"), ("robot_model_type", "tank", "robot_model_type"),
    ("sigma_hit", 0.0, "sigma_hit=0.0"), ("max_beams", 1, "max_beams=1"), ("laser_pose", (0, 0), "laser_pose"),
    ("laser_likelihood_max_dist", -2.0, "laser_likelihood_max_dist=-2.0"), ("min_particles", 2.5, "min_particles"),
])
def test_bad_parameters_are_named(floor: OccupancyMap, name: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        ParticleFilter(floor, **{**SMALL, name: value})


def test_unknown_parameter_suggests_the_right_name(floor: OccupancyMap) -> None:
    with pytest.raises(TypeError, match="did you mean 'max_particles'"):
        ParticleFilter(floor, max_particle=100)
    with pytest.raises(TypeError, match="expected an OccupancyMap"):
        ParticleFilter(np.zeros((3, 3)))  # type: ignore[arg-type]


# -- gating, resampling interval, reproducibility ---------------------------------------------------
def _scan_at(floor: OccupancyMap, pose: np.ndarray, n: int = 90) -> Scan:
    angles = np.linspace(-math.pi, math.pi, n, endpoint=False)
    r = kernels.amcl.amcl_ray_cast(floor.state, *floor.geometry, pose[None], angles, 6.0)[0]
    return Scan(r, angle_min=-math.pi, angle_increment=2 * math.pi / n, range_max=6.0)


def test_update_gating_as_nav2(floor: OccupancyMap, run: SimulatedRun) -> None:
    pf = ParticleFilter(floor, random_seed=3, **SMALL)
    pf.initialize(run.truth[0], (0.02, 0.02, 0.01))
    scan = _scan_at(floor, run.truth[0])
    odom = np.array([1.0, 1.0, 0.0])
    assert pf.update(odom, scan)  # the first scan always updates
    before = pf.poses.copy()
    assert not pf.update(odom + np.array([0.2, -0.2, 0.15]), scan)  # under update_min_d / update_min_a
    np.testing.assert_array_equal(pf.poses, before)
    assert pf.update(odom + np.array([0.0, 0.26, 0.0]), scan)  # |dy| > 0.25
    assert pf.update(odom + np.array([0.0, 0.26, 0.21]), scan)  # |dθ| > 0.2
    pf.force_update = True
    assert pf.update(odom + np.array([0.0, 0.26, 0.21]), scan)
    assert pf.updates == 4


def test_resample_interval(floor: OccupancyMap, run: SimulatedRun) -> None:
    pf = ParticleFilter(floor, random_seed=4, resample_interval=3, update_min_d=0.0, update_min_a=0.0, **SMALL)
    pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
    uniform = []
    for k in range(1, 7):
        pf.update(run.odometry[k], run.scans[k])
        uniform.append(bool(np.ptp(pf.weights) == 0))
    assert uniform == [False, False, True, False, False, True]


def test_same_seed_same_run_on_numba_and_reference(floor: OccupancyMap, run: SimulatedRun) -> None:
    def trajectory(backend: str | None, seed: int) -> np.ndarray:
        pf = ParticleFilter(floor, random_seed=seed, backend=backend, update_min_d=0.1, **SMALL)
        pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
        out = []
        for k in range(40):
            pf.update(run.odometry[k], run.scans[k])
            out.append(pf.estimate().pose)
        return np.array(out)

    a, b = trajectory(None, 7), trajectory(None, 7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(trajectory("reference", 7), a, rtol=0, atol=1e-9)
    assert not np.array_equal(trajectory(None, 8), a)


@pytest.mark.parametrize("model", ["differential", "omni"])
@pytest.mark.parametrize("laser", ["likelihood_field", "likelihood_field_prob", "beam"])
def test_tracking_accuracy(floor: OccupancyMap, run: SimulatedRun, model: str, laser: str) -> None:
    make = lambda: ParticleFilter(floor, random_seed=5, robot_model_type=model, laser_model_type=laser,
                                  do_beamskip=True, **SMALL)
    s = evaluate.track(run, make).summary()
    assert s["pos_median"] < 0.12 and s["pos_p95"] < 0.35, s
    assert s["heading_median"] < 0.06 and s["heading_p95"] < 0.2, s


def test_global_localization_converges(floor: OccupancyMap) -> None:
    found = 0
    for seed in (11, 12):
        run = simulate(floor, 120, seed=seed, beams=120)
        make = lambda: ParticleFilter(floor, random_seed=seed, max_particles=6000, min_particles=300,  # noqa: B023
                                      update_min_d=0.1, update_min_a=0.1, recovery_alpha_slow=0.001,
                                      recovery_alpha_fast=0.1)
        res = evaluate.global_localization(run, make)
        found += res.converged
    assert found == 2


# -- bad input in a running filter --------------------------------------------------------------------
def _finite_estimate(pf: ParticleFilter) -> None:
    est = pf.estimate()
    assert np.isfinite(est.pose).all() and np.isfinite(pf.poses).all() and np.isfinite(pf.weights).all()


@pytest.mark.parametrize("jump", [1e155, 1e300, -1.7e308])
def test_huge_odometry_jumps_are_rejected(floor: OccupancyMap, run: SimulatedRun, jump: float) -> None:
    """A finite jump that would give non-finite (or farther than 1e15 m) particles is rejected: the
    particles stay, the scan is skipped, and the next update starts from the new odometry."""
    pf = ParticleFilter(floor, random_seed=2, **SMALL)
    pf.initialize(run.truth[0], (0.02, 0.02, 0.01))
    assert pf.update(run.odometry[0], run.scans[0])
    before = pf.poses.copy()
    odom = np.array(run.odometry[1], dtype=float)
    odom[0] += jump
    with pytest.warns(UserWarning, match="odometry jump .* is rejected"):
        assert not pf.update(odom, run.scans[1])
    np.testing.assert_array_equal(pf.poses, before)
    moved = odom + np.array([0.0, 0.3, 0.0])
    assert pf.update(moved, run.scans[1])  # relative to the new reference: a normal step
    _finite_estimate(pf)
    with pytest.raises(ValueError, match=r"\|x\|, \|y\| <= 1e\+15"):
        pf.initialize((1e200, 0.0, 0.0))


@pytest.mark.parametrize("model", ["likelihood_field", "likelihood_field_prob", "beam"])
def test_tiny_sigma_hit_is_refused(floor: OccupancyMap, model: str) -> None:
    with pytest.raises(ValueError, match=r"sigma_hit=1e-300: must be a finite number >= 1e-150"):
        ParticleFilter(floor, sigma_hit=1e-300, laser_model_type=model, **SMALL)


def test_bad_scans_and_odometry_never_crash_nor_nan(floor: OccupancyMap, run: SimulatedRun) -> None:
    pf = ParticleFilter(floor, random_seed=6, update_min_d=0.0, update_min_a=0.0, **SMALL)
    pf.initialize(run.truth[0], (0.02, 0.02, 0.01))
    good = run.scans[1]
    messy = good.ranges.copy()
    messy[::5], messy[1::5], messy[2::7], messy[3::11] = math.nan, math.inf, -1.0, -math.inf
    assert pf.update(run.odometry[1], Scan(messy, angles=good.bearings, range_max=good.range_max))
    with pytest.warns(UserWarning, match="no usable range"):
        assert not pf.update(run.odometry[2], Scan(np.full(30, math.nan), angles=np.zeros(30)))
    with pytest.warns(UserWarning, match="range_max"):
        assert not pf.update(run.odometry[2], Scan(good.ranges, angles=good.bearings, range_max=0.0))
    with pytest.warns(UserWarning, match="odom_pose"):
        assert not pf.update([math.nan, 0.0, 0.0], good)
    assert pf.update(run.odometry[3], run.scans[3])
    _finite_estimate(pf)
    with pytest.raises(ValueError, match="angles: 3 values for 4 ranges"):
        Scan(np.ones(4), angles=np.zeros(3))
    with pytest.raises(ValueError, match="ranges: shape"):
        Scan(np.ones((2, 2)))
    with pytest.raises(TypeError, match="expected a Scan"):
        pf.update(run.odometry[4], good.ranges)  # type: ignore[arg-type]


def test_off_map_poses_and_vanishing_weights_recover(floor: OccupancyMap, run: SimulatedRun) -> None:
    pf = ParticleFilter(floor, random_seed=7, laser_model_type="likelihood_field_prob", sigma_hit=0.01, z_rand=0.0,
                        update_min_d=0.0, update_min_a=0.0, max_beams=120, **SMALL)
    pf.initialize((-50.0, 80.0, 1.0), (1.0, 1.0, 0.5))  # far off the map: every beam misses
    for k in range(1, 6):
        pf.update(run.odometry[k], run.scans[k])  # exp(Σ log pz) underflows to 0 for every particle
        _finite_estimate(pf)
    with pytest.raises(ValueError, match="positive semi-definite"):
        pf.initialize((0.0, 0.0, 0.0), np.diag([1.0, -1.0, 0.1]))
    with pytest.raises(ValueError, match="three finite numbers"):
        pf.initialize((0.0, math.nan, 0.0))
    with pytest.raises(RuntimeError, match="initialize"):
        ParticleFilter(floor, **SMALL).update(run.odometry[0], run.scans[0])
    blocked = OccupancyMap(np.ones((5, 5), np.int8), 0.1)
    with pytest.raises(ValueError, match="no free cell"):
        ParticleFilter(blocked, **SMALL).global_localization()


# -- pictures and the demo -------------------------------------------------------------------------
def test_png_and_gif(tmp_path: Path, floor: OccupancyMap, run: SimulatedRun) -> None:
    pf = ParticleFilter(floor, random_seed=8, **SMALL)
    pf.initialize(run.truth[0], (0.05, 0.05, 0.02))
    frames = []
    for k in range(3):
        pf.update(run.odometry[k], run.scans[k])
        frames.append(draw.render(pf, scan=run.scans[k], truth=run.truth[k], scale=3, title=f"step {k}"))
    png = draw.save_png(tmp_path / "f.png", pf, scan=run.scans[2], truth=run.truth[2])
    with Image.open(png) as im:
        assert im.size == (floor.width * 2, floor.height * 2)
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert (px == draw.COLORS["particle"]).all(axis=1).any() and (px == draw.COLORS["estimate"]).all(axis=1).any()
    r = floor.resolution
    padded = OccupancyMap(np.pad(floor.state, 20), r, floor.origin_x - 20 * r, floor.origin_y - 20 * r)  # unknown rim
    small = ParticleFilter(padded, random_seed=8, **SMALL)
    small.initialize(run.truth[0], (0.05, 0.05, 0.02))
    cropped = draw.render(small, crop=True)
    left, top, right, bottom = draw.known_box(padded, 2)
    assert cropped.size == (right - left, bottom - top) == ((floor.width - 6 + 10) * 2, (floor.height - 6 + 10) * 2)
    gif = draw.save_gif(tmp_path / "run.gif", frames)
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (floor.width * 3, floor.height * 3)
    with pytest.raises(ValueError, match="frames"):
        draw.save_gif(tmp_path / "none.gif", [])


def test_demo_command_writes_a_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.gif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert demo.main(["--out", str(out), "--steps", "12", "--every", "4", "--particles", "300"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.n_frames == 4
