"""``conv_epilogue`` as a ``torch.library`` op, ``torch.ops.modelkernels.conv_epilogue``, registered once
at import (kernels/torch_ops.py: how the ops compose with torch.compile). Inference only: no autograd
formula, as the Triton backend has no backward."""

from __future__ import annotations

import torch

from modelkernels.kernels.registry import call
from modelkernels.kernels.torch_ops import Tensor, define, fake, memory_format, owned


@define("conv_epilogue")
def conv_epilogue(x: Tensor, bias: Tensor | None, residual: Tensor | None, residual_bias: Tensor | None,
                  relu: bool, backend: str | None) -> Tensor:
    """``kernels.conv_epilogue`` as one graph node; the output has x's memory format and its own storage."""
    out: Tensor = call("conv_epilogue", x, bias, residual, residual_bias, relu, backend=backend)
    return owned([out.contiguous(memory_format=memory_format(x))], (x, residual))[0]


@fake("conv_epilogue")
def _(x: Tensor, bias: Tensor | None, residual: Tensor | None, residual_bias: Tensor | None, relu: bool,
      backend: str | None) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))
