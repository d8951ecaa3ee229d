"""Bilinear 2x upsampling (``align_corners=True``) fused with the skip concatenation, in Triton.

Computes ``pyimpl.fused.upsample_concat``: ``out = cat([skip, up(x)], dim=1)`` where output row i of
``up(x)`` samples x at ``s = i * (H - 1) / (2H - 1)``: ``(1 - l) x[floor(s)] + l x[floor(s) + 1]``
with ``l = s - floor(s)``, separably in rows and columns, in fp32 with the scale rounded to fp32
as PyTorch's CUDA kernel computes it. The seed's ``Up`` runs ``nn.Upsample`` (one kernel writing
the upsampled tensor) and ``torch.cat`` (a second kernel reading it back and copying the skip);
here one launch writes the concatenated tensor directly: bytes = skip + x read once (x's four taps
come from L1/L2), output written once.

Programs own a [columns x channels] tile of one output row; a program's channels lie all in the
skip part (a copy) or all in the upsampled part. Inputs are read through their strides, so the
channels-last tensors the seed's attention blocks return need no copy; the output is
channels-last when the skip is. Backward: the skip's gradient is a view of the output's; x's is the
adjoint of the interpolation, gathered per input position from the output positions that read it
(up to ~7 x 7 candidates at the seed's sizes, weights recomputed exactly as the forward's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.triton_launch import Bound, cdiv, fast, keep_plan, next_power_of_2
from modelkernels.pyimpl.fused import check_upsample_concat_args


@triton.jit
def _upsample_concat_kernel(X, S, OUT, CS, CX, H, W,
                            sxb, sxc, sxh, sxw, ssb, ssc, ssh, ssw, sob, soc, soh, sow, NCB_S,
                            scale_h, scale_w,
                            BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    cb = tl.program_id(2)
    h2 = 2 * H
    b = (row // h2).to(tl.int64)
    oh = row % h2
    ow = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[:, None]
    wm = ow < 2 * W
    if cb < NCB_S:
        c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        m = wm & (c < CS)
        copied = tl.load(S + b * ssb + c * ssc + oh * ssh + ow * ssw, mask=m)
        tl.store(OUT + b * sob + c * soc + oh * soh + ow * sow, copied, mask=m)
    else:
        c = (cb - NCB_S) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        m = wm & (c < CX)
        sh = oh.to(tl.float32) * scale_h
        h0 = sh.to(tl.int32)
        h1 = tl.minimum(h0 + 1, H - 1)
        lh = sh - h0.to(tl.float32)
        sw = ow.to(tl.float32) * scale_w
        w0 = sw.to(tl.int32)
        w1 = tl.minimum(w0 + 1, W - 1)
        lw = sw - w0.to(tl.float32)
        base = X + b * sxb + c * sxc
        v00 = tl.load(base + h0 * sxh + w0 * sxw, mask=m, other=0.0).to(tl.float32)
        v01 = tl.load(base + h0 * sxh + w1 * sxw, mask=m, other=0.0).to(tl.float32)
        v10 = tl.load(base + h1 * sxh + w0 * sxw, mask=m, other=0.0).to(tl.float32)
        v11 = tl.load(base + h1 * sxh + w1 * sxw, mask=m, other=0.0).to(tl.float32)
        v = (1.0 - lh) * ((1.0 - lw) * v00 + lw * v01) + lh * ((1.0 - lw) * v10 + lw * v11)
        tl.store(OUT + b * sob + (CS + c) * soc + oh * soh + ow * sow, v.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _source(i, scale, n_in):
    """Output index -> (first tap, second tap, weight of the second), as the forward computes it."""
    si = i.to(tl.float32) * scale
    i0 = si.to(tl.int32)
    return i0, tl.minimum(i0 + 1, n_in - 1), si - i0.to(tl.float32)


@triton.jit
def _upsample_backward_kernel(G, DX, CS, CX, H, W,
                              sgb, sgc, sgh, sgw, sdb, sdc, sdh, sdw,
                              scale_h, scale_w, inv_h, inv_w,
                              NCAND_H: tl.constexpr, NCAND_W: tl.constexpr,
                              BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # dx[j, k] = sum over the outputs (i, l) that read input (j, k) of g[i, l] * w_h(i, j) * w_w(l, k),
    # gathered: output rows i in [floor((j - 1) / scale) - 1, + NCAND_H), the weights recomputed as the
    # forward computes them (zero for candidates that do not read (j, k))
    row = tl.program_id(0)
    b = (row // H).to(tl.int64)
    j = row % H
    k = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[:, None]
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    m = (k < W) & (c < CX)
    h2 = 2 * H
    w2 = 2 * W
    i_lo = tl.maximum(((j - 1).to(tl.float32) * inv_h).to(tl.int32) - 1, 0)
    l_lo = tl.maximum(((k - 1).to(tl.float32) * inv_w).to(tl.int32) - 1, 0)
    base = G + b * sgb + (CS + c) * sgc
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for ci in range(NCAND_H):
        i = i_lo + ci
        i0, i1, li = _source(i, scale_h, H)
        wh = tl.where(i0 == j, 1.0 - li, 0.0) + tl.where(i1 == j, li, 0.0)
        wh = tl.where(i < h2, wh, 0.0)
        for cl in range(NCAND_W):
            col = l_lo + cl
            l0, l1, ll = _source(col, scale_w, W)
            ww = tl.where(l0 == k, 1.0 - ll, 0.0) + tl.where(l1 == k, ll, 0.0)
            # a select, not `& (i < h2)`: Triton 3.9's interpreter splats the scalar compare as int32
            lm = tl.where(i < h2, m & (col < w2), False)
            g = tl.load(base + i * sgh + col * sgw, mask=lm, other=0.0).to(tl.float32)
            acc += g * (wh * ww)
    tl.store(DX + b * sdb + c * sdc + j * sdh + k * sdw, acc.to(DX.dtype.element_ty), mask=m)


def _scale(n_in: int) -> float:
    """(in - 1) / (out - 1) rounded to fp32 (PyTorch's area_pixel_compute_scale for align_corners)."""
    return float(np.float32(n_in - 1) / np.float32(2 * n_in - 1)) if n_in > 1 else 0.0


def _channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def upsample_concat_forward(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    b, cx, h, w = x.shape
    cs = skip.shape[1]
    fmt = torch.channels_last if _channels_last(skip) else torch.contiguous_format
    out = torch.empty((b, cs + cx, 2 * h, 2 * w), device=x.device, dtype=x.dtype, memory_format=fmt)
    if out.numel() == 0:
        return out
    key = (x.shape, x.stride(), skip.shape, skip.stride(), fmt, x.device)
    launch = _FORWARD_PLANS.get(key)
    if launch is None:
        channels_last = fmt == torch.channels_last
        if x.device.type == "cuda":
            bc = min(next_power_of_2(max(cs, cx)), 64 if channels_last else 16)
            bw = max(1, min(next_power_of_2(2 * w), 2048 // bc))
        else:
            bc = next_power_of_2(max(cs, cx))
            bw = next_power_of_2(2 * w)
        ncb_s = cdiv(cs, bc)
        grid = (b * 2 * h, cdiv(2 * w, bw), ncb_s + cdiv(cx, bc))
        launch = keep_plan(_FORWARD_PLANS, key, fast(_upsample_concat_kernel).prepare(
            BLOCK_W=bw, BLOCK_C=bc, num_warps=4).bind(grid, (cs, cx, h, w, *x.stride(), *skip.stride(),
                                                             *out.stride(), ncb_s)))
    launch((x, skip, out), (_scale(h), _scale(w)))
    return out


# the forward launch bound per call signature (shapes, strides, output layout, device)
_FORWARD_PLANS: dict[tuple[Any, ...], Bound] = {}


def _candidates(n_in: int) -> int:
    """Output positions that can read one input position, plus margin for the rounded window start."""
    return 2 if n_in == 1 else int(2.0 / _scale(n_in)) + 3


def upsample_concat_backward(grad: torch.Tensor, shape: tuple[int, ...], cs: int) -> torch.Tensor:
    """The gradient of x from the output's gradient (its channels from ``cs`` on): the adjoint of the
    bilinear 2x upsampling, gathered per input position."""
    b, cx, h, w = shape
    dx = torch.empty(shape, device=grad.device, dtype=grad.dtype)
    if dx.numel() == 0:
        return dx
    if grad.device.type == "cuda":
        bc = min(next_power_of_2(cx), 16)
        bw = max(1, min(next_power_of_2(w), 1024 // bc))
    else:
        bc, bw = next_power_of_2(cx), next_power_of_2(w)
    grid = (b * h, cdiv(w, bw), cdiv(cx, bc))
    sh, sw = _scale(h), _scale(w)
    fast(_upsample_backward_kernel)[grid](grad, dx, cs, cx, h, w, *grad.stride(), *dx.stride(), sh, sw,
                                    1.0 / sh if sh else 0.0, 1.0 / sw if sw else 0.0,
                                    NCAND_H=_candidates(h), NCAND_W=_candidates(w), BLOCK_W=bw, BLOCK_C=bc,
                                    num_warps=4)
    return dx


class UpsampleConcatFunction(torch.autograd.Function):
    """Autograd for ``upsample_concat``: the skip's gradient is a slice, x's the gathered adjoint."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        ctx.meta = (tuple(x.shape), skip.shape[1])
        return upsample_concat_forward(x, skip)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape, cs = ctx.meta
        return upsample_concat_backward(grad, shape, cs), grad[:, :cs]


def upsample_concat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Triton ``upsample_concat``: ``cat([skip, bilinear_2x(x)], dim=1)`` (align_corners=True)."""
    check_upsample_concat_args(x, skip)
    return upsample_concat_unchecked(x, skip)


def upsample_concat_unchecked(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``upsample_concat`` on arguments that passed ``check_upsample_concat_args``."""
    if not needs_autograd(x, skip):
        return upsample_concat_forward(x, skip)
    out: torch.Tensor = UpsampleConcatFunction.apply(x, skip)
    return out
