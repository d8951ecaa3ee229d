"""Odometry motion models as nav2_amcl's ``DifferentialMotionModel`` and ``OmniMotionModel``.

Both move every particle by the odometry increment ``delta = odom_pose - last_odom_pose``
(x, y in the odometry frame, θ = angle_diff) with noise scaled by alpha1..alpha5
(Thrun, Burgard, Fox, *Probabilistic Robotics*, sample_motion_model_odometry, p. 136).
``noise`` (N, 3) holds pre-drawn standard normals, so every backend is bit-comparable:
nav2's ``pf_ran_gaussian(σ)`` is ``σ · noise``.

Differential: rot1 = angle_diff(atan2(dy, dx), θ_old) (0 when the translation is under 1 cm),
trans = hypot(dx, dy), rot2 = angle_diff(dθ, rot1); the noise uses min(|rot|, |π - rot|) so
backward motion is treated as forward; per particle rot1^ = angle_diff(rot1, σ1 n0),
trans^ = trans - σt n1, rot2^ = angle_diff(rot2, σ2 n2).
Omni: trans^ = trans + σt n0, rot^ = dθ + σr n1, strafe^ = σs n2 along the bearing
angle_diff(atan2(dy, dx), θ_old) + θ_i.

Departure from nav2 (docs/amcl.md): the particle's θ is wrapped to [-π, π] after the update
(nav2 lets it grow without bound, which splits kd-tree bins of the same heading).
"""

from __future__ import annotations

import numpy as np

from modelkernels.pyimpl.amcl.poses import angle_diff, angle_diff_array

MOTION_MODELS = ("differential", "omni")


def check_motion_args(poses: np.ndarray, odom_pose: np.ndarray, delta: np.ndarray, alphas: np.ndarray,
                      noise: np.ndarray, model: str) -> None:
    """Raise ``ValueError`` naming the argument that is malformed."""
    if model not in MOTION_MODELS:
        raise ValueError(f"model={model!r}: expected one of {', '.join(MOTION_MODELS)}")
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"poses: shape {poses.shape}: expected (N, 3) rows of x, y, theta")
    if noise.shape != poses.shape:
        raise ValueError(f"noise: shape {noise.shape}: expected {poses.shape}, one standard normal per particle "
                         "and component")
    for name, a, size in (("odom_pose", odom_pose, 3), ("delta", delta, 3), ("alphas", alphas, 5)):
        if a.shape != (size,):
            raise ValueError(f"{name}: shape {a.shape}: expected ({size},)")


def motion(poses: np.ndarray, odom_pose: np.ndarray, delta: np.ndarray, alphas: np.ndarray, noise: np.ndarray,
           model: str = "differential") -> np.ndarray:
    """New particle poses (N, 3) after the odometry increment ``delta`` that ended at ``odom_pose``.

    alphas = (alpha1 .. alpha5); noise: (N, 3) standard normals. Returns a new array.
    """
    poses = np.asarray(poses, np.float64)
    odom_pose, delta, alphas = (np.asarray(a, np.float64) for a in (odom_pose, delta, alphas))
    noise = np.asarray(noise, np.float64)
    check_motion_args(poses, odom_pose, delta, alphas, noise, model)
    a1, a2, a3, a4, a5 = (float(a) for a in alphas)
    dx, dy, dth = (float(d) for d in delta)
    old_th = float(odom_pose[2]) - dth
    out = poses.copy()
    trans = float(np.sqrt(dx * dx + dy * dy))
    if model == "differential":
        rot1 = 0.0 if trans < 0.01 else angle_diff(float(np.arctan2(dy, dx)), old_th)
        rot2 = angle_diff(dth, rot1)
        rot1_noise = min(abs(angle_diff(rot1, 0.0)), abs(angle_diff(rot1, np.pi)))
        rot2_noise = min(abs(angle_diff(rot2, 0.0)), abs(angle_diff(rot2, np.pi)))
        s_rot1 = np.sqrt(a1 * rot1_noise * rot1_noise + a2 * trans * trans)
        s_trans = np.sqrt(a3 * trans * trans + a4 * rot1_noise * rot1_noise + a4 * rot2_noise * rot2_noise)
        s_rot2 = np.sqrt(a1 * rot2_noise * rot2_noise + a2 * trans * trans)
        rot1_hat = angle_diff_array(np.full(len(poses), rot1), s_rot1 * noise[:, 0])
        trans_hat = trans - s_trans * noise[:, 1]
        rot2_hat = angle_diff_array(np.full(len(poses), rot2), s_rot2 * noise[:, 2])
        out[:, 0] += trans_hat * np.cos(poses[:, 2] + rot1_hat)
        out[:, 1] += trans_hat * np.sin(poses[:, 2] + rot1_hat)
        th = poses[:, 2] + rot1_hat + rot2_hat
    else:
        s_trans = np.sqrt(a3 * trans * trans + a4 * dth * dth)
        s_rot = np.sqrt(a1 * dth * dth + a2 * trans * trans)
        s_strafe = np.sqrt(a4 * dth * dth + a5 * trans * trans)
        bearing = angle_diff(float(np.arctan2(dy, dx)), old_th) + poses[:, 2]
        cb, sb = np.cos(bearing), np.sin(bearing)
        trans_hat = trans + s_trans * noise[:, 0]
        rot_hat = dth + s_rot * noise[:, 1]
        strafe_hat = s_strafe * noise[:, 2]
        out[:, 0] += trans_hat * cb + strafe_hat * sb
        out[:, 1] += trans_hat * sb - strafe_hat * cb
        th = poses[:, 2] + rot_hat
    out[:, 2] = np.arctan2(np.sin(th), np.cos(th))
    return out
