"""The ``attention`` op: reference, samples, error inputs, and the Triton and SDPA backends.

``softmax(q kᵀ · scale) v`` (reference: ``pyimpl.attention.attention``). Dispatch on CUDA runs
the Triton flash kernels where their reasons allow (head dim 16/32/64/128, fp16/bf16/fp32,
scale > 0), else PyTorch's ``scaled_dot_product_attention``, else the reference; on the CPU,
SDPA. ``kernels.explain("attention", q, k, v)`` prints the decision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.availability import triton_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.kernels.torch_ops import entry
from modelkernels.pyimpl import attention as ref

TRITON_DTYPES = ("float16", "bfloat16", "float32")
OFFSET_LIMIT = 2**31 - 1  # the Triton kernels index inside one (batch, head) slice with int32
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


def _randn(shape: tuple[int, ...], seed: int, dtype: str, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=getattr(torch, dtype))


def _sample(name: str, b: int, h: int, nq: int, nk: int, d: int, *, seed: int, grad: bool = True,
            layout: str = "bhnd", causal: bool = False, scale: float | None = None, mask: str | None = None,
            fused_qkv: bool = False, poison: str | None = None, deterministic: bool = False,
            dtypes: tuple[str, ...] | None = None) -> Sample:
    """``mask``: None, "tail" (last keys of each batch padded, batch 0 fully), "head" (first keys).
    ``fused_qkv``: q, k, v are strided slices of one (B, N, 3, H, D) projection (layout bnhd).
    ``poison``: "nan-q" (one q element NaN), "nan-v", "inf-k", "inf-v"."""

    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if fused_qkv:
            qkv = _randn((b, nq, 3, h, d), seed, dtype, device)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            shape_q, shape_k = ((b, h, nq, d), (b, h, nk, d)) if layout == "bhnd" else ((b, nq, h, d), (b, nk, h, d))
            q, k, v = (_randn(s, seed + i, dtype, device) for i, s in enumerate((shape_q, shape_k, shape_k)))
        if poison is not None:
            target = {"q": q, "k": k, "v": v}[poison[-1]]
            target.view(-1)[target.numel() // 3] = float("nan") if poison.startswith("nan") else float("inf")
        kw: dict[str, Any] = {"layout": layout}
        if causal:
            kw["causal"] = True
        if scale is not None:
            kw["scale"] = scale
        if deterministic:
            kw["deterministic"] = True
        if mask is not None:
            kpm = torch.zeros(b, nk, dtype=torch.bool)
            for i in range(b):
                n_pad = nk if i == 0 else (3 * i) % nk
                if mask == "tail":
                    kpm[i, nk - n_pad:] = True
                else:
                    kpm[i, :n_pad] = True
            kw["key_padding_mask"] = kpm.to(device)
        return (q, k, v), kw

    return Sample(name, make, dtypes=dtypes, grad=grad)


F32 = ("float32",)
SAMPLES = [
    _sample("B=2 H=3 N=37 D=16", 2, 3, 37, 37, 16, seed=1),
    _sample("N=1 D=32", 1, 2, 1, 1, 32, seed=2),
    _sample("cross Nq=19 Nk=40 D=32", 2, 2, 19, 40, 32, seed=3),
    _sample("causal N=33 D=16", 1, 2, 33, 33, 16, seed=4, causal=True),
    _sample("causal Nq=20 Nk=35 D=16", 1, 2, 20, 35, 16, seed=5, causal=True),
    _sample("causal Nq=35 Nk=20 D=32", 1, 1, 35, 20, 32, seed=6, causal=True),
    _sample("padding mask (batch 0 all padded) Nq=21 Nk=29", 3, 2, 21, 29, 16, seed=7, mask="tail"),
    _sample("causal + leading padding (dead rows)", 3, 1, 23, 23, 16, seed=8, mask="head", causal=True),
    _sample("layout bnhd N=23 D=32", 2, 3, 23, 23, 32, seed=9, layout="bnhd"),
    _sample("fused qkv slices (strided) N=18 D=16", 2, 2, 18, 18, 16, seed=10, layout="bnhd", fused_qkv=True),
    _sample("scale=0.3 deterministic", 1, 2, 26, 26, 32, seed=11, scale=0.3, deterministic=True),
    _sample("D=64 N=17", 1, 2, 17, 17, 64, seed=12),
    _sample("D=128 N=9", 1, 1, 9, 9, 128, seed=13),
    _sample("D=24 (Triton declines)", 1, 2, 11, 11, 24, seed=14),
    _sample("empty Nq=0", 1, 2, 0, 5, 16, seed=15, grad=False),
    _sample("empty Nk=0", 1, 2, 5, 0, 16, seed=16, grad=False),
    _sample("empty B=0", 0, 2, 5, 5, 16, seed=17, grad=False),
    _sample("NaN in q", 1, 2, 20, 20, 16, seed=18, poison="nan-q", grad=False, dtypes=F32),
    _sample("NaN in v", 1, 2, 20, 20, 16, seed=19, poison="nan-v", grad=False, dtypes=F32),
    _sample("NaN in q, one key", 2, 2, 9, 1, 16, seed=23, poison="nan-q", grad=False, dtypes=F32),
    _sample("NaN in k, causal + padding", 2, 2, 13, 13, 16, seed=24, poison="nan-k", mask="tail", causal=True,
            grad=False, dtypes=F32),
    _sample("NaN in v, dead rows", 3, 1, 10, 10, 16, seed=25, poison="nan-v", mask="tail", grad=False, dtypes=F32),
    _sample("causal + padding deterministic Nq=30 Nk=21", 2, 2, 30, 21, 32, seed=22, mask="tail", causal=True,
            deterministic=True),
]


MakeArgs = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def _qkv(bq: tuple[int, ...], bk: tuple[int, ...], bv: tuple[int, ...] | None = None,
         **kwargs: Any) -> MakeArgs:
    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.zeros(bq), torch.zeros(bk), torch.zeros(bv or bk)), kwargs

    return make


def _mixed_devices() -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 4, 16, device="meta"), torch.zeros(1, 1, 4, 16)), {}


def _typed(dq: torch.dtype, dk: torch.dtype) -> MakeArgs:
    return lambda: ((torch.zeros(1, 1, 4, 16, dtype=dq), torch.zeros(1, 1, 4, 16, dtype=dk),
                     torch.zeros(1, 1, 4, 16, dtype=dk)), {})


S = (2, 3, 5, 16)
ERROR_SAMPLES = [
    ErrorSample("batch mismatch", _qkv(S, (3, 3, 5, 16)), ValueError, "batch: q has 2, k has 3"),
    ErrorSample("heads mismatch", _qkv(S, (2, 4, 5, 16)), ValueError, "heads: q has 3, k has 4"),
    ErrorSample("head dim mismatch", _qkv(S, (2, 3, 5, 32)), ValueError, "head dim: q has 16, k has 32"),
    ErrorSample("k/v length mismatch", _qkv(S, (2, 3, 5, 16), (2, 3, 6, 16)), ValueError, "k has 5 keys, v has 6"),
    ErrorSample("3-D q", _qkv((2, 5, 16), (2, 5, 16)), ValueError, "q.shape=(2, 5, 16): expected 4 dimensions"),
    ErrorSample("bad layout", _qkv(S, S, layout="nhd"), ValueError, "layout='nhd'"),
    ErrorSample("integer q", _typed(torch.int64, torch.int64), TypeError, "q.dtype=int64"),
    ErrorSample("mixed dtypes", _typed(torch.float32, torch.float16), TypeError, "must share one dtype"),
    ErrorSample("different devices", _mixed_devices, ValueError, "different devices"),
    ErrorSample("float padding mask", _qkv(S, S, key_padding_mask=torch.zeros(2, 5)), TypeError,
                "key_padding_mask.dtype=float32"),
    ErrorSample("padding mask shape", _qkv(S, S, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), ValueError,
                "key_padding_mask.shape=(2, 4): expected (B, Nk) = (2, 5)"),
    ErrorSample("NaN scale", _qkv(S, S, scale=float("nan")), ValueError, "scale=nan"),
    ErrorSample("list q", lambda: (([[0.0]], torch.zeros(S), torch.zeros(S)), {}), TypeError,
                "q must be a torch.Tensor"),
    ErrorSample("string causal", _qkv(S, S, causal="no"), TypeError, "causal='no': must be a bool"),
]


def _check_call(q: Any, k: Any, v: Any, *, causal: Any = False, scale: Any = None, key_padding_mask: Any = None,
                layout: str = "bhnd", deterministic: bool = False) -> None:
    """The argument checks every backend runs (``kernels.explain`` runs them too)."""
    del deterministic
    ref.check_attention_args(q, k, v, key_padding_mask, layout, scale)
    ref.check_causal(causal)


def _dispatch_key(q: Any, k: Any, v: Any, *, causal: Any = False, scale: Any = None, key_padding_mask: Any = None,
                  layout: Any = "bhnd", deterministic: Any = False) -> Any:
    """Everything the argument checks and the backends' reasons look at: the shapes, devices and dtypes
    of q, k, v and the mask, and the other arguments' values (the op is ``checked_by_key``). None (decide
    and check afresh) for anything unusual: non-tensors, a non-bool flag, huge slices."""
    if not (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor):
        return None
    if type(causal) is not bool or type(deterministic) is not bool or type(layout) is not str \
            or (scale is not None and type(scale) is not float and type(scale) is not int):
        return None
    if q.numel() >= OFFSET_LIMIT or k.numel() >= OFFSET_LIMIT or v.numel() >= OFFSET_LIMIT:
        return None
    mask = None
    if key_padding_mask is not None:
        if type(key_padding_mask) is not torch.Tensor:
            return None
        mask = (key_padding_mask.shape, key_padding_mask.device, key_padding_mask.dtype)
    return (q.shape, k.shape, v.shape, q.device, k.device, v.device, q.dtype, k.dtype, v.dtype, mask, causal,
            type(scale), scale, layout, deterministic)


OP = define_op(
    "attention",
    reference=ref.attention,
    dtypes=ref.ATTENTION_DTYPES,
    samples=SAMPLES,
    error_samples=ERROR_SAMPLES,
    reference_dtype=lambda dt: "float64",
    doc="softmax(q k^T * scale) v over (B, H, N, D) or (B, N, H, D) tensors, optional causal / key padding mask",
    dispatch_key=_dispatch_key,
    check=_check_call,
    checked_by_key=True,
)


_SUM_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _has_nonfinite(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether q, k or v hold a NaN or an Inf: one sum each (NaN or Inf in, non-finite sum out), in fp32 for
    half-precision inputs, O(N D) against SDPA's O(N² D). A finite sum that overflows only sends the call
    to the formula, which gives the same result. 6 µs on tiny inputs on the CI CPU (float64 sums added
    as Python floats: 12)."""
    if q.requires_grad or k.requires_grad or v.requires_grad:
        q, k, v = q.detach(), k.detach(), v.detach()
    acc = _SUM_DTYPE.get(q.dtype)
    return not math.isfinite(q.sum(dtype=acc).item() + k.sum(dtype=acc).item() + v.sum(dtype=acc).item())


def _as_bhnd(layout: str, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x.transpose(1, 2) for x in xs) if layout == "bnhd" else xs


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _triton_reasons(q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None,
                    key_padding_mask: torch.Tensor | None = None, layout: str = "bhnd",
                    deterministic: bool = False) -> list[str]:
    d = ref.check_attention_args(q, k, v, key_padding_mask, layout, scale)[4]
    out = []
    if d not in SUPPORTED_HEAD_DIMS:
        out.append(f"head_dim={d}: supported {', '.join(str(x) for x in SUPPORTED_HEAD_DIMS)}")
    if scale is not None and scale <= 0:
        out.append(f"scale={scale}: supported > 0")
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        out.append("dtype=bfloat16 on cpu: Triton's interpreter multiplies bfloat16 matrices wrongly (CUDA only)")
    if q.is_cuda and q.dtype == torch.bfloat16 and _capability(q.device.index) < (8, 0):
        out.append("dtype=bfloat16: needs a GPU of compute capability 8.0 or newer")
    if q.numel() >= OFFSET_LIMIT or k.numel() >= OFFSET_LIMIT or v.numel() >= OFFSET_LIMIT:
        from modelkernels.kernels.attention.flash import max_offset

        if max(max_offset(x) for x in _as_bhnd(layout, q, k, v)) >= OFFSET_LIMIT:
            out.append("one (batch, head) slice spans 2**31 elements or more: the kernel indexes it with int32")
    return out


def _attention_triton_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                          scale: float | None = None, key_padding_mask: torch.Tensor | None = None,
                          layout: str = "bhnd", deterministic: bool = False) -> torch.Tensor:
    """``attention_triton`` on arguments that passed its checks."""
    from modelkernels.kernels.attention.flash import FlashAttention, flash_forward

    if q.numel() == 0 or k.shape[2 if layout == "bhnd" else 1] == 0:  # nothing to stream: empty or zero rows
        return ref.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout)
    qh, kh, vh = _as_bhnd(layout, q, k, v)
    sm_scale = ref.default_scale(q.shape[3], scale)
    if needs_autograd(q, k, v):
        out = FlashAttention.apply(qh, kh, vh, key_padding_mask, bool(causal), sm_scale, bool(deterministic),
                                   layout == "bnhd")
    else:  # inference: skip autograd's bookkeeping (~10 us a call)
        out = flash_forward(qh, kh, vh, key_padding_mask, bool(causal), sm_scale, layout == "bnhd", need_lse=False)[0]
    return out.transpose(1, 2) if layout == "bnhd" else out


@register_kernel(
    "attention",
    "triton",
    devices=("cuda",),
    interpret_devices=("cpu",),
    dtypes=TRITON_DTYPES,
    priority=20,
    reasons=_triton_reasons,
    available=triton_unavailable,
    tolerances={
        "float32": Tolerance(5e-3, 5e-3),  # TF32 dots on the GPU
        "grad:float32": Tolerance(1e-2, 1e-2),
        "float16": Tolerance(5e-3, 5e-3),
        "grad:float16": Tolerance(2e-2, 2e-2),
        "bfloat16": Tolerance(3e-2, 3e-2),
        "grad:bfloat16": Tolerance(8e-2, 5e-2),
    },
    run=_attention_triton_run,
)
def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     scale: float | None = None, key_padding_mask: torch.Tensor | None = None, layout: str = "bhnd",
                     deterministic: bool = False) -> torch.Tensor:
    """Triton flash attention (kernels/attention/flash_triton.py): O(N) memory, backward through autograd."""
    _check_call(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout)
    return _attention_triton_run(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                                 layout=layout, deterministic=deterministic)


def _attention_sdpa_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        scale: float | None = None, key_padding_mask: torch.Tensor | None = None,
                        layout: str = "bhnd", deterministic: bool = False) -> torch.Tensor:
    """``attention_sdpa`` on arguments that passed its checks."""
    n_axis = 2 if layout == "bhnd" else 1
    nq, nk = q.shape[n_axis], k.shape[n_axis]
    # On the CPU, SDPA's kernels do not propagate NaN/Inf as the formula does (a NaN query row gives 0;
    # a masked NaN key spoils rows that cannot see it): non-finite inputs take the written-out formula.
    nonfinite = not q.is_cuda and _has_nonfinite(q, k, v)
    if q.numel() == 0 or nk == 0 or nonfinite:
        return ref.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout)
    qh, kh, vh = _as_bhnd(layout, q, k, v)
    mask = dead = None
    if key_padding_mask is not None:
        mask = ref.allowed_keys(key_padding_mask, nq, nk, causal, q.device)
        dead = ref.dead_rows(key_padding_mask, nq, nk, causal)
        if dead is not None and mask is not None:
            mask = mask | dead[:, None, :, None]  # SDPA returns NaN for rows that see nothing
    is_causal = bool(causal) and mask is None
    if deterministic and q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):  # the fused CUDA backwards accumulate with atomics
            out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=is_causal,
                                                                   scale=scale)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=is_causal,
                                                               scale=scale)
    if dead is not None:
        out = out.masked_fill(dead[:, None, :, None], 0.0)
    return out.transpose(1, 2) if layout == "bnhd" else out


@register_kernel(
    "attention",
    "sdpa",
    devices=("cuda", "cpu"),
    dtypes=ref.ATTENTION_DTYPES,
    priority=10,
    deterministic=False,
    tolerances={
        "float64": Tolerance(1e-10, 1e-10),
        "float32": Tolerance(1e-4, 1e-4),
        "grad:float32": Tolerance(2e-4, 2e-4),
        "float16": Tolerance(5e-3, 5e-3),
        "grad:float16": Tolerance(2e-2, 2e-2),
        "bfloat16": Tolerance(3e-2, 3e-2),
        "grad:bfloat16": Tolerance(8e-2, 5e-2),
    },
    run=_attention_sdpa_run,
)
def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   scale: float | None = None, key_padding_mask: torch.Tensor | None = None, layout: str = "bhnd",
                   deterministic: bool = False) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention, with this op's mask and dead-row conventions."""
    _check_call(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout)
    return _attention_sdpa_run(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask,
                               layout=layout, deterministic=deterministic)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None,
              key_padding_mask: torch.Tensor | None = None, layout: str = "bhnd", deterministic: bool = False,
              backend: str | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` without materialising the scores where a fused backend runs.

    q: (B, H, Nq, D), k and v: (B, H, Nk, D) for ``layout="bhnd"`` (SDPA's); (B, N, H, D) for
    ``layout="bnhd"`` (a projection's ``view``, no copy). Any strides. The output has q's layout.
    causal: query i sees keys j <= i (top-left aligned, as SDPA). scale: default 1/sqrt(D).
    key_padding_mask: (B, Nk) bool, True = ignore that key (as nn.MultiheadAttention). A row that
    sees no key returns 0. deterministic: the backward pass sums in a fixed order.
    backend: "triton", "sdpa" or "reference"; by default the first that can run the inputs.
    Differentiable in q, k and v. Under torch.compile it is one graph node, ``torch.ops.modelkernels.attention``
    (kernels/torch_ops.py), which dispatches at run time.
    """
    if torch.compiler.is_compiling():
        return entry("attention", q, k, v)(q, k, v, key_padding_mask, causal, scale, layout, deterministic, backend)
    return call("attention", q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout,
                deterministic=deterministic, backend=backend)
