"""Fused Triton kernels for the DDPM / DDIM reverse steps and the forward noising ``q_sample``.

One kernel per step kind; each reads the sample and the model output once (and the unconditional
output under classifier-free guidance, the predicted variance for learned variances, the noise when
it is passed in) and writes x_prev once: for a step with passed-in noise, 4 tensor passes
(3 with in-kernel noise, 2 + 1 for DDIM with eta = 0). Formulas: ``pyimpl.diffusion.steps``.

- Coefficients are gathered per sample on the device from the schedule tables (float32 math)
  and the int64 timestep tensors: no host synchronization, no per-timestep Python scalars, one
  compiled kernel per option set. Timesteps outside [0, T) give NaN for that sample. For fp32 / fp64
  results, square roots and divisions are IEEE round-to-nearest (``tl.sqrt_rn`` / ``tl.div_rn``, as
  torch computes them), not Triton's approximate defaults: a 1000-step loop otherwise drifts from
  diffusers' by 3.6e-4 (0.08 on the sum of diffusers' loop test, whose tolerance is 0.01; H100).
  Half-precision results keep the approximations (``PRECISE``), whose error their rounding hides.
- Layout: the grid is (blocks per sample, min(n, 65535)); a program loops over samples and handles
  ``NOISE_BLOCK`` elements of one sample as a (NOISE_QUARTER, 4) tile. Tensors of any shape are seen
  as (n, d1, d2, d3) with their own strides (int64 offsets); contiguous inner dims take a flat path.
- Noise: passed in, or Philox drawn in the kernel (``tl.randn4x`` for counter ``offset + ...``,
  four elements per call, the layout of ``pyimpl.diffusion.philox``), with seed and offset as
  arguments or read from an int64 device tensor ``rng_state = [seed, offset]`` (for CUDA graphs).
- Clipping of x0 happens in the kernel; dynamic thresholding needs the per-sample quantile of |x0|,
  so x0 is written by a first pass of the same kernel, the quantile taken on the device with
  torch, and the step applied with that s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from modelkernels.kernels.triton_launch import cdiv, fast
from modelkernels.pyimpl.diffusion import philox
from modelkernels.pyimpl.diffusion.philox import NOISE_BLOCK, NOISE_QUARTER
from modelkernels.pyimpl.diffusion.schedule import Schedule
from modelkernels.pyimpl.diffusion.steps import PREDICTION_TYPES, VARIANCE_TYPES, check_step_args, threshold_scale

__all__ = ["ddim_step_triton", "ddpm_seed_step_triton", "ddpm_step_triton", "q_sample_triton"]

_MAX_GRID_Y = 65535
# Box-Muller flavour on the GPU (see _noise_tile); the interpreter always runs 0.
RNG_MODE_GPU = 2
NUM_WARPS = 4
_NOISE_NONE, _NOISE_TENSOR, _NOISE_PHILOX, _NOISE_PHILOX_STATE = 0, 1, 2, 3


@triton.jit
def _offsets(b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT: tl.constexpr):
    """int64 memory offsets of the (Q, 4) tile of elements j0 + 4 i + c of sample b."""
    j = j0 + i[:, None] * 4 + c[None, :]
    if FLAT:
        return b * s0 + j
    i3 = j % d3
    rest = j // d3
    return b * s0 + (rest // d2) * s1 + (rest % d2) * s2 + i3 * s3


@triton.jit
def _load(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _read(ptr, b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT: tl.constexpr, mask, jw, wmask, Q: tl.constexpr):
    """An operand's (Q, 4) tile in float32. Contiguous samples (FLAT) are read through the (Q/2, 8) view
    (``_tile``): eight consecutive elements a thread, 16-byte loads in half precision where the (Q, 4) tile
    gives 8-byte ones; the offsets are built in that shape, since a reshaped offset tensor loses the
    contiguity the vectorizer needs."""
    if FLAT:
        return tl.reshape(tl.load(ptr + b * s0 + jw, mask=wmask, other=0.0), (Q, 4)).to(tl.float32)
    else:
        return _load(ptr, _offsets(b, i, c, s0, s1, s2, s3, d2, d3, j0, False), mask)


@triton.jit
def _write(ptr, offs, val, wmask, Q: tl.constexpr):
    """Store a (Q, 4) tile of a contiguous output through the (Q/2, 8) view (see ``_read``)."""
    tl.store(ptr + offs, tl.reshape(val, (Q // 2, 8)).to(ptr.dtype.element_ty), mask=wmask)


@triton.jit
def _box_muller_fast(u1, u2, FAST_LOG: tl.constexpr):
    """Triton's pair_uniform_to_normal with the hardware approximations of sin / cos (and log):
    the angle is taken in [-pi, pi), where sin.approx / cos.approx are accurate to 2**-20.9, and
    cos(2 pi u - pi) = -cos(2 pi u), sin(2 pi u - pi) = -sin(2 pi u) restore the same numbers."""
    u1 = tl.maximum(1.0e-7, u1)
    th = 6.283185307179586 * u2 - 3.141592653589793
    if FAST_LOG:
        r = tl.sqrt(-2.0 * libdevice.fast_logf(u1))
    else:
        r = tl.sqrt(-2.0 * tl.log(u1))
    return -r * libdevice.fast_cosf(th), -r * libdevice.fast_sinf(th)


@triton.jit
def _noise_tile(z_ptr, b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT: tl.constexpr, mask, jw, wmask, seed, counter,
                NOISE: tl.constexpr, Q: tl.constexpr, RNG: tl.constexpr, ROUNDS: tl.constexpr):
    """The (Q, 4) noise tile: loaded, or four Philox normals per counter (columns n1, n2, n3, n4).

    RNG 0: ``tl.randn4x`` (precise libdevice log / sin / cos; what the interpreter runs);
    1: hardware sin / cos approximations; 2: also the hardware log. Same Philox stream in all three."""
    if NOISE == 1:
        return _read(z_ptr, b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
    else:
        if RNG == 0:
            n1, n2, n3, n4 = tl.randn4x(seed, counter, ROUNDS)
        else:
            u1, u2, u3, u4 = tl.rand4x(seed, counter, ROUNDS)
            n1, n2 = _box_muller_fast(u1, u2, RNG == 2)
            n3, n4 = _box_muller_fast(u3, u4, RNG == 2)
        return tl.reshape(tl.join(tl.join(n1, n3), tl.join(n2, n4)), (Q, 4))


@triton.jit
def _rng(rng_ptr, seed, offset, NOISE: tl.constexpr):
    if NOISE == 3:
        return tl.load(rng_ptr), tl.load(rng_ptr + 1)
    else:
        return seed, offset


@triton.jit
def _gather(table_ptr, t, T):
    """table[t] in float32; NaN for t outside [0, T)."""
    v = tl.load(table_ptr + tl.minimum(tl.maximum(t, 0), T - 1)).to(tl.float32)
    return tl.where((t >= 0) & (t < T), v, float("nan"))


@triton.jit
def _guide(mo, unc_ptr, b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT: tl.constexpr, mask, jw, wmask, w,
           HAS_UNCOND: tl.constexpr, Q: tl.constexpr):
    """torch.lerp(uncond, cond, w): w < 0.5: u + w (c - u); else c - (c - u)(1 - w)."""
    if HAS_UNCOND:
        u = _read(unc_ptr, b, i, c, s0, s1, s2, s3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        diff = mo - u
        return tl.where(w < 0.5, u + w * diff, mo - diff * (1.0 - w))
    else:
        return mo


@triton.jit
def _sqrt(x, PRECISE: tl.constexpr):
    """Correctly rounded (as torch) where PRECISE, else Triton's approximate square root."""
    if PRECISE:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _div(a, b, PRECISE: tl.constexpr):
    """Correctly rounded (as torch) where PRECISE, else Triton's approximate division."""
    if PRECISE:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _clip(x0, s_ptr, b, clip_range, CLIP: tl.constexpr, PRECISE: tl.constexpr):
    if CLIP == 1:
        return tl.clamp(x0, -clip_range, clip_range, propagate_nan=tl.PropagateNan.ALL)
    elif CLIP == 2:
        s = tl.load(s_ptr + b).to(tl.float32)
        return _div(tl.clamp(x0, -s, s, propagate_nan=tl.PropagateNan.ALL), s, PRECISE)
    else:
        return x0


@triton.jit
def _tile(M, Q: tl.constexpr):
    """This program's tile of a sample: Q x 4 consecutive elements from ``j0 = program_id(0) * 4Q``
    (element ``j0 + 4 i + c``: row i draws its four normals from one Philox counter), as (blk, nblk, i, c,
    j0, in_row, jw, in_wide): ``in_row`` masks the [Q, 4] tile past M; ``jw`` indexes the same elements as a
    [Q/2, 8] tile (row-major, so ``reshape`` maps one onto the other), ``in_wide`` masks it."""
    blk = tl.program_id(0).to(tl.int64)
    nblk = tl.cdiv(M, 4 * Q)
    i = tl.arange(0, Q).to(tl.int64)
    c = tl.arange(0, 4).to(tl.int64)
    j0 = blk * 4 * Q
    jj = j0 + i[:, None] * 4 + c[None, :]
    jw = j0 + tl.arange(0, Q // 2).to(tl.int64)[:, None] * 8 + tl.arange(0, 8).to(tl.int64)[None, :]
    return blk, nblk, i, c, j0, jj < M, jw, jw < M


@triton.jit
def _sample(k, grid_y, n, in_row, in_wide, t_ptr):
    """Iteration k's sample ``program_id(1) + k * grid_y``: its index clamped to n - 1, the masks of the
    [Q, 4] and [Q/2, 8] tiles (off past n) and its timestep, as (b64, mask, wmask, t)."""
    b = tl.program_id(1).to(tl.int64) + k * grid_y
    b64 = tl.minimum(b, n - 1)
    # a select, not `in_row & (b < n)`: Triton 3.9's interpreter splats the scalar compare as int32
    return b64, tl.where(b < n, in_row, False), tl.where(b < n, in_wide, False), tl.load(t_ptr + b64)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset each step: no recompiles
def _q_sample_kernel(
    out_ptr, x_ptr, z_ptr, zout_ptr, t_ptr, ac_ptr, rng_ptr,
    n, M, d2, d3, T, grid_y,
    xs0, xs1, xs2, xs3, zs0, zs1, zs2, zs3,
    seed, offset,
    NOISE: tl.constexpr, WRITE_NOISE: tl.constexpr, FLAT: tl.constexpr, Q: tl.constexpr, ITERS: tl.constexpr,
    RNG: tl.constexpr, ROUNDS: tl.constexpr, PRECISE: tl.constexpr,
):
    blk, nblk, i, c, j0, in_row, jw, in_wide = _tile(M, Q)
    sd, off = _rng(rng_ptr, seed, offset, NOISE)
    for k in tl.static_range(ITERS):
        b64, mask, wmask, t = _sample(k, grid_y, n, in_row, in_wide, t_ptr)
        ah = _gather(ac_ptr, t, T)
        x = _read(x_ptr, b64, i, c, xs0, xs1, xs2, xs3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        z = _noise_tile(z_ptr, b64, i, c, zs0, zs1, zs2, zs3, d2, d3, j0, FLAT, mask, jw, wmask, sd,
                        off + (b64 * nblk + blk) * Q + i, NOISE, Q, RNG, ROUNDS)
        out = _sqrt(ah, PRECISE) * x + _sqrt(1.0 - ah, PRECISE) * z
        _write(out_ptr, b64 * M + jw, out.to(out_ptr.dtype.element_ty), wmask, Q)
        if WRITE_NOISE:
            _write(zout_ptr, b64 * M + jw, z.to(zout_ptr.dtype.element_ty), wmask, Q)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset each step: no recompiles
def _seed_step_kernel(
    out_ptr, x_ptr, mo_ptr, unc_ptr, z_ptr, t_ptr, alpha_ptr, ac_ptr, beta_ptr, rng_ptr,
    n, M, d2, d3, T, grid_y,
    xs0, xs1, xs2, xs3, ms0, ms1, ms2, ms3, us0, us1, us2, us3, zs0, zs1, zs2, zs3,
    w, seed, offset,
    NOISE: tl.constexpr, HAS_UNCOND: tl.constexpr, FLAT: tl.constexpr, Q: tl.constexpr, ITERS: tl.constexpr,
    RNG: tl.constexpr, ROUNDS: tl.constexpr, PRECISE: tl.constexpr,
):
    blk, nblk, i, c, j0, in_row, jw, in_wide = _tile(M, Q)
    sd, off = _rng(rng_ptr, seed, offset, NOISE)
    for k in tl.static_range(ITERS):
        b64, mask, wmask, t = _sample(k, grid_y, n, in_row, in_wide, t_ptr)
        alpha = _gather(alpha_ptr, t, T)
        alpha_hat = _gather(ac_ptr, t, T)
        beta = _gather(beta_ptr, t, T)
        c_x = _div(1.0, _sqrt(alpha, PRECISE), PRECISE)
        c_eps = _div(1.0 - alpha, _sqrt(1.0 - alpha_hat, PRECISE), PRECISE)
        sigma = tl.where(t > 1, _sqrt(beta, PRECISE), 0.0)
        x = _read(x_ptr, b64, i, c, xs0, xs1, xs2, xs3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        eps = _read(mo_ptr, b64, i, c, ms0, ms1, ms2, ms3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        eps = _guide(eps, unc_ptr, b64, i, c, us0, us1, us2, us3, d2, d3, j0, FLAT, mask, jw, wmask, w, HAS_UNCOND, Q)
        z = _noise_tile(z_ptr, b64, i, c, zs0, zs1, zs2, zs3, d2, d3, j0, FLAT, mask, jw, wmask, sd,
                        off + (b64 * nblk + blk) * Q + i, NOISE, Q, RNG, ROUNDS)
        out = c_x * (x - c_eps * eps) + tl.where(t > 1, sigma * z, 0.0)
        _write(out_ptr, b64 * M + jw, out.to(out_ptr.dtype.element_ty), wmask, Q)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset each step: no recompiles
def _ddpm_kernel(
    out_ptr, x0_ptr, x_ptr, mo_ptr, unc_ptr, pv_ptr, z_ptr, t_ptr, pt_ptr, ac_ptr, s_ptr, rng_ptr,
    n, M, d2, d3, T, grid_y,
    xs0, xs1, xs2, xs3, ms0, ms1, ms2, ms3, us0, us1, us2, us3, vs0, vs1, vs2, vs3, zs0, zs1, zs2, zs3,
    w, clip_range, seed, offset,
    NOISE: tl.constexpr, HAS_UNCOND: tl.constexpr, PRED: tl.constexpr, VAR: tl.constexpr, CLIP: tl.constexpr,
    X0_ONLY: tl.constexpr, WRITE_X0: tl.constexpr, FLAT: tl.constexpr, Q: tl.constexpr, ITERS: tl.constexpr,
    RNG: tl.constexpr, ROUNDS: tl.constexpr, PRECISE: tl.constexpr,
):
    blk, nblk, i, c, j0, in_row, jw, in_wide = _tile(M, Q)
    sd, off = _rng(rng_ptr, seed, offset, NOISE)
    for k in tl.static_range(ITERS):
        b64, mask, wmask, t = _sample(k, grid_y, n, in_row, in_wide, t_ptr)
        pt = tl.load(pt_ptr + b64)
        ap = _gather(ac_ptr, t, T)
        app = tl.where(pt < 0, 1.0, _gather(ac_ptr, pt, T))
        bp = 1.0 - ap
        bpp = 1.0 - app
        cur_alpha = _div(ap, app, PRECISE)
        cur_beta = 1.0 - cur_alpha
        x = _read(x_ptr, b64, i, c, xs0, xs1, xs2, xs3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        mo = _read(mo_ptr, b64, i, c, ms0, ms1, ms2, ms3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        mo = _guide(mo, unc_ptr, b64, i, c, us0, us1, us2, us3, d2, d3, j0, FLAT, mask, jw, wmask, w, HAS_UNCOND, Q)
        if PRED == 0:
            x0 = _div(x - _sqrt(bp, PRECISE) * mo, _sqrt(ap, PRECISE), PRECISE)
        elif PRED == 1:
            x0 = mo
        else:
            x0 = _sqrt(ap, PRECISE) * x - _sqrt(bp, PRECISE) * mo
        if X0_ONLY:
            _write(x0_ptr, b64 * M + jw, x0, wmask, Q)
        else:
            x0 = _clip(x0, s_ptr, b64, clip_range, CLIP, PRECISE)
            if WRITE_X0:
                _write(x0_ptr, b64 * M + jw, x0.to(x0_ptr.dtype.element_ty), wmask, Q)
            c0 = _div(_sqrt(app, PRECISE) * cur_beta, bp, PRECISE)
            ct = _div(_sqrt(cur_alpha, PRECISE) * bpp, bp, PRECISE)
            out = c0 * x0 + ct * x
            var = tl.maximum(_div(1.0 - app, 1.0 - ap, PRECISE) * cur_beta, 1e-20)
            if VAR == 0:
                std = _sqrt(var, PRECISE)
            elif VAR == 1:
                std = tl.exp(0.5 * tl.log(var))
            elif VAR == 2:
                std = _sqrt(cur_beta, PRECISE)
            elif VAR == 3:
                std = tl.exp(0.5 * tl.log(cur_beta))
            else:
                v = _read(pv_ptr, b64, i, c, vs0, vs1, vs2, vs3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
                if VAR == 4:
                    std = _sqrt(v, PRECISE)
                else:
                    frac = (v + 1.0) * 0.5
                    std = tl.exp(0.5 * (frac * tl.log(cur_beta) + (1.0 - frac) * tl.log(var)))
            z = _noise_tile(z_ptr, b64, i, c, zs0, zs1, zs2, zs3, d2, d3, j0, FLAT, mask, jw, wmask, sd,
                            off + (b64 * nblk + blk) * Q + i, NOISE, Q, RNG, ROUNDS)
            out = out + tl.where(t > 0, std * z, 0.0)
            _write(out_ptr, b64 * M + jw, out.to(out_ptr.dtype.element_ty), wmask, Q)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset each step: no recompiles
def _ddim_kernel(
    out_ptr, x0_ptr, x_ptr, mo_ptr, unc_ptr, z_ptr, t_ptr, pt_ptr, ac_ptr, s_ptr, rng_ptr,
    n, M, d2, d3, T, grid_y,
    xs0, xs1, xs2, xs3, ms0, ms1, ms2, ms3, us0, us1, us2, us3, zs0, zs1, zs2, zs3,
    w, clip_range, final_alpha, eta, seed, offset,
    NOISE: tl.constexpr, HAS_UNCOND: tl.constexpr, PRED: tl.constexpr, CLIP: tl.constexpr,
    USE_CLIPPED: tl.constexpr, X0_ONLY: tl.constexpr, WRITE_X0: tl.constexpr, FLAT: tl.constexpr,
    Q: tl.constexpr, ITERS: tl.constexpr,
    RNG: tl.constexpr, ROUNDS: tl.constexpr, PRECISE: tl.constexpr,
):
    blk, nblk, i, c, j0, in_row, jw, in_wide = _tile(M, Q)
    sd, off = _rng(rng_ptr, seed, offset, NOISE)
    for k in tl.static_range(ITERS):
        b64, mask, wmask, t = _sample(k, grid_y, n, in_row, in_wide, t_ptr)
        pt = tl.load(pt_ptr + b64)
        ap = _gather(ac_ptr, t, T)
        app = tl.where(pt < 0, final_alpha, _gather(ac_ptr, pt, T))
        bp = 1.0 - ap
        x = _read(x_ptr, b64, i, c, xs0, xs1, xs2, xs3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        mo = _read(mo_ptr, b64, i, c, ms0, ms1, ms2, ms3, d2, d3, j0, FLAT, mask, jw, wmask, Q)
        mo = _guide(mo, unc_ptr, b64, i, c, us0, us1, us2, us3, d2, d3, j0, FLAT, mask, jw, wmask, w, HAS_UNCOND, Q)
        if PRED == 0:
            x0 = _div(x - _sqrt(bp, PRECISE) * mo, _sqrt(ap, PRECISE), PRECISE)
            eps = mo
        elif PRED == 1:
            x0 = mo
            eps = _div(x - _sqrt(ap, PRECISE) * x0, _sqrt(bp, PRECISE), PRECISE)
        else:
            x0 = _sqrt(ap, PRECISE) * x - _sqrt(bp, PRECISE) * mo
            eps = _sqrt(ap, PRECISE) * mo + _sqrt(bp, PRECISE) * x
        if X0_ONLY:
            _write(x0_ptr, b64 * M + jw, x0, wmask, Q)
        else:
            x0 = _clip(x0, s_ptr, b64, clip_range, CLIP, PRECISE)
            if WRITE_X0:
                _write(x0_ptr, b64 * M + jw, x0.to(x0_ptr.dtype.element_ty), wmask, Q)
            variance = _div(1.0 - app, bp, PRECISE) * (1.0 - _div(ap, app, PRECISE))
            std = eta * _sqrt(variance, PRECISE)
            if USE_CLIPPED:
                eps = _div(x - _sqrt(ap, PRECISE) * x0, _sqrt(bp, PRECISE), PRECISE)
            out = _sqrt(app, PRECISE) * x0 + _sqrt(1.0 - app - std * std, PRECISE) * eps
            if NOISE != 0:
                z = _noise_tile(z_ptr, b64, i, c, zs0, zs1, zs2, zs3, d2, d3, j0, FLAT, mask, jw, wmask, sd,
                                off + (b64 * nblk + blk) * Q + i, NOISE, Q, RNG, ROUNDS)
                out = out + std * z
            _write(out_ptr, b64 * M + jw, out.to(out_ptr.dtype.element_ty), wmask, Q)


@dataclass
class _Layout:
    """Shape (n, M, d2, d3) shared by the operands and their 4 strides each; FLAT when every
    operand's elements of one sample are contiguous."""

    n: int
    M: int
    d2: int
    d3: int
    strides: list[tuple[int, int, int, int]]
    flat: bool


def _layout(shape: torch.Size, tensors: list[torch.Tensor | None]) -> tuple[_Layout, list[torch.Tensor | None]]:
    """Collapse the dims after the batch dim to at most 3 groups for all operands together (a dim
    joins the group before it where every operand's strides allow it); operands that would still
    need more than 3 are copied to contiguous memory."""
    n = shape[0]
    M = math.prod(shape[1:])
    dims = [d for d in range(1, len(shape)) if shape[d] != 1]
    groups: list[list[int]] = []
    for d in dims:
        if groups and all(x.stride(groups[-1][-1]) == x.stride(d) * shape[d] for x in tensors if x is not None):
            groups[-1].append(d)
        else:
            groups.append([d])
    out = list(tensors)
    if len(groups) > 3:
        out = [None if x is None else x.contiguous() for x in tensors]
        groups = [dims]
    sizes = [1] * (3 - len(groups)) + [math.prod(shape[d] for d in g) for g in groups]
    contiguous = (sizes[1] * sizes[2], sizes[2], 1)
    strides: list[tuple[int, int, int, int]] = []
    for x in out:
        if x is None:
            strides.append((0, 0, 0, 0))
            continue
        own = [x.stride(g[-1]) for g in groups]
        inner = list(contiguous[: 3 - len(own)]) + own
        strides.append((x.stride(0), inner[0], inner[1], inner[2]))
    flat = all(s[1:] == contiguous for s, x in zip(strides, out) if x is not None)
    return _Layout(n, M, sizes[1], sizes[2], strides, flat), out


def _precise(out: torch.Tensor) -> bool:
    """Correctly rounded square roots and divisions for fp32 / fp64 results; half-precision results keep
    Triton's faster approximations, whose error their own rounding hides."""
    return out.dtype not in (torch.float16, torch.bfloat16)


def _grid(lay: _Layout) -> tuple[int, int]:
    return (max(1, cdiv(lay.M, NOISE_BLOCK)), max(1, min(lay.n, _MAX_GRID_Y)))


def _rng_mode() -> int:
    return 0 if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else RNG_MODE_GPU


def _iters(lay: _Layout) -> int:
    """Samples per program: 1 unless n exceeds the grid's second extent (a compile-time loop count:
    Triton's interpreter cannot run loops with runtime bounds under NumPy 2.4)."""
    return cdiv(lay.n, _grid(lay)[1])


class _Noise:
    """Which noise the kernel uses and the arguments that carry it."""

    def __init__(self, sample: torch.Tensor, noise: torch.Tensor | None, seed: int | None, offset: int,
                 rng_state: torch.Tensor | None, needed: bool) -> None:
        self.tensor = noise
        self.seed = 0
        self.offset = 0
        self.state = rng_state
        if not needed:
            self.mode = _NOISE_NONE
        elif noise is not None:
            self.mode = _NOISE_TENSOR
        elif rng_state is not None:
            self.mode = _NOISE_PHILOX_STATE
        else:
            self.mode = _NOISE_PHILOX
            self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
            self.offset = offset
        self.dummy = sample


def _prep(sample: torch.Tensor, t: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    tt = t.contiguous()
    pt = (tt - 1 if prev is None else prev.to(torch.int64)).contiguous()
    return tt, pt


def _check_table(schedule: Schedule) -> None:
    if schedule.num_train_timesteps >= 2**31:
        raise ValueError(f"num_train_timesteps={schedule.num_train_timesteps}: at most 2**31 - 1")


def q_sample_triton(
    x0: torch.Tensor,
    t: Any,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    return_noise: bool = False,
) -> Any:
    """Fused forward noising x_t = sqrt(a_hat) x0 + sqrt(1 - a_hat) eps; eps passed in or Philox (returned)."""
    a = check_step_args(x0, t, x0, schedule, noise, seed=seed, offset=offset, rng_state=rng_state)
    _check_table(schedule)
    nz = _Noise(x0, noise, seed, offset, rng_state, True)
    lay, (xx, zz) = _layout(x0.shape, [x0, noise])
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    write_noise = return_noise and noise is None
    zout = torch.empty_like(out) if write_noise else out
    if x0.numel():
        fast(_q_sample_kernel)[_grid(lay)](
            out, xx, zz if zz is not None else xx, zout, a.t.contiguous(), schedule.alphas_cumprod,
            nz.state if nz.state is not None else a.t,
            lay.n, lay.M, lay.d2, lay.d3, schedule.num_train_timesteps, _grid(lay)[1],
            *lay.strides[0], *lay.strides[1], nz.seed, nz.offset,
            NOISE=nz.mode, WRITE_NOISE=write_noise, FLAT=lay.flat, Q=NOISE_QUARTER,
            ITERS=_iters(lay), RNG=_rng_mode(), ROUNDS=philox.PHILOX_ROUNDS, PRECISE=_precise(out),
            num_warps=NUM_WARPS)
    if not return_noise:
        return out
    return out, (zout if write_noise else noise.to(x0.dtype) if noise is not None else zout)


def ddpm_seed_step_triton(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's reverse update in one pass (CFG lerp and Philox noise fused)."""
    a = check_step_args(model_output, t, sample, schedule, noise, model_output_uncond=model_output_uncond,
                        guidance_scale=guidance_scale, seed=seed, offset=offset, rng_state=rng_state)
    _check_table(schedule)
    nz = _Noise(sample, noise, seed, offset, rng_state, True)
    lay, (xx, mo, unc, zz) = _layout(sample.shape, [sample, model_output, model_output_uncond, noise])
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    if sample.numel():
        assert xx is not None and mo is not None
        fast(_seed_step_kernel)[_grid(lay)](
            out, xx, mo, unc if unc is not None else xx, zz if zz is not None else xx, a.t.contiguous(),
            schedule.alphas, schedule.alphas_cumprod, schedule.betas, nz.state if nz.state is not None else a.t,
            lay.n, lay.M, lay.d2, lay.d3, schedule.num_train_timesteps, _grid(lay)[1],
            *lay.strides[0], *lay.strides[1], *lay.strides[2], *lay.strides[3],
            float(guidance_scale), nz.seed, nz.offset,
            NOISE=nz.mode, HAS_UNCOND=unc is not None, FLAT=lay.flat, Q=NOISE_QUARTER,
            ITERS=_iters(lay), RNG=_rng_mode(), ROUNDS=philox.PHILOX_ROUNDS, PRECISE=_precise(out),
            num_warps=NUM_WARPS)
    return out


def _launch_with_x0(launch: Any, pred_original_out: torch.Tensor | None, sample: torch.Tensor,
                    s: torch.Tensor | None) -> None:
    """The step, writing x0 into ``pred_original_out`` (through a contiguous buffer when it is strided)."""
    if pred_original_out is None:
        launch(None, False, s)
        return
    if pred_original_out.shape != sample.shape or pred_original_out.device != sample.device:
        raise ValueError(f"pred_original_out must be shaped like sample {tuple(sample.shape)} on {sample.device}")
    buf = pred_original_out if pred_original_out.is_contiguous() else torch.empty_like(sample)
    launch(buf, False, s)
    if buf is not pred_original_out:
        pred_original_out.copy_(buf)


def _threshold_pass(launch: Any, sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    x0 = torch.empty(sample.shape, dtype=torch.float32, device=sample.device)
    launch(x0, True)
    return threshold_scale(x0, ratio, max_value).to(torch.float32).contiguous()


def ddpm_step_triton(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    prev_t: Any = None,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    pred_original_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' DDPMScheduler.step in one pass (two with dynamic thresholding).

    ``pred_original_out``: a tensor shaped like sample that receives the (clipped) x0.
    """
    from modelkernels.pyimpl.diffusion.steps import _check_options

    _check_options(prediction_type, variance_type, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
    learned = variance_type in ("learned", "learned_range")
    channels = 2 * sample.shape[1] if learned and sample.dim() >= 2 else None
    a = check_step_args(model_output, t, sample, schedule, noise, prev_t=prev_t,
                        model_output_uncond=model_output_uncond, guidance_scale=guidance_scale, seed=seed,
                        offset=offset, rng_state=rng_state, output_channels=channels)
    if learned and model_output.shape == sample.shape:
        raise ValueError(f"variance_type={variance_type!r} needs the predicted variance: model_output must have "
                         f"{channels} channels (sample has {sample.shape[1]}), got {model_output.shape[1]}")
    pv: torch.Tensor | None = None
    if learned:
        if model_output_uncond is not None:
            raise ValueError(f"model_output_uncond with variance_type={variance_type!r}: guidance of a learned "
                             "variance is not defined here; guide the first half of the channels yourself")
        model_output, pv = torch.split(model_output, sample.shape[1], dim=1)
    _check_table(schedule)
    nz = _Noise(sample, noise, seed, offset, rng_state, True)
    tt, pt = _prep(sample, a.t, a.prev_t)
    lay, (xx, mo, unc, pvv, zz) = _layout(sample.shape, [sample, model_output, model_output_uncond, pv, noise])
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    if not sample.numel():
        return out
    assert xx is not None and mo is not None
    clip = 2 if thresholding else 1 if clip_sample else 0

    def launch(x0_buf: torch.Tensor | None, x0_only: bool, s: torch.Tensor | None = None) -> None:
        fast(_ddpm_kernel)[_grid(lay)](
            out, x0_buf if x0_buf is not None else out, xx, mo, unc if unc is not None else xx,
            pvv if pvv is not None else xx, zz if zz is not None else xx, tt, pt, schedule.alphas_cumprod,
            s if s is not None else schedule.alphas_cumprod, nz.state if nz.state is not None else tt,
            lay.n, lay.M, lay.d2, lay.d3, schedule.num_train_timesteps, _grid(lay)[1],
            *lay.strides[0], *lay.strides[1], *lay.strides[2], *lay.strides[3], *lay.strides[4],
            float(guidance_scale), float(clip_sample_range), nz.seed, nz.offset,
            NOISE=nz.mode, HAS_UNCOND=unc is not None, PRED=PREDICTION_TYPES.index(prediction_type),
            VAR=VARIANCE_TYPES.index(variance_type), CLIP=clip, X0_ONLY=x0_only,
            WRITE_X0=x0_buf is not None and not x0_only, FLAT=lay.flat, Q=NOISE_QUARTER,
            ITERS=_iters(lay), RNG=_rng_mode(), ROUNDS=philox.PHILOX_ROUNDS, PRECISE=_precise(out),
            num_warps=NUM_WARPS)

    s = _threshold_pass(launch, sample, dynamic_thresholding_ratio, sample_max_value) if thresholding else None
    _launch_with_x0(launch, pred_original_out, sample, s)
    return out


def ddim_step_triton(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    prev_t: Any = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    final_alpha_cumprod: float = 1.0,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    pred_original_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' DDIMScheduler.step in one pass (two with dynamic thresholding); no noise read when eta = 0."""
    from modelkernels.pyimpl.diffusion.steps import _check_options, check_eta

    _check_options(prediction_type, None, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
    check_eta(eta)
    if not 0 < final_alpha_cumprod <= 1:
        raise ValueError(f"final_alpha_cumprod={final_alpha_cumprod!r}: must lie in (0, 1]")
    a = check_step_args(model_output, t, sample, schedule, noise, prev_t=prev_t,
                        model_output_uncond=model_output_uncond, guidance_scale=guidance_scale, seed=seed,
                        offset=offset, rng_state=rng_state)
    _check_table(schedule)
    nz = _Noise(sample, noise, seed, offset, rng_state, eta > 0)
    tt, pt = _prep(sample, a.t, a.prev_t)
    lay, (xx, mo, unc, zz) = _layout(sample.shape, [sample, model_output, model_output_uncond,
                                                    noise if nz.mode == _NOISE_TENSOR else None])
    out = torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
    if not sample.numel():
        return out
    assert xx is not None and mo is not None
    clip = 2 if thresholding else 1 if clip_sample else 0

    def launch(x0_buf: torch.Tensor | None, x0_only: bool, s: torch.Tensor | None = None) -> None:
        fast(_ddim_kernel)[_grid(lay)](
            out, x0_buf if x0_buf is not None else out, xx, mo, unc if unc is not None else xx,
            zz if zz is not None else xx, tt, pt, schedule.alphas_cumprod,
            s if s is not None else schedule.alphas_cumprod, nz.state if nz.state is not None else tt,
            lay.n, lay.M, lay.d2, lay.d3, schedule.num_train_timesteps, _grid(lay)[1],
            *lay.strides[0], *lay.strides[1], *lay.strides[2], *lay.strides[3],
            float(guidance_scale), float(clip_sample_range), float(final_alpha_cumprod), float(eta),
            nz.seed, nz.offset,
            NOISE=nz.mode, HAS_UNCOND=unc is not None, PRED=PREDICTION_TYPES.index(prediction_type), CLIP=clip,
            USE_CLIPPED=bool(use_clipped_model_output), X0_ONLY=x0_only,
            WRITE_X0=x0_buf is not None and not x0_only, FLAT=lay.flat, Q=NOISE_QUARTER,
            ITERS=_iters(lay), RNG=_rng_mode(), ROUNDS=philox.PHILOX_ROUNDS, PRECISE=_precise(out),
            num_warps=NUM_WARPS)

    s = _threshold_pass(launch, sample, dynamic_thresholding_ratio, sample_max_value) if thresholding else None
    _launch_with_x0(launch, pred_original_out, sample, s)
    return out
