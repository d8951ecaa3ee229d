"""``group_norm_act`` from PyTorch's own kernels: the fast path where Triton does not run (CPU tensors, and
CUDA inputs the Triton kernels refuse).

``out = act(GroupNorm(num_groups)(x) * weight + bias + residual) + emb[:, :, None, ...]`` (Wu & He 2018) as
``F.group_norm`` (torch's fused normalisation kernel: one pass for the statistics, one for the affine
output), then the residual add, ``F.gelu`` / ``F.silu`` and the embedding add. Where nothing needs a
gradient the adds and the SiLU work in place on the normalised tensor, so a call allocates one activation
(GELU: two), against the written-out reference's six. float16 / bfloat16 are computed in float32 and
rounded once at the end, as the reference and the Triton kernel do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.dtypes import cast

_HALF = (torch.float16, torch.bfloat16)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, residual: torch.Tensor | None = None,
                   emb: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """``group_norm_act`` on torch's kernels (see the module docstring), on arguments that passed
    ``pyimpl.fused.check_group_norm_args`` (the op's ``torch`` backend runs them first); differentiable."""
    cd = torch.float32 if x.dtype in _HALF else x.dtype
    y = F.group_norm(cast(x, cd), num_groups, None if weight is None else cast(weight, cd),
                     None if bias is None else cast(bias, cd), eps)
    inplace = not needs_autograd(x, weight, bias, residual, emb)  # y is this call's own tensor
    if residual is not None:
        y = y.add_(residual) if inplace else y + cast(residual, cd)
    if activation == "gelu":
        y = F.gelu(y)
    elif activation == "silu":
        y = F.silu(y, inplace=inplace)
    if emb is not None:
        e = emb.reshape(*emb.shape, *(1,) * (x.dim() - 2))
        y = y.add_(e) if inplace else y + cast(e, cd)
    return cast(y, x.dtype)
