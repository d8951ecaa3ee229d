"""ModelKernels next to Hugging Face's ``kernels`` in one environment (issue 17).

Both distributions once installed a top-level package named ``kernels``, so installing one over the
other overwrote files. This library now installs ``modelkernels.kernels`` and ``modelkernels.pyimpl``;
here a fresh venv gets Hugging Face's ``kernels`` from the package index and a wheel of this checkout,
both import and do their job, and uninstalling either leaves the other working, in both orders.

The venv reuses this environment's packages (torch, numpy, ...) through a ``.pth`` file that lists a
folder of links to them, without this checkout's editable install, so nothing here is touched and the
only download is Hugging Face's ``kernels`` with its small dependencies. Without the package index
the test skips and says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HF_KERNELS = "kernels==0.19.1"  # the local-kernel format below (metadata.json) is this release's

BARE = re.compile(r"^\s*(?:>>>\s*)?(?:from|import)\s+(?:kernels|pyimpl)\b|-m\s+(?:kernels|pyimpl)\b", re.M)

OURS = """
import numpy as np
import modelkernels.kernels as mk
from modelkernels.pyimpl.sort import insertion_sort as reference
a = np.random.default_rng(0).random(200)
want = a.copy()
reference(want, 10, 190)
mk.insertion_sort(a, 10, 190)
assert np.array_equal(a, want)
assert mk.native.native_unavailable() is None, mk.native.native_unavailable()
print("ours", mk.__file__)
"""

# Hugging Face's kernelize swaps a layer's forward for one from a kernel repository; a local
# repository (a universal, pure-PyTorch build variant) needs no network.
THEIRS = """
from pathlib import Path
import torch
from torch import nn
import kernels
from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_forward_from_hub, use_kernel_mapping

@use_kernel_forward_from_hub("SiluAndMul")
class SiluAndMul(nn.Module):
    def forward(self, x):
        d = x.shape[-1] // 2
        return nn.functional.silu(x[..., :d]) * x[..., d:]

repo = LocalLayerRepository(repo_path=Path(LOCAL_KERNEL), layer_name="SiluAndMul")
model = nn.Sequential(SiluAndMul())
x = torch.randn(3, 8)
before = model(x)
with use_kernel_mapping({"SiluAndMul": {"cpu": repo}}, inherit_mapping=False):
    kernelize(model, mode=Mode.INFERENCE, device="cpu")
torch.testing.assert_close(model(x), before + 1000.0)
print("theirs", kernels.__file__)
"""

LOCAL_LAYERS = """
from torch import nn

class SiluAndMul(nn.Module):
    def forward(self, x):
        d = x.shape[-1] // 2
        return nn.functional.silu(x[..., :d]) * x[..., d:] + 1000.0
"""


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _site_packages(python: Path) -> Path:
    return Path(_ok(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], python.parent)
                    ).strip())


def _record(python: Path, dist: str) -> list[Path]:
    """The files the distribution installed (its RECORD), as absolute paths."""
    code = (f"import importlib.metadata as m, json; d = m.distribution({dist!r}); "
            "import os; print(json.dumps([os.path.normpath(d.locate_file(f)) for f in d.files]))")
    return [Path(p) for p in json.loads(_ok(_run([str(python), "-c", code], python.parent)))]


def _tops(files: list[Path], site: Path) -> set[str]:
    return {f.relative_to(site).parts[0] for f in files if f.is_relative_to(site) and not
            f.relative_to(site).parts[0].endswith(".dist-info")}


def test_nothing_imports_the_bare_names() -> None:
    """Code, docs and CI scripts import ``modelkernels.kernels``; a module imported under two names would
    define its torch.library ops twice, and a bare ``kernels`` is Hugging Face's."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    found = []
    for rel in listed.stdout.split():
        path = ROOT / rel
        if path == Path(__file__).resolve():  # imports Hugging Face's kernels on purpose
            continue
        if (path.suffix in (".py", ".md") or rel.startswith(".ci/")) and path.is_file():
            text = path.read_text()
            found += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in BARE.finditer(text)]
    assert not found, f"bare kernels/pyimpl imports or python -m commands: {found}"


def test_the_package_loads_no_bare_kernels_or_pyimpl() -> None:
    code = ("import sys, modelkernels.kernels, modelkernels.kernels.nn, modelkernels.kernels.forest.spark, "
            "modelkernels.kernels.testing, modelkernels.pyimpl.unet\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kernels', 'pyimpl')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_beside_hugging_face_kernels(tmp_path: Path) -> None:
    for build_requirement in ("scikit_build_core", "pybind11"):  # the wheel builds without isolation
        pytest.importorskip(build_requirement, reason=f"{build_requirement} builds the wheel (.ci/setup installs it)")
    work = tmp_path / "work"  # the scripts run here: this checkout is not on their sys.path
    work.mkdir()
    pip = [sys.executable, "-m", "pip"]
    fetched = _run([*pip, "download", "-q", "--no-deps", HF_KERNELS, "-d", str(tmp_path / "probe")], work)
    if fetched.returncode != 0:
        pytest.skip(f"Hugging Face's {HF_KERNELS} cannot be fetched from the package index here: "
                    f"{(fetched.stderr.strip().splitlines() or ['no output'])[-1]}")

    _ok(_run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ROOT)],
             work, timeout=600))
    (wheel,) = (tmp_path / "wheel").glob("modelkernels-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = _site_packages(python)
    # this environment's packages, less this library (its editable hook is a .pth file, left out)
    ours = Path(sysconfig.get_path("purelib"))
    links = tmp_path / "base-packages"
    links.mkdir()
    for entry in ours.iterdir():
        if not entry.name.startswith(("modelkernels", "_editable_skbc_modelkernels")) and entry.suffix != ".pth":
            (links / entry.name).symlink_to(entry)
    (site / "zz_base_packages.pth").write_text(f"{links}\n")

    layers = tmp_path / "local-kernel" / "build" / "torch-universal" / "silu_local"
    layers.mkdir(parents=True)
    (layers / "__init__.py").write_text("from . import layers\n")
    (layers / "layers.py").write_text(LOCAL_LAYERS)
    (layers.parent / "metadata.json").write_text(json.dumps(
        {"id": "silu-local", "name": "silu-local", "version": 1, "license": "Apache-2.0", "python-depends": [],
         "backend": {"type": "universal"}}))
    theirs = f"LOCAL_KERNEL = {str(tmp_path / 'local-kernel')!r}\n" + THEIRS
    vpip = [str(python), "-m", "pip"]

    def check(code: str, expect_dir: str) -> None:
        out = _ok(_run([str(python), "-c", textwrap.dedent(code)], work))
        assert Path(out.split()[-1]).is_relative_to(site / expect_dir), out  # imported from this venv

    def install_hf() -> None:
        _ok(_run([*vpip, "install", "-q", HF_KERNELS], work))

    def install_ours() -> None:
        _ok(_run([*vpip, "install", "-q", "--no-deps", str(wheel)], work))

    def intact(dist: str, files: list[Path]) -> None:
        missing = [f for f in files if not f.exists() and "__pycache__" not in f.parts]
        assert not missing, f"{dist}: {len(missing)} installed files gone, e.g. {missing[:3]}"

    for first, second in ((install_hf, install_ours), (install_ours, install_hf)):
        first()
        second()
        hf_files, our_files = _record(python, "kernels"), _record(python, "modelkernels")
        assert _tops(our_files, site) == {"modelkernels"}
        assert not _tops(hf_files, site) & _tops(our_files, site)
        check(theirs, "kernels")
        check(OURS, "modelkernels")
        check(OURS + theirs, "kernels")  # one process, both

        _ok(_run([*vpip, "uninstall", "-q", "-y", "modelkernels"], work))
        intact("kernels", hf_files)
        check(theirs, "kernels")
        install_ours()
        _ok(_run([*vpip, "uninstall", "-q", "-y", "kernels"], work))
        intact("modelkernels", our_files)
        check(OURS, "modelkernels")
        assert _run([str(python), "-c", "import kernels"], work).returncode != 0  # nothing of ours answers
        _ok(_run([*vpip, "uninstall", "-q", "-y", "modelkernels"], work))
