"""The compiled extension ``kernels._native`` (csrc/), loaded once; a missing build is a reason,
not an import error, so ``import modelkernels.kernels`` works without a compiler."""

from __future__ import annotations

import importlib
from types import ModuleType

_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _load() -> None:
    global _module, _error, _tried
    _tried = True
    try:
        _module = importlib.import_module("modelkernels.kernels._native")
    except ImportError as e:
        _error = f"the C++ extension kernels._native is not built ({e}); install with `pip install .`"


def native() -> ModuleType:
    """The extension module; raises ``RuntimeError`` with the reason when it is missing."""
    if not _tried:
        _load()
    if _module is None:
        raise RuntimeError(_error)
    return _module


def native_unavailable() -> str | None:
    """Why the extension cannot be used here, or None."""
    if not _tried:
        _load()
    return _error
