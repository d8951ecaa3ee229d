"""Attention: Triton flash attention (forward + backward) and SDPA behind one dispatched op."""

from kernels.attention.ops import attention

__all__ = ["attention"]
