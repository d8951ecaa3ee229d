"""The pytest plugin on a user's package: the documented example (docs/examples/tiny_ops) run by
pytest in a subprocess, as its own CI would, then with a wrong backend added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "tiny_ops"

WRONG = '''
import torch

import tiny_ops
from modelkernels.kernels.registry import register_kernel
from modelkernels.kernels.testing import parity_tests


@register_kernel("tiny_softplus", "relu", devices=("cpu",), dtypes=("float32", "float64"))
def softplus_as_relu(x):
    """Forgets the log(1 + exp(-|x|)) term."""
    tiny_ops._check(x)
    return torch.relu(x)


test_parity, test_error_inputs = parity_tests("tiny_*")
'''


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder),
                           *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_example_package_passes_and_a_wrong_backend_fails(tmp_path: Path) -> None:
    folder = tmp_path / "tiny_ops"
    shutil.copytree(EXAMPLE, folder)
    ok = _pytest(folder, "--kernels-device", "cpu")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "19 passed" in ok.stdout  # 2 backends x 2 dtypes x 4 samples; 3 backends x 1 error input
    narrowed = _pytest(folder, "--kernels-backend", "softplus", "--kernels-dtype", "float64", "--kernels-op", "tiny_*",
                       "-k", "cpu or integer")
    assert narrowed.returncode == 0 and "5 passed" in narrowed.stdout, narrowed.stdout  # 4 samples, 1 error input
    if not torch.cuda.is_available():
        absent = _pytest(folder, "--kernels-device", "cuda")
        assert absent.returncode == 4  # pytest's usage error, not a pass with every case skipped
        assert "--kernels-device: device 'cuda' was asked for but cannot be used here" in absent.stderr
    (folder / "test_wrong_backend.py").write_text(WRONG)
    bad = _pytest(folder, "test_wrong_backend.py", "-k", "relu")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "6 failed, 3 passed" in bad.stdout  # only the empty samples and the error input agree
    assert ("tiny_softplus backend=relu device=cpu dtype=float32 sample='odd (5,123)': output 0: 615/615 elements "
            "out of tolerance") in bad.stdout


def test_importing_kernels_imports_no_triton() -> None:
    """pytest loads the plugin, and with it ``kernels``, before any conftest: Triton imported then,
    before a conftest sets TRITON_INTERPRET=1, would not run its kernels under the interpreter."""
    code = "import sys, kernels.testing; print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
