"""A user's package with one op and two backends, registered with ModelKernels' registry.

``tiny_softplus(x) = log(1 + exp(x))`` on a floating torch tensor. The reference is NumPy's
``logaddexp(0, x)`` (exact for every finite x, ``+inf`` for ``+inf``); the backends are PyTorch's
``softplus`` (which returns x itself above its threshold of 20) and ``logaddexp`` on the tensor.
"""

from __future__ import annotations

import numpy as np
import torch

from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, define_op, register_kernel


def _check(x: torch.Tensor) -> None:
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"tiny_softplus: x must be a floating torch tensor, got {got}")


def softplus_reference(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) through NumPy's logaddexp in float64."""
    _check(x)
    with np.errstate(invalid="ignore"):  # NaN in, NaN out
        out = np.logaddexp(0.0, x.detach().cpu().double().numpy())
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def _randn(shape: tuple[int, ...], seed: int, device: str, dtype: str, scale: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)  # on the CPU, then moved: the same inputs on every device
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device, getattr(torch, dtype))


def _special(device: str, dtype: str) -> torch.Tensor:
    x = torch.tensor([0.0, -30.0, 30.0, float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    return x.to(device, getattr(torch, dtype))


define_op(
    "tiny_softplus",
    reference=softplus_reference,
    dtypes=("float32", "float64"),
    reference_dtype=lambda dtype: "float64",
    samples=[
        Sample("odd (5,123)", lambda dev, dt: ((_randn((5, 123), 0, dev, dt),), {})),
        Sample("transposed (7,9)", lambda dev, dt: ((_randn((9, 7), 1, dev, dt).t(),), {})),
        Sample("empty (0,3)", lambda dev, dt: ((_randn((0, 3), 2, dev, dt),), {})),
        Sample("nan inf +-30", lambda dev, dt: ((_special(dev, dt),), {})),
    ],
    error_samples=[
        ErrorSample("integer x", lambda: ((torch.arange(4),), {}), TypeError, "x must be a floating torch tensor"),
    ],
)

_TOL = {"float32": Tolerance(1e-6, 1e-6), "float64": Tolerance(1e-12, 1e-12)}


@register_kernel("tiny_softplus", "softplus", devices=("cpu", "cuda"), dtypes=("float32", "float64"),
                 priority=10, tolerances=_TOL)
def softplus_torch(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's softplus (x itself above 20, where exp(-20) is below float32's resolution)."""
    _check(x)
    return torch.nn.functional.softplus(x)


@register_kernel("tiny_softplus", "logaddexp", devices=("cpu", "cuda"), dtypes=("float32", "float64"),
                 tolerances=_TOL)
def softplus_logaddexp(x: torch.Tensor) -> torch.Tensor:
    """``torch.logaddexp(x, 0)``."""
    _check(x)
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))
