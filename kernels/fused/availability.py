"""Whether the Triton backends of the fused ops can run here (checked lazily: importing the
package never imports Triton)."""

from __future__ import annotations

import functools
import importlib.util


@functools.lru_cache(maxsize=1)
def triton_unavailable() -> str | None:
    """None when Triton is importable, else the reason in words."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install modelkernels[triton])"
    return None
