"""Attention: Triton flash attention (forward + backward) and SDPA behind one dispatched op; the
``nn.MultiheadAttention`` drop-in (``kernels.attention.modules``, registered with ``kernels.nn.patch``)."""

from modelkernels.kernels.attention import library, modules
from modelkernels.kernels.attention.ops import attention

__all__ = ["attention", "library", "modules"]
