"""``feed_forward`` from PyTorch's own kernels: the fast path where Triton does not run (CPU tensors, and CUDA
inputs the Triton kernel refuses).

``out = s + Linear2(GELU(Linear1(h)))`` (the seed's ``ff_self`` after its LayerNorm, with the residual) as
``F.linear`` (BLAS), the exact ``F.gelu`` and ``F.linear``, the weights rounded to h's dtype as autocast does
to ``nn.Linear``; the residual is added in place into the second product's fresh output when the dtypes
allow (a GEMM's output is not kept for its backward). The reference writes GELU out and computes
half-precision inputs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modelkernels.kernels.dtypes import cast
from modelkernels.pyimpl.fused import feed_forward_dtype


def feed_forward(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                 b2: torch.Tensor | None) -> torch.Tensor:
    """``feed_forward`` on torch's kernels (see the module docstring), on arguments that passed
    ``pyimpl.fused.check_feed_forward_args`` (the op's ``torch`` backend runs them first); output contiguous in
    ``promote_types(h.dtype, s.dtype)``; differentiable."""
    dt = h.dtype
    y = F.linear(F.gelu(F.linear(h, cast(w1, dt), None if b1 is None else cast(b1, dt))), cast(w2, dt),
                 None if b2 is None else cast(b2, dt))
    if y.dtype == feed_forward_dtype(h, s):
        return y.add_(s)
    return torch.add(y, s)  # a wider residual (float32 under bfloat16 activations): promoted
