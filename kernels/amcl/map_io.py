"""ROS map files: YAML + image, read as nav2's map_server does (``nav2_map_server/src/map_io.cpp``).

YAML keys: ``image`` (path relative to the YAML), ``resolution``, ``origin`` [x, y, yaw],
``occupied_thresh``, ``free_thresh``, ``negate`` and optional ``mode`` (trinary, scale, raw).
A pixel p of an image with maximum value M (255 for 8-bit images, 65535 for 16-bit PGM / PNG, as
map_server scales by the bit depth) has shade s = p / M and occupancy occ = 1 - s (s with
``negate``); trinary: occ >= occupied_thresh -> 100, occ <= free_thresh -> 0, otherwise unknown (-1);
scale: values in between become round(100 · (occ - free) / (occupied - free)); raw: round(255 s)
(outside [-1, 100]: unknown). Transparent pixels are unknown. Rows are flipped so row 0 is the lower
edge. Numbers in the YAML may be written as ``1e-3`` (YAML 1.1, and so PyYAML, reads that as a
string; map_server's yaml-cpp reads a number).
AMCL then keeps 0 as free, 100 as occupied and everything else as unknown (``convertMap``).
Colour images are reduced to grey with Pillow's luma weights (map_server averages the channels).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from modelkernels.pyimpl.amcl.maps import FREE, OCCUPIED, OccupancyMap

MODES = ("trinary", "scale", "raw")
# A decimal number, exponent allowed without a dot ("1e-300"), as yaml-cpp reads it.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _key(doc: dict[str, Any], name: str, path: Path) -> Any:
    if name not in doc:
        raise ValueError(f"{path}: missing key {name!r} (a ROS map YAML needs image, resolution, origin, "
                         "occupied_thresh, free_thresh, negate)")
    return doc[name]


def _as_number(v: Any) -> float | None:
    """A finite int or float, or a string spelling one (``1e-300``); None otherwise."""
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _number(doc: dict[str, Any], name: str, path: Path) -> float:
    v = _as_number(_key(doc, name, path))
    if v is None:
        raise ValueError(f"{path}: {name}={doc[name]!r}: expected a finite number")
    return v


def _require_file(p: Path, what: str) -> None:
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")


def _read_image(image_path: Path, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(shade in [0, 1] as float32, alpha channel or None); 16-bit images scaled by 65535."""
    try:
        with Image.open(image_path) as img:
            img.load()
            alpha = np.asarray(img.getchannel("A")) if img.mode in ("RGBA", "LA", "PA") else None
            if img.mode in _SIXTEEN_BIT:
                return np.asarray(img, dtype=np.float32) / 65535.0, alpha
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, alpha
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: image {image_path} is too large to read safely ({e}); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if the image is trusted") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read image {image_path}: {e}") from None


def read_grid(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """The occupancy values (H, W) int8 of a map YAML (-1 unknown, 0..100) and its parsed keys."""
    path = Path(path)
    _require_file(path, "map YAML")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of keys, got {type(doc).__name__}")
    image = _key(doc, "image", path)
    if not isinstance(image, str) or not image:
        raise ValueError(f"{path}: image={image!r}: expected a file name")
    resolution = _number(doc, "resolution", path)
    if resolution <= 0:
        raise ValueError(f"{path}: resolution={resolution}: must be > 0")
    origin = _key(doc, "origin", path)
    xyz = [_as_number(v) for v in origin] if isinstance(origin, (list, tuple)) else []
    if len(xyz) != 3 or None in xyz:
        raise ValueError(f"{path}: origin={origin!r}: expected three finite numbers [x, y, yaw]")
    occupied = _number(doc, "occupied_thresh", path)
    free = _number(doc, "free_thresh", path)
    if not 0 <= free < occupied <= 1:
        raise ValueError(f"{path}: free_thresh={free}, occupied_thresh={occupied}: need 0 <= free < occupied <= 1")
    negate = _key(doc, "negate", path)
    if negate not in (0, 1, True, False):
        raise ValueError(f"{path}: negate={negate!r}: expected 0 or 1")
    mode = str(doc.get("mode", "trinary")).lower()
    if mode not in MODES:
        raise ValueError(f"{path}: mode={mode!r}: expected one of {', '.join(MODES)}")
    image_path = Path(image) if os.path.isabs(image) else path.parent / image
    _require_file(image_path, f"{path}: image")
    shade, alpha = _read_image(image_path, path)
    if mode == "raw":
        v = np.rint(shade * np.float32(255.0)).astype(np.int16)
        grid = np.where((v >= -1) & (v <= 100), v, -1).astype(np.int8)
    else:
        occ = shade if negate else 1.0 - shade
        grid = np.full(shade.shape, -1, np.int8)
        grid[occ >= occupied] = 100
        grid[occ <= free] = 0
        if mode == "scale":
            mid = (occ > free) & (occ < occupied)
            grid[mid] = np.rint((occ[mid] - free) / (occupied - free) * 100.0).astype(np.int8)
        if alpha is not None:
            grid[alpha < 255] = -1
    keys = dict(resolution=resolution, origin=xyz, mode=mode, negate=bool(negate),
                occupied_thresh=occupied, free_thresh=free, image=str(image_path))
    return grid[::-1].copy(), keys


def load_map(path: str | os.PathLike[str]) -> OccupancyMap:
    """An ``OccupancyMap`` from a ROS map YAML (and the image it names)."""
    grid, keys = read_grid(path)
    if keys["origin"][2] != 0:
        warnings.warn(f"{path}: origin yaw {keys['origin'][2]} is ignored, as nav2_amcl does", stacklevel=2)
    return OccupancyMap.from_grid(grid, keys["resolution"], (keys["origin"][0], keys["origin"][1]))


def save_map(occupancy_map: OccupancyMap, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (YAML) and a trinary PGM beside it (occupied 0, free 254, unknown 205; with
    free_thresh 0.196 so that 205, occupancy 0.196 08, reads back as unknown)."""
    path = Path(path)
    pixels = np.full(occupancy_map.state.shape, 205, np.uint8)
    pixels[occupancy_map.state == OCCUPIED] = 0
    pixels[occupancy_map.state == FREE] = 254
    image = path.with_suffix(".pgm")
    Image.fromarray(pixels[::-1]).save(image)
    path.write_text(yaml.safe_dump(dict(
        image=image.name, mode="trinary", resolution=occupancy_map.resolution,
        origin=[occupancy_map.origin_x, occupancy_map.origin_y, 0.0], negate=0, occupied_thresh=0.65,
        free_thresh=0.196), sort_keys=False))
    return path
