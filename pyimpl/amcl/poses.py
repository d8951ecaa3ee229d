"""Angle and pose arithmetic as nav2_amcl's ``angleutils`` and ``pf_vector``.

normalize(z) = atan2(sin z, cos z); angle_diff(a, b) = the signed shortest rotation from b to a;
coord_add(a, b) = pose a expressed in the frame of pose b (the laser pose on a particle).
"""

from __future__ import annotations

import numpy as np


def normalize(z: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles to [-π, π]: atan2(sin z, cos z)."""
    return np.arctan2(np.sin(z), np.cos(z))


def angle_diff(a: float, b: float) -> float:
    """nav2 ``angleutils::angle_diff``: a - b wrapped to the shorter way round, both normalized first."""
    a = float(np.arctan2(np.sin(a), np.cos(a)))
    b = float(np.arctan2(np.sin(b), np.cos(b)))
    d1 = a - b
    d2 = 2 * np.pi - abs(d1)
    if d1 > 0:
        d2 = -d2
    return d1 if abs(d1) < abs(d2) else d2


def coord_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """nav2 ``pf_vector_coord_add``: pose ``a`` (3,) composed on poses ``b`` (N, 3); θ normalized."""
    c, s = np.cos(b[:, 2]), np.sin(b[:, 2])
    out = np.empty_like(b)
    out[:, 0] = b[:, 0] + a[0] * c - a[1] * s
    out[:, 1] = b[:, 1] + a[0] * s + a[1] * c
    t = b[:, 2] + a[2]
    out[:, 2] = np.arctan2(np.sin(t), np.cos(t))
    return out


def angle_diff_array(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """``angle_diff`` elementwise over arrays."""
    a = np.arctan2(np.sin(a), np.cos(a))
    b = np.arctan2(np.sin(b), np.cos(b))
    d1 = a - b
    d2 = 2 * np.pi - np.abs(d1)
    d2 = np.where(d1 > 0, -d2, d2)
    return np.where(np.abs(d1) < np.abs(d2), d1, d2)
