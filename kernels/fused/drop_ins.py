"""The fused blocks registered as drop-ins of ``kernels.nn.patch`` for the seed UNet's block classes
(``pyimpl.unet``: DoubleConv, Down, Up, SelfAttention).

``kernels.nn.patch(unet)`` then swaps each block for its fused twin and reports it. The twins share
the blocks' submodules, so the DoubleConvs inside Down / Up and the attention inside SelfAttention,
which ``patch`` reaches next, are swapped in the twins too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kernels import nn as knn
from kernels.fused.modules import (
    FusedDoubleConv,
    FusedDown,
    FusedSelfAttention,
    FusedUp,
    double_conv_reasons,
    down_reasons,
    self_attention_reasons,
    up_reasons,
)
from pyimpl import unet


@knn.register_drop_in(unet.DoubleConv, name="fused_double_conv", reasons=double_conv_reasons,
                      replacement=FusedDoubleConv)
def double_conv_drop_in(module: nn.Module, **_: Any) -> FusedDoubleConv:
    """DoubleConv -> FusedDoubleConv: GroupNorm+GELU, GroupNorm(+residual+GELU)(+emb) fused."""
    return FusedDoubleConv.from_module(module)


@knn.register_drop_in(unet.Down, name="fused_down", reasons=down_reasons, replacement=FusedDown)
def down_drop_in(module: nn.Module, **_: Any) -> FusedDown:
    """Down -> FusedDown: the time embedding added inside the last GroupNorm pass."""
    return FusedDown.from_module(module)


@knn.register_drop_in(unet.Up, name="fused_up", reasons=up_reasons, replacement=FusedUp)
def up_drop_in(module: nn.Module, **_: Any) -> FusedUp:
    """Up -> FusedUp: upsample+concat in one pass, the embedding inside the last GroupNorm pass."""
    return FusedUp.from_module(module)


@knn.register_drop_in(unet.SelfAttention, name="fused_self_attention", reasons=self_attention_reasons,
                      replacement=FusedSelfAttention)
def self_attention_drop_in(module: nn.Module, **_: Any) -> FusedSelfAttention:
    """SelfAttention -> FusedSelfAttention (transpose+LayerNorm, attention without weights, add+LayerNorm)."""
    return FusedSelfAttention.from_module(module)
