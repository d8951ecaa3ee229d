"""``conv_epilogue`` from PyTorch's own kernels: the fast path where Triton does not run (CPU tensors, and
inputs that need a gradient, which the Triton epilogue does not take).

``out = relu(x + bias[c] + residual + residual_bias[c])`` (He et al. 2016, the residual block's output
after BatchNorm is folded into the convolutions' biases), each term optional, ReLU too: the first add
allocates the output (float32 for half-precision inputs, float64 for float64), the other terms and the ReLU
are applied in place on it, and it is rounded once to x's dtype in x's memory format. The written-out
reference allocates a tensor per term. In-place adds are differentiable here: an add keeps nothing for its
backward, and the in-place ReLU keeps its own result.
"""

from __future__ import annotations

import torch

from modelkernels.kernels.dtypes import cast


def conv_epilogue(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """``conv_epilogue`` on torch's kernels (see the module docstring), on arguments that passed
    ``pyimpl.resnet.check_conv_epilogue_args`` (the op's ``torch`` backend runs them first)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    y = cast(x, acc) + cast(bias, acc).view(1, -1, 1, 1) if bias is not None else x.to(acc, copy=True)
    if residual is not None:
        y.add_(residual)
        if residual_bias is not None:
            y.add_(cast(residual_bias, acc).view(1, -1, 1, 1))
    if relu:
        y.relu_()
    return cast(y, x.dtype).contiguous(memory_format=fmt)
