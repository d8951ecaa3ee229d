"""The fused norm / activation / upsample ops: references (``pyimpl.fused``), samples, error
inputs, and their Triton backends (CUDA; CPU tensors under ``TRITON_INTERPRET=1`` when forced).

Ops: ``group_norm_act``, ``tokens_layer_norm``, ``add_layer_norm``, ``upsample_concat``,
``feed_forward``. Every
sample with ``grad=True`` also checks the backward of the Triton backend against the reference's
autograd (in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modelkernels.kernels.availability import lazy, triton_unavailable
from modelkernels.kernels.fused import feed_forward_torch, group_norm_torch
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.kernels.torch_ops import entry
from modelkernels.pyimpl import fused as ref

DTYPES = ("float16", "bfloat16", "float32", "float64")
TRITON_DTYPES = ("float16", "bfloat16", "float32")
MAX_LAYER_NORM_CHANNELS = 8192  # one token's channels are held in registers
Make = Callable[[str, str], tuple[tuple[Any, ...], dict[str, Any]]]

# forward: one rounding of the output (bf16: 2^-8 relative) after fp32 arithmetic. Gradients: the
# backend's cotangent is rounded to the input dtype, the reference's is not, and the weight/bias
# gradients sum many such products.
TOLERANCES = {
    "float32": Tolerance(2e-5, 2e-5),
    "float16": Tolerance(4e-3, 4e-3),
    "bfloat16": Tolerance(3e-2, 3e-2),
    "grad:float32": Tolerance(1e-4, 1e-4),
    "grad:float16": Tolerance(3e-2, 3e-2),
    "grad:bfloat16": Tolerance(2e-1, 6e-2),
}


def _f64(dtype: str) -> str:
    del dtype
    return "float64"


def _randn(shape: tuple[int, ...], seed: int, device: str, dtype: str, scale: float = 1.0,
           offset: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    return t.to(device=device, dtype=getattr(torch, dtype))


# ------------------------------------------------------------------------------ group_norm_act


def _gn_sample(name: str, shape: tuple[int, ...], groups: int, *, affine: bool = True, residual: bool = False,
               emb: bool = False, activation: str = "gelu", layout: str = "contiguous", nan: bool = False,
               offset: float = 0.0, grad: bool = True, seed: int = 0,
               dtypes: tuple[str, ...] | None = None) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        n, c = shape[0], shape[1]
        if layout == "strided":  # every other column of a wider tensor
            x = _randn((*shape[:-1], 2 * shape[-1]), seed, device, dtype, offset=offset)[..., ::2]
        else:
            x = _randn(shape, seed, device, dtype, offset=offset)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if nan:
            x[0, 0, 0, 1] = float("nan")
        kw: dict[str, Any] = {"activation": activation}
        if residual:
            r = _randn(shape, seed + 1, device, dtype)
            kw["residual"] = r.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else r
        if emb:
            kw["emb"] = _randn((n, c), seed + 2, device, dtype)
        w = _randn((c,), seed + 3, device, dtype, 0.5, 1.0) if affine else None
        b = _randn((c,), seed + 4, device, dtype, 0.5) if affine else None
        return (x, groups, w, b, 1e-5), kw

    return Sample(name, make, dtypes=dtypes, grad=grad)


GN_SAMPLES = [
    _gn_sample("GroupNorm(1,C)+GELU (2,6,5,7)", (2, 6, 5, 7), 1),
    _gn_sample("GroupNorm(3)+residual+GELU (3,6,4,5)", (3, 6, 4, 5), 3, residual=True, seed=1),
    _gn_sample("GroupNorm(1,C)+emb (2,5,3,9)", (2, 5, 3, 9), 1, emb=True, activation="none", seed=2),
    _gn_sample("GroupNorm(2)+residual+GELU+emb (2,4,3,3)", (2, 4, 3, 3), 2, residual=True, emb=True, seed=3),
    _gn_sample("channels-last GroupNorm(1,C)+residual+GELU (2,8,5,3)", (2, 8, 5, 3), 1, residual=True,
               layout="channels_last", seed=4),
    _gn_sample("channels-last GroupNorm(2) (2,4,3,5)", (2, 4, 3, 5), 2, layout="channels_last", seed=5),
    _gn_sample("strided GroupNorm(2) (2,4,5,6)", (2, 4, 5, 6), 2, seed=6, layout="strided"),
    _gn_sample("no affine, 3-D (2,4,37)", (2, 4, 37), 4, affine=False, seed=7),
    _gn_sample("chunked rows (2,3,33,31)", (2, 3, 33, 31), 1, residual=True, seed=8),
    _gn_sample("whole-plane tiles (1,2,32,32)+emb", (1, 2, 32, 32), 1, emb=True, residual=True, seed=12),
    _gn_sample("channels-last odd C (2,6,3,5)+emb", (2, 6, 3, 5), 1, emb=True, layout="channels_last", seed=13),
    _gn_sample("mean 300 (2,3,11,13)", (2, 3, 11, 13), 1, offset=300.0, seed=9, dtypes=("float32", "float64")),
    _gn_sample("NaN in group 0 (2,4,3,3)", (2, 4, 3, 3), 2, nan=True, grad=False, seed=10),
    _gn_sample("empty batch (0,4,3,3)", (0, 4, 3, 3), 2, residual=True, emb=True, seed=11),
    _gn_sample("GroupNorm(4)+SiLU (2,8,5,7)", (2, 8, 5, 7), 4, activation="silu", seed=14),
    _gn_sample("GroupNorm(2)+residual+SiLU+emb (2,6,3,5)", (2, 6, 3, 5), 2, residual=True, emb=True,
               activation="silu", seed=15),
    _gn_sample("channels-last GroupNorm(1,C)+SiLU (2,8,3,5)", (2, 8, 3, 5), 1, layout="channels_last",
               activation="silu", seed=16),
]


def _gn_bad(**kw: Any) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: dict[str, Any] = dict(x=torch.randn(2, 6, 3, 3), num_groups=1, weight=None, bias=None, eps=1e-5)
        args.update({k: v for k, v in kw.items() if k in args})
        extra = {k: v for k, v in kw.items() if k not in args}
        return (args["x"], args["num_groups"], args["weight"], args["bias"], args["eps"]), extra

    return make


GN_ERRORS = [
    ErrorSample("groups do not divide C", _gn_bad(num_groups=4), ValueError, "num_groups=4"),
    ErrorSample("zero groups", _gn_bad(num_groups=0), ValueError, "num_groups=0"),
    ErrorSample("integer x", _gn_bad(x=torch.zeros(2, 6, 3, 3, dtype=torch.int32)), TypeError, "x.dtype"),
    ErrorSample("1-D x", _gn_bad(x=torch.zeros(6)), ValueError, "x.shape=(6,)"),
    ErrorSample("weight length", _gn_bad(weight=torch.ones(5)), ValueError, "weight.shape=(5,)"),
    ErrorSample("emb shape", _gn_bad(emb=torch.ones(2, 5)), ValueError, "emb.shape=(2, 5)"),
    ErrorSample("residual shape", _gn_bad(residual=torch.ones(2, 6, 3, 4)), ValueError, "residual.shape"),
    ErrorSample("activation", _gn_bad(activation="relu"), ValueError, "activation='relu'"),
    ErrorSample("negative eps", _gn_bad(eps=-1.0), ValueError, "eps=-1.0"),
]

define_op(
    "group_norm_act",
    reference=ref.group_norm_act,
    dtypes=DTYPES,
    samples=GN_SAMPLES,
    error_samples=GN_ERRORS,
    reference_dtype=_f64,
    doc="GroupNorm fused with GELU, the residual add and the time-embedding add (the seed's DoubleConv)",
    checked_by_key=True,
)


def _gn_reasons(x: Any, num_groups: Any, *args: Any, **kwargs: Any) -> list[str]:
    if isinstance(x, torch.Tensor) and isinstance(num_groups, int) and num_groups > 0 and x.dim() >= 2:
        length = x[:1].numel() // num_groups
        if length >= 2**31:
            return [f"group size C/G*H*W={length}: supported < 2**31"]
    return []


@register_kernel("group_norm_act", "triton", devices=("cuda",), interpret_devices=("cpu",), dtypes=TRITON_DTYPES,
                 priority=10, reasons=_gn_reasons, available=triton_unavailable, tolerances=TOLERANCES,
                 run=lazy("modelkernels.kernels.fused.group_norm_triton", "group_norm_act_unchecked"))
def group_norm_act_triton(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, eps: float = 1e-5, *,
                          residual: torch.Tensor | None = None, emb: torch.Tensor | None = None,
                          activation: str = "none") -> torch.Tensor:
    """Triton: chunked fp32 statistics over the GPU, one fused normalize/GELU/residual/emb pass."""
    from modelkernels.kernels.fused import group_norm_triton

    return group_norm_triton.group_norm_act(x, num_groups, weight, bias, eps, residual=residual, emb=emb,
                                            activation=activation)


# torch's kernels against the written-out reference: float64 to rounding; float32 as nn.GroupNorm on the CPU,
# whose statistics lose more to cancellation than the Triton kernel's (at mean 300, std 1: 3.7e-5 forward,
# 1.2e-4 relative on the weight's gradient)
TORCH_TOLERANCES = {**TOLERANCES, "float32": Tolerance(1e-4, 1e-4), "grad:float32": Tolerance(5e-4, 5e-4),
                    "float64": Tolerance(1e-10, 1e-10), "grad:float64": Tolerance(1e-9, 1e-9)}


@register_kernel("group_norm_act", "torch", devices=("cpu", "cuda"), dtypes=DTYPES, priority=5,
                 tolerances=TORCH_TOLERANCES, run=group_norm_torch.group_norm_act)
def group_norm_act_torch(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                         bias: torch.Tensor | None = None, eps: float = 1e-5, *,
                         residual: torch.Tensor | None = None, emb: torch.Tensor | None = None,
                         activation: str = "none") -> torch.Tensor:
    """PyTorch's kernels: F.group_norm, then the residual add, the activation and the embedding add in place."""
    ref.check_group_norm_args(x, num_groups, weight, bias, eps, residual, emb, activation)
    return group_norm_torch.group_norm_act(x, num_groups, weight, bias, eps, residual=residual, emb=emb,
                                           activation=activation)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, residual: torch.Tensor | None = None,
                   emb: torch.Tensor | None = None, activation: str = "none",
                   backend: str | None = None) -> torch.Tensor:
    """``act(GroupNorm(num_groups)(x) * weight + bias + residual) + emb[:, :, None, None]``.

    x: (N, C, *spatial) float16/bfloat16/float32(/float64: reference); weight, bias: (C,) or None;
    residual: x's shape; emb: (N, C); activation: 'gelu' (exact), 'silu' or 'none'. Output in x's dtype and
    layout. ``backend``: 'triton' (CUDA), 'torch' (PyTorch's kernels: the CPU's default) or 'reference'.
    """
    if torch.compiler.is_compiling():  # one opaque node in the graph (kernels/torch_ops.py)
        op = entry("group_norm_act", x, weight, bias, residual, emb)
        return op(x, num_groups, weight, bias, eps, residual, emb, activation, backend)
    out: torch.Tensor = call("group_norm_act", x, num_groups, weight, bias, eps, residual=residual, emb=emb,
                             activation=activation, backend=backend)
    return out


# --------------------------------------------------------------------------- tokens_layer_norm


def _tln_sample(name: str, shape: tuple[int, int, int, int], *, affine: bool = True, layout: str = "contiguous",
                nan: bool = False, grad: bool = True, seed: int = 20) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        c = shape[1]
        if layout == "strided":
            x = _randn((shape[0], 2 * c, *shape[2:]), seed, device, dtype)[:, ::2]
        else:
            x = _randn(shape, seed, device, dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if nan:
            x[0, 1, 0, 0] = float("nan")
        w = _randn((c,), seed + 1, device, dtype, 0.5, 1.0) if affine else None
        b = _randn((c,), seed + 2, device, dtype, 0.5) if affine else None
        return (x, w, b, 1e-5), {}

    return Sample(name, make, grad=grad)


TLN_SAMPLES = [
    _tln_sample("(2,6,3,5)", (2, 6, 3, 5)),
    _tln_sample("odd channels (3,7,4,3)", (3, 7, 4, 3), seed=21),
    _tln_sample("channels-last (2,8,5,3)", (2, 8, 5, 3), layout="channels_last", seed=22),
    _tln_sample("strided channels (2,4,3,3)", (2, 4, 3, 3), layout="strided", seed=23),
    _tln_sample("no affine (1,5,2,9)", (1, 5, 2, 9), affine=False, seed=24),
    _tln_sample("one channel (2,1,3,3)", (2, 1, 3, 3), seed=25),
    _tln_sample("NaN token (2,4,3,3)", (2, 4, 3, 3), nan=True, grad=False, seed=26),
    _tln_sample("empty batch (0,4,3,3)", (0, 4, 3, 3), seed=27),
]

TLN_ERRORS = [
    ErrorSample("3-D x", lambda: ((torch.zeros(2, 4, 9),), {}), ValueError, "x.shape=(2, 4, 9)"),
    ErrorSample("weight length", lambda: ((torch.zeros(2, 4, 3, 3), torch.ones(3)), {}), ValueError,
                "weight.shape=(3,)"),
    ErrorSample("integer x", lambda: ((torch.zeros(2, 4, 3, 3, dtype=torch.int64),), {}), TypeError, "x.dtype"),
]

define_op(
    "tokens_layer_norm",
    reference=ref.tokens_layer_norm,
    dtypes=DTYPES,
    samples=TLN_SAMPLES,
    error_samples=TLN_ERRORS,
    reference_dtype=_f64,
    doc="image (B,C,H,W) to tokens (B,HW,C) and their LayerNorm over C, in one pass (the seed's SelfAttention)",
    checked_by_key=True,
)


def _channels_reason(c: int) -> list[str]:
    return [f"C={c}: supported up to {MAX_LAYER_NORM_CHANNELS}"] if c > MAX_LAYER_NORM_CHANNELS else []


def _tln_reasons(x: Any, *args: Any, **kwargs: Any) -> list[str]:
    return _channels_reason(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() == 4 else []


@register_kernel("tokens_layer_norm", "triton", devices=("cuda",), interpret_devices=("cpu",),
                 dtypes=TRITON_DTYPES, priority=10, reasons=_tln_reasons, available=triton_unavailable,
                 tolerances=TOLERANCES,
                 run=lazy("modelkernels.kernels.fused.layer_norm_triton", "tokens_layer_norm_unchecked"))
def tokens_layer_norm_triton(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                             eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton: the transposed tile read once through the image's strides, tokens and LayerNorm written."""
    from modelkernels.kernels.fused import layer_norm_triton

    return layer_norm_triton.tokens_layer_norm(x, weight, bias, eps)


def tokens_layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      eps: float = 1e-5, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, LayerNorm(C)(tokens))``, ``tokens = x.reshape(B, C, H*W).swapaxes(1, 2)`` (contiguous).

    x: (B, C, H, W); weight, bias: (C,) or None. ``backend``: 'triton' or 'reference'.
    """
    if torch.compiler.is_compiling():
        return entry("tokens_layer_norm", x, weight, bias)(x, weight, bias, eps, backend)
    out: tuple[torch.Tensor, torch.Tensor] = call("tokens_layer_norm", x, weight, bias, eps, backend=backend)
    return out


# ------------------------------------------------------------------------------ add_layer_norm


def _aln_sample(name: str, shape: tuple[int, ...], *, affine: bool = True, transposed_residual: bool = False,
                grad: bool = True, seed: int = 40) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        c = shape[-1]
        x = _randn(shape, seed, device, dtype)
        if transposed_residual:  # the seed's residual: a transposed view of the image
            r = _randn((shape[0], c, shape[1]), seed + 1, device, dtype).transpose(1, 2)
        else:
            r = _randn(shape, seed + 1, device, dtype)
        w = _randn((c,), seed + 2, device, dtype, 0.5, 1.0) if affine else None
        b = _randn((c,), seed + 3, device, dtype, 0.5) if affine else None
        return (x, r, w, b, 1e-5), {}

    return Sample(name, make, grad=grad)


ALN_SAMPLES = [
    _aln_sample("(2,15,6)", (2, 15, 6)),
    _aln_sample("transposed residual (2,9,5)", (2, 9, 5), transposed_residual=True, seed=41),
    _aln_sample("2-D (7,12)", (7, 12), seed=42),
    _aln_sample("no affine (3,4,3)", (3, 4, 3), affine=False, seed=43),
    _aln_sample("empty (0,4)", (0, 4), seed=44),
]

ALN_ERRORS = [
    ErrorSample("residual shape", lambda: ((torch.zeros(2, 3, 4), torch.zeros(2, 4, 3)), {}), ValueError,
                "residual.shape=(2, 4, 3)"),
    ErrorSample("bias length", lambda: ((torch.zeros(2, 4), torch.zeros(2, 4), None, torch.ones(5)), {}),
                ValueError, "bias.shape=(5,)"),
]

define_op(
    "add_layer_norm",
    reference=ref.add_layer_norm,
    dtypes=DTYPES,
    samples=ALN_SAMPLES,
    error_samples=ALN_ERRORS,
    reference_dtype=_f64,
    doc="s = x + residual and LayerNorm over the last dimension of s, in one pass",
    checked_by_key=True,
)


def _aln_reasons(x: Any, *args: Any, **kwargs: Any) -> list[str]:
    return _channels_reason(x.shape[-1]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else []


@register_kernel("add_layer_norm", "triton", devices=("cuda",), interpret_devices=("cpu",), dtypes=TRITON_DTYPES,
                 priority=10, reasons=_aln_reasons, available=triton_unavailable, tolerances=TOLERANCES,
                 run=lazy("modelkernels.kernels.fused.layer_norm_triton", "add_layer_norm_unchecked"))
def add_layer_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton: the sum and its LayerNorm from one read of both inputs."""
    from modelkernels.kernels.fused import layer_norm_triton

    return layer_norm_triton.add_layer_norm(x, residual, weight, bias, eps)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, LayerNorm(s))`` with ``s = x + residual`` over the last dimension (C)."""
    if torch.compiler.is_compiling():
        return entry("add_layer_norm", x, residual, weight, bias)(x, residual, weight, bias, eps, backend)
    out: tuple[torch.Tensor, torch.Tensor] = call("add_layer_norm", x, residual, weight, bias, eps, backend=backend)
    return out


# ----------------------------------------------------------------------------- upsample_concat


def _up_sample(name: str, x_shape: tuple[int, int, int, int], c_skip: int, *, layout: str = "contiguous",
               nan: bool = False, grad: bool = True, seed: int = 60) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        b, _, h, w = x_shape
        x = _randn(x_shape, seed, device, dtype)
        skip = _randn((b, c_skip, 2 * h, 2 * w), seed + 1, device, dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
            skip = skip.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = _randn((b, x_shape[1], h, 2 * w), seed, device, dtype)[..., ::2]
            skip = _randn((b, 2 * c_skip, 2 * h, 2 * w), seed + 1, device, dtype)[:, 1::2]
        if nan:
            x[0, 0, 1, 1] = float("nan")
            skip[-1, -1, 0, 0] = float("inf")
        return (x, skip), {}

    return Sample(name, make, grad=grad)


UP_SAMPLES = [
    _up_sample("x (2,3,4,5) skip 2", (2, 3, 4, 5), 2),
    _up_sample("x (1,5,3,7) skip 6", (1, 5, 3, 7), 6, seed=61),
    _up_sample("1x1 input (2,2,1,1) skip 3", (2, 2, 1, 1), 3, seed=62),
    _up_sample("channels-last (2,4,3,5) skip 4", (2, 4, 3, 5), 4, layout="channels_last", seed=63),
    _up_sample("strided (2,3,4,3) skip 2", (2, 3, 4, 3), 2, layout="strided", seed=64),
    _up_sample("NaN and Inf (2,2,3,3) skip 2", (2, 2, 3, 3), 2, nan=True, grad=False, seed=65),
    _up_sample("empty batch (0,2,3,3) skip 2", (0, 2, 3, 3), 2, seed=66),
]

UP_ERRORS = [
    ErrorSample("skip size", lambda: ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 2, 8, 9)), {}), ValueError,
                "skip.shape=(2, 2, 8, 9)"),
    ErrorSample("3-D x", lambda: ((torch.zeros(3, 4, 5), torch.zeros(2, 2, 8, 10)), {}), ValueError,
                "expected (B, C, H, W)"),
    ErrorSample("dtype mismatch", lambda: ((torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4, dtype=torch.float64)),
                                           {}), TypeError, "skip.dtype=torch.float64"),
]

define_op(
    "upsample_concat",
    reference=ref.upsample_concat,
    dtypes=DTYPES,
    samples=UP_SAMPLES,
    error_samples=UP_ERRORS,
    reference_dtype=_f64,
    doc="cat([skip, bilinear 2x upsample (align_corners=True) of x], dim=1) in one pass (the seed's Up)",
    checked_by_key=True,
)


@register_kernel("upsample_concat", "triton", devices=("cuda",), interpret_devices=("cpu",), dtypes=TRITON_DTYPES,
                 priority=10, available=triton_unavailable, tolerances=TOLERANCES,
                 run=lazy("modelkernels.kernels.fused.upsample_triton", "upsample_concat_unchecked"))
def upsample_concat_triton(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Triton: one launch writes the concatenated tensor (skip copied, x interpolated)."""
    from modelkernels.kernels.fused import upsample_triton

    return upsample_triton.upsample_concat(x, skip)


def upsample_concat(x: torch.Tensor, skip: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """``cat([skip, Upsample(scale_factor=2, mode='bilinear', align_corners=True)(x)], dim=1)``.

    x: (B, C, H, W); skip: (B, C_skip, 2H, 2W) of x's dtype. ``backend``: 'triton' or 'reference'.
    """
    if torch.compiler.is_compiling():
        return entry("upsample_concat", x, skip)(x, skip, backend)
    out: torch.Tensor = call("upsample_concat", x, skip, backend=backend)
    return out


# -------------------------------------------------------------------------------- feed_forward

MAX_FEED_FORWARD_CHANNELS = 256  # the Triton kernel holds a [rows x C] fp32 accumulator in registers

# Values are O(1): h, s ~ N(0, 1), weights ~ N(0, 1/fan_in) (nn.Linear's scale). float32 runs TF32 products
# on the GPU (10-bit mantissas): emulated on these samples and at C = 64, 256, 4096 rows, the largest error
# is 1.6e-3 (0.3 of the 5e-3 allowed). float16 / bfloat16 round the hidden activation and the output (and
# fp32 weights) to the input dtype; measured under the interpreter at most 0.25 (bf16) and 0.06 (fp16) of
# the allowance. Gradients come from PyTorch ops in the input dtype (every intermediate rounded, as eager
# autocast does) and sum over the rows; fp32 gradients use full-precision cuBLAS (PyTorch's default).
FF_TOLERANCES = {
    "float32": Tolerance(5e-3, 5e-3),
    "float16": Tolerance(4e-3, 4e-3),
    "bfloat16": Tolerance(3e-2, 3e-2),
    "grad:float32": Tolerance(1e-4, 1e-4),
    "grad:float16": Tolerance(2e-2, 2e-2),
    "grad:bfloat16": Tolerance(2e-1, 6e-2),
}


def _ff_sample(name: str, rows: tuple[int, ...], c: int, f: int | None = None, *, biases: bool = True,
               layout: str = "contiguous", weights: str = "input", residual: str = "input", nan: bool = False,
               grad: bool = True, seed: int = 80) -> Sample:
    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = c if f is None else f
        shape = (*rows, c)
        if layout == "strided":  # h: a transposed view of (..., C, N); s: every other channel of a wider tensor
            h = _randn((*rows[:-1], c, rows[-1]), seed, device, dtype).transpose(-1, -2)
            s = _randn((*rows, 2 * c), seed + 1, device, dtype)[..., ::2]
        else:
            h = _randn(shape, seed, device, dtype)
            s = _randn(shape, seed + 1, device, dtype)
        if residual == "float32":  # an fp32 residual stream with low-precision activations
            s = s.float()
        if nan:
            h[0, 1, 3] = float("nan")
            s[-1, -1, 0] = float("inf")
        wdt = "float32" if weights == "float32" else dtype
        w1 = _randn((hidden, c), seed + 2, device, wdt, c**-0.5)
        w2 = _randn((c, hidden), seed + 3, device, wdt, max(hidden, 1) ** -0.5)
        b1 = _randn((hidden,), seed + 4, device, wdt, 0.5) if biases else None
        b2 = _randn((c,), seed + 5, device, wdt, 0.5) if biases else None
        return (h, s, w1, b1, w2, b2), {}

    return Sample(name, make, grad=grad)


FF_SAMPLES = [
    _ff_sample("(2,9,16)", (2, 9), 16),
    _ff_sample("odd rows and channels (37,24) F=40", (37,), 24, 40, seed=81),
    _ff_sample("strided h and s (2,7,12)", (2, 7), 12, layout="strided", seed=82),
    _ff_sample("no biases (3,5,32)", (3, 5), 32, biases=False, seed=83),
    _ff_sample("narrow C, wide F (1,33,8) F=48", (1, 33), 8, 48, seed=84),
    _ff_sample("fp32 weights (2,6,20)", (2, 6), 20, weights="float32", seed=85),
    _ff_sample("fp32 residual (3,11,16)", (3, 11), 16, residual="float32", seed=86),
    _ff_sample("one channel, F=3 (5,1)", (5,), 1, 3, seed=87),
    _ff_sample("NaN in h, Inf in s (3,4,16)", (3, 4), 16, nan=True, grad=False, seed=88),
    _ff_sample("empty N=0 (2,0,16)", (2, 0), 16, seed=89),
]


def _ff_bad(**kw: Any) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        args: dict[str, Any] = dict(h=torch.zeros(2, 3, 4), s=torch.zeros(2, 3, 4), w1=torch.zeros(5, 4),
                                    b1=torch.zeros(5), w2=torch.zeros(4, 5), b2=torch.zeros(4))
        args.update(kw)
        return tuple(args.values()), {}

    return make


FF_ERRORS = [
    ErrorSample("s shape", _ff_bad(s=torch.zeros(2, 4, 3)), ValueError, "s.shape=(2, 4, 3)"),
    ErrorSample("w1 columns", _ff_bad(w1=torch.zeros(5, 3)), ValueError, "w1.shape=(5, 3)"),
    ErrorSample("w2 shape", _ff_bad(w2=torch.zeros(5, 4)), ValueError, "w2.shape=(5, 4)"),
    ErrorSample("b1 length", _ff_bad(b1=torch.zeros(4)), ValueError, "b1.shape=(4,)"),
    ErrorSample("b2 length", _ff_bad(b2=torch.zeros(5)), ValueError, "b2.shape=(5,)"),
    ErrorSample("integer h", _ff_bad(h=torch.zeros(2, 3, 4, dtype=torch.int32)), TypeError, "h.dtype"),
    ErrorSample("0-d h", _ff_bad(h=torch.tensor(1.0), s=torch.tensor(1.0)), ValueError, "h.shape=()"),
]

define_op(
    "feed_forward",
    reference=ref.feed_forward,
    dtypes=DTYPES,
    samples=FF_SAMPLES,
    error_samples=FF_ERRORS,
    reference_dtype=_f64,
    doc="s + Linear2(GELU(Linear1(h))) in one pass, the hidden activation kept on chip (the seed's ff_self)",
    checked_by_key=True,
)


def _ff_reasons(h: Any, *args: Any, **kwargs: Any) -> list[str]:
    if isinstance(h, torch.Tensor) and h.dim() >= 1 and h.shape[-1] > MAX_FEED_FORWARD_CHANNELS:
        return [f"C={h.shape[-1]}: supported up to {MAX_FEED_FORWARD_CHANNELS} (the [rows x C] accumulator is "
                "held in registers)"]
    return []


@register_kernel("feed_forward", "triton", devices=("cuda",), interpret_devices=("cpu",), dtypes=TRITON_DTYPES,
                 priority=10, reasons=_ff_reasons, available=triton_unavailable, tolerances=FF_TOLERANCES,
                 run=lazy("modelkernels.kernels.fused.feed_forward_triton", "feed_forward_unchecked"))
def feed_forward_triton(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                        w2: torch.Tensor, b2: torch.Tensor | None) -> torch.Tensor:
    """Triton: per block of rows, both products and the GELU on chip, bias and residual in the epilogue."""
    from modelkernels.kernels.fused import feed_forward_triton as fft

    return fft.feed_forward(h, s, w1, b1, w2, b2)


# torch's kernels in h's dtype: float32 as the reference to rounding of the GEMMs' summation order; float64
# gradients: float32 weights get float32 gradients
FF_TORCH_TOLERANCES = {**FF_TOLERANCES, "float32": Tolerance(1e-4, 1e-4), "float64": Tolerance(1e-12, 1e-12),
                       "grad:float64": Tolerance(1e-6, 1e-6)}


@register_kernel("feed_forward", "torch", devices=("cpu", "cuda"), dtypes=DTYPES, priority=5,
                 tolerances=FF_TORCH_TOLERANCES, run=feed_forward_torch.feed_forward)
def feed_forward_torch_backend(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                               w2: torch.Tensor, b2: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's kernels: F.linear, the exact F.gelu, F.linear, the residual added in place."""
    ref.check_feed_forward_args(h, s, w1, b1, w2, b2)
    return feed_forward_torch.feed_forward(h, s, w1, b1, w2, b2)


def feed_forward(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                 b2: torch.Tensor | None, *, backend: str | None = None) -> torch.Tensor:
    """``s + (gelu(h @ w1.T + b1) @ w2.T + b2)`` (exact GELU; b1, b2 may be None).

    h, s: (..., C) of one shape; w1: (F, C), w2: (C, F) (``nn.Linear`` weights); output contiguous in
    ``promote_types(h.dtype, s.dtype)``. ``backend``: 'triton' (CUDA), 'torch' (PyTorch's kernels: the CPU's
    default) or 'reference'.
    """
    if torch.compiler.is_compiling():
        return entry("feed_forward", h, s, w1, b1, w2, b2)(h, s, w1, b1, w2, b2, backend)
    out: torch.Tensor = call("feed_forward", h, s, w1, b1, w2, b2, backend=backend)
    return out
