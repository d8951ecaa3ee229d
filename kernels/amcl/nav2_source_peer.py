"""nav2's AMCL C core with any of its three laser models, built from the ``amcl`` package's sources.

The ``amcl`` package (nav2's C core, GPL-3.0, a benchmark-only peer) binds only the beam model:
its ``AMCL`` class always constructs ``BeamModel``, and the linker leaves nav2's
``LikelihoodFieldModel``, ``LikelihoodFieldModelProb`` and ``map_update_cspace`` (the distance
map they read) out of the compiled module, so they cannot be reached from it, by ctypes or
otherwise. The package's source distribution carries them. ``build`` compiles those sources (as
they are, nothing of them is stored in this project) together with ``DRIVER_SOURCE``, a small
driver written here that does what the package's ``AMCL::update`` does (motion update, sensor
update, resample; every call, no gating) with the laser model chosen by name and the model
parameters of nav2's node, into a shared library in a temporary folder, and ``Nav2SourcePeer``
drives it through ctypes like ``ParticleFilter``.

Where the sources come from: ``find_source(spec)`` takes the package's source archive
(``amcl-<version>.tar.gz``), its unpacked folder, or ``"pip"``, which runs ``pip download`` for the
installed version's source distribution into a temporary folder. Needs a C and a C++ compiler
(``CC`` / ``CXX``, default ``cc`` / ``c++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelkernels.pyimpl.amcl.filter import Scan

MODELS = ("beam", "likelihood_field", "likelihood_field_prob")

# nav2's sources the driver needs, relative to the source distribution's root (the package's own
# CMakeLists.txt builds the same files, plus the omni motion model and drawing stubs).
NAV2_SOURCES = (
    "src/map/map.c", "src/map/map_cspace.cpp", "src/map/map_range.c",
    "src/motion_model/differential_motion_model.cpp",
    "src/pf/eig3.c", "src/pf/pf.c", "src/pf/pf_kdtree.c", "src/pf/pf_pdf.c", "src/pf/pf_vector.c",
    "src/sensors/laser/laser.cpp", "src/sensors/laser/beam_model.cpp",
    "src/sensors/laser/likelihood_field_model.cpp", "src/sensors/laser/likelihood_field_model_prob.cpp",
)

DRIVER_SOURCE = r"""
// The driver of kernels/amcl/nav2_source_peer.py: nav2's particle filter, differential motion
// model and one of its laser models, behind a C interface for ctypes. One update is what the
// amcl package's AMCL::update does: motion (odometry delta, wrapped heading), sensor update,
// resample. Laser models are constructed as nav2's node constructs them.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "nav2_amcl/map/map.hpp"
#include "nav2_amcl/motion_model/differential_motion_model.hpp"
#include "nav2_amcl/pf/pf.hpp"
#include "nav2_amcl/sensors/laser/laser.hpp"

using namespace nav2_amcl;

namespace {

struct Peer {
  map_t * map = nullptr;
  pf_t * pf = nullptr;
  Laser * laser = nullptr;
  DifferentialMotionModel motion;
  pf_vector_t odom{};
  bool have_odom = false;
};

// Recovery draws (unused at alpha_slow = alpha_fast = 0): a uniform free cell, uniform heading.
pf_vector_t uniform_free_pose(void * arg)
{
  map_t * map = static_cast<map_t *>(arg);
  pf_vector_t p = pf_vector_zero();
  for (int tries = 0; tries < 1000000; ++tries) {
    int i = static_cast<int>(drand48() * map->size_x);
    int j = static_cast<int>(drand48() * map->size_y);
    if (MAP_VALID(map, i, j) && map->cells[MAP_INDEX(map, i, j)].occ_state == -1) {
      p.v[0] = MAP_WXGX(map, i);
      p.v[1] = MAP_WYGY(map, j);
      p.v[2] = (2.0 * drand48() - 1.0) * M_PI;
      break;
    }
  }
  return p;
}

}  // namespace

extern "C" {

// states: size_y rows of size_x nav2 cell states (-1 free, 0 unknown, +1 occupied), row 0 at the
// lowest y; origin: the world position of cell (0, 0)'s centre (the ROS map origin).
// laser: z_hit, z_short, z_max, z_rand, sigma_hit, lambda_short, laser_likelihood_max_dist,
// beam_skip_distance, beam_skip_threshold, beam_skip_error_threshold. Returns NULL on bad input.
void * nav2_peer_new(
  int min_particles, int max_particles, const double * alphas, int model, const double * laser,
  int max_beams, int do_beamskip, const signed char * states, int size_x, int size_y,
  double resolution, double origin_x, double origin_y)
{
  if (min_particles < 1 || max_particles < min_particles || size_x < 1 || size_y < 1 ||
    resolution <= 0.0 || model < 0 || model > 2 || max_beams < 2)
  {
    return nullptr;
  }
  Peer * peer = new Peer();
  map_t * map = map_alloc();
  map->size_x = size_x;
  map->size_y = size_y;
  map->scale = resolution;
  // nav2 keeps the origin at the map's centre cell (the package's and node's convertMap).
  map->origin_x = origin_x + (size_x / 2) * resolution;
  map->origin_y = origin_y + (size_y / 2) * resolution;
  map->cells = static_cast<map_cell_t *>(malloc(sizeof(map_cell_t) * size_x * size_y));
  for (long k = 0; k < static_cast<long>(size_x) * size_y; ++k) {
    map->cells[k].occ_state = states[k];
    map->cells[k].occ_dist = 0.0f;
  }
  peer->map = map;
  peer->pf = pf_alloc(min_particles, max_particles, 0.0, 0.0, uniform_free_pose);
  peer->motion.initialize(alphas[0], alphas[1], alphas[2], alphas[3], alphas[4]);
  if (model == 0) {
    peer->laser = new BeamModel(
      laser[0], laser[1], laser[2], laser[3], laser[4], laser[5], 0.0, max_beams, map);
  } else if (model == 1) {
    peer->laser = new LikelihoodFieldModel(laser[0], laser[3], laser[4], laser[6], max_beams, map);
  } else {
    peer->laser = new LikelihoodFieldModelProb(
      laser[0], laser[3], laser[4], laser[6], do_beamskip != 0, laser[7], laser[8], laser[9],
      max_beams, map);
  }
  pf_vector_t laser_pose = pf_vector_zero();
  peer->laser->SetLaserPose(laser_pose);
  return peer;
}

// pose: x, y, yaw; cov: 3 x 3 row-major. seed: srand48 after the initial draw, so the run's
// motion noise and resampling are reproducible (pf_init draws from its own reseeded stream).
void nav2_peer_init(void * handle, const double * pose, const double * cov, long seed)
{
  Peer * peer = static_cast<Peer *>(handle);
  pf_vector_t mean = pf_vector_zero();
  pf_matrix_t c = pf_matrix_zero();
  for (int i = 0; i < 3; ++i) {
    mean.v[i] = pose[i];
    for (int j = 0; j < 3; ++j) {
      c.m[i][j] = cov[3 * i + j];
    }
  }
  pf_init(peer->pf, mean, c);
  srand48(seed);
  peer->have_odom = false;
}

// ranges: count (range, bearing) pairs, max-range readings already at range_max.
void nav2_peer_update(void * handle, const double * odom, const double * ranges, int count, double range_max)
{
  Peer * peer = static_cast<Peer *>(handle);
  pf_vector_t pose = pf_vector_zero();
  for (int i = 0; i < 3; ++i) {
    pose.v[i] = odom[i];
  }
  if (!peer->have_odom) {
    peer->odom = pose;
    peer->have_odom = true;
  }
  pf_vector_t delta = pf_vector_zero();
  delta.v[0] = pose.v[0] - peer->odom.v[0];
  delta.v[1] = pose.v[1] - peer->odom.v[1];
  delta.v[2] = atan2(sin(pose.v[2] - peer->odom.v[2]), cos(pose.v[2] - peer->odom.v[2]));
  peer->motion.odometryUpdate(peer->pf, pose, delta);

  LaserData data;
  data.laser = peer->laser;
  data.range_count = count;
  data.range_max = range_max;
  data.ranges = new double[count][2];  // freed by ~LaserData
  std::memcpy(data.ranges, ranges, sizeof(double) * 2 * count);
  peer->laser->sensorUpdate(peer->pf, &data);
  pf_update_resample(peer->pf, peer->map);
  peer->odom = pose;
}

// The sample set's mean (what the amcl package's get_pose_mean returns).
void nav2_peer_mean(void * handle, double * out)
{
  Peer * peer = static_cast<Peer *>(handle);
  pf_sample_set_t * set = peer->pf->sets + peer->pf->current_set;
  for (int i = 0; i < 3; ++i) {
    out[i] = set->mean.v[i];
  }
}

void nav2_peer_free(void * handle)
{
  Peer * peer = static_cast<Peer *>(handle);
  delete peer->laser;
  pf_free(peer->pf);
  map_free(peer->map);
  delete peer;
}

}  // extern "C"
"""


def _installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("amcl")
    except PackageNotFoundError:
        return None


def _pip_download(dest: Path) -> Path:
    """The installed ``amcl`` version's source archive, downloaded by pip into ``dest``."""
    ver = _installed_version()
    if ver is None:
        raise RuntimeError("nav2 source 'pip': the amcl package is not installed, so its version is unknown")
    cmd = [sys.executable, "-m", "pip", "download", f"amcl=={ver}", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(dest.glob("amcl-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise RuntimeError(f"nav2 source 'pip': pip download failed: {done.stderr.strip()[-500:]}")
    return archives[0]


def find_source(spec: str | os.PathLike[str]) -> Path:
    """The root of the ``amcl`` package's sources: ``spec`` is its source archive (unpacked into a
    temporary folder), its unpacked folder, or ``"pip"`` (``pip download`` of the installed
    version's source distribution). Raises ``FileNotFoundError`` / ``RuntimeError`` saying what is
    missing."""
    if str(spec) == "pip":
        with tempfile.TemporaryDirectory(prefix="nav2-amcl-sdist-") as download:
            return find_source(_pip_download(Path(download)))
    path = Path(spec)
    if path.is_file() and path.name.endswith(".tar.gz"):
        dest = Path(tempfile.mkdtemp(prefix="nav2-amcl-src-"))
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")
        roots = [p for p in dest.iterdir() if p.is_dir()]
        path = roots[0] if len(roots) == 1 else dest
    missing = [s for s in NAV2_SOURCES if not (path / s).is_file()]
    if not path.is_dir() or missing:
        raise FileNotFoundError(f"nav2 source {str(spec)!r}: not the amcl package's sources "
                                f"(missing {missing[:3] if path.is_dir() else 'the folder'})")
    return path


def build(source: Path) -> Path:
    """Compile nav2's sources under ``source`` with ``DRIVER_SOURCE`` into a shared library in a
    temporary folder (reused while the sources and the driver are unchanged); returns its path."""
    digest = hashlib.sha256(DRIVER_SOURCE.encode())
    for rel in NAV2_SOURCES:
        digest.update((source / rel).read_bytes())
    out_dir = Path(tempfile.gettempdir()) / f"kernels-nav2-peer-{digest.hexdigest()[:16]}"
    lib = out_dir / "libnav2peer.so"
    if lib.is_file():
        return lib
    with tempfile.TemporaryDirectory(prefix="nav2-peer-build-") as work_dir:
        _compile(source, Path(work_dir), lib)
    return lib


def _compile(source: Path, work: Path, lib: Path) -> None:
    (work / "driver.cpp").write_text(DRIVER_SOURCE)
    cc, cxx = os.environ.get("CC", "cc"), os.environ.get("CXX", "c++")
    # The package's build: Release (-O3, asserts off), drand48 available.
    flags = ["-O3", "-DNDEBUG", "-DHAVE_DRAND48", "-fPIC", f"-I{source / 'include'}"]
    objects = []
    for k, src in enumerate([*(source / s for s in NAV2_SOURCES), work / "driver.cpp"]):
        obj = work / f"{k}_{src.stem}.o"
        compiler = [cc, "-std=gnu11"] if src.suffix == ".c" else [cxx, "-std=c++17"]
        cmd = [*compiler, *flags, "-c", str(src), "-o", str(obj)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building nav2's {src.name} failed: {done.stderr.strip()[-800:]}")
        objects.append(str(obj))
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = work / lib.name
    done = subprocess.run([cxx, "-shared", "-o", str(tmp), *objects], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"linking the nav2 peer failed: {done.stderr.strip()[-800:]}")
    os.replace(tmp, lib)


_LIBS: dict[Path, ctypes.CDLL] = {}


def load(lib_path: Path) -> ctypes.CDLL:
    """The built library, with its functions' argument types declared."""
    if lib_path in _LIBS:
        return _LIBS[lib_path]
    lib = ctypes.CDLL(str(lib_path))
    dp, vp = ctypes.POINTER(ctypes.c_double), ctypes.c_void_p
    lib.nav2_peer_new.restype = vp
    lib.nav2_peer_new.argtypes = [ctypes.c_int, ctypes.c_int, dp, ctypes.c_int, dp, ctypes.c_int, ctypes.c_int,
                                  ctypes.POINTER(ctypes.c_byte), ctypes.c_int, ctypes.c_int,
                                  ctypes.c_double, ctypes.c_double, ctypes.c_double]
    lib.nav2_peer_init.argtypes = [vp, dp, dp, ctypes.c_long]
    lib.nav2_peer_update.argtypes = [vp, dp, dp, ctypes.c_int, ctypes.c_double]
    lib.nav2_peer_mean.argtypes = [vp, dp]
    lib.nav2_peer_free.argtypes = [vp]
    _LIBS[lib_path] = lib
    return lib


def _dptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


class Nav2SourcePeer:
    """nav2's core built from source (``build``), driven like ``ParticleFilter`` with
    ``laser_model_type`` one of ``MODELS`` and nav2's laser defaults; every call updates."""

    def __init__(self, lib_path: Path, run_map: Any, particles: int = 2000, laser_model_type: str = "likelihood_field",
                 alphas: tuple[float, ...] = (0.2,) * 5, max_beams: int = 60, seed: int = 0,
                 min_particles: int | None = None, z_hit: float = 0.5, z_short: float = 0.05, z_max: float = 0.05,
                 z_rand: float = 0.5, sigma_hit: float = 0.2, lambda_short: float = 0.1,
                 laser_likelihood_max_dist: float = 2.0, do_beamskip: bool = False, beam_skip_distance: float = 0.5,
                 beam_skip_threshold: float = 0.3, beam_skip_error_threshold: float = 0.9) -> None:
        if laser_model_type not in MODELS:
            raise ValueError(f"laser_model_type={laser_model_type!r}: expected one of {MODELS}")
        self._lib = load(lib_path)
        self._seed = int(seed)
        state = np.ascontiguousarray(run_map.state, dtype=np.int8)
        laser = np.array([z_hit, z_short, z_max, z_rand, sigma_hit, lambda_short, laser_likelihood_max_dist,
                          beam_skip_distance, beam_skip_threshold, beam_skip_error_threshold], np.float64)
        alpha = np.array(alphas, np.float64)
        handle = self._lib.nav2_peer_new(
            int(min_particles or particles), int(particles), _dptr(alpha), MODELS.index(laser_model_type),
            _dptr(laser), int(max_beams), int(do_beamskip), state.ctypes.data_as(ctypes.POINTER(ctypes.c_byte)),
            state.shape[1], state.shape[0], float(run_map.resolution), float(run_map.origin_x),
            float(run_map.origin_y))
        if not handle:
            raise ValueError("nav2 peer: the driver refused its arguments (particles, map or max_beams)")
        self._handle = handle
        self._mean = np.zeros(3)

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.nav2_peer_free(handle)

    def initialize(self, pose: Any, cov: Any) -> None:
        c = np.asarray(cov, np.float64)
        c = np.ascontiguousarray(c if c.shape == (3, 3) else np.diag(c))
        p = np.ascontiguousarray(pose, np.float64)
        self._lib.nav2_peer_init(self._handle, _dptr(p), _dptr(c), self._seed)

    def update(self, odom_pose: Any, scan: Scan) -> bool:
        # As nav2's node: short or missing readings become max range.
        r = np.where(np.isnan(scan.ranges) | (scan.ranges <= scan.range_min), scan.range_max, scan.ranges)
        pairs = np.ascontiguousarray(np.stack([np.minimum(r, scan.range_max), scan.bearings], 1), np.float64)
        odom = np.ascontiguousarray(odom_pose, np.float64)
        self._lib.nav2_peer_update(self._handle, _dptr(odom), _dptr(pairs), len(pairs), float(scan.range_max))
        return True

    def pose_at(self, odom_pose: Any) -> np.ndarray:
        self._lib.nav2_peer_mean(self._handle, _dptr(self._mean))
        return self._mean.copy()
