"""The ``conv_epilogue`` op: reference (``pyimpl.resnet.conv_epilogue``), samples, error inputs, its
Triton backend (CUDA; CPU tensors under ``TRITON_INTERPRET=1`` when forced). ``library.py`` defines it
as ``torch.ops.modelkernels.conv_epilogue`` so a patched ResNet compiles as one graph.

The Triton backend is inference only (no backward): inputs that need a gradient go to the "torch" backend
(PyTorch's kernels, differentiable; also the CPU's default) and the Triton reason says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modelkernels.kernels.availability import lazy, triton_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.kernels.resnet import epilogue_torch
from modelkernels.pyimpl import resnet as ref

DTYPES = ("float16", "bfloat16", "float32", "float64")
TRITON_DTYPES = ("float16", "bfloat16", "float32")
# fp32 arithmetic, one rounding of the output to the input dtype (bf16: 2^-8 relative)
TOLERANCES = {
    "float32": Tolerance(1e-6, 1e-6),
    "float16": Tolerance(2e-3, 2e-3),
    "bfloat16": Tolerance(1.6e-2, 1.6e-2),
}


def _randn(shape: tuple[int, ...], seed: int, device: str, dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=getattr(torch, dtype))


def _sample(name: str, shape: tuple[int, int, int, int], *, layout: str = "contiguous", residual: bool = True,
            residual_layout: str | None = None, residual_bias: bool = False, bias: bool = True,
            relu: bool = True, special: bool = False, seed: int = 0) -> Sample:
    def tensor(seed: int, device: str, dtype: str, layout: str) -> torch.Tensor:
        if layout == "strided":  # every other column of a wider tensor
            return _randn((*shape[:3], 2 * shape[3]), seed, device, dtype)[..., ::2]
        t = _randn(shape, seed, device, dtype)
        return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t

    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        c = shape[1]
        x = tensor(seed, device, dtype, layout)
        if special and x.numel():
            x[0, 0, 0, 0], x[0, -1, -1, -1] = float("nan"), float("inf")
        # the folded biases are float32 whatever the activations' dtype
        bias_dtype = "float64" if dtype == "float64" else "float32"
        b = _randn((c,), seed + 1, device, bias_dtype) if bias else None
        r = tensor(seed + 2, device, dtype, residual_layout or layout) if residual else None
        rb = _randn((c,), seed + 3, device, bias_dtype) if residual_bias else None
        return (x, b, r, rb, relu), {}

    return Sample(name, make)


SAMPLES = [
    _sample("bias+ReLU (2,5,7,9)", (2, 5, 7, 9), residual=False),
    _sample("bias+residual+ReLU (2,6,5,3)", (2, 6, 5, 3), seed=1),
    _sample("downsample shortcut bias (3,7,3,5)", (3, 7, 3, 5), residual_bias=True, seed=2),
    _sample("channels-last bias+ReLU (2,6,5,7)", (2, 6, 5, 7), layout="channels_last", residual=False, seed=3),
    _sample("channels-last residual+shortcut bias (2,9,3,3)", (2, 9, 3, 3), layout="channels_last",
            residual_bias=True, seed=4),
    _sample("channels-last x, NCHW residual (2,4,3,5)", (2, 4, 3, 5), layout="channels_last",
            residual_layout="contiguous", seed=5),
    _sample("batch 1, odd sizes (1,3,13,11)", (1, 3, 13, 11), seed=6),
    _sample("wide rows: H*W > 1024 (1,2,37,41)", (1, 2, 37, 41), seed=7),
    _sample("strided x and residual (2,3,4,5)", (2, 3, 4, 5), layout="strided", residual_bias=True, seed=8),
    _sample("no ReLU, no bias (2,3,3,3)", (2, 3, 3, 3), bias=False, relu=False, seed=9),
    _sample("1x1 spatial (3,5,1,1)", (3, 5, 1, 1), layout="channels_last", residual_bias=True, seed=10),
    _sample("NaN and Inf propagate (2,3,4,4)", (2, 3, 4, 4), special=True, seed=11),
    _sample("empty batch (0,4,3,3)", (0, 4, 3, 3), residual_bias=True, seed=12),
]


def _bad(x: Any = None, bias: Any = None, residual: Any = None, residual_bias: Any = None,
         relu: Any = True) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.zeros(2, 4, 3, 3) if x is None else x, bias, residual, residual_bias, relu), {}

    return make


ERROR_SAMPLES = [
    ErrorSample("integer x", _bad(x=torch.zeros(2, 4, 3, 3, dtype=torch.int32)), TypeError, "x.dtype=torch.int32"),
    ErrorSample("3-D x", _bad(x=torch.zeros(2, 4, 9)), ValueError, "x.shape=(2, 4, 9): expected (N, C, H, W)"),
    ErrorSample("bias length", _bad(bias=torch.zeros(5)), ValueError, "bias.shape=(5,): expected (C,) = (4,)"),
    ErrorSample("integer bias", _bad(bias=torch.zeros(4, dtype=torch.int64)), TypeError, "bias.dtype=torch.int64"),
    ErrorSample("residual shape", _bad(residual=torch.zeros(2, 4, 3, 4)), ValueError, "residual.shape=(2, 4, 3, 4)"),
    ErrorSample("residual dtype", _bad(residual=torch.zeros(2, 4, 3, 3, dtype=torch.float16)), TypeError,
                "residual.dtype=torch.float16: expected x.dtype=torch.float32"),
    ErrorSample("shortcut bias without residual", _bad(residual_bias=torch.zeros(4)), ValueError,
                "residual_bias is given without a residual"),
    ErrorSample("residual bias length", _bad(residual=torch.zeros(2, 4, 3, 3), residual_bias=torch.zeros(3)),
                ValueError, "residual_bias.shape=(3,)"),
    ErrorSample("relu not a bool", _bad(relu="yes"), TypeError, "relu='yes': expected True or False"),
]


def _f64(dtype: str) -> str:
    del dtype
    return "float64"


def _needs_grad(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _dispatch_key(x: Any, bias: Any = None, residual: Any = None, residual_bias: Any = None,
                  relu: Any = True) -> Any:
    """Shapes, devices and dtypes of every tensor, ``relu`` and whether a gradient is needed: all the checks
    and the reasons look at (the op is ``checked_by_key``)."""
    tensors = (x, bias, residual, residual_bias)
    if not all(t is None or type(t) is torch.Tensor for t in tensors) or x is None or type(relu) is not bool:
        return None
    return (tuple(None if t is None else (t.shape, t.device, t.dtype) for t in tensors), relu, _needs_grad(*tensors))


define_op(
    "conv_epilogue",
    reference=ref.conv_epilogue,
    dtypes=DTYPES,
    samples=SAMPLES,
    error_samples=ERROR_SAMPLES,
    reference_dtype=_f64,
    doc="relu(x + bias[c] + residual + residual_bias[c]) after a BatchNorm-folded convolution (ResNet blocks)",
    dispatch_key=_dispatch_key,
    checked_by_key=True,
)


def _triton_reasons(x: Any, bias: Any = None, residual: Any = None, residual_bias: Any = None,
                    relu: Any = True) -> list[str]:
    if _needs_grad(x, bias, residual, residual_bias):
        return ["an input requires grad: the Triton epilogue is inference only (the torch backend is differentiable)"]
    return []


@register_kernel("conv_epilogue", "triton", devices=("cuda",), interpret_devices=("cpu",), dtypes=TRITON_DTYPES,
                 priority=10, reasons=_triton_reasons, available=triton_unavailable, tolerances=TOLERANCES,
                 run=lazy("modelkernels.kernels.resnet.epilogue_triton", "conv_epilogue_unchecked"))
def conv_epilogue_triton(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                         residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """Triton: one read of x and the residual, one write, float32 biases and arithmetic."""
    from modelkernels.kernels.resnet import epilogue_triton

    return epilogue_triton.conv_epilogue(x, bias, residual, residual_bias, relu)


@register_kernel("conv_epilogue", "torch", devices=("cpu", "cuda"), dtypes=DTYPES, priority=5,
                 tolerances={**TOLERANCES, "float64": Tolerance(1e-12, 1e-12)},
                 run=epilogue_torch.conv_epilogue)
def conv_epilogue_torch(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                        residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """PyTorch's kernels: one allocation, the other terms and the ReLU in place; differentiable."""
    ref.check_conv_epilogue_args(x, bias, residual, residual_bias, relu)
    return epilogue_torch.conv_epilogue(x, bias, residual, residual_bias, relu)


def conv_epilogue(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  residual_bias: torch.Tensor | None = None, relu: bool = True, *,
                  backend: str | None = None) -> torch.Tensor:
    """``relu(x + bias[c] + residual + residual_bias[c])`` (each term optional, ReLU too), in x's dtype and layout.

    x: (N, C, H, W) float16/bfloat16/float32 (float64: reference); bias, residual_bias: (C,) of any
    floating dtype (float32 keeps a folded BatchNorm exact); residual: x's shape and dtype.
    ``backend``: 'triton' or 'reference'.
    """
    if torch.compiler.is_compiling():  # one opaque node in the graph
        return torch.ops.modelkernels.conv_epilogue(x, bias, residual, residual_bias, relu, backend)
    out: torch.Tensor = call("conv_epilogue", x, bias, residual, residual_bias, relu, backend=backend)
    return out
