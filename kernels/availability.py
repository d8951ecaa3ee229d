"""What can run here, for every domain: Triton, Numba, Triton's interpreter, the compiled extension.

Each ``*_unavailable()`` returns None when that backend family can run, else the reason in words (a
backend's ``available`` in the registry); ``triton_interpret()`` says whether Triton kernels run on
CPU tensors through the interpreter. Checked lazily: importing this never imports Triton or Numba.
"""

from __future__ import annotations

import functools
import importlib.util

from modelkernels.kernels.native import native_unavailable
from modelkernels.kernels.registry import triton_interpret

__all__ = ["extension_unavailable", "numba_unavailable", "triton_interpret", "triton_unavailable"]


@functools.cache
def triton_unavailable() -> str | None:
    """None when Triton is importable, else the reason."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install modelkernels[triton])"
    return None


@functools.cache
def numba_unavailable() -> str | None:
    """None when Numba is importable, else the reason."""
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install numba)"
    return None


def extension_unavailable() -> str | None:
    """None when the C++ extension ``kernels._native`` loads, else the reason (``kernels.native``)."""
    return native_unavailable()
