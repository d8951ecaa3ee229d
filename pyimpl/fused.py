"""References for the fused norm / activation / upsample kernels of the seed's UNet (``pyimpl.unet``).

Each function is the plain PyTorch composition that the seed's modules run, written out so that a
fused kernel has one formula to match:

- ``group_norm_act``: ``DoubleConv``'s ``GroupNorm`` followed by what comes after it in the seed:
  the GELU, the residual ``gelu(x + f(x))``, and ``Down`` / ``Up``'s broadcast time-embedding add::

      xhat = (x - mean_g) / sqrt(var_g + eps)        (biased variance over each group's C/G*H*W values)
      out  = act(xhat * weight[c] + bias[c] + residual) + emb[n, c]

  (Wu & He, "Group Normalization", 2018; the seed uses ``GroupNorm(1, C)``, i.e. a LayerNorm over
  C, H, W.)
- ``tokens_layer_norm``: ``SelfAttention``'s ``x.view(B, C, H*W).swapaxes(1, 2)`` then ``LayerNorm(C)``;
  returns the token tensor too, since the block adds it back after the attention.
- ``add_layer_norm``: the feed-forward's input, ``s = attention + tokens`` and ``LayerNorm(C)(s)``;
  returns both (``s`` is added back after the feed-forward).
- ``upsample_concat``: ``Up``'s bilinear 2x upsampling (``align_corners=True``) and
  ``torch.cat([skip, up(x)], dim=1)``.
- ``feed_forward``: the rest of ``SelfAttention``'s ``ff_self`` after its LayerNorm, with the residual:
  ``s + Linear2(GELU(Linear1(h)))`` where ``h = LayerNorm(s)`` comes from ``add_layer_norm``.

GELU is the exact one (``nn.GELU()``): ``gelu(z) = z * Phi(z) = z / 2 * (1 + erf(z / sqrt(2)))``.
SiLU (``nn.SiLU()``, Elfwing et al. 2018; diffusers' ResnetBlock2D after each GroupNorm):
``silu(z) = z * sigmoid(z)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "add_layer_norm",
    "check_add_layer_norm_args",
    "check_feed_forward_args",
    "check_group_norm_args",
    "check_layer_norm_args",
    "check_tokens_layer_norm_args",
    "check_upsample_concat_args",
    "feed_forward",
    "feed_forward_dtype",
    "gelu",
    "group_norm_act",
    "silu",
    "tokens_layer_norm",
    "upsample_concat",
]

ACTIVATIONS = ("gelu", "silu", "none")


def gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact GELU, ``z / 2 * (1 + erf(z / sqrt(2)))`` (Hendrycks & Gimpel 2016; ``nn.GELU()``)."""
    return 0.5 * z * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def silu(z: torch.Tensor) -> torch.Tensor:
    """SiLU ``z * sigmoid(z)`` (``nn.SiLU()``), written out: ``z / (1 + exp(-z))``."""
    return z / (1.0 + torch.exp(-z))


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}.dtype={t.dtype}: expected a floating dtype (float16, bfloat16, float32, float64)")


def check_group_norm_args(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float, residual: torch.Tensor | None, emb: torch.Tensor | None,
                          activation: str) -> None:
    """Raise a clear error for arguments ``group_norm_act`` cannot take."""
    _check_float("x", x)
    if x.dim() < 2:
        raise ValueError(f"x.shape={tuple(x.shape)}: expected (N, C, ...) with at least 2 dimensions")
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups={num_groups!r}: must be a positive integer")
    if c % num_groups:
        raise ValueError(f"num_groups={num_groups}: must divide the number of channels C={c}")
    if not eps >= 0:
        raise ValueError(f"eps={eps}: must be >= 0")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            _check_float(name, p)
            if tuple(p.shape) != (c,):
                raise ValueError(f"{name}.shape={tuple(p.shape)}: expected ({c},), one value per channel")
    if residual is not None:
        _check_float("residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"residual.shape={tuple(residual.shape)}: expected x's shape {tuple(x.shape)}")
    if emb is not None:
        _check_float("emb", emb)
        if tuple(emb.shape) != (x.shape[0], c):
            raise ValueError(f"emb.shape={tuple(emb.shape)}: expected (N, C) = {(x.shape[0], c)}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual), ("emb", emb)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}: move them to one device")


def group_norm_act(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    emb: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """``act(GroupNorm(num_groups)(x) + residual) + emb[:, :, None, ...]``, returned in x's dtype
    (computed in fp32 for float16 / bfloat16 inputs, as the Triton kernel does).

    x: (N, C, *spatial); weight, bias: (C,) or None; residual: x's shape or None; emb: (N, C) or
    None; activation: 'gelu' (exact), 'silu' or 'none'. Statistics per (n, group): mean and biased variance
    over the C/G channels and all spatial positions, as ``torch.nn.GroupNorm``.
    """
    check_group_norm_args(x, num_groups, weight, bias, eps, residual, emb, activation)
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):  # statistics and arithmetic in fp32, as the kernels
        x = x.float()
    n, c = x.shape[0], x.shape[1]
    spatial = (1,) * (x.dim() - 2)
    xg = x.reshape(n, num_groups, math.prod(x.shape[1:]) // num_groups)
    mean = xg.mean(dim=-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(dim=-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.to(y.dtype).reshape(1, c, *spatial)
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(1, c, *spatial)
    if residual is not None:
        y = residual.to(y.dtype) + y
    if activation == "gelu":
        y = gelu(y)
    elif activation == "silu":
        y = silu(y)
    if emb is not None:
        y = y + emb.to(y.dtype).reshape(n, c, *spatial)
    return y.to(out_dtype)


def check_layer_norm_args(c: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                          device: torch.device) -> None:
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            _check_float(name, p)
            if tuple(p.shape) != (c,):
                raise ValueError(f"{name}.shape={tuple(p.shape)}: expected ({c},), one value per channel")
            if p.device != device:
                raise ValueError(f"{name} is on {p.device}, the input on {device}: move them to one device")
    if not eps >= 0:
        raise ValueError(f"eps={eps}: must be >= 0")


def check_tokens_layer_norm_args(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                 eps: float) -> None:
    _check_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"x.shape={tuple(x.shape)}: expected an image batch (B, C, H, W)")
    check_layer_norm_args(x.shape[1], weight, bias, eps, x.device)


def tokens_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, LayerNorm(C)(tokens))`` with ``tokens = x.reshape(B, C, H*W).swapaxes(1, 2)``.

    x: (B, C, H, W). Both outputs are (B, H*W, C); ``tokens`` is returned contiguous (the
    ``SelfAttention`` block adds it back after the attention). LayerNorm: biased variance over C.
    """
    check_tokens_layer_norm_args(x, weight, bias, eps)
    b, c = x.shape[0], x.shape[1]
    tokens = x.reshape(b, c, x.shape[2] * x.shape[3]).swapaxes(1, 2).contiguous()
    return tokens, F.layer_norm(tokens, (c,), weight, bias, eps)


def check_add_layer_norm_args(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None,
                              bias: torch.Tensor | None, eps: float) -> None:
    _check_float("x", x)
    _check_float("residual", residual)
    if x.dim() < 1 or residual.shape != x.shape:
        raise ValueError(f"residual.shape={tuple(residual.shape)}: expected x's shape {tuple(x.shape)}")
    if residual.device != x.device:
        raise ValueError(f"residual is on {residual.device}, x on {x.device}: move them to one device")
    check_layer_norm_args(x.shape[-1], weight, bias, eps, x.device)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, LayerNorm(C)(s))`` with ``s = x + residual``; x, residual: (..., C) of one shape."""
    check_add_layer_norm_args(x, residual, weight, bias, eps)
    s = x + residual
    return s, F.layer_norm(s, (x.shape[-1],), weight, bias, eps)


def check_upsample_concat_args(x: torch.Tensor, skip: torch.Tensor) -> None:
    _check_float("x", x)
    _check_float("skip", skip)
    if x.dim() != 4 or skip.dim() != 4:
        raise ValueError(f"x.shape={tuple(x.shape)}, skip.shape={tuple(skip.shape)}: expected (B, C, H, W) each")
    b, _, h, w = x.shape
    if skip.shape[0] != b or tuple(skip.shape[2:]) != (2 * h, 2 * w):
        raise ValueError(f"skip.shape={tuple(skip.shape)}: expected (B, C_skip, 2H, 2W) = ({b}, C_skip, {2 * h}, "
                         f"{2 * w}) for x.shape={tuple(x.shape)}")
    if skip.dtype != x.dtype:
        raise TypeError(f"skip.dtype={skip.dtype}: expected x's dtype {x.dtype}")
    if skip.device != x.device:
        raise ValueError(f"skip is on {skip.device}, x on {x.device}: move them to one device")


def upsample_concat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``torch.cat([skip, Upsample(scale_factor=2, mode='bilinear', align_corners=True)(x)], dim=1)``.

    x: (B, C, H, W); skip: (B, C_skip, 2H, 2W); returns (B, C_skip + C, 2H, 2W). Output pixel i
    samples the input at ``s = i * (H - 1) / (2H - 1)`` (0 when H = 1), bilinearly between
    ``floor(s)`` and ``floor(s) + 1``.
    """
    check_upsample_concat_args(x, skip)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return torch.cat([skip, up], dim=1)


def check_feed_forward_args(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                            w2: torch.Tensor, b2: torch.Tensor | None) -> None:
    """Raise a clear error for arguments ``feed_forward`` cannot take."""
    for name, t in (("h", h), ("s", s), ("w1", w1), ("w2", w2)):
        _check_float(name, t)
    if h.dim() < 1:
        raise ValueError(f"h.shape={tuple(h.shape)}: expected (..., C) with at least 1 dimension")
    if s.shape != h.shape:
        raise ValueError(f"s.shape={tuple(s.shape)}: expected h's shape {tuple(h.shape)} (the residual)")
    c = h.shape[-1]
    if w1.dim() != 2 or w1.shape[1] != c:
        raise ValueError(f"w1.shape={tuple(w1.shape)}: expected (F, C) with C={c}, as Linear(C, F).weight")
    f = w1.shape[0]
    if tuple(w2.shape) != (c, f):
        raise ValueError(f"w2.shape={tuple(w2.shape)}: expected (C, F) = {(c, f)}, as Linear(F, C).weight")
    for name, p, n in (("b1", b1, f), ("b2", b2, c)):
        if p is not None:
            _check_float(name, p)
            if tuple(p.shape) != (n,):
                raise ValueError(f"{name}.shape={tuple(p.shape)}: expected ({n},)")
    for name, other in (("s", s), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if other is not None and other.device != h.device:
            raise ValueError(f"{name} is on {other.device}, h on {h.device}: move them to one device")


def feed_forward_dtype(h: torch.Tensor, s: torch.Tensor) -> torch.dtype:
    """The output dtype of ``feed_forward``: h's and s's promoted (eager's ``lin2(...) + s`` under autocast)."""
    return torch.promote_types(h.dtype, s.dtype)


def feed_forward(
    h: torch.Tensor,
    s: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
) -> torch.Tensor:
    """``s + (gelu(h @ w1.T + b1) @ w2.T + b2)``: ``SelfAttention``'s ``ff_self`` after its LayerNorm
    (``Linear(C, F)``, exact GELU, ``Linear(F, C)``) and the residual add; biases may be None.

    h, s: (..., C) of one shape; w1: (F, C), b1: (F,), w2: (C, F), b2: (C,) (the seed: F = C). The weights
    are rounded to h's dtype (what autocast does to ``nn.Linear``); arithmetic in fp32 for float16 /
    bfloat16 h (the Triton kernel accumulates in fp32 too, but rounds the hidden activation to h's dtype
    before the second product); output contiguous in ``promote_types(h.dtype, s.dtype)``.
    """
    check_feed_forward_args(h, s, w1, b1, w2, b2)
    out_dtype = feed_forward_dtype(h, s)
    wd = h.dtype
    cd = torch.float32 if h.dtype in (torch.float16, torch.bfloat16) else h.dtype
    p1, p2 = w1.to(wd).to(cd), w2.to(wd).to(cd)
    q1 = None if b1 is None else b1.to(cd)
    q2 = None if b2 is None else b2.to(cd)
    y = F.linear(gelu(F.linear(h.to(cd), p1, q1)), p2, q2)
    return (s.to(cd) + y).to(out_dtype).contiguous()
