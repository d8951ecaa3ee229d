"""Host side of the Triton flash attention: block-size table, launchers, autograd Function.

The kernels live in ``flash_triton.py``. Inputs are (B, H, N, D) *views* with any strides (a
(B, N, H, D) tensor is passed as ``x.transpose(1, 2)``); nothing is copied. float32 inputs use
TF32 tensor-core dots (Triton's default): 10-bit mantissa products with fp32 accumulation,
relative error near 3e-4 per score; see docs/attention.md for the tolerances this gives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import triton
import triton.runtime.errors
from triton import knobs
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.attention import flash_triton as kt
from kernels.registry import triton_interpret

LOG2E = 1.4426950408889634
FP32_PRECISION = "tf32"


@dataclass(frozen=True)
class FlashConfig:
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


def forward_config(head_dim: int, dtype: torch.dtype) -> FlashConfig:
    """Forward tiles. On an H200, 64 x 64 tiles, 4 warps, 3 stages were the fastest of ten candidates
    at every measured shape (D 16..128, N 64..4096; docs/notes/attention-gpu.md). float32 tiles
    take twice the shared memory: fewer stages, and narrower key tiles at D = 128."""
    if dtype == torch.float32:
        return FlashConfig(64, 32, 4, 2) if head_dim == 128 else FlashConfig(64, 64, 4, 2)
    return FlashConfig(64, 64, 4, 3)


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
        return replace(cfg, num_stages=cfg.num_stages - 1)
    if cfg.block_n > 16:
        return replace(cfg, block_n=cfg.block_n // 2, num_stages=2)
    if cfg.block_m > 16:
        return replace(cfg, block_m=cfg.block_m // 2, num_stages=2)
    return None


_FITTED: dict[tuple[Any, ...], FlashConfig] = {}
# (kernel, key, tile, specialisation, device) -> (compiled kernel, tile used, constexpr values in signature order)
_HANDLES: dict[tuple[Any, ...], tuple[Any, FlashConfig, tuple[Any, ...]]] = {}
HANDLE_LIMIT = 4096  # distinct specialisations kept; the cache starts over past this


def specialisation(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What Triton compiles a kernel for, per runtime argument: a tensor's dtype and whether its
    address is 16-byte aligned, an integer's value (Triton specialises on == 1 and on divisibility
    by 16; the exact value is a finer key), a float's or a tensor descriptor's type (the descriptor's
    dtype and block shape are fixed by the tile and the dtype in the cache key)."""
    return tuple([a if type(a) is int else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                  else type(a) for a in args])


def _launch_hooks_set() -> bool:
    return bool(getattr(knobs.runtime.launch_enter_hook, "calls", True)
                or getattr(knobs.runtime.launch_exit_hook, "calls", True))


@functools.cache
def _device_and_stream() -> tuple[Callable[[], int], Callable[[int], int]]:
    return triton.runtime.driver.active.get_current_device, triton.runtime.driver.active.get_current_stream


def launch(kernel: Any, key: tuple[Any, ...], cfg: FlashConfig, grid: Callable[[FlashConfig], tuple[int, ...]],
           args: tuple[Any, ...], **constexprs: Any) -> None:
    """Launch ``kernel[grid(cfg)](*args, **constexprs)``; on ``OutOfResources`` step down to smaller
    tiles (remembered per key). A callable constexpr is evaluated on the tile finally used (``EVEN_N``
    depends on BLOCK_N).

    On the GPU the compiled kernel is kept per specialisation (``specialisation(args)``, the tile,
    the current device) and later calls go straight to its launcher: Triton 3.6's ``kernel[grid]``
    re-binds and re-specialises every argument and builds launch metadata for hooks on each call,
    tens of µs for these ~30-argument kernels. With a launch hook installed (a profiler), every call
    takes Triton's own path.
    """
    key = (*key, cfg)
    interpret = triton_interpret()
    hooks = interpret or _launch_hooks_set()
    if not hooks:
        get_device, get_stream = _device_and_stream()
        device = get_device()
        hkey = (kernel, key, specialisation(args), device)
        entry = _HANDLES.get(hkey)
        if entry is not None:
            compiled, used, tail = entry
            g = grid(used)
            compiled.run(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, get_stream(device),
                         compiled.function, compiled.packed_metadata, None, None, None, *args, *tail)
            return
    cfg = _FITTED.get(key, cfg)
    while True:
        values = {name: value(cfg) if callable(value) else value for name, value in constexprs.items()}
        values.update({name: size for name, size in (("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n))
                       if name in kernel.arg_names})
        try:
            compiled = kernel[grid(cfg)](*args, **values, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        except triton.runtime.errors.OutOfResources:
            next_cfg = smaller(cfg)
            if next_cfg is None:
                raise
            cfg = next_cfg
            continue
        _FITTED[key] = cfg
        if not hooks and compiled is not None:
            if len(_HANDLES) >= HANDLE_LIMIT:
                _HANDLES.clear()
            names = kernel.arg_names[len(args):]
            _HANDLES[hkey] = (compiled, cfg, tuple(values[name] for name in names))
        return


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


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                  causal: bool, scale: float, out_bnhd: bool, config: FlashConfig | None = None,
                  need_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """O (q's dtype; stored (B, N, H, D) when ``out_bnhd``, returned as a (B, H, N, D) view) and the
    base-2 row log-sum-exp (B, H, Nq) fp32 that the backward pass needs (None unless ``need_lse``)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    interpret = triton_interpret()
    if interpret:
        interpreter_index_fix()
    cfg = config or (_INTERPRET if interpret else forward_config(d, q.dtype))
    if out_bnhd:
        o = torch.empty((b, n_q, h, d), device=q.device, dtype=q.dtype).transpose(1, 2)
    else:
        o = torch.empty((b, h, n_q, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((b, h, n_q), device=q.device, dtype=torch.float32) if need_lse else None
    kpm, smb, smn = _mask_args(key_padding_mask, q)
    grid = lambda c: (triton.cdiv(n_q, c.block_m), b * h)
    common = dict(HEAD_DIM=d, CAUSAL=causal, HAS_MASK=key_padding_mask is not None, PRECISION=_precision(q),
                  STORE_LSE=need_lse)
    if cfg.variant.startswith("tma") and tma_ready(q, k, v, o):
        launch(kt.attention_fwd_tma_kernel, ("fwd-tma", d, q.dtype, causal, config, need_lse), cfg, grid,
               (_descriptor(q, cfg.block_m), _descriptor(k, cfg.block_n), _descriptor(v, cfg.block_n),
                _descriptor(o, cfg.block_m), o if lse is None else lse, kpm, smb, smn, h, n_q, n_k, scale * LOG2E),
               WARP_SPEC=cfg.variant == "tma_ws", **common)
    else:
        launch(kt.attention_fwd_kernel, ("fwd", d, q.dtype, causal, config, need_lse), cfg, grid,
               (q, k, v, o, o if lse is None else lse, kpm, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                smb, smn, h, n_q, n_k, scale * LOG2E),
               K_ROWS=cfg.variant == "krows", **common)
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
    launch(kt.attention_bwd_delta_kernel, ("delta", d), FlashConfig(rows, rows, 4, 1),
           lambda c: (triton.cdiv(n_q, c.block_m), b * h), (o, do, delta, *o.stride(), *do.stride(), h, n_q),
           HEAD_DIM=d)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    kpm, smb, smn = _mask_args(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    dq32 = torch.zeros((b, h, n_q, d), device=q.device, dtype=torch.float32) if atomic else q
    even_n = lambda c: n_k % c.block_n == 0
    launch(kt.attention_bwd_dkdv_kernel, ("dkdv", d, q.dtype, causal, atomic, config), cfg,
           lambda c: (triton.cdiv(n_k, c.block_n), b * h),
           (q, k, v, do, dk, dv, dq32, lse, delta, kpm, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            *dk.stride(), *dv.stride(), smb, smn, h, n_q, n_k, scale * LOG2E, scale),
           HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, EVEN_N=even_n, ATOMIC_DQ=atomic, PRECISION=_precision(q))
    if atomic:
        return dq32.to(q.dtype), dk, dv
    dq = torch.empty_like(q)
    launch(kt.attention_bwd_dq_kernel, ("dq", d, q.dtype, causal, config), cfg,
           lambda c: (triton.cdiv(n_q, c.block_m), b * h),
           (q, k, v, do, dq, lse, delta, kpm, *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            smb, smn, h, n_q, n_k, scale * LOG2E, scale),
           HEAD_DIM=d, CAUSAL=causal, HAS_MASK=has_mask, EVEN_N=even_n, PRECISION=_precision(q))
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



