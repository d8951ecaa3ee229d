"""GroupNorm fused with what follows it in the seed's ``DoubleConv`` / ``Down`` / ``Up``, in Triton.

Computes ``pyimpl.fused.group_norm_act``::

    xhat = (x - mean_g) * rsqrt(var_g + eps)          statistics in fp32, per (n, group)
    out  = act(xhat * weight[c] + bias[c] + residual) + emb[n, c]     act: exact GELU or none

Forward, two launches. (1) ``_stats_kernel``: each (n, g) row of L = C/G * H*W values is cut into
chunks spread over the whole GPU (the seed's GroupNorm(1, C) at batch 16 has 16 rows: one program per
row, as PyTorch's RowwiseMoments kernel runs it, leaves most SMs idle and was a third of the seed's
bf16 step). Each program reads its chunk once, accumulating sums of ``x - shift`` and their squares
in fp32 per lane, with the chunk's first value as the shift so that a large mean does not cancel;
it writes the chunk's mean and M2. (2) ``_apply_kernel``: each program merges the row's chunk
statistics with Chan, Golub & LeVeque's pairwise formula (M2 = sum M2_i + n_i (mean_i - mean)^2),
then normalizes its chunk and applies weight, bias, residual, GELU and emb, writing the output once;
it walks the chunks in reverse, so the chunks the statistics pass read last are still in L2. The
GELU's erf is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7). Bytes: x read twice (the second read
comes from L2 when x fits), residual read once, output written once; the statistics are a few KB.

Layouts: contiguous NCHW (any number of groups; a group is a contiguous block) and channels-last
for GroupNorm(1, C) (the sample is a contiguous block; the seed's attention blocks hand the next
level channels-last tensors). The apply pass loads a channel's weight once per tile where a tile
lies in one NCHW channel plane, and once per program for channels-last [rows x C] tiles (C a power
of two dividing the tile). Other strides are copied to NCHW first, and the output is then NCHW;
otherwise it keeps x's layout.

Backward, two launches over [channels x positions] tiles: per-(n, c) sums of dz * xhat, dz and dy
(dz is the gradient at the GELU's input), from which the weight, bias and emb gradients and the
group sums follow; then dx = rstd * (dz w - (sum dz w + xhat sum dz w xhat) / L), and the residual's
gradient dz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from pyimpl.fused import check_group_norm_args

Tensor = torch.Tensor
# (out, mean, rstd, x as read, residual as read, channels_last)
ForwardResult = tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, bool]
# (dx, dweight, dbias, dresidual, demb)
BackwardResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


@triton.jit
def _stats_kernel(X, MEAN_P, M2_P, L, NCHUNK, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    start = chunk * CHUNK
    base = X + row * L + start
    n = tl.minimum(CHUNK, L - start)
    shift = tl.load(base).to(tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(base + offs, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, v - shift, 0.0)
        acc += d
        acc2 += d * d
    s = tl.sum(acc, axis=0)
    s2 = tl.sum(acc2, axis=0)
    mean_d = s / n.to(tl.float32)
    tl.store(MEAN_P + row * NCHUNK + chunk, shift + mean_d)
    tl.store(M2_P + row * NCHUNK + chunk, tl.maximum(s2 - s * mean_d, 0.0))


@triton.jit
def _erf_fast(x):
    # Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, a third of libdevice's erff instructions
    a = tl.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    r = 1.0 - poly * tl.exp(-a * a)
    return tl.where(x < 0, -r, r)


@triton.jit
def _finish(y, e, R, r_off, m, HAS_R: tl.constexpr, HAS_E: tl.constexpr, GELU: tl.constexpr,
            FAST_ERF: tl.constexpr):
    """act(y + residual) + e: everything after the affine map (e: the embedding values)."""
    if HAS_R:
        y = y + tl.load(R + r_off, mask=m, other=0.0).to(tl.float32)
    if GELU:
        z = y * 0.7071067811865476
        if FAST_ERF:
            y = 0.5 * y * (1.0 + _erf_fast(z))
        else:
            y = 0.5 * y * (1.0 + tl.math.erf(z))
    if HAS_E:
        y = y + e
    return y


MODE_NCHW, MODE_NCHW_PLANE, MODE_NHWC_TILE, MODE_NHWC = 0, 1, 2, 3


@triton.jit
def _apply_kernel(X, Y, W, B, R, E, MEAN_P, M2_P, MEAN, RSTD,
                  L, NCHUNK, G, eps,
                  CHUNK: tl.constexpr, HW: tl.constexpr, CPG: tl.constexpr, C: tl.constexpr,
                  MODE: tl.constexpr,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_E: tl.constexpr,
                  GELU: tl.constexpr, FAST_ERF: tl.constexpr, NCHUNK_P2: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: NCHW, channel per element; 1: NCHW with every tile inside one channel plane (scalar
    # weights per tile); 2: channels-last with C | BLOCK ([BLOCK / C, C] tiles, weights loaded once
    # per program); 3: channels-last, channel per element.
    row = tl.program_id(0).to(tl.int64)
    chunk = NCHUNK - 1 - tl.program_id(1)  # reverse of the stats pass: the last chunks read are in L2
    # merge the row's chunk statistics (every program of the row does it: a few hundred floats)
    k = tl.arange(0, NCHUNK_P2)
    km = k < NCHUNK
    cmean = tl.load(MEAN_P + row * NCHUNK + k, mask=km, other=0.0)
    cm2 = tl.load(M2_P + row * NCHUNK + k, mask=km, other=0.0)
    cnt = tl.where(km, tl.minimum(CHUNK, L - k * CHUNK), 0).to(tl.float32)
    lf = L * 1.0  # L may arrive as a constexpr (Triton specializes 1)
    mean = tl.sum(cnt * cmean, axis=0) / lf
    dm = tl.where(km, cmean - mean, 0.0)
    m2 = tl.sum(cm2 + cnt * dm * dm, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / lf + eps)
    if chunk == 0:
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)
    n = row // G
    g = row % G
    start = chunk * CHUNK
    base = row * L
    if MODE == 2:
        cols = tl.arange(0, C)
        a = tl.full([C], 1.0, tl.float32) * rstd
        if HAS_W:
            a = a * tl.load(W + cols).to(tl.float32)
        sh = 0.0
        if HAS_B:
            sh = tl.load(B + cols).to(tl.float32)[None, :]
        e = 0.0
        if HAS_E:
            e = tl.load(E + n * C + cols).to(tl.float32)[None, :]
        rows = tl.arange(0, BLOCK // C)
        for i in range(0, CHUNK, BLOCK):
            local = i + rows[:, None] * C + cols[None, :]
            o = start + local
            m = (o < L) & (local < CHUNK)
            x = tl.load(X + base + o, mask=m, other=0.0).to(tl.float32)
            y = _finish((x - mean) * a[None, :] + sh, e, R, base + o, m, HAS_R, HAS_E, GELU, FAST_ERF)
            tl.store(Y + base + o, y.to(Y.dtype.element_ty), mask=m)
    elif MODE == 1:
        for i in range(0, CHUNK, BLOCK):
            local = i + tl.arange(0, BLOCK)
            o = start + local
            m = (o < L) & (local < CHUNK)
            x = tl.load(X + base + o, mask=m, other=0.0).to(tl.float32)
            c = g * CPG + (start + i) // HW
            a = rstd
            if HAS_W:
                a = a * tl.load(W + c).to(tl.float32)
            sh = 0.0
            if HAS_B:
                sh = tl.load(B + c).to(tl.float32)
            e = 0.0
            if HAS_E:
                e = tl.load(E + n * C + c).to(tl.float32)
            y = _finish((x - mean) * a + sh, e, R, base + o, m, HAS_R, HAS_E, GELU, FAST_ERF)
            tl.store(Y + base + o, y.to(Y.dtype.element_ty), mask=m)
    else:
        for i in range(0, CHUNK, BLOCK):
            local = i + tl.arange(0, BLOCK)
            o = start + local
            m = (o < L) & (local < CHUNK)
            x = tl.load(X + base + o, mask=m, other=0.0).to(tl.float32)
            if MODE == 3:
                c = o % C
            else:
                c = g * CPG + o // HW
            a = tl.full([BLOCK], 1.0, tl.float32) * rstd
            if HAS_W:
                a = a * tl.load(W + c, mask=m, other=1.0).to(tl.float32)
            sh = 0.0
            if HAS_B:
                sh = tl.load(B + c, mask=m, other=0.0).to(tl.float32)
            e = 0.0
            if HAS_E:
                e = tl.load(E + n * C + c, mask=m, other=0.0).to(tl.float32)
            y = _finish((x - mean) * a + sh, e, R, base + o, m, HAS_R, HAS_E, GELU, FAST_ERF)
            tl.store(Y + base + o, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                  CPG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                  GELU: tl.constexpr):
    off = n * sN + c * sC + p * sHW
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
    cm = c < CPG * G
    grp = n * G + c // CPG
    mean = tl.load(MEAN + grp, mask=cm, other=0.0)
    rstd = tl.load(RSTD + grp, mask=cm, other=0.0)
    xhat = (x - mean) * rstd
    if HAS_W:
        w = tl.load(W + c, mask=cm, other=0.0).to(tl.float32)
    else:
        w = tl.where(cm, 1.0, 0.0)
    dz = dy
    if GELU:
        z = xhat * w
        if HAS_B:
            z = z + tl.load(B + c, mask=cm, other=0.0).to(tl.float32)
        if HAS_R:
            z = z + tl.load(R + off, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        dz = dy * (cdf + z * pdf)
    dz = tl.where(mask, dz, 0.0)
    xhat = tl.where(mask, xhat, 0.0)
    return off, dy, dz, xhat, w, rstd


@triton.jit
def _bwd_sums_kernel(X, DY, W, B, R, MEAN, RSTD, PA, PB, PE,
                     C, HW, sN, sC, sHW, G,
                     CPG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                     HAS_E: tl.constexpr, GELU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    pb = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (c < C) & (p < HW)
    _, dy, dz, xhat, _, _ = _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                                          CPG, HAS_W, HAS_B, HAS_R, GELU)
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    out = (n * tl.num_programs(2) + pb) * C + cc
    cm = cc < C
    tl.store(PA + out, tl.sum(dz * xhat, axis=1), mask=cm)
    tl.store(PB + out, tl.sum(dz, axis=1), mask=cm)
    if HAS_E:
        tl.store(PE + out, tl.sum(tl.where(mask, dy, 0.0), axis=1), mask=cm)


@triton.jit
def _bwd_dx_kernel(X, DY, W, B, R, MEAN, RSTD, S1, S2, DX, DR,
                   C, HW, sN, sC, sHW, G, inv_len,
                   CPG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                   WRITE_DR: tl.constexpr, GELU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    pb = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (c < C) & (p < HW)
    off, _, dz, xhat, w, rstd = _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                                              CPG, HAS_W, HAS_B, HAS_R, GELU)
    grp = n * G + c // CPG
    cm = c < C
    s1 = tl.load(S1 + grp, mask=cm, other=0.0)
    s2 = tl.load(S2 + grp, mask=cm, other=0.0)
    dx = rstd * (dz * w - (s2 + xhat * s1) * inv_len)
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)
    if WRITE_DR:
        tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=mask)


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter runs programs one after another: few, large ones


def _layout(x: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, bool]:
    """x in a layout the kernels take, and whether it is channels-last."""
    if x.is_contiguous():
        return x, False
    if num_groups == 1 and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def _like(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def _strides(n: int, c: int, hw: int, channels_last: bool) -> tuple[int, int, int]:
    return (hw * c, 1, c) if channels_last else (c * hw, hw, 1)


def _bwd_tiles(c: int, hw: int, channels_last: bool, device: torch.device) -> tuple[int, int]:
    budget = 4096 if device.type == "cuda" else 16384
    if channels_last:
        bc = min(triton.next_power_of_2(c), 256)
        return bc, max(1, min(triton.next_power_of_2(hw), budget // bc))
    bp = min(triton.next_power_of_2(hw), 1024)
    return max(1, min(triton.next_power_of_2(c), budget // bp)), bp


@dataclass
class ForwardConfig:
    """Launch parameters of the forward kernels: elements per tile, warps per program, and the
    A&S erf (|error| <= 1.5e-7) instead of libdevice's in the GELU."""

    block: int = 2048
    warps: int = 8
    fast_erf: bool = True


# CUDA; the best of benchmarks/gpu_fused.py's sweep on an H200 (docs/notes/fused-gpu.md)
FORWARD_CONFIG = ForwardConfig()


def _mode(channels_last: bool, c: int, hw: int, block: int) -> int:
    if channels_last:
        return MODE_NHWC_TILE if c & (c - 1) == 0 and block % c == 0 else MODE_NHWC
    return MODE_NCHW_PLANE if hw % block == 0 else MODE_NCHW


def group_norm_act_forward(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float, residual: torch.Tensor | None,
                           emb: torch.Tensor | None, gelu: bool) -> ForwardResult:
    """Launch the forward kernels; returns (out, mean, rstd, x, residual, channels_last) where x and
    residual are in the layout the kernels read (saved for the backward)."""
    x, channels_last = _layout(x, num_groups)
    if residual is not None:
        residual = _like(residual, channels_last)
    n, c = x.shape[0], x.shape[1]
    hw = math.prod(x.shape[2:])
    rows = n * num_groups
    length = (c // num_groups) * hw
    y = torch.empty_like(x)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    if x.numel() == 0:
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return y, mean, rstd, x, residual, channels_last
    cfg = FORWARD_CONFIG if x.device.type == "cuda" else ForwardConfig(block=1024, warps=4)
    block = min(cfg.block, triton.next_power_of_2(length))
    nchunk = max(1, min(-(-_target_programs(x.device) // rows), -(-length // block), 1024))
    chunk = -(-length // (nchunk * block)) * block
    nchunk = -(-length // chunk)
    mean_p = torch.empty(rows, nchunk, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    grid = (rows, nchunk)
    warps = cfg.warps
    _stats_kernel[grid](x, mean_p, m2_p, length, nchunk, CHUNK=chunk, BLOCK=block, num_warps=warps)
    dummy = x
    e = emb.contiguous() if emb is not None else None
    _apply_kernel[grid](
        x, y, weight if weight is not None else dummy, bias if bias is not None else dummy,
        residual if residual is not None else dummy, e if e is not None else dummy,
        mean_p, m2_p, mean, rstd, length, nchunk, num_groups, float(eps),
        CHUNK=chunk, HW=hw, CPG=c // num_groups, C=c, MODE=_mode(channels_last, c, hw, block),
        HAS_W=weight is not None, HAS_B=bias is not None, HAS_R=residual is not None, HAS_E=emb is not None,
        GELU=gelu, FAST_ERF=cfg.fast_erf, NCHUNK_P2=triton.next_power_of_2(nchunk), BLOCK=block, num_warps=warps,
    )
    return y, mean, rstd, x, residual, channels_last


def group_norm_act_backward(dy: torch.Tensor, x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                            bias: torch.Tensor | None, residual: torch.Tensor | None, has_emb: bool,
                            mean: torch.Tensor, rstd: torch.Tensor, gelu: bool, channels_last: bool,
                            need_residual_grad: bool) -> BackwardResult:
    """(dx, dweight, dbias, dresidual, demb); None where the input is absent or not needed."""
    n, c = x.shape[0], x.shape[1]
    hw = math.prod(x.shape[2:])
    dy = _like(dy, channels_last)
    dx = torch.empty_like(x)
    dr = torch.empty_like(x) if residual is not None and need_residual_grad else None
    bc, bp = _bwd_tiles(c, hw, channels_last, x.device)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(hw, bp))
    if x.numel() == 0:
        zeros = torch.zeros(n, c, device=x.device, dtype=torch.float32)
        a = b_sum = e_sum = zeros
    else:
        pa = torch.empty(n, grid[2], c, device=x.device, dtype=torch.float32)
        pb, pe = torch.empty_like(pa), torch.empty_like(pa) if has_emb else pa
        sn, sc, sp = _strides(n, c, hw, channels_last)
        dummy = x
        common: dict[str, Any] = dict(CPG=c // num_groups, HAS_W=weight is not None, HAS_B=bias is not None,
                                      HAS_R=residual is not None, GELU=gelu, BLOCK_C=bc, BLOCK_P=bp, num_warps=4)
        wt = weight if weight is not None else dummy
        bs = bias if bias is not None else dummy
        rs = residual if residual is not None else dummy
        _bwd_sums_kernel[grid](x, dy, wt, bs, rs, mean, rstd, pa, pb, pe, c, hw, sn, sc, sp, num_groups,
                               HAS_E=has_emb, **common)
        a, b_sum, e_sum = pa.sum(1), pb.sum(1), pe.sum(1)
        wf = weight.float() if weight is not None else torch.ones(c, device=x.device)
        s1 = (a * wf).view(n, num_groups, -1).sum(-1).contiguous()
        s2 = (b_sum * wf).view(n, num_groups, -1).sum(-1).contiguous()
        _bwd_dx_kernel[grid](x, dy, wt, bs, rs, mean, rstd, s1, s2, dx, dr if dr is not None else dummy,
                             c, hw, sn, sc, sp, num_groups, 1.0 / ((c // num_groups) * hw),
                             WRITE_DR=dr is not None, **common)
    dw = a.sum(0).to(weight.dtype) if weight is not None else None
    db = b_sum.sum(0).to(bias.dtype) if bias is not None else None
    de = e_sum if has_emb else None
    return dx, dw, db, dr, de


class GroupNormActFunction(torch.autograd.Function):
    """Autograd for ``group_norm_act`` on the Triton kernels."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                residual: torch.Tensor | None, emb: torch.Tensor | None, num_groups: int, eps: float,
                gelu: bool) -> torch.Tensor:
        y, mean, rstd, xl, rl, channels_last = group_norm_act_forward(x, num_groups, weight, bias, eps, residual,
                                                                      emb, gelu)
        ctx.save_for_backward(xl, weight, bias, rl, mean, rstd)
        ctx.meta = (num_groups, gelu, channels_last, emb is not None, x.dtype,
                    None if emb is None else emb.dtype, None if residual is None else residual.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, residual, mean, rstd = ctx.saved_tensors
        num_groups, gelu, channels_last, has_emb, x_dtype, e_dtype, r_dtype = ctx.meta
        dx, dw, db, dr, de = group_norm_act_backward(dy, x, num_groups, weight, bias, residual, has_emb, mean,
                                                     rstd, gelu, channels_last, ctx.needs_input_grad[3])
        return (dx.to(x_dtype), dw, db, None if dr is None else dr.to(r_dtype),
                None if de is None else de.to(e_dtype), None, None, None)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, residual: torch.Tensor | None = None,
                   emb: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """Triton ``group_norm_act`` (see the module docstring); differentiable in every tensor argument."""
    check_group_norm_args(x, num_groups, weight, bias, eps, residual, emb, activation)
    out: torch.Tensor = GroupNormActFunction.apply(x, weight, bias, residual, emb, num_groups, eps,
                                                   activation == "gelu")
    return out
