"""A small simulator for tests, benchmarks and pictures: maps, a robot driving through free space,
noisy odometry and ray-cast laser scans.

- ``generate_map(seed)``: a walled floor with interior walls that have doors, and boxes placed at
  random (so that places look different and global localization has something to find).
- ``generate_aisles(seed)``: a warehouse of long parallel shelf rows with gaps, identical along
  the aisles but for a few pallets (repeated structure: a corridor looks the same for metres).
- ``simulate(map, steps, seed)``: the robot drives between random waypoints it can see (kept
  ``clearance`` from walls) at ``speed`` m/s, ``dt`` s a step. Odometry integrates the true
  motion's (rot1, trans, rot2) with Gaussian noise proportional to it (``odom_noise``), so it
  drifts. Scans ray-cast the map from the true pose (``amcl_ray_cast``, nav2's Bresenham), add
  Gaussian range noise, report ``range_max`` where nothing is hit, and drop a fraction of beams
  (NaN) and replace a fraction with short random readings (unmapped obstacles). With
  ``scan_upsample`` k > 1 the scans are cast on the map split into k x k sub-cells, so their
  ranges are not quantised to the cells the filters cast on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from modelkernels.kernels.amcl.ops import amcl_distance_map, amcl_ray_cast
from modelkernels.pyimpl.amcl.filter import Scan
from modelkernels.pyimpl.amcl.maps import FREE, OCCUPIED, UNKNOWN, OccupancyMap


def generate_map(seed: int = 0, width_m: float = 12.0, height_m: float = 9.0, resolution: float = 0.05,
                 boxes: int = 8, origin: tuple[float, float] = (-1.0, -0.5)) -> OccupancyMap:
    """A random floor plan: outer walls (a margin of unknown cells outside), one interior wall in
    each direction with two doors each, and ``boxes`` rectangular obstacles."""
    rng = np.random.default_rng(seed)
    w, h = round(width_m / resolution), round(height_m / resolution)
    margin = 3
    st = np.full((h, w), UNKNOWN, np.int8)
    st[margin:h - margin, margin:w - margin] = FREE
    t = max(1, round(0.1 / resolution))  # wall thickness
    st[margin:margin + t, margin:w - margin] = OCCUPIED
    st[h - margin - t:h - margin, margin:w - margin] = OCCUPIED
    st[margin:h - margin, margin:margin + t] = OCCUPIED
    st[margin:h - margin, w - margin - t:w - margin] = OCCUPIED
    door = round(1.0 / resolution)
    x_wall = int(rng.integers(int(w * 0.35), int(w * 0.65)))
    st[margin:h - margin, x_wall:x_wall + t] = OCCUPIED
    for lo, hi in ((margin + door, h // 2 - door), (h // 2 + door, h - margin - 2 * door)):
        d = int(rng.integers(lo, max(lo + 1, hi)))
        st[d:d + door, x_wall:x_wall + t] = FREE
    y_wall = int(rng.integers(int(h * 0.35), int(h * 0.65)))
    st[y_wall:y_wall + t, margin:x_wall] = OCCUPIED
    d = int(rng.integers(margin + door, max(margin + door + 1, x_wall - 2 * door)))
    st[y_wall:y_wall + t, d:d + door] = FREE
    for _ in range(boxes):
        bw, bh = (int(rng.integers(int(0.3 / resolution), int(1.0 / resolution))) for _ in range(2))
        i = int(rng.integers(margin + t + 1, w - margin - t - bw - 1))
        j = int(rng.integers(margin + t + 1, h - margin - t - bh - 1))
        st[j:j + bh, i:i + bw] = OCCUPIED
    return OccupancyMap(st, resolution, origin[0], origin[1])


def generate_aisles(seed: int = 0, width_m: float = 16.0, height_m: float = 10.0, resolution: float = 0.025,
                    aisle: float = 1.6, shelf: float = 0.6, gap_every: float = 4.0, gap: float = 1.2,
                    pallets: int = 4, origin: tuple[float, float] = (-0.5, -0.5)) -> OccupancyMap:
    """A warehouse: outer walls, shelf rows ``shelf`` m deep running along x with ``aisle`` m
    aisles between them, cross gaps ``gap`` m wide every ``gap_every`` m (the same in every row,
    so every junction looks alike), and ``pallets`` small boxes placed at random in the aisles."""
    if not (aisle > 0 and shelf > 0 and gap_every > gap > 0):
        raise ValueError(f"aisle={aisle!r}, shelf={shelf!r}, gap={gap!r}, gap_every={gap_every!r}: need "
                         "aisle > 0, shelf > 0 and gap_every > gap > 0")
    rng = np.random.default_rng(seed)
    w, h = round(width_m / resolution), round(height_m / resolution)
    margin = 3
    st = np.full((h, w), UNKNOWN, np.int8)
    st[margin:h - margin, margin:w - margin] = FREE
    t = max(1, round(0.1 / resolution))
    st[margin:margin + t, margin:w - margin] = OCCUPIED
    st[h - margin - t:h - margin, margin:w - margin] = OCCUPIED
    st[margin:h - margin, margin:margin + t] = OCCUPIED
    st[margin:h - margin, w - margin - t:w - margin] = OCCUPIED
    a, d, g, ge = (round(v / resolution) for v in (aisle, shelf, gap, gap_every))
    x0, x1 = margin + t + a, w - margin - t - a  # an aisle along each end wall
    y = margin + t + a
    while y + d <= h - margin - t - a:
        st[y:y + d, x0:x1] = OCCUPIED
        for x in range(x0 + ge, x1 - g, ge):
            st[y:y + d, x:x + g] = FREE
        y += d + a
    for _ in range(pallets):
        bw, bh = (int(rng.integers(round(0.2 / resolution), round(0.4 / resolution))) for _ in range(2))
        i = int(rng.integers(margin + t + 1, w - margin - t - bw - 1))
        j = int(rng.integers(margin + t + 1, h - margin - t - bh - 1))
        st[j:j + bh, i:i + bw] = OCCUPIED
    return OccupancyMap(st, resolution, origin[0], origin[1])


@dataclass
class SimulatedRun:
    """What a robot run produced: true poses, odometry poses and scans, one per step."""

    map: OccupancyMap
    truth: np.ndarray
    odometry: np.ndarray
    scans: list[Scan] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.truth)


def _wrap(a: float) -> float:
    return math.atan2(math.sin(a), math.cos(a))


def clear_cells(occupancy_map: OccupancyMap, clearance: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the free cells at least ``clearance`` from any obstacle."""
    dist = amcl_distance_map(occupancy_map.state, occupancy_map.resolution, max(clearance * 2, 1.0))
    j, i = np.nonzero((occupancy_map.state == FREE) & (dist >= clearance))
    if len(i) == 0:
        raise ValueError(f"clearance={clearance}: no free cell is that far from every obstacle")
    return i, j


def free_poses(occupancy_map: OccupancyMap, clearance: float, rng: np.random.Generator, n: int,
               cells: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``n`` random poses on free cells at least ``clearance`` from any obstacle."""
    i, j = cells if cells is not None else clear_cells(occupancy_map, clearance)
    pick = rng.integers(0, len(i), n)
    x, y = occupancy_map.cell_to_world(i[pick], j[pick])
    return np.stack([x, y, rng.uniform(-math.pi, math.pi, n)], 1)


def _visible(occupancy_map: OccupancyMap, a: np.ndarray, b: np.ndarray, clearance: float) -> bool:
    """Whether the straight segment a -> b stays ``clearance`` clear (three parallel rays)."""
    d = math.hypot(b[0] - a[0], b[1] - a[1])
    if d < 1e-9:
        return True
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    nx, ny = -math.sin(ang) * clearance, math.cos(ang) * clearance
    starts = np.array([[a[0], a[1], ang], [a[0] + nx, a[1] + ny, ang], [a[0] - nx, a[1] - ny, ang]])
    r = amcl_ray_cast(occupancy_map.state, *occupancy_map.geometry, starts, np.zeros(1), d + clearance)
    return bool((r[:, 0] >= d + clearance - 1e-9).all())


def simulate(occupancy_map: OccupancyMap, steps: int = 200, seed: int = 0, *, speed: float = 0.5,
             turn_rate: float = 1.2, dt: float = 0.1, clearance: float = 0.35, beams: int = 181,
             fov: float = 2 * math.pi, range_max: float = 8.0, range_noise: float = 0.02,
             dropout: float = 0.01, short_rate: float = 0.02, odom_noise: tuple[float, float] = (0.05, 0.05),
             start: np.ndarray | None = None, scan_upsample: int = 1) -> SimulatedRun:
    """Drive ``steps`` steps from ``start`` (or a random clear pose) and record everything."""
    if isinstance(scan_upsample, bool) or not isinstance(scan_upsample, int) or scan_upsample < 1:
        raise ValueError(f"scan_upsample={scan_upsample!r}: must be an integer >= 1")
    k = scan_upsample
    fine = occupancy_map if k == 1 else OccupancyMap(
        np.kron(occupancy_map.state, np.ones((k, k), np.int8)), occupancy_map.resolution / k,
        occupancy_map.origin_x - occupancy_map.resolution * (k - 1) / (2 * k),
        occupancy_map.origin_y - occupancy_map.resolution * (k - 1) / (2 * k))
    rng = np.random.default_rng(seed)
    cells = clear_cells(occupancy_map, clearance)
    pose = np.array(start, np.float64) if start is not None else free_poses(occupancy_map, clearance, rng, 1, cells)[0]
    odom = np.array([0.0, 0.0, pose[2]])
    bearings = (-fov / 2 + (np.arange(beams) + 0.5) * fov / beams) if fov < 2 * math.pi else \
        np.linspace(-math.pi, math.pi, beams, endpoint=False)
    truth, odometry, scans = [], [], []
    goal = None
    for _ in range(steps):
        for _attempt in range(50):
            if goal is not None and math.hypot(goal[0] - pose[0], goal[1] - pose[1]) > 0.2:
                break
            cand = free_poses(occupancy_map, clearance, rng, 1, cells)[0]
            if _visible(occupancy_map, pose, cand, clearance * 0.8):
                goal = cand
        if goal is None:
            goal = pose.copy()
        heading = math.atan2(goal[1] - pose[1], goal[0] - pose[0])
        turn = float(np.clip(_wrap(heading - pose[2]), -turn_rate * dt, turn_rate * dt))
        trans = speed * dt if abs(_wrap(heading - pose[2])) < 0.6 else 0.0
        trans = min(trans, math.hypot(goal[0] - pose[0], goal[1] - pose[1]))
        rot1, rot2 = turn / 2, turn / 2
        new = np.array([pose[0] + trans * math.cos(pose[2] + rot1), pose[1] + trans * math.sin(pose[2] + rot1),
                        _wrap(pose[2] + turn)])
        hit = amcl_ray_cast(occupancy_map.state, *occupancy_map.geometry, new[None], np.zeros(1), max(trans, 1e-3))
        if trans > 0 and hit[0, 0] < trans:  # would enter an obstacle: turn on the spot instead
            new[:2] = pose[:2]
            goal = None
            trans = 0.0
        a_rot, a_trans = odom_noise
        n_rot1 = rot1 + rng.normal(0, a_rot * abs(rot1) + a_rot * 0.1 * trans)
        n_trans = trans + rng.normal(0, a_trans * trans + 1e-4)
        n_rot2 = rot2 + rng.normal(0, a_rot * abs(rot2) + a_rot * 0.1 * trans)
        odom = np.array([odom[0] + n_trans * math.cos(odom[2] + n_rot1), odom[1] + n_trans * math.sin(odom[2] + n_rot1),
                         _wrap(odom[2] + n_rot1 + n_rot2)])
        pose = new
        ranges = amcl_ray_cast(fine.state, *fine.geometry, pose[None], bearings, range_max)[0]
        hit_mask = ranges < range_max
        ranges = np.where(hit_mask, ranges + rng.normal(0, range_noise, beams), range_max)
        short = rng.random(beams) < short_rate
        ranges[short] = rng.uniform(0.1, 1.0, int(short.sum())) * np.minimum(ranges[short], range_max)
        ranges[rng.random(beams) < dropout] = math.nan
        truth.append(pose.copy())
        odometry.append(odom.copy())
        scans.append(Scan(np.clip(ranges, 0.0, range_max), angles=bearings.copy(), range_min=0.05,
                          range_max=range_max))
    return SimulatedRun(occupancy_map, np.array(truth), np.array(odometry), scans)
