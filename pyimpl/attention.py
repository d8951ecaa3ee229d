"""Scaled dot-product attention, written out: ``softmax(q k^T * scale) v``.

Vaswani et al., "Attention Is All You Need" (2017), eq. 1, with the conventions of PyTorch's
``scaled_dot_product_attention`` and ``nn.MultiheadAttention``:

- ``q``: (B, H, Nq, D), ``k``: (B, H, Nk, D), ``v``: (B, H, Nk, D) for ``layout="bhnd"`` (SDPA's);
  (B, N, H, D) for ``layout="bnhd"`` (what a linear projection followed by ``view`` gives).
  The output has q's layout and shape.
- ``scale``: default ``1 / sqrt(D)``.
- ``causal``: query i sees keys j <= i (top-left aligned when Nq != Nk, as SDPA's ``is_causal``).
- ``key_padding_mask``: (B, Nk) bool, True marks a key to ignore (``nn.MultiheadAttention``'s sense).
- A query row that sees no key (all masked, or Nk = 0) returns 0 and passes no gradient; SDPA's
  math path returns NaN there. NaN/Inf in the inputs propagate as the formula says.

The matrix of scores is materialised here: this file is the specification, not the fast path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LAYOUTS = ("bhnd", "bnhd")
ATTENTION_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_causal(causal: Any) -> None:
    """``causal`` must be a bool: a string such as ``'no'`` would otherwise count as True."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal={causal!r}: must be a bool (True or False)")


def check_attention_args(q: Any, k: Any, v: Any, key_padding_mask: Any, layout: str, scale: Any
                         ) -> tuple[int, int, int, int, int]:
    """Validate the arguments every backend shares; return ``(B, H, Nq, Nk, D)``."""
    if key_padding_mask is None and scale is None and isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) \
            and isinstance(v, torch.Tensor) and q.dim() == k.dim() == v.dim() == 4 and q.dtype == k.dtype == v.dtype \
            and q.dtype in _FLOATS and q.device == k.device == v.device:
        # the common case, checked in one pass (dispatch validates once per backend it asks)
        n_axis, h_axis = (2, 1) if layout == "bhnd" else (1, 2) if layout == "bnhd" else (0, 0)
        qs, ks, vs = q.shape, k.shape, v.shape
        if n_axis and qs[0] == ks[0] == vs[0] and qs[h_axis] == ks[h_axis] == vs[h_axis] \
                and qs[3] == ks[3] == vs[3] and ks[n_axis] == vs[n_axis]:
            return qs[0], qs[h_axis], qs[n_axis], ks[n_axis], qs[3]
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: supported 'bhnd' (B, H, N, D) or 'bnhd' (B, N, H, D)")
    dims = "(B, H, N, D)" if layout == "bhnd" else "(B, N, H, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}.shape={_shape(t)}: expected 4 dimensions {dims} for layout={layout!r}")
        if not t.is_floating_point():
            raise TypeError(f"{name}.dtype={str(t.dtype).removeprefix('torch.')}: supported "
                            + ", ".join(ATTENTION_DTYPES))
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v are on different devices ({q.device}, {k.device}, {v.device}); "
                         "move them to one device")
    n_axis, h_axis = (2, 1) if layout == "bhnd" else (1, 2)
    b, h, nq, d = q.shape[0], q.shape[h_axis], q.shape[n_axis], q.shape[3]
    nk = k.shape[n_axis]
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != b:
            raise ValueError(f"batch: q has {b}, {name} has {t.shape[0]} ({name}.shape={_shape(t)})")
        if t.shape[h_axis] != h:
            raise ValueError(f"heads: q has {h}, {name} has {t.shape[h_axis]} ({name}.shape={_shape(t)})")
        if t.shape[3] != d:
            raise ValueError(f"head dim: q has {d}, {name} has {t.shape[3]} ({name}.shape={_shape(t)}); "
                             "they must match")
    if v.shape[n_axis] != nk:
        raise ValueError(f"sequence length: k has {nk} keys, v has {v.shape[n_axis]} values; they must match")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor or None, got {type(key_padding_mask).__name__}")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask.dtype={str(key_padding_mask.dtype).removeprefix('torch.')}: "
                            "supported bool (True = ignore that key)")
        if tuple(key_padding_mask.shape) != (b, nk):
            raise ValueError(f"key_padding_mask.shape={_shape(key_padding_mask)}: expected (B, Nk) = ({b}, {nk})")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}, q on {q.device}: "
                             "move them to one device")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale={scale!r}: expected a finite number or None (1/sqrt(head_dim))")
    return b, h, nq, nk, d


def default_scale(head_dim: int, scale: float | None) -> float:
    """``scale`` or, when None, ``1 / sqrt(head_dim)`` (SDPA's default)."""
    return float(scale) if scale is not None else 1.0 / math.sqrt(max(head_dim, 1))


def dead_rows(key_padding_mask: torch.Tensor | None, nq: int, nk: int, causal: bool) -> torch.Tensor | None:
    """(B, Nq) bool: query rows that see no key at all, or None when there are none by construction."""
    if nk == 0:
        return None  # handled by the empty softmax: every row is zero
    if key_padding_mask is None:
        return None  # every row sees key 0 at least
    if not causal:
        return key_padding_mask.all(dim=1, keepdim=True).expand(-1, nq)
    # causal: row i sees keys 0 .. min(i, Nk - 1); dead when all of those are padded
    alive_prefix = (~key_padding_mask).to(torch.int32).cumsum(dim=1) > 0  # (B, Nk)
    last_key = torch.arange(nq, device=key_padding_mask.device).clamp(max=nk - 1)
    return ~alive_prefix[:, last_key]


def allowed_keys(key_padding_mask: torch.Tensor | None, nq: int, nk: int, causal: bool,
                 device: torch.device) -> torch.Tensor | None:
    """(B or 1, 1, Nq, Nk) bool: True where query i may see key j; None when every pair may."""
    allowed = None
    if causal:
        allowed = torch.ones(nq, nk, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    return allowed


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, *, causal: bool = False, scale: float | None = None,
                            key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale)`` over the keys for (B, H, N, D) inputs: (B, H, Nq, Nk).

    Masked pairs get probability 0; a row with no visible key is all zeros.
    """
    nq, nk, d = q.shape[2], k.shape[2], q.shape[3]
    s = torch.matmul(q, k.transpose(-2, -1)) * default_scale(d, scale)
    allowed = allowed_keys(key_padding_mask, nq, nk, causal, q.device)
    if allowed is None:
        return torch.softmax(s, dim=-1)
    dead = dead_rows(key_padding_mask, nq, nk, causal)
    if dead is not None:
        # a dead row would be softmax over -inf only (NaN); let it see everything, then zero it
        allowed = allowed | dead[:, None, :, None]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return p if dead is None else p.masked_fill(dead[:, None, :, None], 0.0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, scale: float | None = None,
              key_padding_mask: torch.Tensor | None = None, layout: str = "bhnd",
              deterministic: bool = False) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` (Vaswani et al. 2017, eq. 1), materialising the scores.

    See the module docstring for shapes, masks and the convention for rows that see no key.
    ``deterministic`` is accepted for signature parity with the fast backends (this path is).
    """
    del deterministic
    check_attention_args(q, k, v, key_padding_mask, layout, scale)
    check_causal(causal)
    if layout == "bnhd":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    p = attention_probabilities(q, k, causal=causal, scale=scale, key_padding_mask=key_padding_mask)
    out = torch.matmul(p, v)
    return out.transpose(1, 2) if layout == "bnhd" else out
