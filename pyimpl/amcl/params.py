"""nav2_amcl's parameters: names, defaults and the checks that name what is wrong.

Every name nav2's ``amcl`` node declares for the filter is accepted with nav2's default. Names
nav2 uses only for ROS plumbing (frames, topics, TF, saved poses) are accepted and ignored, so a
nav2 YAML's ``amcl.ros__parameters`` section can be passed as is.

The KLD bound's normal quantile: nav2 names it ``pf_z`` and defaults it to 0.99, then uses the
value as the quantile z itself (0.99 instead of the 2.33 that a 99 % bound needs), which asks for
about 4x fewer particles than meant. Here ``kld_confidence`` (default 0.99) is the probability
and z = Φ⁻¹(kld_confidence) = 2.326; ``pf_z``, when given, is used as z exactly as nav2 does, so a
nav2 configuration behaves as it did under nav2.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from modelkernels.pyimpl.amcl.motion import MOTION_MODELS
from modelkernels.pyimpl.amcl.sensors import LASER_MODELS, check_sigma_hit

ROBOT_MODEL_ALIASES = {
    "differential": "differential",
    "omni": "omni",
    "nav2_amcl::DifferentialMotionModel": "differential",
    "nav2_amcl::OmniMotionModel": "omni",
}

NAV2_IGNORED = frozenset({
    "base_frame_id", "global_frame_id", "odom_frame_id", "scan_topic", "map_topic", "tf_broadcast",
    "transform_tolerance", "save_pose_rate", "set_initial_pose", "initial_pose", "initial_pose.x",
    "initial_pose.y", "initial_pose.z", "initial_pose.yaw", "initialize_at_saved_pose", "saved_pose_filepath",
    "first_map_only", "always_reset_initial_pose", "freespace_downsampling", "allow_parameter_qos_overrides",
    "use_sim_time", "introspection_mode", "bond_heartbeat_period",
})


@dataclass
class AmclParameters:
    """The filter's parameters, nav2's names and defaults (plus ``kld_confidence``, ``wrap_theta``,
    ``laser_pose``, documented in docs/amcl.md)."""

    min_particles: int = 500
    max_particles: int = 2000
    pf_err: float = 0.05
    pf_z: float | None = None
    kld_confidence: float = 0.99
    update_min_d: float = 0.25
    update_min_a: float = 0.2
    resample_interval: int = 1
    recovery_alpha_slow: float = 0.0
    recovery_alpha_fast: float = 0.0
    robot_model_type: str = "differential"
    alpha1: float = 0.2
    alpha2: float = 0.2
    alpha3: float = 0.2
    alpha4: float = 0.2
    alpha5: float = 0.2
    laser_model_type: str = "likelihood_field"
    laser_likelihood_max_dist: float = 2.0
    laser_max_range: float = 100.0
    laser_min_range: float = -1.0
    max_beams: int = 60
    z_hit: float = 0.5
    z_short: float = 0.05
    z_max: float = 0.05
    z_rand: float = 0.5
    sigma_hit: float = 0.2
    lambda_short: float = 0.1
    do_beamskip: bool = False
    beam_skip_distance: float = 0.5
    beam_skip_threshold: float = 0.3
    beam_skip_error_threshold: float = 0.9
    random_seed: int = -1
    wrap_theta: bool = True
    laser_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_kwargs(cls, **params: Any) -> AmclParameters:
        """Build and check; unknown names raise ``TypeError`` naming the closest known ones."""
        known = set(cls.__dataclass_fields__)
        ignored = sorted(k for k in params if k in NAV2_IGNORED)
        unknown = sorted(k for k in params if k not in known and k not in NAV2_IGNORED)
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, sorted(known), n=2, cutoff=0.6)
                hints.append(f"{k!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
            raise TypeError(f"unknown AMCL parameter(s): {', '.join(hints)}")
        if ignored:
            warnings.warn(f"nav2 parameters with no meaning outside ROS are ignored: {', '.join(ignored)}",
                          stacklevel=3)
        p = cls(**{k: v for k, v in params.items() if k in known})
        p.check()
        return p

    @property
    def pop_z(self) -> float:
        """The normal quantile z of the KLD bound: ``pf_z`` as nav2 uses it, else Φ⁻¹(kld_confidence)."""
        if self.pf_z is not None:
            return float(self.pf_z)
        return NormalDist().inv_cdf(self.kld_confidence)

    @property
    def alphas(self) -> tuple[float, float, float, float, float]:
        return (self.alpha1, self.alpha2, self.alpha3, self.alpha4, self.alpha5)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of range."""

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}: {allowed}")

        def number(name: str, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
            if v < lo or v > hi or (lo_open and v == lo):
                raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}]")

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(name, f"must be an integer >= {lo}")

        integer("min_particles", 1)
        integer("max_particles", 1)
        if self.max_particles < self.min_particles:
            raise bad("max_particles", f"must be >= min_particles={self.min_particles}")
        integer("resample_interval", 1)
        integer("max_beams", 2)
        if not isinstance(self.random_seed, int) or isinstance(self.random_seed, bool):
            raise bad("random_seed", "must be an integer (-1: fresh entropy)")
        number("pf_err", 0.0, 1.0, lo_open=True)
        if self.pf_z is not None:
            number("pf_z", 0.0, lo_open=True)
        number("kld_confidence", 0.5, 1.0, lo_open=True)
        if self.kld_confidence >= 1.0:
            raise bad("kld_confidence", "must be < 1 (a probability)")
        for name in ("update_min_d", "update_min_a", "alpha1", "alpha2", "alpha3", "alpha4", "alpha5",
                     "z_hit", "z_short", "z_max", "z_rand", "beam_skip_distance"):
            number(name, 0.0)
        for name in ("recovery_alpha_slow", "recovery_alpha_fast", "beam_skip_threshold",
                     "beam_skip_error_threshold"):
            number(name, 0.0, 1.0)
        for name in ("laser_likelihood_max_dist", "sigma_hit", "lambda_short"):
            number(name, 0.0, lo_open=True)
        check_sigma_hit(self.sigma_hit)
        number("laser_max_range")
        number("laser_min_range")
        if self.robot_model_type not in ROBOT_MODEL_ALIASES:
            raise bad("robot_model_type", f"expected one of {', '.join(ROBOT_MODEL_ALIASES)}")
        self.robot_model_type = ROBOT_MODEL_ALIASES[self.robot_model_type]
        assert self.robot_model_type in MOTION_MODELS
        if self.laser_model_type not in LASER_MODELS:
            raise bad("laser_model_type", f"expected one of {', '.join(LASER_MODELS)}")
        lp = tuple(self.laser_pose)
        if len(lp) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in lp):
            raise bad("laser_pose", "expected three finite numbers (x, y, yaw) of the laser on the robot")
        self.laser_pose = (float(lp[0]), float(lp[1]), float(lp[2]))
        self.do_beamskip = bool(self.do_beamskip)
        self.wrap_theta = bool(self.wrap_theta)
