"""LayerNorm over channels fused with the token-layout transpose, or with the residual add, in Triton.

Computes ``pyimpl.fused.tokens_layer_norm`` and ``pyimpl.fused.add_layer_norm``: the seed's
``SelfAttention`` does ``x.view(B, C, H*W).swapaxes(1, 2)`` then ``LayerNorm(C)`` (PyTorch copies the
transposed view to a contiguous tensor first, then normalizes), and later ``s = attention + x`` then
``LayerNorm(C)(s)`` for the feed-forward. One kernel does either: each program loads a
[tokens x channels] tile through the input's strides (the image's NCHW strides for the transpose),
adds the residual, writes ``s`` contiguous in token layout and ``y = (s - mean) * rstd * w + b``,
with mean and the biased variance of each token in fp32 from the tile held in registers (one pass
over memory). Bytes: inputs read once, ``s`` and ``y`` written once.

Backward: ``dxhat = dy w``, ``ds = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) + ds_out``,
written through the input's strides (back to NCHW for the transpose); per-program partial sums of
``dy xhat`` and ``dy`` give the weight and bias gradients.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.triton_launch import Bound, cdiv, fast, keep_plan, next_power_of_2
from modelkernels.pyimpl.fused import check_add_layer_norm_args, check_tokens_layer_norm_args


@triton.jit
def _ln_fwd_kernel(X, R, S, Y, W, B, MEAN, RSTD, NTOK, C,
                   sxb, sxn, sxc, srb, srn, src, eps,
                   HAS_R: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)  # token blocks on axis 0 (up to 2**31 programs), batch on axis 1
    t = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    mask = (t < NTOK) & (c < C)
    x = tl.load(X + b * sxb + t * sxn + c * sxc, mask=mask, other=0.0).to(tl.float32)
    if HAS_R:
        x = x + tl.load(R + b * srb + t * srn + c * src, mask=mask, other=0.0).to(tl.float32)
    out = (b * NTOK + t) * C + c
    tl.store(S + out, x.to(S.dtype.element_ty), mask=mask)
    # statistics of the stored s (rounded to its dtype), as LayerNorm applied to s would see it
    xf = x.to(S.dtype.element_ty).to(tl.float32)
    cf = C * 1.0  # C may arrive as a constexpr (Triton specializes 1)
    mean = tl.sum(xf, axis=1) / cf
    d = tl.where(mask, xf - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / cf + eps)
    y = d * rstd[:, None]
    cm = c < C
    if HAS_W:
        y = y * tl.load(W + c, mask=cm, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + c, mask=cm, other=0.0).to(tl.float32)
    tl.store(Y + out, y.to(Y.dtype.element_ty), mask=mask)
    tt = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    tm = tt < NTOK
    tl.store(MEAN + b * NTOK + tt, mean, mask=tm)
    tl.store(RSTD + b * NTOK + tt, rstd, mask=tm)


@triton.jit
def _ln_bwd_kernel(S, DY, DS, W, MEAN, RSTD, DX, PW, PB, NTOK, C, sdb, sdn, sdc,
                   HAS_DS: tl.constexpr, HAS_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)  # token blocks on axis 0 (up to 2**31 programs), batch on axis 1
    t = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    mask = (t < NTOK) & (c < C)
    cm = c < C
    tok = (b * NTOK + t) * C + c
    s = tl.load(S + tok, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + tok, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + b * NTOK + t, mask=t < NTOK, other=0.0)
    rstd = tl.load(RSTD + b * NTOK + t, mask=t < NTOK, other=0.0)
    xhat = tl.where(mask, (s - mean) * rstd, 0.0)
    if HAS_W:
        dxhat = dy * tl.load(W + c, mask=cm, other=0.0).to(tl.float32)
    else:
        dxhat = dy
    cf = C * 1.0  # C may arrive as a constexpr (Triton specializes 1)
    c1 = tl.sum(dxhat * xhat, axis=1)[:, None] / cf
    c2 = tl.sum(dxhat, axis=1)[:, None] / cf
    dx = rstd * (dxhat - c2 - xhat * c1)
    if HAS_DS:
        dx = dx + tl.load(DS + tok, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + b * sdb + t * sdn + c * sdc, dx.to(DX.dtype.element_ty), mask=mask)
    part = (b * tl.num_programs(0) + tl.program_id(0)) * C + tl.arange(0, BLOCK_C)
    pm = tl.arange(0, BLOCK_C) < C
    tl.store(PW + part, tl.sum(dy * xhat, axis=0), mask=pm)
    tl.store(PB + part, tl.sum(dy, axis=0), mask=pm)


def _tiles(ntok: int, c: int, device: torch.device) -> tuple[int, int, int]:
    return _tiles_for(ntok, c, device.type == "cuda")


@functools.lru_cache(maxsize=1024)
def _tiles_for(ntok: int, c: int, cuda: bool) -> tuple[int, int, int]:
    """(tokens per tile, channels per tile, warps), decided once per size."""
    bc = next_power_of_2(c)
    budget = 4096 if cuda else 16384
    bn = max(1, min(next_power_of_2(max(ntok, 1)), budget // bc))
    warps = 8 if bn * bc >= 8192 else 4
    return bn, bc, warps


def _forward(x3: torch.Tensor, r3: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x3, r3: (B, N, C) views (any strides). Returns (s, y, mean, rstd), s and y contiguous."""
    nb, ntok, c = x3.shape
    s = torch.empty((nb, ntok, c), device=x3.device, dtype=x3.dtype)
    y = torch.empty_like(s)
    mean = torch.empty(nb * ntok, device=x3.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if s.numel() == 0:
        return s, y, mean, rstd
    rr = r3 if r3 is not None else x3
    key = (x3.shape, x3.stride(), None if r3 is None else r3.stride(), weight is not None, bias is not None,
           x3.device)
    launch = _FORWARD_PLANS.get(key)
    if launch is None:
        bn, bc, warps = _tiles(ntok, c, x3.device)
        launch = keep_plan(_FORWARD_PLANS, key, fast(_ln_fwd_kernel).prepare(
            HAS_R=r3 is not None, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_N=bn, BLOCK_C=bc,
            num_warps=warps).bind((cdiv(ntok, bn), nb), (ntok, c, *x3.stride(), *rr.stride())))
    launch((x3, rr, s, y, weight if weight is not None else x3, bias if bias is not None else x3, mean, rstd),
           (float(eps),))
    return s, y, mean, rstd


# the forward launch bound per call signature (shapes, strides, which optional inputs, device)
_FORWARD_PLANS: dict[tuple[Any, ...], Bound] = {}


def _backward(s: torch.Tensor, dy: torch.Tensor | None, ds: torch.Tensor | None, weight: torch.Tensor | None,
              mean: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor, dx_strides: tuple[int, int, int]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill dx (through dx_strides in (b, token, channel) order); return fp32 (dweight, dbias)."""
    nb, ntok, c = s.shape
    if dy is None:
        dy = torch.zeros_like(s)
    dy = dy.contiguous()
    ds = ds.contiguous() if ds is not None else None
    bn, bc, warps = _tiles(ntok, c, s.device)
    grid = (cdiv(ntok, bn), nb)
    pw = torch.zeros(nb * grid[0], c, device=s.device, dtype=torch.float32)
    pb = torch.zeros_like(pw)
    if s.numel():
        fast(_ln_bwd_kernel)[grid](s, dy, ds if ds is not None else dy, weight if weight is not None else s, mean, rstd,
                             dx, pw, pb, ntok, c, *dx_strides, HAS_DS=ds is not None, HAS_W=weight is not None,
                             BLOCK_N=bn, BLOCK_C=bc, num_warps=warps)
    return pw.sum(0), pb.sum(0)


def _tokens_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, LayerNorm(tokens), mean, rstd) of an image batch (B, C, H, W)."""
    nb, c = x.shape[0], x.shape[1]
    return _forward(x.reshape(nb, c, x.shape[2] * x.shape[3]).transpose(1, 2), None, weight, bias, eps)


def _add_forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, LayerNorm(s), mean, rstd), ``s = x + residual``; s and the norm as (1, rows, C) (s is saved that way)."""
    c = x.shape[-1]
    s, y, mean, rstd = _forward(x.reshape(1, -1, c), residual.reshape(1, -1, c), weight, bias, eps)
    return s, y, mean, rstd


def _param_grads(pw: torch.Tensor, pb: torch.Tensor, weight: torch.Tensor | None,
                 bias: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None if weight is None else pw.to(weight.dtype)), (None if bias is None else pb.to(bias.dtype))


class TokensLayerNormFunction(torch.autograd.Function):
    """Autograd for ``tokens_layer_norm`` on the Triton kernels."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        s, y, mean, rstd = _tokens_forward(x, weight, bias, eps)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.shape = x.shape
        return s, y

    @staticmethod
    def backward(ctx: Any, ds: torch.Tensor | None, dy: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        s, weight, bias, mean, rstd = ctx.saved_tensors
        c, ntok = ctx.shape[1], s.shape[1]
        dx = torch.empty(ctx.shape, device=s.device, dtype=s.dtype)
        pw, pb = _backward(s, dy, ds, weight, mean, rstd, dx, (c * ntok, 1, ntok))
        dw, db = _param_grads(pw, pb, weight, bias)
        return dx, dw, db, None


class AddLayerNormFunction(torch.autograd.Function):
    """Autograd for ``add_layer_norm`` on the Triton kernels."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        s, y, mean, rstd = _add_forward(x, residual, weight, bias, eps)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.meta = (x.shape, x.dtype, residual.dtype)
        return s.view(x.shape), y.view(x.shape)

    @staticmethod
    def backward(ctx: Any, ds: torch.Tensor | None, dy: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        s, weight, bias, mean, rstd = ctx.saved_tensors
        shape, x_dtype, r_dtype = ctx.meta
        c = s.shape[-1]
        dsum = torch.empty_like(s)
        pw, pb = _backward(s, None if dy is None else dy.reshape(s.shape),
                           None if ds is None else ds.reshape(s.shape), weight, mean, rstd, dsum,
                           (s.shape[1] * c, c, 1))
        dw, db = _param_grads(pw, pb, weight, bias)
        dsum = dsum.view(shape)
        return dsum.to(x_dtype), dsum.to(r_dtype), dw, db, None


def tokens_layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``tokens_layer_norm``: (tokens, LayerNorm(tokens)) from an image batch (B, C, H, W)."""
    check_tokens_layer_norm_args(x, weight, bias, eps)
    return tokens_layer_norm_unchecked(x, weight, bias, eps)


def tokens_layer_norm_unchecked(x: torch.Tensor, weight: torch.Tensor | None = None,
                                bias: torch.Tensor | None = None, eps: float = 1e-5
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens_layer_norm`` on arguments that passed ``check_tokens_layer_norm_args``."""
    if not needs_autograd(x, weight, bias):
        s, y = _tokens_forward(x, weight, bias, eps)[:2]
        return s, y
    s, y = TokensLayerNormFunction.apply(x, weight, bias, eps)
    return s, y


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``add_layer_norm``: (x + residual, LayerNorm(x + residual)) over the last dimension."""
    check_add_layer_norm_args(x, residual, weight, bias, eps)
    return add_layer_norm_unchecked(x, residual, weight, bias, eps)


def add_layer_norm_unchecked(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, eps: float = 1e-5
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_layer_norm`` on arguments that passed ``check_add_layer_norm_args``."""
    if not needs_autograd(x, residual, weight, bias):
        s, y = _add_forward(x, residual, weight, bias, eps)[:2]
        return s.view(x.shape), y.view(x.shape)
    s, y = AddLayerNormFunction.apply(x, residual, weight, bias, eps)
    return s, y
