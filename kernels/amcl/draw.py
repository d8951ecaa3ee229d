"""Pictures with Pillow: the map, the particles, the estimate, the true pose and the scan.

``render(pf, ...)`` draws one frame (free cells white, unknown grey, occupied black; particles as
blue dots; the estimate as a red arrow with its 2-sigma position ellipse; the true pose, when
given, as a green arrow; the scan's end points from the estimate in orange). ``save_png`` writes
one frame; ``save_gif`` an animation of frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modelkernels.pyimpl.amcl.filter import ParticleFilter, Scan
from modelkernels.pyimpl.amcl.maps import FREE, OCCUPIED, UNKNOWN, OccupancyMap

COLORS = dict(particle=(40, 90, 230), estimate=(220, 30, 30), truth=(20, 160, 60), scan=(255, 140, 0))


def map_image(occupancy_map: OccupancyMap, scale: int = 2) -> Image.Image:
    """The grid as an RGB image, north up, ``scale`` pixels per cell."""
    px = np.full(occupancy_map.state.shape, 160, np.uint8)
    px[occupancy_map.state == FREE] = 255
    px[occupancy_map.state == OCCUPIED] = 0
    img = Image.fromarray(px[::-1]).convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


class _Frame:
    def __init__(self, occupancy_map: OccupancyMap, scale: int) -> None:
        self.map, self.scale = occupancy_map, scale
        self.img = map_image(occupancy_map, scale)
        self.draw = ImageDraw.Draw(self.img)

    def xy(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """World -> pixel: nav2's cell centres at origin + i·res."""
        m = self.map
        u = ((np.asarray(x) - m.origin_x) / m.resolution + 0.5) * self.scale
        v = (m.height - ((np.asarray(y) - m.origin_y) / m.resolution + 0.5)) * self.scale
        return u, v

    def arrow(self, pose: np.ndarray, color: tuple[int, int, int], length: float = 0.5) -> None:
        u0, v0 = (float(c) for c in self.xy(pose[0], pose[1]))
        u1, v1 = (float(c) for c in self.xy(pose[0] + length * math.cos(pose[2]), pose[1] + length * math.sin(pose[2])))
        r = max(3, self.scale * 2)
        self.draw.ellipse([u0 - r, v0 - r, u0 + r, v0 + r], outline=color, width=2)
        self.draw.line([u0, v0, u1, v1], fill=color, width=max(2, self.scale))

    def points(self, x: np.ndarray, y: np.ndarray, color: tuple[int, int, int], r: float) -> None:
        u, v = self.xy(x, y)
        for a, b in zip(u.tolist(), v.tolist()):
            self.draw.ellipse([a - r, b - r, a + r, b + r], fill=color)


def known_box(occupancy_map: OccupancyMap, scale: int, margin: int = 5) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) around the map's known (free or occupied) cells."""
    j, i = np.nonzero(occupancy_map.state != UNKNOWN)
    if len(i) == 0:
        return 0, 0, occupancy_map.width * scale, occupancy_map.height * scale
    h = occupancy_map.height
    left, right = max(0, i.min() - margin), min(occupancy_map.width, i.max() + 1 + margin)
    top, bottom = max(0, h - 1 - j.max() - margin), min(h, h - j.min() + margin)
    return left * scale, top * scale, right * scale, bottom * scale


def render(pf: ParticleFilter, scan: Scan | None = None, truth: Sequence[float] | np.ndarray | None = None,
           pose: Sequence[float] | np.ndarray | None = None, scale: int = 2, max_particles: int = 3000,
           title: str | None = None, crop: bool = False) -> Image.Image:
    """One frame of the filter's state. ``pose``: where to draw the estimate and hang the scan
    (default ``pf.estimate().pose``); ``truth``: the true pose, if known; ``crop``: only the part
    of the map around its known cells."""
    f = _Frame(pf.map, scale)
    poses = pf.poses
    if len(poses) > max_particles:
        poses = poses[np.linspace(0, len(poses) - 1, max_particles).astype(np.int64)]
    f.points(poses[:, 0], poses[:, 1], COLORS["particle"], max(1.0, scale * 0.6))
    est = pf.estimate()
    at = np.asarray(pose if pose is not None else est.pose, np.float64)
    if scan is not None:
        ok = np.isfinite(scan.ranges) & (scan.ranges < scan.range_max) & (scan.ranges > scan.range_min)
        ang = at[2] + pf.params.laser_pose[2] + scan.bearings[ok]
        lx = at[0] + pf.params.laser_pose[0] * math.cos(at[2]) - pf.params.laser_pose[1] * math.sin(at[2])
        ly = at[1] + pf.params.laser_pose[0] * math.sin(at[2]) + pf.params.laser_pose[1] * math.cos(at[2])
        f.points(lx + scan.ranges[ok] * np.cos(ang), ly + scan.ranges[ok] * np.sin(ang), COLORS["scan"],
                 max(1.0, scale * 0.7))
    if truth is not None:
        f.arrow(np.asarray(truth, np.float64), COLORS["truth"])
    cov = est.covariance[:2, :2]
    if np.isfinite(cov).all():
        evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
        t = np.linspace(0, 2 * math.pi, 40)
        ell = evecs @ (2 * np.sqrt(np.clip(evals, 0, None))[:, None] * np.stack([np.cos(t), np.sin(t)]))
        u, v = f.xy(at[0] + ell[0], at[1] + ell[1])
        f.draw.line(list(zip(u.tolist(), v.tolist())), fill=COLORS["estimate"], width=1)
    f.arrow(at, COLORS["estimate"])
    img = f.img.crop(known_box(pf.map, scale)) if crop else f.img
    if title:
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 0, 7 * len(title) + 8, 14], fill=(255, 255, 255))
        draw.text((4, 2), title, fill=(0, 0, 0))
    return img


def save_png(path: str | os.PathLike[str], pf: ParticleFilter, **kwargs: Any) -> Path:
    """Write ``render(pf, **kwargs)`` as a PNG."""
    path = Path(path)
    render(pf, **kwargs).save(path, format="PNG")
    return path


def save_gif(path: str | os.PathLike[str], frames: Sequence[Image.Image], ms_per_frame: int = 100) -> Path:
    """Write frames as an animated GIF that loops forever."""
    if not frames:
        raise ValueError("frames: need at least one frame")
    path = Path(path)
    first, *rest = [fr.convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for fr in frames]
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=ms_per_frame, loop=0,
               optimize=False)
    return path
