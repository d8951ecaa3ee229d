"""GroupNorm fused with what follows it in the seed's ``DoubleConv`` / ``Down`` / ``Up``, in Triton.

Computes ``pyimpl.fused.group_norm_act``::

    xhat = (x - mean_g) * rsqrt(var_g + eps)          statistics in fp32, per (n, group)
    out  = act(xhat * weight[c] + bias[c] + residual) + emb[n, c]     act: exact GELU, SiLU or none

Forward, two launches. (1) ``_stats_kernel``: each (n, g) row of L = C/G * H*W values is cut into
chunks spread over the whole GPU (``plan_chunks``: about ``per_sm`` programs per SM; the seed's
GroupNorm(1, C) at batch 16 has 16 rows: one program per row, as PyTorch's RowwiseMoments kernel runs
it, leaves most SMs idle and was a third of the seed's bf16 step). Each program reads its chunk once,
a tile a step with the next tile's load issued first, accumulating sums of ``x - shift`` and their
squares in fp32 per lane, with the chunk's first value as the shift so that a large mean does not
cancel; it writes the chunk's mean and M2 (optionally the row's last program, by an arrival counter,
merges the row). The rows' last chunks, up to ``l2_keep_mb``, are loaded evict_last. (2)
``_apply_kernel``: each program merges the row's chunk statistics with Chan, Golub & LeVeque's pairwise
formula (M2 = sum M2_i + n_i (mean_i - mean)^2), then normalizes its chunk and applies weight, bias,
residual, GELU and emb, writing the output once; it walks the chunks and the tiles inside each in the
reverse of the statistics pass's order, so that what that pass read last, still in L2, is read first,
with x and the output evict_first. The GELU is y * Phi(y) with Phi from Abramowitz & Stegun 7.1.26 (erf
|error| <= 1.5e-7; on a GPU its reciprocal and exponential are one approximate PTX instruction each);
the SiLU (diffusers' ResnetBlock2D) is y * sigmoid(y). The activation is a constexpr code (``ACT_CODES``).
Bytes: x read twice (the second read partly from L2, wholly when x fits), residual read once, output
written once; the statistics are a few KB.

Forward, one persistent launch (``_persistent_kernel``, opt-in: ``ForwardConfig(path='persistent')`` or
'auto'). The grid is as many programs as can be resident at once (SMs x programs per SM from the compiled
kernel's registers and shared memory), rounded down to whole rows; in each wave a program holds one tile of
one row in registers from load to store: it publishes the tile's (mean, M2), counts its arrival on the
row's counter in global memory (atomic, release), spins on that counter (atomic, acquire) until the row's
tiles have all arrived, merges them (Chan), normalizes the tile it holds and writes it; the next wave's tile
is loaded before the wait. DRAM traffic is one read and one write, but each wave waits on its slowest tile:
on an H100 it measured no faster than the two launches (docs/notes/fused-gpu.md, version 3), so the default
path is 'two_pass'. The interpreter runs programs one after another (a program waiting on another would
hang), so there the persistent kernel runs only when forced and each row is one tile (``plan_persistent``
with one resident program); a row with more tiles than resident programs is refused (``plan_persistent``
returns None; 'auto' then takes the two launches, 'persistent' raises). The row counters are zeroed again
by each row's last departing program; eager calls reuse one counter buffer per (device, stream), a call
captured in a CUDA graph gets its own (a memset node in the graph).

Layouts: contiguous NCHW (any number of groups; a group is a contiguous block) and channels-last
for GroupNorm(1, C) (the sample is a contiguous block; the seed's attention blocks hand the next
level channels-last tensors). The apply pass loads a channel's weight once per tile where a tile
lies in one NCHW channel plane, and once per program for channels-last [rows x C] tiles (C a power
of two dividing the tile). Other strides are copied to NCHW first, and the output is then NCHW;
otherwise it keeps x's layout.

Backward, two launches over [channels x positions] tiles: per-(n, c) sums of dz * xhat, dz and dy
(dz is the gradient at the activation's input), from which the weight, bias and emb gradients and the
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

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.registry import triton_interpret
from modelkernels.kernels.triton_launch import (
    Bound,
    cdiv,
    device_and_stream,
    fast,
    keep_plan,
    next_power_of_2,
    sm_count,
)
from modelkernels.pyimpl.fused import check_group_norm_args

Tensor = torch.Tensor
# (out, mean, rstd, x as read, residual as read, channels_last)
ForwardResult = tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, bool]
# (dx, dweight, dbias, dresidual, demb)
BackwardResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


@triton.jit
def _chunk_sums(base, n, shift, TILE: tl.constexpr, NT: tl.constexpr, EVEN: tl.constexpr, POLICY: tl.constexpr):
    """Per-lane sums of x - shift and their squares over one chunk (n values from base), TILE values a step,
    the next tile's load issued before the current one is accumulated; POLICY: the loads' L2 eviction."""
    offs = tl.arange(0, TILE)
    if EVEN:
        nv = tl.load(base + offs, eviction_policy=POLICY)
    else:
        nv = tl.load(base + offs, mask=offs < n, other=0.0, eviction_policy=POLICY)
    acc = tl.zeros([TILE], dtype=tl.float32)
    acc2 = tl.zeros([TILE], dtype=tl.float32)
    for k in range(NT):
        v = nv
        o = (k + 1) * TILE + offs
        if EVEN:
            nv = tl.load(base + o, mask=k + 1 < NT, other=0.0, eviction_policy=POLICY)
            d = v.to(tl.float32) - shift
        else:
            nv = tl.load(base + o, mask=o < n, other=0.0, eviction_policy=POLICY)
            d = tl.where(o - TILE < n, v.to(tl.float32) - shift, 0.0)
        acc += d
        acc2 += d * d
    return tl.sum(acc, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def _stats_kernel(X, MEAN_P, M2_P, CNT, MEAN, RSTD, L, NCHUNK, KEEP, eps,
                  CHUNK: tl.constexpr, TILE: tl.constexpr, EVEN: tl.constexpr, MERGE: tl.constexpr,
                  NCHUNK_P2: tl.constexpr):
    # One chunk of one row (two tiles in flight a program). EVEN: every chunk is whole (no masks). Chunks
    # from KEEP on are loaded evict_last: the apply pass reads them first, from L2. MERGE: the row's last
    # program (by an arrival counter) merges the row's chunks and writes mean / rstd.
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    start = chunk * CHUNK
    base = X + row.to(tl.int64) * L + start
    n = tl.minimum(CHUNK, L - start)
    shift = tl.load(base).to(tl.float32)
    if chunk >= KEEP:
        s, s2 = _chunk_sums(base, n, shift, TILE, CHUNK // TILE, EVEN, "evict_last")
    else:
        s, s2 = _chunk_sums(base, n, shift, TILE, CHUNK // TILE, EVEN, "")
    mean_d = s / n.to(tl.float32)
    tl.store(MEAN_P + row * NCHUNK + chunk, shift + mean_d)
    tl.store(M2_P + row * NCHUNK + chunk, tl.maximum(s2 - s * mean_d, 0.0))
    if MERGE:
        tl.debug_barrier()  # every thread's stores before the counter's release
        if tl.atomic_add(CNT + row, 1, sem="acq_rel") == NCHUNK - 1:
            mean, rstd = _merge_row(MEAN_P, M2_P, row, L, NCHUNK, eps, CHUNK, NCHUNK_P2)
            tl.store(MEAN + row, mean)
            tl.store(RSTD + row, rstd)
            tl.atomic_xchg(CNT + row, 0, sem="relaxed")  # zero again for the next call


@triton.jit
def _merge_row(MEAN_P, M2_P, row, L, NCHUNK, eps, CHUNK: tl.constexpr, NCHUNK_P2: tl.constexpr):
    """Chan, Golub & LeVeque's merge of a row's chunk statistics: (mean, rstd). Read past L1: other
    programs (other SMs) wrote them."""
    k = tl.arange(0, NCHUNK_P2)
    km = k < NCHUNK
    cmean = tl.load(MEAN_P + row * NCHUNK + k, mask=km, other=0.0, cache_modifier=".cg")
    cm2 = tl.load(M2_P + row * NCHUNK + k, mask=km, other=0.0, cache_modifier=".cg")
    cnt = tl.where(km, tl.minimum(CHUNK, L - k * CHUNK), 0).to(tl.float32)
    lf = L * 1.0  # L may arrive as a constexpr (Triton specializes 1)
    mean = tl.sum(cnt * cmean, axis=0) / lf
    dm = tl.where(km, cmean - mean, 0.0)
    m2 = tl.sum(cm2 + cnt * dm * dm, axis=0)
    return mean, 1.0 / tl.sqrt(m2 / lf + eps)


@triton.jit
def _rcp(x, ASM: tl.constexpr):
    if ASM:  # one MUFU.RCP, no range fix-ups (the argument is >= 1 here)
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.math.fdiv(1.0, x)  # approximate division (2 ulp): the formula's error dominates


@triton.jit
def _exp2(x, ASM: tl.constexpr):
    if ASM:  # one MUFU.EX2; results below 2**-126 flush to zero
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _gelu(y, FAST_ERF: tl.constexpr, ASM: tl.constexpr):
    """Exact GELU y * Phi(y). FAST_ERF: Phi(-|y|) = erfc(|y| / sqrt 2) / 2 by Abramowitz & Stegun 7.1.26
    (|error of erf| <= 1.5e-7) with the coefficients halved, then Phi(y) = 1 - Phi(-|y|) for y >= 0;
    ASM: the reciprocal and the exponential as single approximate instructions (GPU only)."""
    if FAST_ERF:
        a = tl.abs(y) * 0.8493218002880191  # sqrt(log2(e) / 2): a * a = y^2 / 2 * log2(e)
        t = _rcp(1.0 + 0.2727374809 * a, ASM)  # 1 + p |y| / sqrt 2 with p = 0.3275911
        poly = t * (0.127414796 + t * (-0.142248368 + t * (0.7107068705 + t * (-0.7265760135 + t * 0.5307027145))))
        h = poly * _exp2(-(a * a), ASM)
        return y * tl.where(y >= 0, 1.0 - h, h)
    else:
        return 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))


@triton.jit
def _act(y, ACT: tl.constexpr, FAST_ERF: tl.constexpr, ASM: tl.constexpr):
    """The activation by code (``ACT_CODES``): 0 none, 1 exact GELU, 2 SiLU y * sigmoid(y)."""
    if ACT == 1:
        y = _gelu(y, FAST_ERF, ASM)
    elif ACT == 2:
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def _finish(y, e, R, r_off, m, HAS_R: tl.constexpr, HAS_E: tl.constexpr, ACT: tl.constexpr,
            FAST_ERF: tl.constexpr):
    """act(y + residual) + e: everything after the affine map (e: the embedding values)."""
    if HAS_R:
        y = y + tl.load(R + r_off, mask=m, other=0.0).to(tl.float32)
    y = _act(y, ACT, FAST_ERF, False)
    if HAS_E:
        y = y + e
    return y


ACT_CODES = {"none": 0, "gelu": 1, "silu": 2}  # the kernels' ACT constexpr
MODE_NCHW, MODE_NCHW_PLANE, MODE_NHWC_TILE, MODE_NHWC, MODE_NCHW_PLANES = 0, 1, 2, 3, 4


@triton.jit
def _apply_kernel(X, Y, W, B, R, E, MEAN_P, M2_P, MEAN, RSTD,
                  L, NCHUNK, G, eps,
                  CHUNK: tl.constexpr, HW: tl.constexpr, CPG: tl.constexpr, C: tl.constexpr,
                  MODE: tl.constexpr,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, HAS_E: tl.constexpr,
                  ACT: tl.constexpr, FAST_ERF: tl.constexpr, ASM: tl.constexpr, MERGED: tl.constexpr,
                  EVEN: tl.constexpr, NCHUNK_P2: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: NCHW, channel per element; 1: NCHW with every tile inside one channel plane (scalar
    # weights per tile); 2: channels-last with C | BLOCK ([BLOCK / C, C] tiles, weights loaded once
    # per program); 3: channels-last, channel per element.
    # Chunks and the tiles inside a chunk are walked in the reverse of the statistics pass's order, so
    # that the values it read last, still in L2, are read first; x and the output are marked first to
    # evict from L2. The next tile's loads are issued before the current tile is computed.
    row = tl.program_id(0)
    chunk = NCHUNK - 1 - tl.program_id(1)
    if MERGED:  # the statistics pass merged the row
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
    else:  # every program merges the row's chunk statistics (a few hundred floats at most)
        mean, rstd = _merge_row(MEAN_P, M2_P, row, L, NCHUNK, eps, CHUNK, NCHUNK_P2)
        if chunk == 0:
            tl.store(MEAN + row, mean)
            tl.store(RSTD + row, rstd)
    n = row // G
    g = row % G
    start = chunk * CHUNK
    off = row.to(tl.int64) * L + start
    Xr = X + off
    Yr = Y + off
    Rr = R + off
    left = L - start
    NT: tl.constexpr = CHUNK // BLOCK
    if MODE == 2:
        cols = tl.arange(0, C)
        loc = tl.arange(0, BLOCK // C)[:, None] * C + cols[None, :]
        a2 = tl.full([C], 1.0, tl.float32) * rstd
        if HAS_W:
            a2 = a2 * tl.load(W + cols).to(tl.float32)
        b2 = tl.zeros([C], tl.float32)
        if HAS_B:
            b2 = tl.load(B + cols).to(tl.float32)
        e2 = tl.zeros([C], tl.float32)
        if HAS_E:
            e2 = tl.load(E + n * C + cols).to(tl.float32)
        a2 = a2[None, :]
        b2 = b2[None, :]
        e2 = e2[None, :]
    else:
        loc = tl.arange(0, BLOCK)
    o = (NT - 1) * BLOCK + loc
    if EVEN:
        xn = tl.load(Xr + o, eviction_policy="evict_first")
    else:
        xn = tl.load(Xr + o, mask=o < left, other=0.0, eviction_policy="evict_first")
    rn = xn
    if HAS_R:
        if EVEN:
            rn = tl.load(Rr + o, eviction_policy="evict_first")
        else:
            rn = tl.load(Rr + o, mask=o < left, other=0.0, eviction_policy="evict_first")
    for k in range(NT):
        t = NT - 1 - k
        o = t * BLOCK + loc
        x = xn
        r = rn
        if EVEN:
            m = o < L  # only the shape: no values are masked
            xn = tl.load(Xr + o - BLOCK, mask=k + 1 < NT, other=0.0, eviction_policy="evict_first")
            if HAS_R:
                rn = tl.load(Rr + o - BLOCK, mask=k + 1 < NT, other=0.0, eviction_policy="evict_first")
        else:
            m = o < left
            pm = (o - BLOCK < left) & (k + 1 < NT)
            xn = tl.load(Xr + o - BLOCK, mask=pm, other=0.0, eviction_policy="evict_first")
            if HAS_R:
                rn = tl.load(Rr + o - BLOCK, mask=pm, other=0.0, eviction_policy="evict_first")
        if MODE == 2:
            y = (x.to(tl.float32) - mean) * a2 + b2
            e = e2
        elif MODE == 1:
            c = g * CPG + (start + t * BLOCK) // HW
            a = rstd
            if HAS_W:
                a = a * tl.load(W + c).to(tl.float32)
            y = (x.to(tl.float32) - mean) * a
            if HAS_B:
                y = y + tl.load(B + c).to(tl.float32)
            e = 0.0
            if HAS_E:
                e = tl.load(E + n * C + c).to(tl.float32)
        else:
            if MODE == 3:
                c = (start + o) % C
            else:
                c = g * CPG + (start + o) // HW
            a = tl.full([BLOCK], 1.0, tl.float32) * rstd
            if HAS_W:
                a = a * tl.load(W + c, mask=m, other=1.0).to(tl.float32)
            y = (x.to(tl.float32) - mean) * a
            if HAS_B:
                y = y + tl.load(B + c, mask=m, other=0.0).to(tl.float32)
            e = 0.0
            if HAS_E:
                e = tl.load(E + n * C + c, mask=m, other=0.0).to(tl.float32)
        if HAS_R:
            y = y + r.to(tl.float32)
        y = _act(y, ACT, FAST_ERF, ASM)
        if HAS_E:
            y = y + e
        if EVEN:
            tl.store(Yr + o, y.to(Y.dtype.element_ty), eviction_policy="evict_first")
        else:
            tl.store(Yr + o, y.to(Y.dtype.element_ty), mask=m, eviction_policy="evict_first")


@triton.jit
def _publish(x, m, cnt, MEAN_P, M2_P, CNT, row, tile, T):
    """Write one tile's (mean, M2) (two-pass over the registers, fp32), then count its arrival on
    the row's counter (release: the writes are visible to whoever sees the count)."""
    xf = tl.where(m, x.to(tl.float32), 0.0)
    mean = tl.sum(xf) / cnt
    d = tl.where(m, xf - mean, 0.0)
    tl.store(MEAN_P + row * T + tile, mean)
    tl.store(M2_P + row * T + tile, tl.sum(d * d))
    tl.debug_barrier()  # every thread's stores before the counter's release
    tl.atomic_add(CNT + row, 1, sem="release")


@triton.jit(do_not_specialize=["NROWS", "T", "RPW", "NWAVES", "G"])
def _persistent_kernel(X, Y, W, B, R, E, MEAN_P, M2_P, CNT, MEAN, RSTD,
                       L, NROWS, T, RPW, NWAVES, G, eps,
                       BLOCK: tl.constexpr, HW: tl.constexpr, CPG: tl.constexpr, C: tl.constexpr,
                       MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                       HAS_E: tl.constexpr, ACT: tl.constexpr, FAST_ERF: tl.constexpr, T_P2: tl.constexpr,
                       EARLY_PUBLISH: tl.constexpr):
    # Program p owns tile p % T of row (w * RPW + p // T) in wave w; its tile stays in registers from
    # the load to the store. Pipelined: the next wave's tile is loaded before waiting on this one's row,
    # and its statistics are published after this tile is written (EARLY_PUBLISH: before it is normalized,
    # so that the next row's programs wait less, at the cost of waiting here for the next tile's load).
    # MODE as in _apply_kernel, plus 4: NCHW tiles of whole channel planes ([BLOCK / HW, HW], weights per plane).
    pid = tl.program_id(0)
    tile = pid % T
    slot = pid // T
    start = tile * BLOCK
    if MODE == 2:
        loc = tl.arange(0, BLOCK // C)[:, None] * C + tl.arange(0, C)[None, :]
    elif MODE == 4:
        loc = tl.arange(0, BLOCK // HW)[:, None] * HW + tl.arange(0, HW)[None, :]
    else:
        loc = tl.arange(0, BLOCK)
    o = start + loc
    inb = o < L
    cnt = tl.minimum(BLOCK, L - start).to(tl.float32)
    lf = L * 1.0
    k = tl.arange(0, T_P2)
    km = k < T
    kcnt = tl.where(km, tl.minimum(BLOCK, L - k * BLOCK), 0).to(tl.float32)
    x = tl.load(X + slot.to(tl.int64) * L + o, mask=inb & (slot < NROWS), other=0.0)
    if slot < NROWS:
        _publish(x, inb, cnt, MEAN_P, M2_P, CNT, slot, tile, T)
    row = slot
    while row < NWAVES * RPW:  # waves (a while loop: the interpreter cannot range over a runtime bound)
        nxt = row + RPW
        xn = tl.load(X + nxt.to(tl.int64) * L + o, mask=inb & (nxt < NROWS), other=0.0)
        if row < NROWS:
            seen = tl.atomic_add(CNT + row, 0, sem="acquire")
            while seen < T:
                seen = tl.atomic_add(CNT + row, 0, sem="acquire")
            # Chan, Golub & LeVeque's merge of the row's T tile statistics (read past L1: other SMs wrote them)
            cmean = tl.load(MEAN_P + row * T + k, mask=km, other=0.0, cache_modifier=".cg")
            cm2 = tl.load(M2_P + row * T + k, mask=km, other=0.0, cache_modifier=".cg")
            mean = tl.sum(kcnt * cmean, axis=0) / lf
            dm = tl.where(km, cmean - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(cm2 + kcnt * dm * dm, axis=0) / lf + eps)
            # departure: the row's last program (count 2T - 1 before its add) zeroes the counter for the next call
            if tl.atomic_add(CNT + row, 1, sem="relaxed") == 2 * T - 1:
                tl.atomic_xchg(CNT + row, 0, sem="relaxed")
            if tile == 0:
                tl.store(MEAN + row, mean)
                tl.store(RSTD + row, rstd)
            if EARLY_PUBLISH:
                if nxt < NROWS:
                    _publish(xn, inb, cnt, MEAN_P, M2_P, CNT, nxt, tile, T)
            n = row // G
            g = row % G
            base = row.to(tl.int64) * L
            if MODE == 2:
                cols = tl.arange(0, C)
                a = tl.full([C], 1.0, tl.float32) * rstd
                if HAS_W:
                    a = a * tl.load(W + cols).to(tl.float32)
                sh = tl.zeros([C], tl.float32)
                if HAS_B:
                    sh = tl.load(B + cols).to(tl.float32)
                e = tl.zeros([C], tl.float32)
                if HAS_E:
                    e = tl.load(E + n * C + cols).to(tl.float32)
                y = (x.to(tl.float32) - mean) * a[None, :] + sh[None, :]
                y = _finish(y, e[None, :], R, base + o, inb, HAS_R, HAS_E, ACT, FAST_ERF)
            elif MODE == 4:
                c = g * CPG + start // HW + tl.arange(0, BLOCK // HW)
                cm = c < (g + 1) * CPG
                a = tl.full([BLOCK // HW], 1.0, tl.float32) * rstd
                if HAS_W:
                    a = a * tl.load(W + c, mask=cm, other=1.0).to(tl.float32)
                sh = tl.zeros([BLOCK // HW], tl.float32)
                if HAS_B:
                    sh = tl.load(B + c, mask=cm, other=0.0).to(tl.float32)
                e = tl.zeros([BLOCK // HW], tl.float32)
                if HAS_E:
                    e = tl.load(E + n * C + c, mask=cm, other=0.0).to(tl.float32)
                y = (x.to(tl.float32) - mean) * a[:, None] + sh[:, None]
                y = _finish(y, e[:, None], R, base + o, inb, HAS_R, HAS_E, ACT, FAST_ERF)
            elif MODE == 1:
                c = g * CPG + start // HW
                a = rstd
                if HAS_W:
                    a = a * tl.load(W + c).to(tl.float32)
                sh = 0.0
                if HAS_B:
                    sh = tl.load(B + c).to(tl.float32)
                e = 0.0
                if HAS_E:
                    e = tl.load(E + n * C + c).to(tl.float32)
                y = _finish((x.to(tl.float32) - mean) * a + sh, e, R, base + o, inb, HAS_R, HAS_E, ACT, FAST_ERF)
            else:
                if MODE == 3:
                    c = o % C
                else:
                    c = g * CPG + o // HW
                a = tl.full([BLOCK], 1.0, tl.float32) * rstd
                if HAS_W:
                    a = a * tl.load(W + c, mask=inb, other=1.0).to(tl.float32)
                sh = 0.0
                if HAS_B:
                    sh = tl.load(B + c, mask=inb, other=0.0).to(tl.float32)
                e = 0.0
                if HAS_E:
                    e = tl.load(E + n * C + c, mask=inb, other=0.0).to(tl.float32)
                y = _finish((x.to(tl.float32) - mean) * a + sh, e, R, base + o, inb, HAS_R, HAS_E, ACT, FAST_ERF)
            tl.store(Y + base + o, y.to(Y.dtype.element_ty), mask=inb)
        if not EARLY_PUBLISH:
            if nxt < NROWS:
                _publish(xn, inb, cnt, MEAN_P, M2_P, CNT, nxt, tile, T)
        x = xn
        row = nxt


@triton.jit
def _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                  CPG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                  ACT: tl.constexpr):
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
    if ACT != 0:
        z = xhat * w
        if HAS_B:
            z = z + tl.load(B + c, mask=cm, other=0.0).to(tl.float32)
        if HAS_R:
            z = z + tl.load(R + off, mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:  # d/dz z Phi(z) = Phi(z) + z phi(z)
            cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
            pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
            dz = dy * (cdf + z * pdf)
        else:  # d/dz z sigmoid(z) = s (1 + z (1 - s))
            sg = tl.sigmoid(z)
            dz = dy * (sg * (1.0 + z * (1.0 - sg)))
    dz = tl.where(mask, dz, 0.0)
    xhat = tl.where(mask, xhat, 0.0)
    return off, dy, dz, xhat, w, rstd


@triton.jit
def _bwd_sums_kernel(X, DY, W, B, R, MEAN, RSTD, PA, PB, PE,
                     C, HW, sN, sC, sHW, G,
                     CPG: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                     HAS_E: tl.constexpr, ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    pb = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (c < C) & (p < HW)
    _, dy, dz, xhat, _, _ = _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                                          CPG, HAS_W, HAS_B, HAS_R, ACT)
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
                   WRITE_DR: tl.constexpr, ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    pb = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (c < C) & (p < HW)
    off, _, dz, xhat, w, rstd = _recompute_dz(X, DY, W, B, R, MEAN, RSTD, n, c, p, mask, sN, sC, sHW, G,
                                              CPG, HAS_W, HAS_B, HAS_R, ACT)
    grp = n * G + c // CPG
    cm = c < C
    s1 = tl.load(S1 + grp, mask=cm, other=0.0)
    s2 = tl.load(S2 + grp, mask=cm, other=0.0)
    dx = rstd * (dz * w - (s2 + xhat * s1) * inv_len)
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)
    if WRITE_DR:
        tl.store(DR + off, dz.to(DR.dtype.element_ty), mask=mask)


def _target_programs(device: torch.device) -> int:
    """Programs at one per SM (the two-pass grid is ``ForwardConfig.per_sm`` times this)."""
    if device.type == "cuda":
        return sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # the interpreter runs programs one after another: few, large ones


def plan_chunks(rows: int, length: int, tile: int, target: int) -> tuple[int, int]:
    """(chunk, nchunk): each row of ``length`` values cut into ``nchunk`` chunks of ``chunk`` values (a
    multiple of ``tile``; the last chunk may be shorter), about ``target`` programs in all: the power of
    two nearest target / rows chunks a row (equal chunks where the row length is a power of two), at
    most one tile a chunk and 1024 chunks."""
    if rows < 1 or length < 1 or tile < 1 or target < 1:
        raise ValueError(f"rows={rows}, length={length}, tile={tile}, target={target}: all must be >= 1")
    tiles = -(-length // tile)
    want = target / rows
    nchunk = 1 << max(0, round(math.log2(want))) if want > 1 else 1
    nchunk = min(nchunk, tiles, 1024)
    chunk = -(-tiles // nchunk) * tile
    return chunk, -(-length // chunk)


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
        bc = min(next_power_of_2(c), 256)
        return bc, max(1, min(next_power_of_2(hw), budget // bc))
    bp = min(next_power_of_2(hw), 1024)
    return max(1, min(next_power_of_2(c), budget // bp)), bp


@dataclass(frozen=True)
class ForwardConfig:
    """Launch parameters of the forward kernels.

    ``path``: 'auto' (the persistent kernel where it can run, else the two launches), 'persistent'
    (raise where it cannot run) or 'two_pass'. Two-pass: ``block`` values per apply step and ``warps``
    per apply program, ``stats_block`` / ``stats_warps`` the same for the statistics pass, ``per_sm``
    programs per SM (each row is cut into chunks for about that many programs in all, ``plan_chunks``),
    ``merge`` (the statistics pass's last program of a row merges the row, by an arrival counter, and
    the apply programs read two numbers; otherwise every apply program merges its row's chunks),
    ``l2_keep_mb`` (the statistics pass loads the last chunks of the rows, up to this many MiB, with
    evict_last, so that they are still in L2 when the apply pass reads them first).
    Persistent: ``persistent_block`` elements per tile (held in registers), ``persistent_warps``,
    ``ctas_per_sm`` (at most this many programs per SM; 0: as many as are resident), ``early_publish``
    (publish the next wave's tile statistics before normalizing the current tile) and ``cooperative``
    (a cooperative launch: the driver refuses a grid it cannot keep resident). ``fast_erf``: the A&S
    erf (|error| <= 1.5e-7) instead of libdevice's in the GELU; ``asm``: its reciprocal and exponential
    as single approximate instructions in the two-pass apply (on a GPU; the interpreter has none)."""

    block: int = 2048
    warps: int = 8
    fast_erf: bool = True
    path: str = "auto"
    persistent_block: int = 8192
    persistent_warps: int = 8
    ctas_per_sm: int = 0
    early_publish: bool = False
    cooperative: bool = False
    stats_block: int = 4096
    stats_warps: int = 8
    per_sm: int = 8
    merge: bool = False
    asm: bool = True
    l2_keep_mb: float = 0.0


PATHS = ("auto", "persistent", "two_pass")
# CUDA: the two launches (version 4's sweep on an H100: statistics 4096-value tiles / 8 warps, apply
# 2048 / 8, 16 programs per SM, no merge in the statistics pass, 24 MiB kept in L2, A&S erf in PTX), since
# the persistent kernel measured no faster on an H100 (version 3); its parameters are that version's best
# (4096-value tiles, 4 warps) for whoever selects it (docs/notes/fused-gpu.md)
FORWARD_CONFIG = ForwardConfig(path="two_pass", persistent_block=4096, persistent_warps=4, per_sm=16, l2_keep_mb=24.0)
# the interpreter runs programs one after another: few, large ones, and the two launches
CPU_FORWARD_CONFIG = ForwardConfig(block=1024, warps=4, persistent_block=4096, persistent_warps=4, stats_block=1024,
                                   stats_warps=4, per_sm=1)


def _mode(channels_last: bool, c: int, hw: int, block: int) -> int:
    if channels_last:
        return MODE_NHWC_TILE if c & (c - 1) == 0 and block % c == 0 else MODE_NHWC
    return MODE_NCHW_PLANE if hw % block == 0 else MODE_NCHW


def _persistent_mode(channels_last: bool, c: int, hw: int, block: int) -> int:
    """As ``_mode``, plus [planes x HW] tiles (per-plane weights) where an NCHW tile holds whole planes."""
    if not channels_last and hw & (hw - 1) == 0 and block % hw == 0 and block > hw:
        return MODE_NCHW_PLANES
    return _mode(channels_last, c, hw, block)


def select_path(requested: str, device_type: str, interpreting: bool) -> str:
    """The forward path before the persistent kernel's own check: 'two_pass' on the interpreter and
    CPU tensors unless 'persistent' is asked for, 'persistent' on CUDA for 'auto'."""
    if requested not in PATHS:
        raise ValueError(f"path={requested!r}: expected one of {', '.join(PATHS)}")
    if requested == "auto":
        return "persistent" if device_type == "cuda" and not interpreting else "two_pass"
    return requested


@dataclass(frozen=True)
class PersistentPlan:
    """Work of the persistent kernel: each row is cut into ``tiles`` tiles; ``rows_per_wave`` rows are
    in flight at a time (``grid`` = rows_per_wave * tiles programs, one tile each per wave); ``waves``
    waves cover all rows."""

    tiles: int
    rows_per_wave: int
    grid: int
    waves: int


def plan_persistent(rows: int, length: int, block: int, resident: int) -> PersistentPlan | None:
    """The persistent grid for ``rows`` rows of ``length`` values in ``block``-value tiles when at most
    ``resident`` programs can run at once; None when a row's tiles cannot all be resident together.

    Why it cannot deadlock: the grid (rows_per_wave * tiles <= resident) fits on the GPU as a whole
    (SM slots held by other kernels free up without waiting on this one), and rows are aligned to waves
    (row r is in wave r // rows_per_wave, its tile t in program (r % rows_per_wave) * tiles + t), so a
    program waits in wave w only on the tiles of its own row, which the other programs of that row
    publish in wave w: at the start for wave 0, otherwise once they have passed their own wait in wave
    w-1 (after writing that tile, or before with early_publish). By induction on w every row of wave w
    completes once every row of wave w-1 has. A row with more tiles than resident programs would wait
    on a program that never starts: refused (the two-pass path takes it)."""
    if rows < 1 or length < 1 or block < 1 or resident < 1:
        raise ValueError(f"rows={rows}, length={length}, block={block}, resident={resident}: all must be >= 1")
    tiles = -(-length // block)
    if tiles > resident:
        return None
    per_wave = min(rows, resident // tiles)
    return PersistentPlan(tiles, per_wave, per_wave * tiles, -(-rows // per_wave))


def resident_per_sm(n_regs: int, num_warps: int, shared: int, regs_per_sm: int = 65536,
                    threads_per_sm: int = 2048, smem_per_sm: int = 233472, max_blocks: int = 32) -> int:
    """Programs of one kernel that fit on an SM at once (the CUDA occupancy rule, rounded down):
    registers are given per warp in units of 256, from four sub-partitions of regs_per_sm / 4 each;
    each program also reserves 1 KiB of shared memory beside its own."""
    if n_regs < 1 or num_warps < 1:
        raise ValueError(f"n_regs={n_regs}, num_warps={num_warps}: both must be >= 1")
    regs_per_warp = -(-n_regs * 32 // 256) * 256
    warps_by_regs = 4 * ((regs_per_sm // 4) // regs_per_warp)
    by_smem = smem_per_sm // (shared + 1024)
    return max(0, min(warps_by_regs // num_warps, threads_per_sm // (32 * num_warps), by_smem, max_blocks))


_RESIDENT: dict[tuple[Any, ...], int] = {}
# (n_regs, shared bytes, programs per SM) of each compiled persistent kernel, for the GPU script's report
KERNEL_INFO: dict[tuple[Any, ...], tuple[int, int, int]] = {}
_COUNTERS: dict[tuple[int, int], torch.Tensor] = {}


def _counters(device: torch.device, rows: int) -> torch.Tensor:
    """Zeroed int32 arrival counters, one per row. The kernel leaves them zero again, so eager calls
    reuse one buffer per (device, stream) (calls on one stream run in order); a call captured in a
    CUDA graph gets its own zeroed buffer (a memset node in the graph), so graphs replayed in any
    order or on other streams never share counters."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.zeros(rows, dtype=torch.int32, device=device)
    index = device.index or 0
    key = (index, device_and_stream()[1](index))  # the raw stream handle, as the launch reads it (no Stream object)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < rows:
        buf = torch.zeros(max(rows, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def _resident(device: torch.device, key: tuple[Any, ...], compile_kernel: Any, cfg: ForwardConfig) -> int:
    """How many programs of the persistent kernel can be resident at once: one on the interpreter
    (it runs programs one after another), else SMs x resident_per_sm from the compiled kernel's
    registers and shared memory, at most cfg.ctas_per_sm per SM."""
    if device.type != "cuda":
        return 1
    full = (device.index, cfg.ctas_per_sm, *key)
    if full not in _RESIDENT:
        compiled = compile_kernel()
        compiled._init_handles()
        props = torch.cuda.get_device_properties(device)
        per_sm = resident_per_sm(compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
                                 getattr(props, "regs_per_multiprocessor", 65536),
                                 getattr(props, "max_threads_per_multi_processor", 2048),
                                 getattr(props, "shared_memory_per_multiprocessor", 233472))
        if cfg.ctas_per_sm:
            per_sm = min(per_sm, cfg.ctas_per_sm)
        KERNEL_INFO[full] = (compiled.n_regs, compiled.metadata.shared, per_sm)
        _RESIDENT[full] = per_sm * props.multi_processor_count
    return _RESIDENT[full]


@dataclass
class _Problem:
    """One forward call's tensors and sizes, in the layout the kernels read."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    residual: torch.Tensor | None
    emb: torch.Tensor | None
    num_groups: int
    eps: float
    act: int
    channels_last: bool

    @property
    def rows(self) -> int:
        return self.x.shape[0] * self.num_groups

    @property
    def hw(self) -> int:
        return math.prod(self.x.shape[2:])

    @property
    def length(self) -> int:
        return (self.x.shape[1] // self.num_groups) * self.hw

    def pointers(self) -> tuple[torch.Tensor, ...]:
        """x, y, weight, bias, residual, emb (x standing in for absent ones)."""
        return (self.x, self.y, *(t if t is not None else self.x
                                  for t in (self.weight, self.bias, self.residual, self.emb)))

    def flags(self) -> dict[str, Any]:
        return dict(HAS_W=self.weight is not None, HAS_B=self.bias is not None, HAS_R=self.residual is not None,
                    HAS_E=self.emb is not None, ACT=self.act)


@dataclass(frozen=True)
class TwoPassPlan:
    """The two-pass forward's launches for one problem shape (see ``two_pass_plan``): the partial-statistics
    buffer's row length and each kernel bound to its grid (rows, chunks), its integers (the group length,
    the chunk count, and how many leading chunks are loaded without evict_last or the group count), its
    constexprs and launch options."""

    cfg: ForwardConfig
    partial_cols: int
    stats: Bound
    apply: Bound


_PLANS: dict[tuple[Any, ...], TwoPassPlan] = {}


def two_pass_plan(p: _Problem, cfg: ForwardConfig) -> TwoPassPlan:
    """The launch parameters of ``two_pass_launches``, decided once per (config, shape, layout, groups,
    element size, which optional inputs are present, activation, device, interpreter) and kept: every
    value below is a function of those alone, so a repeated call skips the chunk planning and the
    constexpr dictionaries (tens of µs of host time per call on the lent GPUs' hosts)."""
    x = p.x
    key = (id(cfg), x.shape, p.channels_last, p.num_groups, x.element_size(), x.device, p.weight is not None,
           p.bias is not None, p.residual is not None, p.emb is not None, p.act, triton_interpret())
    plan = _PLANS.get(key)
    if plan is not None and plan.cfg is cfg:  # the plan holds cfg, so its id is not reused meanwhile
        return plan
    c, hw, rows, length = x.shape[1], p.hw, p.rows, p.length
    p2 = next_power_of_2(length)
    block = min(cfg.block, p2)
    if not p.channels_last and hw % block and hw & (hw - 1) == 0 and hw >= 256:
        block = hw  # tiles of one channel plane: scalar weights per tile (MODE_NCHW_PLANE)
    stats_block = min(cfg.stats_block, p2)
    chunk, nchunk = plan_chunks(rows, length, max(block, stats_block), _target_programs(x.device) * cfg.per_sm)
    even = length % chunk == 0
    nchunk_p2 = next_power_of_2(nchunk)
    asm = cfg.asm and x.device.type == "cuda" and not triton_interpret()
    # the last chunks of every row, up to cfg.l2_keep_mb in all, stay in L2 for the apply pass (evict_last)
    keep = nchunk - min(nchunk, int(cfg.l2_keep_mb * 2**20) // (rows * chunk * x.element_size()))
    grid = (rows, nchunk)
    plan = TwoPassPlan(
        cfg, -(-rows * nchunk // 4) * 4,
        fast(_stats_kernel).prepare(CHUNK=chunk, TILE=stats_block, EVEN=even, MERGE=cfg.merge,
                                    NCHUNK_P2=nchunk_p2, num_warps=cfg.stats_warps).bind(grid, (length, nchunk, keep)),
        fast(_apply_kernel).prepare(CHUNK=chunk, HW=hw, CPG=c // p.num_groups, C=c,
                                    MODE=_mode(p.channels_last, c, hw, block), FAST_ERF=cfg.fast_erf, ASM=asm,
                                    MERGED=cfg.merge, EVEN=even, NCHUNK_P2=nchunk_p2, BLOCK=block,
                                    num_warps=cfg.warps, **p.flags()).bind(grid, (length, nchunk, p.num_groups)))
    return keep_plan(_PLANS, key, plan)


def two_pass_launches(p: _Problem, cfg: ForwardConfig) -> tuple[Any, Any]:
    """The two launches of the two-pass forward as callables (statistics, apply), so that they can be
    timed apart; the apply reads what the statistics wrote. Both walk the same chunks (``plan_chunks``,
    through the kept ``two_pass_plan``); with ``cfg.merge`` the statistics pass also writes the rows'
    mean and rstd."""
    plan = two_pass_plan(p, cfg)
    # per-chunk (mean, M2), each its own allocation (aligned; two `empty` calls cost less host time than one
    # split by `unbind`: 1.5 against 2.5 µs on the CI CPU)
    part_mean = torch.empty(plan.partial_cols, device=p.x.device, dtype=torch.float32)
    part_m2 = torch.empty(plan.partial_cols, device=p.x.device, dtype=torch.float32)
    cnt = _counters(p.x.device, p.rows) if cfg.merge else p.mean  # (unused without merge)

    def stats() -> None:
        plan.stats((p.x, part_mean, part_m2, cnt, p.mean, p.rstd), (p.eps,))

    def apply() -> None:
        plan.apply((*p.pointers(), part_mean, part_m2, p.mean, p.rstd), (p.eps,))

    return stats, apply


def persistent_launch(p: _Problem, cfg: ForwardConfig) -> tuple[PersistentPlan | None, Any]:
    """The persistent forward's plan and launch (None, None where a row cannot be resident at once)."""
    c, hw, rows, length = p.x.shape[1], p.hw, p.rows, p.length
    block = min(cfg.persistent_block, next_power_of_2(length))
    mode = _persistent_mode(p.channels_last, c, hw, block)
    tiles = -(-length // block)
    ptrs = p.pointers()
    # per-tile (mean, M2); both rows 16-byte aligned, as the compiled kernel assumes
    mean_p = torch.empty(2, -(-rows * tiles // 4) * 4, device=p.x.device, dtype=torch.float32)
    consts: dict[str, Any] = dict(BLOCK=block, HW=hw, CPG=c // p.num_groups, C=c, MODE=mode, FAST_ERF=cfg.fast_erf,
                                  T_P2=next_power_of_2(tiles), EARLY_PUBLISH=cfg.early_publish,
                                  num_warps=cfg.persistent_warps,
                                  launch_cooperative_grid=cfg.cooperative, **p.flags())

    def args(cnt: torch.Tensor, rpw: int, waves: int) -> tuple[Any, ...]:
        return (*ptrs, mean_p[0], mean_p[1], cnt, p.mean, p.rstd, length, rows, tiles, rpw, waves, p.num_groups,
                p.eps)

    key = (tuple(sorted(consts.items())), tuple(str(t.dtype) for t in ptrs),
           tuple(t.data_ptr() % 16 == 0 for t in ptrs), length % 16 == 0, length == 1)

    def compile_kernel() -> Any:  # compiled for an int32 counter buffer, never launched
        return _persistent_kernel.warmup(*args(torch.empty(1, device=p.x.device, dtype=torch.int32), 1, 1),
                                         grid=(1,), **consts)

    resident = _resident(p.x.device, key, compile_kernel, cfg)
    plan = plan_persistent(rows, length, block, resident)
    if plan is None:
        return None, None

    def launch() -> None:
        cnt = _counters(p.x.device, rows)
        fast(_persistent_kernel)[(plan.grid,)](*args(cnt, plan.rows_per_wave, plan.waves), **consts)

    return plan, launch


def _problem(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
             eps: float, residual: torch.Tensor | None, emb: torch.Tensor | None, act: int) -> _Problem:
    x, channels_last = _layout(x, num_groups)
    if residual is not None:
        residual = _like(residual, channels_last)
    rows = x.shape[0] * num_groups
    return _Problem(x, torch.empty_like(x), torch.empty(rows, device=x.device, dtype=torch.float32),
                    torch.empty(rows, device=x.device, dtype=torch.float32), weight, bias, residual,
                    emb.contiguous() if emb is not None else None, num_groups, float(eps), act, channels_last)


def group_norm_act_forward(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float, residual: torch.Tensor | None,
                           emb: torch.Tensor | None, act: int) -> ForwardResult:
    """Launch the forward kernels; returns (out, mean, rstd, x, residual, channels_last) where x and
    residual are in the layout the kernels read (saved for the backward).

    Path: ``select_path`` on the config's ``path`` (CUDA: persistent, interpreter/CPU: two-pass); the
    persistent kernel then runs where ``plan_persistent`` finds a grid, and the two launches elsewhere
    (or a ValueError when the persistent path was asked for explicitly)."""
    p = _problem(x, num_groups, weight, bias, eps, residual, emb, act)
    if p.x.numel() == 0:
        p.mean.fill_(float("nan"))
        p.rstd.fill_(float("nan"))
        return p.y, p.mean, p.rstd, p.x, p.residual, p.channels_last
    cfg = FORWARD_CONFIG if p.x.device.type == "cuda" else CPU_FORWARD_CONFIG
    if select_path(cfg.path, p.x.device.type, triton_interpret()) == "persistent":
        launch = persistent_launch(p, cfg)[1]
        if launch is not None:
            launch()
            return p.y, p.mean, p.rstd, p.x, p.residual, p.channels_last
        if cfg.path == "persistent":
            raise ValueError(f"x.shape={tuple(p.x.shape)}, num_groups={num_groups}: a group of {p.length} values "
                             f"needs more tiles of {cfg.persistent_block} than programs can be resident at once; "
                             "use path='auto' or 'two_pass'")
    stats, apply = two_pass_launches(p, cfg)
    stats()
    apply()
    return p.y, p.mean, p.rstd, p.x, p.residual, p.channels_last


def group_norm_act_backward(dy: torch.Tensor, x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                            bias: torch.Tensor | None, residual: torch.Tensor | None, has_emb: bool,
                            mean: torch.Tensor, rstd: torch.Tensor, act: int, channels_last: bool,
                            need_residual_grad: bool) -> BackwardResult:
    """(dx, dweight, dbias, dresidual, demb); None where the input is absent or not needed."""
    n, c = x.shape[0], x.shape[1]
    hw = math.prod(x.shape[2:])
    dy = _like(dy, channels_last)
    dx = torch.empty_like(x)
    dr = torch.empty_like(x) if residual is not None and need_residual_grad else None
    bc, bp = _bwd_tiles(c, hw, channels_last, x.device)
    grid = (n, cdiv(c, bc), cdiv(hw, bp))
    if x.numel() == 0:
        zeros = torch.zeros(n, c, device=x.device, dtype=torch.float32)
        a = b_sum = e_sum = zeros
    else:
        pa = torch.empty(n, grid[2], c, device=x.device, dtype=torch.float32)
        pb, pe = torch.empty_like(pa), torch.empty_like(pa) if has_emb else pa
        sn, sc, sp = _strides(n, c, hw, channels_last)
        dummy = x
        common: dict[str, Any] = dict(CPG=c // num_groups, HAS_W=weight is not None, HAS_B=bias is not None,
                                      HAS_R=residual is not None, ACT=act, BLOCK_C=bc, BLOCK_P=bp, num_warps=4)
        wt = weight if weight is not None else dummy
        bs = bias if bias is not None else dummy
        rs = residual if residual is not None else dummy
        fast(_bwd_sums_kernel)[grid](x, dy, wt, bs, rs, mean, rstd, pa, pb, pe, c, hw, sn, sc, sp, num_groups,
                               HAS_E=has_emb, **common)
        a, b_sum, e_sum = pa.sum(1), pb.sum(1), pe.sum(1)
        wf = weight.float() if weight is not None else torch.ones(c, device=x.device)
        s1 = (a * wf).view(n, num_groups, -1).sum(-1).contiguous()
        s2 = (b_sum * wf).view(n, num_groups, -1).sum(-1).contiguous()
        fast(_bwd_dx_kernel)[grid](x, dy, wt, bs, rs, mean, rstd, s1, s2, dx, dr if dr is not None else dummy,
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
                act: int) -> torch.Tensor:
        y, mean, rstd, xl, rl, channels_last = group_norm_act_forward(x, num_groups, weight, bias, eps, residual,
                                                                      emb, act)
        ctx.save_for_backward(xl, weight, bias, rl, mean, rstd)
        ctx.meta = (num_groups, act, channels_last, emb is not None, x.dtype,
                    None if emb is None else emb.dtype, None if residual is None else residual.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, residual, mean, rstd = ctx.saved_tensors
        num_groups, act, channels_last, has_emb, x_dtype, e_dtype, r_dtype = ctx.meta
        dx, dw, db, dr, de = group_norm_act_backward(dy, x, num_groups, weight, bias, residual, has_emb, mean,
                                                     rstd, act, channels_last, ctx.needs_input_grad[3])
        return (dx.to(x_dtype), dw, db, None if dr is None else dr.to(r_dtype),
                None if de is None else de.to(e_dtype), None, None, None)


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5, *, residual: torch.Tensor | None = None,
                   emb: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """Triton ``group_norm_act`` (see the module docstring); differentiable in every tensor argument."""
    check_group_norm_args(x, num_groups, weight, bias, eps, residual, emb, activation)
    return group_norm_act_unchecked(x, num_groups, weight, bias, eps, residual=residual, emb=emb,
                                    activation=activation)


def group_norm_act_unchecked(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, eps: float = 1e-5, *,
                             residual: torch.Tensor | None = None, emb: torch.Tensor | None = None,
                             activation: str = "none") -> torch.Tensor:
    """``group_norm_act`` on arguments that passed ``check_group_norm_args``."""
    if not needs_autograd(x, weight, bias, residual, emb):
        return group_norm_act_forward(x, num_groups, weight, bias, eps, residual, emb, ACT_CODES[activation])[0]
    out: torch.Tensor = GroupNormActFunction.apply(x, weight, bias, residual, emb, num_groups, eps,
                                                   ACT_CODES[activation])
    return out
