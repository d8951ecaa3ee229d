"""The fused blocks registered as drop-ins of ``kernels.nn.patch`` for the seed UNet's block classes:
``pyimpl.unet``'s at import, and those of a user's own copy of the seed (``modules.py`` next to the
seed's ``ddpm.py``) through ``register_seed_blocks``.

``kernels.nn.patch(unet)`` then swaps each block for its fused twin and reports it. The twins share
the blocks' submodules, so the DoubleConvs inside Down / Up and the attention inside SelfAttention,
which ``patch`` reaches next, are swapped in the twins too.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from modelkernels.kernels.block_views import register_blocks
from modelkernels.kernels.fused.modules import FusedDoubleConv, FusedDown, FusedSelfAttention, FusedUp
from modelkernels.pyimpl import unet

# class name in the seed -> (drop-in name, fused class; its ``reasons`` says why a block does not fit)
SEED_BLOCKS: dict[str, tuple[str, Any]] = {
    "DoubleConv": ("fused_double_conv", FusedDoubleConv),
    "Down": ("fused_down", FusedDown),
    "Up": ("fused_up", FusedUp),
    "SelfAttention": ("fused_self_attention", FusedSelfAttention),
}


def register_seed_blocks(namespace: ModuleType | Any) -> list[str]:
    """Register the fused drop-ins for the seed's block classes found in ``namespace`` (a module or any
    object with ``DoubleConv``, ``Down``, ``Up``, ``SelfAttention`` attributes, e.g. the seed's own
    ``modules``); returns the class names registered. Each module's structure is still checked by
    ``patch`` (a block that differs is left with its reason)."""
    return register_blocks(namespace, SEED_BLOCKS)


register_seed_blocks(unet)
