"""Numba odometry motion models (nav2 ``DifferentialMotionModel`` / ``OmniMotionModel``).

The formulas are ``pyimpl.amcl.motion``'s; one pass over the particles reads 6 and writes 3
float64 per particle (pre-drawn standard normals in, moved poses out). Serial: at 10 000
particles it takes well under a millisecond, less than a thread pool's start-up.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _normalize(z: float) -> float:
    return math.atan2(math.sin(z), math.cos(z))


@njit(cache=True)
def _angle_diff(a: float, b: float) -> float:
    a = _normalize(a)
    b = _normalize(b)
    d1 = a - b
    d2 = 2 * math.pi - abs(d1)
    if d1 > 0:
        d2 = -d2
    return d1 if abs(d1) < abs(d2) else d2


@njit(cache=True)
def _angle_diff_from(a_normalized: float, b: float) -> float:
    """``_angle_diff`` with its first argument already normalized (a constant across particles)."""
    b = _normalize(b)
    d1 = a_normalized - b
    d2 = 2 * math.pi - abs(d1)
    if d1 > 0:
        d2 = -d2
    return d1 if abs(d1) < abs(d2) else d2


@njit(cache=True)
def motion_numba(poses: np.ndarray, odom_pose: np.ndarray, delta: np.ndarray, alphas: np.ndarray,
                 noise: np.ndarray, omni: bool) -> np.ndarray:
    a1, a2, a3, a4, a5 = alphas[0], alphas[1], alphas[2], alphas[3], alphas[4]
    dx, dy, dth = delta[0], delta[1], delta[2]
    old_th = odom_pose[2] - dth
    trans = math.sqrt(dx * dx + dy * dy)
    n = poses.shape[0]
    out = np.empty((n, 3))
    if not omni:
        rot1 = 0.0 if trans < 0.01 else _angle_diff(math.atan2(dy, dx), old_th)
        rot2 = _angle_diff(dth, rot1)
        rot1_noise = min(abs(_angle_diff(rot1, 0.0)), abs(_angle_diff(rot1, math.pi)))
        rot2_noise = min(abs(_angle_diff(rot2, 0.0)), abs(_angle_diff(rot2, math.pi)))
        s_rot1 = math.sqrt(a1 * rot1_noise * rot1_noise + a2 * trans * trans)
        s_trans = math.sqrt(a3 * trans * trans + a4 * rot1_noise * rot1_noise + a4 * rot2_noise * rot2_noise)
        s_rot2 = math.sqrt(a1 * rot2_noise * rot2_noise + a2 * trans * trans)
        rot1_n = _normalize(rot1)
        rot2_n = _normalize(rot2)
        for k in range(n):
            th = poses[k, 2]
            rot1_hat = _angle_diff_from(rot1_n, s_rot1 * noise[k, 0])
            trans_hat = trans - s_trans * noise[k, 1]
            rot2_hat = _angle_diff_from(rot2_n, s_rot2 * noise[k, 2])
            out[k, 0] = poses[k, 0] + trans_hat * math.cos(th + rot1_hat)
            out[k, 1] = poses[k, 1] + trans_hat * math.sin(th + rot1_hat)
            out[k, 2] = _normalize(th + rot1_hat + rot2_hat)
    else:
        s_trans = math.sqrt(a3 * trans * trans + a4 * dth * dth)
        s_rot = math.sqrt(a1 * dth * dth + a2 * trans * trans)
        s_strafe = math.sqrt(a4 * dth * dth + a5 * trans * trans)
        head = _angle_diff(math.atan2(dy, dx), old_th)
        for k in range(n):
            bearing = head + poses[k, 2]
            cb = math.cos(bearing)
            sb = math.sin(bearing)
            trans_hat = trans + s_trans * noise[k, 0]
            rot_hat = dth + s_rot * noise[k, 1]
            strafe_hat = s_strafe * noise[k, 2]
            out[k, 0] = poses[k, 0] + trans_hat * cb + strafe_hat * sb
            out[k, 1] = poses[k, 1] + trans_hat * sb - strafe_hat * cb
            out[k, 2] = _normalize(poses[k, 2] + rot_hat)
    return out
