"""The residual block's epilogue in one Triton pass: ``relu(x + bias[c] + residual + residual_bias[c])``.

Computes ``pyimpl.resnet.conv_epilogue`` after a convolution whose BatchNorm is folded into its weight
(so the convolution runs without its bias). Eager torchvision runs BatchNorm (read x, write y), the
add (read y and the shortcut, write) and ReLU (read, write), and a downsample's BatchNorm besides;
here one launch reads x and the residual once and writes the output once: 3 tensors of traffic
instead of 7 (9 with the downsample's BatchNorm). Biases are float32 (the folded BatchNorm kept
exact), arithmetic in float32, one rounding to x's dtype.

The tensor is read as a dense [rows, cols] matrix in memory order: NCHW is (N*C, H*W) with one
channel per row, channels-last is (N*H*W, C) with the channel along the columns. Programs own a
[BLOCK_R, BLOCK_L] tile; the bias is one value per row or one vector per tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from modelkernels.kernels.triton_launch import cdiv, fast, next_power_of_2
from modelkernels.pyimpl.resnet import check_conv_epilogue_args

TILE = 4096  # elements per program
MAX_COLS = 1024


@triton.jit
def _epilogue_kernel(X, BIAS, R, RBIAS, OUT, ROWS, COLS, C,
                     HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_RBIAS: tl.constexpr, RELU: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    m = (rows < ROWS) & (cols < COLS)
    offs = rows * COLS + cols
    if CHANNELS_LAST:
        ch = cols
        cm = cols < COLS
    else:
        ch = (rows % C).to(tl.int32)
        cm = rows < ROWS
    y = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(BIAS + ch, mask=cm, other=0.0).to(tl.float32)
    if HAS_RES:
        y += tl.load(R + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_RBIAS:
            y += tl.load(RBIAS + ch, mask=cm, other=0.0).to(tl.float32)
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # NaN < 0 is false: NaN propagates as torch.relu's
    tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=m)


def _channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def conv_epilogue(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """Launch the epilogue; inputs of other layouts are copied to x's (contiguous when x is neither)."""
    check_conv_epilogue_args(x, bias, residual, residual_bias, relu)
    return conv_epilogue_unchecked(x, bias, residual, residual_bias, relu)


def conv_epilogue_unchecked(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                            residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """``conv_epilogue`` on arguments that passed ``check_conv_epilogue_args``."""
    channels_last = _channels_last(x)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    out = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return out
    n, c, h, w = x.shape
    rows, cols = (n * h * w, c) if channels_last else (n * c, h * w)
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
    bias = bias.contiguous() if bias is not None else None
    residual_bias = residual_bias.contiguous() if residual_bias is not None else None
    block_l = min(next_power_of_2(cols), MAX_COLS)
    block_r = max(1, TILE // block_l)
    grid = (cdiv(rows, block_r), cdiv(cols, block_l))
    fast(_epilogue_kernel)[grid](
        x, bias if bias is not None else x, residual if residual is not None else x,
        residual_bias if residual_bias is not None else x, out, rows, cols, c,
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, HAS_RBIAS=residual_bias is not None, RELU=relu,
        CHANNELS_LAST=channels_last, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=4)
    return out
