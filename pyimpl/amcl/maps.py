"""Occupancy grid with nav2_amcl's cell convention, the distance map and ray casting.

Cell states as nav2's ``map_t``: -1 free, 0 unknown, +1 occupied (``AmclNode::convertMap``:
grid value 0 -> free, 100 -> occupied, anything else -> unknown). Row ``j`` of ``state`` is the
y index (row 0 at the map's lower edge, as a ROS ``OccupancyGrid``), column ``i`` the x index.

Cell of a world point (nav2 ``MAP_GXWX``): with ``cx = origin_x + (W // 2) * resolution``,
``i = floor((x - cx) / resolution + 0.5) + W // 2``; the cell's centre in nav2's frame is
``origin_x + i * resolution`` (half a cell from ROS's lower-left-corner origin: kept as nav2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FREE, UNKNOWN, OCCUPIED = -1, 0, 1


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a finite number > 0")
    return value


@dataclass
class OccupancyMap:
    """An occupancy grid: ``state`` (H, W) int8 of -1 free / 0 unknown / +1 occupied (a read-only
    copy), the cell size in metres and the world position of cell (0, 0) (the ROS map origin)."""

    state: np.ndarray
    resolution: float
    origin_x: float = 0.0
    origin_y: float = 0.0
    _distance: dict[float, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        st = np.asarray(self.state)
        if st.ndim != 2 or st.shape[0] < 1 or st.shape[1] < 1:
            raise ValueError(f"state: shape {st.shape}: expected a non-empty 2-D grid (height, width)")
        if not np.isin(st, (FREE, UNKNOWN, OCCUPIED)).all():
            raise ValueError("state: values must be -1 (free), 0 (unknown) or +1 (occupied)")
        self.state = np.array(st, dtype=np.int8)  # a copy, read-only: kernels may cache tables of it
        self.state.setflags(write=False)
        self.resolution = _check_positive("resolution", self.resolution)
        for name in ("origin_x", "origin_y"):
            v = float(getattr(self, name))
            if not np.isfinite(v):
                raise ValueError(f"{name}={v!r}: must be finite")
            setattr(self, name, v)

    @classmethod
    def from_grid(cls, values: np.ndarray, resolution: float, origin: tuple[float, float] = (0.0, 0.0)) -> OccupancyMap:
        """From a ROS ``OccupancyGrid``'s values (H, W): 0 free, 100 occupied, others unknown
        (nav2 ``convertMap``); row 0 is the lower edge of the map."""
        v = np.asarray(values)
        if v.ndim != 2:
            raise ValueError(f"values: shape {v.shape}: expected a 2-D grid (height, width)")
        state = np.zeros(v.shape, np.int8)
        state[v == 0] = FREE
        state[v == 100] = OCCUPIED
        return cls(state, resolution, float(origin[0]), float(origin[1]))

    @property
    def width(self) -> int:
        return int(self.state.shape[1])

    @property
    def height(self) -> int:
        return int(self.state.shape[0])

    @property
    def geometry(self) -> tuple[float, float, float]:
        """(resolution, origin_x, origin_y): the scalars every map kernel takes."""
        return self.resolution, self.origin_x, self.origin_y

    def world_to_cell(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """nav2 ``MAP_GXWX`` / ``MAP_GYWY``: integer cell indices (may lie off the map)."""
        return world_to_cell(np.asarray(x, np.float64), np.asarray(y, np.float64), self.width, self.height,
                             *self.geometry)

    def cell_to_world(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """nav2 ``MAP_WXGX`` / ``MAP_WYGY``: the world point of cell (i, j)."""
        return self.origin_x + np.asarray(i) * self.resolution, self.origin_y + np.asarray(j) * self.resolution

    def free_cells(self) -> np.ndarray:
        """(K, 2) int64 (i, j) of the free cells, row-major order (nav2's ``free_space_indices``)."""
        j, i = np.nonzero(self.state == FREE)
        return np.stack([i, j], axis=1).astype(np.int64)

    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the map's cells in nav2's frame, for drawing."""
        r = self.resolution
        return (self.origin_x - r / 2, self.origin_x + (self.width - 0.5) * r,
                self.origin_y - r / 2, self.origin_y + (self.height - 0.5) * r)


def world_to_cell(x: np.ndarray, y: np.ndarray, width: int, height: int, resolution: float, origin_x: float,
                  origin_y: float) -> tuple[np.ndarray, np.ndarray]:
    """nav2's ``MAP_GXWX`` / ``MAP_GYWY`` with its centred origin, exactly as the C macros evaluate."""
    cx = origin_x + (width // 2) * resolution
    cy = origin_y + (height // 2) * resolution
    i = np.floor((x - cx) / resolution + 0.5) + width // 2
    j = np.floor((y - cy) / resolution + 0.5) + height // 2
    return i, j


def distance_map(state: np.ndarray, resolution: float, max_dist: float) -> np.ndarray:
    """Distance (m) from each cell to the nearest occupied cell, capped: nav2 ``map_update_cspace``.

    d(c) = res · min over occupied o of |c - o| (Euclidean, in cells) when that is within
    ``int(max_dist / res)`` cells, else ``max_dist``. Unknown cells are not obstacles.
    nav2 propagates a wavefront from each obstacle, which can miss the true nearest obstacle by
    a fraction of a cell; this is the exact transform (docs/amcl.md). Brute force over the disk
    of offsets: O(cells · r²), a readable yardstick.
    """
    state = np.asarray(state)
    h, w = state.shape
    radius = int(max_dist / resolution)
    out = np.full((h, w), float(max_dist))
    occ = state == OCCUPIED
    if h == 0 or w == 0 or not occ.any():
        return out
    best = np.full((h, w), np.iinfo(np.int64).max, np.int64)  # squared distance in cells
    pad = np.zeros((h + 2 * radius, w + 2 * radius), bool)
    pad[radius:radius + h, radius:radius + w] = occ
    for dj in range(-radius, radius + 1):
        for di in range(-radius, radius + 1):
            d2 = di * di + dj * dj
            if d2 > radius * radius:
                continue
            hit = pad[radius + dj:radius + dj + h, radius + di:radius + di + w]
            np.minimum(best, np.where(hit, d2, best), out=best)
    near = best <= radius * radius
    out[near] = np.sqrt(best[near].astype(np.float64)) * resolution
    return out


def ray_cast(state: np.ndarray, resolution: float, origin_x: float, origin_y: float, poses: np.ndarray,
             bearings: np.ndarray, max_range: float) -> np.ndarray:
    """Range (m) from each pose along each bearing to the first blocked cell: nav2 ``map_calc_range``.

    Bresenham from the pose's cell to the cell at ``max_range`` along the bearing's unit vector
    rotated by the heading, (cos θ cos b - sin θ sin b, sin θ cos b + cos θ sin b); a cell blocks
    when it is off the map, occupied or unknown (state > -1); the range is the cell distance · res,
    or ``max_range`` when nothing blocks. Returns (N, B). Vectorised over all rays, stepping them
    in lockstep.
    """
    state = np.asarray(state)
    h, w = state.shape
    poses = np.asarray(poses, np.float64).reshape(-1, 3)
    bearings = np.asarray(bearings, np.float64).reshape(-1)
    n, b = poses.shape[0], bearings.shape[0]
    if n == 0 or b == 0:
        return np.zeros((n, b))
    ox = np.repeat(poses[:, 0], b)
    oy = np.repeat(poses[:, 1], b)
    c, s = np.repeat(np.cos(poses[:, 2]), b), np.repeat(np.sin(poses[:, 2]), b)
    cb, sb = np.tile(np.cos(bearings), n), np.tile(np.sin(bearings), n)
    gx0, gy0 = world_to_cell(ox, oy, w, h, resolution, origin_x, origin_y)
    gx1, gy1 = world_to_cell(ox + max_range * (c * cb - s * sb), oy + max_range * (s * cb + c * sb), w, h,
                             resolution, origin_x, origin_y)
    x0, y0, x1, y1 = (a.astype(np.int64) for a in (gx0, gy0, gx1, gy1))
    steep = np.abs(y1 - y0) > np.abs(x1 - x0)
    x0, y0 = np.where(steep, y0, x0), np.where(steep, x0, y0)
    x1, y1 = np.where(steep, y1, x1), np.where(steep, x1, y1)
    dx, dy = np.abs(x1 - x0), np.abs(y1 - y0)
    xstep = np.where(x0 < x1, 1, -1)
    ystep = np.where(y0 < y1, 1, -1)
    x, y, err = x0.copy(), y0.copy(), np.zeros_like(x0)
    out = np.full(x.shape, float(max_range))
    active = np.ones(x.shape, bool)
    for step in range(int(dx.max()) + 2):
        if step > 0:  # advance the rays that have not reached x1 + xstep
            active &= x != x1 + xstep
            x = np.where(active, x + xstep, x)
            err = np.where(active, err + dy, err)
            inc = active & (2 * err >= dx)
            y = np.where(inc, y + ystep, y)
            err = np.where(inc, err - dx, err)
        ci, cj = np.where(steep, y, x), np.where(steep, x, y)
        valid = (ci >= 0) & (ci < w) & (cj >= 0) & (cj < h)
        cell = np.full(x.shape, OCCUPIED, np.int64)
        cell[valid] = state[cj[valid], ci[valid]]
        blocked = active & (cell > FREE)
        out[blocked] = np.sqrt(((x - x0) ** 2 + (y - y0) ** 2)[blocked].astype(np.float64)) * resolution
        active &= ~blocked
        if not active.any():
            break
    return out.reshape(n, b)
