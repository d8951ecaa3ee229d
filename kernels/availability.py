"""What can run here, for every domain: Triton, Numba, Triton's interpreter, the compiled extension.

Each ``*_unavailable()`` returns None when that backend family can run, else the reason in words (a
backend's ``available`` in the registry); ``triton_interpret()`` says whether Triton kernels run on
CPU tensors through the interpreter. Checked lazily: importing this never imports Triton or Numba.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from modelkernels.kernels.native import native_unavailable
from modelkernels.kernels.registry import triton_interpret

__all__ = ["LazyEntry", "extension_unavailable", "lazy", "numba_unavailable", "triton_interpret", "triton_unavailable"]


class LazyEntry:
    """``module.name``, imported at the first call: a backend's entry point in a module that imports Triton
    or Numba, registered where that may be missing (``lazy``). ``resolve()`` imports it and returns the
    function itself: the registry keeps that, saving this wrapper's call on every later call."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.__name__ = module, name

    def resolve(self) -> Callable[..., Any]:
        target: Callable[..., Any] = getattr(importlib.import_module(self.module), self.__name__)
        return target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def lazy(module: str, name: str) -> LazyEntry:
    """The entry point ``module.name`` without importing ``module`` yet (see ``LazyEntry``)."""
    return LazyEntry(module, name)


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
