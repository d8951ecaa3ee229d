"""Whether the Triton backends of the fused ops can run here: ``kernels.availability``'s answer, under
the name this module has always exported."""

from __future__ import annotations

from kernels.availability import triton_unavailable

__all__ = ["triton_unavailable"]
