"""Flash attention in Triton: forward and backward without an N x N matrix in memory.

Forward (Dao et al., "FlashAttention", 2022; FlashAttention-2, 2023): each program owns
BLOCK_M query rows and streams BLOCK_N keys at a time, keeping the running row maximum ``m``,
the running sum ``l`` and the unnormalised output ``acc`` (online softmax, Milakov & Gimelshein
2018). It writes O and, when a backward pass will follow, the row log-sum-exp (base 2). Work: 4·B·H·Nq·Nk·D
FLOPs (two matmuls); memory: q, k, v read once per query block, O written once.

Backward (FlashAttention-2, algorithm 2): P is recomputed from the saved log-sum-exp;
``delta = rowsum(dO ∘ O)``; ``dV = Pᵀ dO``, ``dS = P ∘ (dO Vᵀ − delta)``, ``dK = scale · dSᵀ Q``,
``dQ = scale · dS K``. One program per key block accumulates dK and dV; dQ comes either from a
second pass, one program per query block (deterministic, no atomics), or from fp32 atomic adds
in the key-block pass (one pass fewer, summation order varies from run to run).

Every tensor is addressed through its four strides, so (B, H, N, D) and (B, N, H, D) views and
the q/k/v slices of one fused projection run without a copy. A second forward kernel reads q, k,
v and writes O through 4-D tensor descriptors (TMA on Hopper) where the strides allow it. Scores are scaled by
``scale · log2(e)`` and exponentiated with ``exp2``. A row that sees no key stores
``lse = +inf`` so the backward pass gives it P = 0.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _online_softmax(s, acc, l_i, m_i, offs_m, offs_n, kpm_base, n_k, qk_scale, stride_mn,
                    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BOUNDARY: tl.constexpr):
    """Mask the raw scores ``s`` (BLOCK_M x BLOCK_N), move the running maximum, and return
    ``p = exp2(s·qk_scale − m)``, the rescaled accumulator, the new running sum and maximum."""
    if BOUNDARY:
        s = tl.where(offs_n[None, :] < n_k, s, float("-inf"))
    if CAUSAL:
        s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
    if HAS_MASK:
        pad = tl.load(kpm_base + offs_n * stride_mn, mask=offs_n < n_k, other=1)
        s = tl.where(pad[None, :] != 0, float("-inf"), s)
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    if CAUSAL or HAS_MASK:
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
    p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, acc * alpha[:, None], l_i, m_new


@triton.jit
def _key_range(start_m, n_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """(hi, full_end): the keys query block ``start_m`` sees end at hi (causal: its last row); the
    whole key blocks end at full_end, and a partial block follows when full_end < hi."""
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, (start_m + 1) * BLOCK_M)
    return hi, (hi // BLOCK_N) * BLOCK_N


@triton.jit
def _normalize(acc, l_i, m_i):
    """(O, base-2 log-sum-exp) from the streamed state; a row that saw no key gives O = 0, lse = +inf."""
    seen = l_i > 0.0
    return acc / tl.where(seen, l_i, 1.0)[:, None], tl.where(seen, m_i + tl.log2(l_i), float("inf"))


@triton.jit
def _fwd_key_block(acc, l_i, m_i, q, k_base, v_base, kpm_base, start_n, offs_m, offs_d, n_k, qk_scale,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
                   BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BOUNDARY: tl.constexpr,
                   PRECISION: tl.constexpr, K_ROWS: tl.constexpr):
    """One key block through pointers. ``K_ROWS``: load K as [BLOCK_N, D] (rows along memory) and
    transpose in the dot; else load Kᵀ [D, BLOCK_N] through transposed pointers."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if K_ROWS:
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        if BOUNDARY:
            kt = tl.trans(tl.load(k_ptrs, mask=offs_n[:, None] < n_k, other=0.0))
        else:
            kt = tl.trans(tl.load(k_ptrs))
    else:
        k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        if BOUNDARY:
            kt = tl.load(k_ptrs, mask=offs_n[None, :] < n_k, other=0.0)
        else:
            kt = tl.load(k_ptrs)
    s = tl.dot(q, kt, input_precision=PRECISION)
    p, acc, l_i, m_new = _online_softmax(s, acc, l_i, m_i, offs_m, offs_n, kpm_base, n_k, qk_scale, stride_mn,
                                         CAUSAL, HAS_MASK, BOUNDARY)
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if BOUNDARY:
        v = tl.load(v_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def attention_fwd_kernel(
    Q, K, V, Out, LSE, KPM,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_mb, stride_mn,
    H, N_Q, N_K, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, K_ROWS: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    kpm_base = KPM + b * stride_mb
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi, full_end = _key_range(start_m, N_K, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in range(0, full_end, BLOCK_N):
        acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, q, k_base, v_base, kpm_base, start_n, offs_m, offs_d, N_K,
                                       qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
                                       BLOCK_N, CAUSAL, HAS_MASK, False, PRECISION, K_ROWS)
    if full_end < hi:
        acc, l_i, m_i = _fwd_key_block(acc, l_i, m_i, q, k_base, v_base, kpm_base, full_end, offs_m, offs_d, N_K,
                                       qk_scale, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
                                       BLOCK_N, CAUSAL, HAS_MASK, True, PRECISION, K_ROWS)
    o, lse = _normalize(acc, l_i, m_i)
    row_ok = offs_m < N_Q
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)


@triton.jit
def _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, kpm_base, b, h, start_n, offs_m, n_k, qk_scale, stride_mn,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                   BOUNDARY: tl.constexpr, PRECISION: tl.constexpr):
    """One key block through tensor descriptors (TMA): rows past N_K arrive as zeros."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = k_desc.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    p, acc, l_i, m_new = _online_softmax(s, acc, l_i, m_i, offs_m, offs_n, kpm_base, n_k, qk_scale, stride_mn,
                                         CAUSAL, HAS_MASK, BOUNDARY)
    v = v_desc.load([b, h, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def attention_fwd_tma_kernel(
    q_desc, k_desc, v_desc, o_desc, LSE, KPM,
    stride_mb, stride_mn,
    H, N_Q, N_K, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, WARP_SPEC: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    """The forward pass with q, k, v and O addressed through 4-D (B, H, N, D) tensor descriptors
    (Hopper's TMA copy engine on the GPU): block loads without per-element address arithmetic.
    Rows past N read as zeros and are not stored, so no row masks on q or O."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    row0 = start_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    q = q_desc.load([b, h, row0, 0]).reshape(BLOCK_M, HEAD_DIM)
    kpm_base = KPM + b.to(tl.int64) * stride_mb
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi, full_end = _key_range(start_m, N_K, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in tl.range(0, full_end, BLOCK_N, warp_specialize=WARP_SPEC):
        acc, l_i, m_i = _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, kpm_base, b, h, start_n, offs_m, N_K,
                                       qk_scale, stride_mn, HEAD_DIM, BLOCK_N, CAUSAL, HAS_MASK, False, PRECISION)
    if full_end < hi:
        acc, l_i, m_i = _fwd_tma_block(acc, l_i, m_i, q, k_desc, v_desc, kpm_base, b, h, full_end, offs_m, N_K,
                                       qk_scale, stride_mn, HEAD_DIM, BLOCK_N, CAUSAL, HAS_MASK, True, PRECISION)
    o, lse = _normalize(acc, l_i, m_i)
    o_desc.store([b, h, row0, 0], o.to(o_desc.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
    if STORE_LSE:
        tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)


@triton.jit
def attention_bwd_delta_kernel(
    Out, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_gb, stride_gh, stride_gn, stride_gd,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[b, h, i] = sum_d Out[b, h, i, d] · dO[b, h, i, d], in fp32."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    o = tl.load(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd,
                 mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, delta, mask=row_ok)


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, DQ, LSE, DELTA, KPM,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mb, stride_mn,
    H, N_Q, N_K, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_N: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dK and dV for one key block, streaming every query block; with ATOMIC_DQ also dQ (fp32, atomic).

    DQ, when used, is a contiguous fp32 (B, H, N_Q, HEAD_DIM) buffer of zeros.
    """
    start_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < N_K
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=key_ok[:, None], other=0.0)
    if HAS_MASK:
        pad = tl.load(KPM + b * stride_mb + offs_n * stride_mn, mask=key_ok, other=1)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_gb + h * stride_gh
    row_base = bh.to(tl.int64) * N_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = (start_n * BLOCK_N // BLOCK_M) * BLOCK_M  # earlier query rows cannot see these keys
    for start_m in range(lo, N_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None],
                    other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd, mask=row_ok[:, None],
                     other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        pt = tl.exp2(st * qk_scale - lse[None, :])
        if CAUSAL:
            pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
        if HAS_MASK:
            pt = tl.where(pad[:, None] != 0, 0.0, pt)
        if not EVEN_N:
            pt = tl.where(key_ok[:, None], pt, 0.0)  # keys past N_K: k = 0 gives exp2(-lse), maybe inf
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(dst.to(k.dtype)), k, input_precision=PRECISION) * sm_scale
            dq_ptrs = DQ + (row_base + offs_m[:, None]) * HEAD_DIM + offs_d[None, :]
            tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None], sem="relaxed")
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, KPM,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_mb, stride_mn,
    H, N_Q, N_K, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ for one query block, streaming the key blocks it sees: a fixed summation order."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd,
                 mask=row_ok[:, None], other=0.0)
    row_base = bh.to(tl.int64) * N_Q
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < N_K
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=key_ok[:, None],
                    other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=key_ok[:, None],
                    other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        p = tl.exp2(s * qk_scale - lse[:, None])
        if CAUSAL:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        if HAS_MASK:
            pad = tl.load(KPM + b * stride_mb + offs_n * stride_mn, mask=key_ok, other=1)
            p = tl.where(pad[None, :] != 0, 0.0, p)
        if not EVEN_N:
            p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
