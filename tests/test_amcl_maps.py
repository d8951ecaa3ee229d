"""AMCL maps: ROS YAML/PGM loading as nav2's map_server, nav2's cell convention, the distance
map and ray casting, and bad map files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelkernels.kernels.amcl import OccupancyMap, amcl_distance_map, amcl_ray_cast, load_map, save_map
from modelkernels.kernels.amcl.map_io import read_grid
from modelkernels.kernels.amcl.ops import sample_map

MAPS = Path(__file__).resolve().parent / "data" / "maps"  # nav2_bringup maps (Apache-2.0): see its README


def _write_map(tmp_path: Path, pixels: np.ndarray, mode: str | None = "trinary", negate: int = 0,
               name: str = "m", extra: str = "", image_mode: str = "L") -> Path:
    Image.fromarray(pixels, mode=image_mode).save(tmp_path / f"{name}.png")
    text = (f"image: {name}.png\nresolution: 0.1\norigin: [-1.0, 2.0, 0.0]\nnegate: {negate}\n"
            f"occupied_thresh: 0.65\nfree_thresh: 0.196\n{extra}")
    if mode is not None:
        text += f"mode: {mode}\n"
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path / f"{name}.yaml"


def test_trinary_pixels_thresholds_and_flip(tmp_path: Path) -> None:
    # top image row is the map's last row (ROS: origin at the lower-left pixel)
    px = np.array([[0, 254, 205], [100, 200, 255]], np.uint8)
    grid, keys = read_grid(_write_map(tmp_path, px))
    occ = 1 - px[::-1] / 255.0
    expect = np.where(occ >= 0.65, 100, np.where(occ <= 0.196, 0, -1))
    assert grid.tolist() == expect.tolist()
    assert grid[1, 0] == 100 and grid[1, 1] == 0 and grid[1, 2] == -1  # the image's top row
    assert keys["origin"] == [-1.0, 2.0, 0.0] and keys["mode"] == "trinary"


def test_negate_scale_raw_and_alpha(tmp_path: Path) -> None:
    px = np.array([[0, 255, 128]], np.uint8)
    assert read_grid(_write_map(tmp_path, px, negate=1, name="n"))[0].tolist() == [[0, 100, -1]]
    scale = read_grid(_write_map(tmp_path, np.array([[0, 255, 128]], np.uint8), mode="scale", name="s"))[0]
    occ = 1 - 128 / 255
    assert scale.tolist() == [[100, 0, round((occ - 0.196) / (0.65 - 0.196) * 100)]]
    raw = read_grid(_write_map(tmp_path, np.array([[0, 100, 50, 255, 101]], np.uint8), mode="raw", name="r"))[0]
    assert raw.tolist() == [[0, 100, 50, -1, -1]]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., 3] = [255, 0]
    assert read_grid(_write_map(tmp_path, rgba, name="a", image_mode="RGBA"))[0].tolist() == [[100, -1]]
    # AMCL keeps only 0 free and 100 occupied; scale-mode grey values are unknown to it
    m = load_map(tmp_path / "s.yaml")
    assert m.state.tolist() == [[1, -1, 0]]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    m = sample_map(31, 19, seed=3)
    back = load_map(save_map(m, tmp_path / "room.yaml"))
    assert np.array_equal(back.state, m.state)
    assert (back.resolution, back.origin_x, back.origin_y) == (m.resolution, m.origin_x, m.origin_y)


@pytest.mark.parametrize("drop,match", [("image", "missing key 'image'"), ("resolution", "missing key 'resolution'"),
                                        ("origin", "missing key 'origin'"), ("negate", "missing key 'negate'"),
                                        ("occupied_thresh", "missing key 'occupied_thresh'"),
                                        ("free_thresh", "missing key 'free_thresh'")])
def test_missing_yaml_keys_are_named(tmp_path: Path, drop: str, match: str) -> None:
    path = _write_map(tmp_path, np.zeros((2, 2), np.uint8))
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(drop + ":")]
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=match):
        load_map(path)


@pytest.mark.parametrize("line,match", [
    ("origin: [1.0, 2.0]", "origin="), ("resolution: -0.1", "resolution=-0.1"), ("resolution: .nan", "resolution="),
    ("mode: fancy", "mode='fancy'"), ("free_thresh: 0.9", "free_thresh=0.9"), ("negate: 3", "negate=3"),
])
def test_bad_yaml_values_are_named(tmp_path: Path, line: str, match: str) -> None:
    path = _write_map(tmp_path, np.zeros((2, 2), np.uint8), mode=None)
    key = line.split(":")[0]
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith(key + ":"))
    path.write_text(text + "\n" + line + "\n")
    with pytest.raises(ValueError, match=re_escape(match)):
        load_map(path)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_map(tmp_path / "nothing.yaml")
    path = _write_map(tmp_path, np.zeros((2, 2), np.uint8))
    (tmp_path / "m.png").unlink()
    with pytest.raises(FileNotFoundError, match="image"):
        load_map(path)
    (tmp_path / "m.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image"):
        load_map(path)
    path.write_text("image: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_map(path)
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_map(path)


def test_sixteen_bit_images_scale_by_their_bit_depth(tmp_path: Path) -> None:
    """nav2's map_server reads a pixel as p / (2**depth - 1): a dark 16-bit pixel is an obstacle."""
    px = np.array([[1000, 65535, 30000, 0]], np.uint16)  # occupancy 0.985, 0, 0.54, 1
    for suffix in ("png", "pgm"):
        Image.fromarray(px).save(tmp_path / f"d.{suffix}")
        (tmp_path / "d.yaml").write_text(f"image: d.{suffix}\nresolution: 0.1\norigin: [0, 0, 0]\nnegate: 0\n"
                                         "occupied_thresh: 0.65\nfree_thresh: 0.196\n")
        assert read_grid(tmp_path / "d.yaml")[0].tolist() == [[100, 0, -1, 100]], suffix
        (tmp_path / "d.yaml").write_text(f"image: d.{suffix}\nresolution: 0.1\norigin: [0, 0, 0]\nnegate: 0\n"
                                         "occupied_thresh: 0.65\nfree_thresh: 0.196\nmode: raw\n")
        assert read_grid(tmp_path / "d.yaml")[0].tolist() == [[4, -1, -1, 0]], suffix  # round(255 p / 65535)


def test_an_oversized_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "big.pgm").write_bytes(b"P5\n100000 100000\n255\n" + bytes(64))
    path = tmp_path / "big.yaml"
    path.write_text("image: big.pgm\nresolution: 0.1\norigin: [0, 0, 0]\nnegate: 0\noccupied_thresh: 0.65\n"
                    "free_thresh: 0.196\n")
    with pytest.raises(ValueError, match=r"big\.pgm is too large to read safely .*MAX_IMAGE_PIXELS"):
        load_map(path)


def test_a_directory_is_not_reported_missing(tmp_path: Path) -> None:
    (tmp_path / "maps.yaml").mkdir()
    with pytest.raises(IsADirectoryError, match=r"maps\.yaml is a directory, not a file"):
        load_map(tmp_path / "maps.yaml")
    path = _write_map(tmp_path, np.zeros((2, 2), np.uint8), extra="")
    (tmp_path / "m.png").unlink()
    (tmp_path / "m.png").mkdir()
    with pytest.raises(IsADirectoryError, match=r"m\.png is a directory"):
        load_map(path)


def test_numbers_with_an_exponent_but_no_dot(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads 1e-300 as a string; map_server's yaml-cpp as a number."""
    path = _write_map(tmp_path, np.zeros((2, 2), np.uint8))
    path.write_text(path.read_text().replace("resolution: 0.1", "resolution: 1e-300")
                    .replace("origin: [-1.0, 2.0, 0.0]", "origin: [-1e3, 2E-1, 0]"))
    keys = read_grid(path)[1]
    assert keys["resolution"] == 1e-300 and keys["origin"] == [-1000.0, 0.2, 0.0]
    path.write_text(path.read_text().replace("resolution: 1e-300", "resolution: 1e400"))
    with pytest.raises(ValueError, match="resolution='1e400': expected a finite number"):
        read_grid(path)
    path.write_text(path.read_text().replace("resolution: 1e400", "resolution: fast"))
    with pytest.raises(ValueError, match="resolution='fast'"):
        read_grid(path)


def test_occupancy_map_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"resolution=0\.0"):
        OccupancyMap(np.zeros((2, 2), np.int8), 0.0)
    with pytest.raises(ValueError, match="values must be -1"):
        OccupancyMap(np.full((2, 2), 5, np.int8), 0.1)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        OccupancyMap(np.zeros((0, 3), np.int8), 0.1)
    with pytest.raises(ValueError, match="origin_x"):
        OccupancyMap(np.zeros((2, 2), np.int8), 0.1, math.nan)
    m = OccupancyMap.from_grid(np.array([[0, 100, -1, 50]]), 0.5)
    assert m.state.tolist() == [[-1, 1, 0, 0]]


@pytest.mark.parametrize("width,height", [(7, 5), (8, 6)])
def test_nav2_cell_convention(width: int, height: int) -> None:
    """nav2: cell i is centred at origin + i·res (half a cell from ROS's corner convention)."""
    m = OccupancyMap(np.zeros((height, width), np.int8), 0.25, -1.0, 3.0)
    i = np.arange(width)
    x, y = m.cell_to_world(i, np.zeros(width))
    gi, gj = m.world_to_cell(x, y)
    assert gi.tolist() == i.tolist() and gj.tolist() == [0] * width
    gi, _ = m.world_to_cell(x + 0.124, y)
    assert gi.tolist() == i.tolist()
    gi, _ = m.world_to_cell(x - 0.126, y)
    assert gi.tolist() == (i - 1).tolist()


def _brute_distance(state: np.ndarray, res: float, max_dist: float) -> np.ndarray:
    occ = np.argwhere(state == 1)
    out = np.full(state.shape, max_dist)
    radius = int(max_dist / res)
    for j in range(state.shape[0]):
        for i in range(state.shape[1]):
            if len(occ):
                d2 = ((occ - [j, i]) ** 2).sum(axis=1).min()
                if d2 <= radius * radius:
                    out[j, i] = math.sqrt(d2) * res
    return out


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_distance_map_exact_and_capped(backend: str) -> None:
    m = sample_map(23, 17, seed=4)
    state = m.state.copy()
    state[5, 5] = 0  # unknown cells are not obstacles
    got = amcl_distance_map(state, m.resolution, 0.45, backend=backend)
    assert np.array_equal(got, _brute_distance(state, m.resolution, 0.45))
    assert got.max() == 0.45 and (got[state == 1] == 0).all()
    empty = amcl_distance_map(np.full((4, 9), -1, np.int8), 0.1, 2.0, backend=backend)
    assert (empty == 2.0).all()


def test_real_maps_load_and_distance_map_matches_scipy() -> None:
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    for name in ("tb3_sandbox", "depot"):
        m = load_map(MAPS / f"{name}.yaml")
        assert (m.state == 1).sum() > 100 and (m.state == -1).sum() > 1000
        got = amcl_distance_map(m.state, m.resolution, 2.0)
        exact = scipy_ndimage.distance_transform_edt(m.state != 1) * m.resolution
        radius = int(2.0 / m.resolution)
        expect = np.where(exact <= radius * m.resolution + 1e-12, exact, 2.0)
        np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_ray_cast_hits_walls_unknown_and_map_edge(backend: str) -> None:
    st = np.full((21, 31), -1, np.int8)
    st[:, 25] = 1  # a wall at x = 2.5
    st[15:, 5] = 0  # unknown cells block like obstacles
    m = OccupancyMap(st, 0.1)
    poses = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, math.pi], [0.5, 1.8, math.pi / 2], [1.0, 1.0, math.pi / 2]])
    r = amcl_ray_cast(m.state, *m.geometry, poses, np.zeros(1), 10.0, backend=backend)[:, 0]
    assert r[0] == pytest.approx(1.5)
    assert r[1] == pytest.approx(1.1)  # the map edge (cell -1) blocks: 11 cells
    assert r[2] == pytest.approx(0.0)  # starts on an unknown cell
    assert r[3] == pytest.approx(1.1)  # off the top edge at row 21
    far = amcl_ray_cast(m.state, *m.geometry, poses[:1], np.zeros(1), 0.5, backend=backend)
    assert far[0, 0] == 0.5  # nothing within range: max_range


def test_free_cells_are_nav2_free_space() -> None:
    m = sample_map(seed=5)
    cells = m.free_cells()
    assert len(cells) == (m.state == -1).sum()
    assert (m.state[cells[:, 1], cells[:, 0]] == -1).all()


def test_ray_cast_matches_the_reference_on_a_real_map() -> None:
    m = load_map(MAPS / "tb3_sandbox.yaml")
    rng = np.random.default_rng(0)
    free = m.free_cells()[rng.integers(0, len(m.free_cells()), 300)]
    x, y = m.cell_to_world(free[:, 0], free[:, 1])
    poses = np.stack([x + rng.uniform(-0.05, 0.05, 300), y + rng.uniform(-0.05, 0.05, 300),
                      rng.uniform(-math.pi, math.pi, 300)], 1)
    bearings = rng.uniform(-math.pi, math.pi, 37)
    ref = amcl_ray_cast(m.state, *m.geometry, poses, bearings, 12.0, backend="reference")
    np.testing.assert_array_equal(amcl_ray_cast(m.state, *m.geometry, poses, bearings, 12.0), ref)
    assert (ref < 12.0).mean() > 0.5
