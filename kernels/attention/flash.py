"""Host side of the Triton flash attention: block-size table, launchers, autograd Function.

The kernels live in ``flash_triton.py``. Inputs are (B, H, N, D) *views* with any strides (a
(B, N, H, D) tensor is passed as ``x.transpose(1, 2)``); nothing is copied. float32 inputs use
TF32 tensor-core dots (Triton's default): 10-bit mantissa products with fp32 accumulation,
relative error near 3e-4 per score; see docs/attention.md for the tolerances this gives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from modelkernels.kernels.attention import flash_triton as kt
from modelkernels.kernels.registry import triton_interpret
from modelkernels.kernels.triton_launch import Bound, fast, keep_plan

LOG2E = 1.4426950408889634
FP32_PRECISION = "tf32"


class FlashConfig(NamedTuple):
    """Tile shape and launch shape of one kernel: BLOCK_M query rows x BLOCK_N keys.

    ``variant`` (forward only): "ptr" loads Kᵀ through transposed pointers, "krows" loads K rows
    and transposes in the dot, "tma" addresses q, k, v, O through 4-D tensor descriptors (the
    copy engine; needs last stride 1 and 16-byte aligned strides, else "ptr" runs), "tma_ws" adds
    Triton's warp specialisation of the key loop."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    variant: str = "ptr"


_INTERPRET = FlashConfig(16, 16, 1, 1)  # small tiles: the interpreter runs every block on the CPU


_FWD = FlashConfig(64, 64, 4, 3)
_FWD_TMA = FlashConfig(64, 64, 4, 3, "tma")
_FWD_F32 = FlashConfig(64, 64, 4, 2)
_FWD_F32_D128 = FlashConfig(64, 32, 4, 2)


def forward_config(head_dim: int, dtype: torch.dtype, n_k: int) -> FlashConfig:
    """Forward tiles. 64 x 64 tiles, 4 warps, 3 stages were the fastest pointer-load tile at every
    measured shape (H200 and H100, D 16..128, N 64..4096; docs/notes/attention-gpu.md). At D = 128
    loading q, k, v and storing O through tensor descriptors (TMA) measured ~4 % faster at N >= 1024
    (H100); below that the four descriptors' host cost (~11 µs a call) outweighs it. float32 tiles
    take twice the shared memory: fewer stages, and narrower key tiles at D = 128."""
    if dtype == torch.float32:
        return _FWD_F32_D128 if head_dim == 128 else _FWD_F32
    return _FWD_TMA if head_dim == 128 and n_k >= 1024 else _FWD


def use_atomic_dq(head_dim: int, n_q: int, deterministic: bool) -> bool:
    """The atomic dQ pass measured faster at D = 16 and at N <= 256 (one launch fewer; H200)."""
    return not deterministic and (head_dim == 16 or n_q <= 256)


def backward_config(head_dim: int, n_q: int, dtype: torch.dtype, atomic: bool) -> FlashConfig:
    """Backward tiles (dK/dV pass and dQ pass), the fastest of eight candidates on an H200."""
    if dtype == torch.float32:
        return FlashConfig(32, 32, 4, 2) if head_dim == 128 else FlashConfig(32, 64, 4, 2)
    if atomic:
        return FlashConfig(64, 32, 4, 2) if n_q <= 128 else FlashConfig(32, 128, 4, 2)
    if n_q <= 128 or (n_q <= 256 and head_dim <= 32):
        return FlashConfig(32, 32, 4, 2)
    if n_q <= 256:
        return FlashConfig(32, 64, 4, 2)
    return FlashConfig(64, 64, 4, 3) if head_dim in (16, 64) else FlashConfig(64, 64, 4, 2)


def smaller(cfg: FlashConfig) -> FlashConfig | None:
    """The next smaller tile when a launch runs out of shared memory: fewer stages, then halves."""
    if cfg.num_stages > 1:
        return cfg._replace(num_stages=cfg.num_stages - 1)
    if cfg.block_n > 16:
        return cfg._replace(block_n=cfg.block_n // 2, num_stages=2)
    if cfg.block_m > 16:
        return cfg._replace(block_m=cfg.block_m // 2, num_stages=2)
    return None


def launch(kernel: Any, key: tuple[Any, ...], cfg: FlashConfig, rows: int, programs: int, ptrs: tuple[Any, ...],
           ints: tuple[int, ...], floats: tuple[float, ...] = (), by_n: bool = False, **constexprs: Any) -> Bound:
    """Launch ``kernel`` through the library's launch layer (``triton_launch.CachedKernel.fitted``) on a
    (cdiv(rows, BLOCK_M), programs) grid (BLOCK_N when ``by_n``) with the arguments ``(*ptrs, *ints,
    *floats)`` and ``constexprs``; on ``OutOfResources`` it steps down to ``smaller`` tiles. A callable
    constexpr is evaluated on the tile finally used (``EVEN_N`` depends on BLOCK_N). ``key`` names the
    kernel's variant. Returns the launch bound to the tile used, its grid and ``ints``: the same launch
    for other tensors of the same shapes and strides."""
    names = kernel.arg_names

    def grid(c: FlashConfig) -> tuple[int, int]:
        return (rows + (c.block_n if by_n else c.block_m) - 1) // (c.block_n if by_n else c.block_m), programs

    def tile(c: FlashConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"num_warps": c.num_warps, "num_stages": c.num_stages}
        if "BLOCK_M" in names:
            out["BLOCK_M"] = c.block_m
        if "BLOCK_N" in names:
            out["BLOCK_N"] = c.block_n
        return out

    cached = fast(kernel)
    used = cached.fitted(cfg, grid, (*ptrs, *ints, *floats), tile, smaller, key, **constexprs)
    values = {name: v(used) if callable(v) else v for name, v in constexprs.items()}
    return cached.prepare(**values, **tile(used)).bind(grid(used), ints)


def interpreter_index_fix() -> None:
    """Let Triton's interpreter take run-time loop bounds under NumPy >= 2.4.

    The interpreter (Triton 3.6) holds kernel scalars as 1-element arrays and converts a
    ``range`` bound with ``int(array)``, which NumPy 2.4 refuses for arrays of one dimension.
    This wraps its tensor patching so ``__index__`` reads the single element instead. Idempotent;
    affects interpreted kernels only.
    """
    from triton.runtime import interpreter

    if getattr(interpreter, "_modelkernels_index_fix", False):
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor: Any, scope: Any) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._modelkernels_index_fix = True


def _mask_args(key_padding_mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if key_padding_mask is None:
        return like, 0, 0
    m = key_padding_mask.view(torch.uint8)
    return m, m.stride(0), m.stride(1)


def _precision(x: torch.Tensor) -> str:
    return FP32_PRECISION if x.dtype == torch.float32 else "ieee"


def tma_ready(*xs: torch.Tensor) -> bool:
    """Whether 4-D tensor descriptors can address these (B, H, N, D) views: last stride 1, the
    other strides and the base address multiples of 16 bytes (the copy engine's rules)."""
    for x in xs:
        size = x.element_size()
        s = x.stride()
        if s[3] != 1 or x.data_ptr() % 16 or (s[0] * size) % 16 or (s[1] * size) % 16 or (s[2] * size) % 16:
            return False
    return True


def _descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, rows, x.shape[3]])


class ForwardPlan(NamedTuple):
    """The forward launch kept per call signature (see ``flash_forward``): the launch bound to its tile,
    grid and integers (strides, sizes), and the shape O is allocated in."""

    launch: Bound
    out_shape: tuple[int, int, int, int]


_FORWARD_PLANS: dict[tuple[Any, ...], ForwardPlan] = {}


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                  causal: bool, scale: float, out_bnhd: bool, config: FlashConfig | None = None,
                  need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """O (q's dtype; stored (B, N, H, D) when ``out_bnhd``, returned as a (B, H, N, D) view) and the
    base-2 row log-sum-exp (B, H, Nq) fp32 that the backward pass needs (None unless ``need_lse``).

    The pointer-load launch is kept per call signature (shapes, strides, dtype, device, the mask's
    strides, the flags, the config): a repeated call allocates O and launches, with no tile choice,
    stride lists or constexpr dictionaries (the TMA variant builds its descriptors per call, unkept)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    mask_strides = None if key_padding_mask is None else key_padding_mask.stride()
    plan_key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, q.device, mask_strides, causal,
                out_bnhd, need_lse, config)
    plan = _FORWARD_PLANS.get(plan_key)
    if plan is not None and not triton_interpret():
        o = torch.empty(plan.out_shape, device=q.device, dtype=q.dtype)
        o = o.transpose(1, 2) if out_bnhd else o
        lse = torch.empty((b, h, n_q), device=q.device, dtype=torch.float32) if need_lse else None
        kpm = q if key_padding_mask is None else key_padding_mask.view(torch.uint8)
        plan.launch((q, k, v, o, o if lse is None else lse, kpm), (scale * LOG2E,))
        return o, lse
    interpret = triton_interpret()
    if interpret:
        interpreter_index_fix()
    cfg = config or (_INTERPRET if interpret else forward_config(d, q.dtype, n_k))
    if out_bnhd:
        o = torch.empty((b, n_q, h, d), device=q.device, dtype=q.dtype).transpose(1, 2)
    else:
        o = torch.empty((b, h, n_q, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((b, h, n_q), device=q.device, dtype=torch.float32) if need_lse else None
    kpm, smb, smn = _mask_args(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    lse_ptr = o if lse is None else lse
    if cfg.variant.startswith("tma") and tma_ready(q, k, v, o):  # descriptors are made per call: no plan
        launch(kt.attention_fwd_tma_kernel, ("fwd-tma", d, q.dtype, causal, has_mask, need_lse), cfg, n_q, b * h,
               (_descriptor(q, cfg.block_m), _descriptor(k, cfg.block_n), _descriptor(v, cfg.block_n),
                _descriptor(o, cfg.block_m), lse_ptr, kpm), (smb, smn, h, n_q, n_k), (scale * LOG2E,),
               HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, PRECISION=_precision(q),
               WARP_SPEC=cfg.variant == "tma_ws", STORE_LSE=need_lse)
        return o, lse
    bound = launch(kt.attention_fwd_kernel, ("fwd", d, q.dtype, causal, has_mask, need_lse), cfg, n_q, b * h,
                   (q, k, v, o, lse_ptr, kpm), (*q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, smn, h, n_q,
                                                n_k),
                   (scale * LOG2E,), HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, PRECISION=_precision(q),
                   K_ROWS=cfg.variant == "krows", STORE_LSE=need_lse)
    if not interpret:
        keep_plan(_FORWARD_PLANS, plan_key, ForwardPlan(bound, (b, n_q, h, d) if out_bnhd else (b, h, n_q, d)))
    return o, lse


def flash_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, key_padding_mask: torch.Tensor | None, causal: bool, scale: float,
                   deterministic: bool, config: FlashConfig | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv. dQ comes from its own pass (fixed order) when ``deterministic`` or where that pass
    is faster (``use_atomic_dq``), else from fp32 atomic adds in the dK/dV pass."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    atomic = use_atomic_dq(d, n_q, deterministic)
    interpret = triton_interpret()
    if interpret:
        interpreter_index_fix()
    cfg = config or (_INTERPRET if interpret else backward_config(d, n_q, q.dtype, atomic))
    delta = torch.empty((b, h, n_q), device=q.device, dtype=torch.float32)
    rows = _INTERPRET.block_m if interpret else 64
    launch(kt.attention_bwd_delta_kernel, ("delta", d, o.dtype, do.dtype), FlashConfig(rows, rows, 4, 1), n_q, b * h,
           (o, do, delta), (*o.stride(), *do.stride(), h, n_q), HEAD_DIM=d)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    kpm, smb, smn = _mask_args(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    dq32 = torch.zeros((b, h, n_q, d), device=q.device, dtype=torch.float32) if atomic else q
    floats = (scale * LOG2E, scale)
    launch(kt.attention_bwd_dkdv_kernel, ("dkdv", d, q.dtype, do.dtype, causal, has_mask, atomic), cfg, n_k, b * h,
           (q, k, v, do, dk, dv, dq32, lse, delta, kpm),
           (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(), smb, smn, h, n_q, n_k),
           floats, by_n=True, HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, EVEN_N=lambda c: n_k % c.block_n == 0,
           ATOMIC_DQ=atomic, PRECISION=_precision(q))
    if atomic:
        return dq32.to(q.dtype), dk, dv
    dq = torch.empty_like(q)
    launch(kt.attention_bwd_dq_kernel, ("dq", d, q.dtype, do.dtype, causal, has_mask), cfg, n_q, b * h,
           (q, k, v, do, dq, lse, delta, kpm),
           (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), smb, smn, h, n_q, n_k),
           floats, HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, EVEN_N=lambda c: n_k % c.block_n == 0,
           PRECISION=_precision(q))
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale) v with the Triton kernels forward and backward (O(N) memory)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                causal: bool, scale: float, deterministic: bool, out_bnhd: bool) -> torch.Tensor:
        o, lse = flash_forward(q, k, v, key_padding_mask, causal, scale, out_bnhd)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.causal, ctx.scale, ctx.deterministic = causal, scale, deterministic
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = flash_backward(do, q, k, v, o, lse, key_padding_mask, ctx.causal, ctx.scale, ctx.deterministic)
        return dq, dk, dv, None, None, None, None, None


def max_offset(x: torch.Tensor) -> int:
    """Largest element offset inside one (batch, head) slice of a (B, H, N, D) view."""
    _, _, n, d = x.shape
    _, _, sn, sd = x.stride()
    return max(n - 1, 0) * abs(sn) + max(d - 1, 0) * abs(sd)



