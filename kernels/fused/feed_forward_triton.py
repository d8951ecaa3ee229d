"""The seed SelfAttention's feed-forward after its LayerNorm, with the residual add, in one Triton kernel.

Computes ``pyimpl.fused.feed_forward``: ``out = s + (gelu(h @ W1^T + b1) @ W2^T + b2)`` over M token rows
of C channels, W1 (F, C), W2 (C, F) (the seed: ``Linear(C, C)``, exact GELU, ``Linear(C, C)``, F = C).
Eager PyTorch runs four kernels and moves the (M, F) hidden activation through memory three times
(Linear writes it, GELU reads and writes it, Linear reads it), then reads the Linear's output and s
again for the residual add: about 9 passes of M x C values. Here each program takes BLOCK_M rows, loads
its h tile once, and loops over the hidden units in chunks of BLOCK_F::

    z   = h @ W1[j]^T + b1[j]              (fp32 accumulation, tensor cores)
    t   = gelu(z)                          (exact: z/2 (1 + erf(z/sqrt 2)), in fp32, kept on chip)
    acc += t @ W2[:, j]^T                  (t rounded to h's dtype for the product)

then stores ``acc + b2 + s`` once. Bytes: h and s read once, out written once (3 M C values); the
weights (2 C F values) are re-read from L2 by every program. FLOPs: 4 M C F. At the seed's C = 64 that
is 16 FLOPs per byte moved in bf16, so the kernel is bound by memory bandwidth; at C = 256, 64 FLOPs per
byte, near the H100's bf16 ratio.

Precision: float16 / bfloat16 products on tensor cores with fp32 accumulation; float32 inputs use TF32
products (10-bit mantissas, Triton's default for fp32 ``tl.dot``): relative error about 1e-3 per product
sum, see ``TOLERANCES`` in ``kernels/fused/ops.py``. Weights of another dtype (fp32 parameters with bf16
activations, as under autocast) are rounded to h's dtype on load; biases are added in fp32. Under
Triton's interpreter (CPU), which multiplies bfloat16 matrices wrongly, bfloat16 operands are widened to
fp32 for the product (the values, rounded to bfloat16, are the same).

Backward (``FeedForwardFunction``): the forward saves nothing of size M x F; the backward recomputes
z = h W1^T + b1 with PyTorch (one GEMM) and applies the chain rule with PyTorch ops: eager's backward
(4 GEMMs, the GELU's derivative) plus that GEMM and one GELU pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.errors import OutOfResources

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.registry import triton_interpret
from modelkernels.kernels.triton_launch import Bound, cdiv, fast, keep_plan, next_power_of_2, sm_count
from modelkernels.pyimpl.fused import check_feed_forward_args, feed_forward_dtype


@triton.jit
def _ff_fwd_kernel(H, S, W1, B1, W2, B2, OUT, M, C,
                   shm, shc, ssm, ssc, sw1f, sw1c, sw2c, sw2f,
                   NF: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    rm = rows < M
    cm = cols < C
    mask = rm[:, None] & cm[None, :]
    dt = H.dtype.element_ty
    h = tl.load(H + rows[:, None] * shm + cols[None, :] * shc, mask=mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for j0 in range(0, NF, BLOCK_F):  # NF (the hidden width) is a constant: one compile per model width
        fj = j0 + tl.arange(0, BLOCK_F)
        fm = fj < NF
        # W1[j]^T as a [C, BLOCK_F] tile and W2[:, j]^T as [BLOCK_F, C]; padded rows/columns are zero,
        # so padded hidden units have z = 0, gelu(0) = 0, and add nothing
        w1t = tl.load(W1 + fj[None, :] * sw1f + cols[:, None] * sw1c, mask=cm[:, None] & fm[None, :], other=0.0)
        w1t = w1t.to(dt)
        if UPCAST:
            z = tl.dot(h.to(tl.float32), w1t.to(tl.float32))
        else:
            z = tl.dot(h, w1t)
        if HAS_B1:
            z = z + tl.load(B1 + fj, mask=fm, other=0.0).to(tl.float32)[None, :]
        t = (0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))).to(dt)
        w2t = tl.load(W2 + cols[None, :] * sw2c + fj[:, None] * sw2f, mask=fm[:, None] & cm[None, :], other=0.0)
        w2t = w2t.to(dt)
        if UPCAST:
            acc = tl.dot(t.to(tl.float32), w2t.to(tl.float32), acc)
        else:
            acc = tl.dot(t, w2t, acc)
    if HAS_B2:
        acc = acc + tl.load(B2 + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    acc = acc + tl.load(S + rows[:, None] * ssm + cols[None, :] * ssc, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + rows[:, None] * C + cols[None, :], acc.to(OUT.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class Config:
    """Launch parameters: rows per program, hidden units per loop step, warps, pipeline stages."""

    block_m: int
    block_f: int
    warps: int
    stages: int


def default_config(m: int, c: int, dtype: torch.dtype, device: torch.device) -> Config:
    """Tiles for M rows of C channels (``tl.dot`` needs every dimension >= 16), the fastest measured per C
    on an H100 in bf16 (docs/notes/fused-gpu.md); then fewer rows per program while M rows would not give
    every SM a program. float32 tiles take twice the shared memory and registers: narrower ones. On the
    CPU (interpreter) small tiles, so the samples' odd row counts and hidden widths run several programs
    and loop steps."""
    if device.type != "cuda":
        return Config(16, 16, 4, 1)
    bc = max(16, next_power_of_2(c))
    sms = sm_count(device.index or 0)
    if dtype == torch.float32:
        cfg = Config(64, bc, 4, 2) if bc <= 64 else Config(64 if bc <= 128 else 32, 32, 8, 2)
    elif bc <= 64:
        cfg = Config(64, bc, 4, 2)
    elif bc <= 128:
        cfg = Config(32, 128, 4, 2)
    else:  # C = 256: wide row blocks only where they still fill the GPU
        cfg = Config(128, 64, 8, 2) if cdiv(m, 128) >= sms else Config(32, 64, 4, 2)
    block_m = cfg.block_m
    while block_m > 16 and cdiv(m, block_m) < sms:
        block_m //= 2
    return Config(block_m, cfg.block_f, cfg.warps, cfg.stages)


def _smaller(cfg: Config) -> Config | None:
    """The next configuration to try when ``cfg`` needs more shared memory or registers than the GPU has."""
    if cfg.stages > 1:
        return Config(cfg.block_m, cfg.block_f, cfg.warps, 1)
    if cfg.block_f > 16:
        return Config(cfg.block_m, cfg.block_f // 2, cfg.warps, 1)
    if cfg.block_m > 16:
        return Config(cfg.block_m // 2, cfg.block_f, cfg.warps, 1)
    return None


_FITS: dict[tuple[Config, int, int, torch.dtype, torch.dtype, str], Config] = {}  # first choice -> what fits


def forward(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
            b2: torch.Tensor | None, config: Config | None = None) -> torch.Tensor:
    """Launch the fused kernel (no autograd). h, s: (..., C) in any strides (rows that cannot be viewed as
    (M, C) are copied first); returns a contiguous tensor of h's shape in ``feed_forward_dtype(h, s)``."""
    c, nf = h.shape[-1], w1.shape[0]
    out = torch.empty(h.shape, device=h.device, dtype=feed_forward_dtype(h, s))
    if out.numel() == 0:
        return out
    h2, s2 = h.reshape(-1, c), s.reshape(-1, c)
    tensors = (h2, s2, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, out)
    interpret = triton_interpret()
    plan_key = (h2.shape, h2.stride(), s2.stride(), w1.shape, w1.stride(), w2.stride(), h.dtype, s.dtype, w1.dtype,
                b1 is None, b2 is None, h.device, config, interpret)
    launch = _PLANS.get(plan_key)
    if launch is not None:
        launch(tensors)
        return out
    m = h2.shape[0]
    first = config or default_config(m, c, h.dtype, h.device)
    key = (first, c, nf, h.dtype, w1.dtype, str(h.device))
    cfg: Config | None = _FITS.get(key, first)
    ints = (m, c, *h2.stride(), *s2.stride(), *w1.stride(), *w2.stride())
    while cfg is not None:
        constexprs = dict(NF=nf, HAS_B1=b1 is not None, HAS_B2=b2 is not None,
                          UPCAST=h.dtype == torch.bfloat16 and interpret, BLOCK_M=cfg.block_m,
                          BLOCK_C=max(16, next_power_of_2(c)), BLOCK_F=cfg.block_f,
                          num_warps=cfg.warps, num_stages=cfg.stages)
        try:
            fast(_ff_fwd_kernel)[(cdiv(m, cfg.block_m),)](*tensors, *ints, **constexprs)
        except OutOfResources:
            if config is not None:
                raise
            cfg = _smaller(cfg)
            continue
        _FITS[key] = cfg
        keep_plan(_PLANS, plan_key, fast(_ff_fwd_kernel).prepare(**constexprs).bind((cdiv(m, cfg.block_m),), ints))
        return out
    raise RuntimeError(f"feed_forward: no tile configuration fits this GPU for C={c}, F={nf}, {h.dtype}")


# the forward launch bound per call signature (shapes, strides, dtypes, biases present, device, config, interpreter)
_PLANS: dict[tuple[Any, ...], Bound] = {}


def _backward(grad: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
              b2: torch.Tensor | None, wanted: list[bool]) -> list[torch.Tensor | None]:
    """Gradients of ``gelu(h w1^T + b1) w2^T + b2`` for (h, w1, b1, w2, b2), those ``wanted``, with PyTorch ops
    in h's dtype (as autocast's eager backward): z recomputed (one GEMM), then ``dW2 = g^T gelu(z)``,
    ``dz = gelu'(z) (g W2)``, ``dh = dz W1``, ``dW1 = dz^T h``; bias gradients summed in fp32."""
    dt, c = h.dtype, h.shape[-1]
    h2, g2 = h.reshape(-1, c), grad.reshape(-1, c).to(dt)
    w1c, w2c = w1.to(dt), w2.to(dt)
    z = F.linear(h2, w1c, None if b1 is None else b1.to(dt))
    out: list[torch.Tensor | None] = [None] * 5
    if wanted[3]:
        out[3] = (g2.T @ F.gelu(z)).to(w2.dtype)
    if b2 is not None and wanted[4]:
        out[4] = g2.float().sum(0).to(b2.dtype)
    if wanted[0] or wanted[1] or (b1 is not None and wanted[2]):
        dz = torch.ops.aten.gelu_backward(g2 @ w2c, z)
        if wanted[0]:
            out[0] = (dz @ w1c).view(h.shape)
        if wanted[1]:
            out[1] = (dz.T @ h2).to(w1.dtype)
        if b1 is not None and wanted[2]:
            out[2] = dz.float().sum(0).to(b1.dtype)
    return out


class FeedForwardFunction(torch.autograd.Function):
    """Autograd for ``feed_forward``: the fused Triton forward; the backward recomputes z with PyTorch."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                w2: torch.Tensor, b2: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, w1, b1, w2, b2)
        ctx.s_dtype = s.dtype
        return forward(h, s, w1, b1, w2, b2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w1, b1, w2, b2 = ctx.saved_tensors
        wanted = [bool(ctx.needs_input_grad[i]) for i in (0, 2, 3, 4, 5)]
        with torch.autocast(h.device.type, enabled=False):
            gh, gw1, gb1, gw2, gb2 = _backward(grad, h, w1, b1, w2, b2, wanted)
        gs = grad.to(ctx.s_dtype) if ctx.needs_input_grad[1] else None
        return gh, gs, gw1, gb1, gw2, gb2


def feed_forward(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                 b2: torch.Tensor | None) -> torch.Tensor:
    """Triton ``feed_forward``: ``s + (gelu(h @ w1.T + b1) @ w2.T + b2)`` in one pass over the rows."""
    check_feed_forward_args(h, s, w1, b1, w2, b2)
    return feed_forward_unchecked(h, s, w1, b1, w2, b2)


def feed_forward_unchecked(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                           w2: torch.Tensor, b2: torch.Tensor | None) -> torch.Tensor:
    """``feed_forward`` on arguments that passed ``check_feed_forward_args``."""
    if not needs_autograd(h, s, w1, b1, w2, b2):
        return forward(h, s, w1, b1, w2, b2)
    out: torch.Tensor = FeedForwardFunction.apply(h, s, w1, b1, w2, b2)
    return out
