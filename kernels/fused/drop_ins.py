"""The fused blocks registered as drop-ins of ``kernels.nn.patch`` for the seed UNet's block classes:
``pyimpl.unet``'s at import, and those of a user's own copy of the seed (``modules.py`` next to the
seed's ``ddpm.py``) through ``register_seed_blocks``.

``kernels.nn.patch(unet)`` then swaps each block for its fused twin and reports it. The twins share
the blocks' submodules, so the DoubleConvs inside Down / Up and the attention inside SelfAttention,
which ``patch`` reaches next, are swapped in the twins too.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from kernels import nn as knn
from kernels.fused.modules import FusedDoubleConv, FusedDown, FusedSelfAttention, FusedUp
from pyimpl import unet

# class name in the seed -> (drop-in name, fused class; its ``reasons`` says why a block does not fit)
SEED_BLOCKS: dict[str, tuple[str, Any]] = {
    "DoubleConv": ("fused_double_conv", FusedDoubleConv),
    "Down": ("fused_down", FusedDown),
    "Up": ("fused_up", FusedUp),
    "SelfAttention": ("fused_self_attention", FusedSelfAttention),
}


def _factory(fused: Any) -> Callable[..., nn.Module]:
    def build(module: nn.Module, **_: Any) -> nn.Module:
        out: nn.Module = fused.from_module(module)
        return out

    build.__qualname__ = f"{fused.__name__}.from_module"
    return build


def register_seed_blocks(namespace: ModuleType | Any) -> list[str]:
    """Register the fused drop-ins for the seed's block classes found in ``namespace`` (a module or any
    object with ``DoubleConv``, ``Down``, ``Up``, ``SelfAttention`` attributes, e.g. the seed's own
    ``modules``); returns the class names registered. Each module's structure is still checked by
    ``patch`` (a block that differs is left with its reason)."""
    done = []
    for cls_name, (name, fused) in SEED_BLOCKS.items():
        cls = getattr(namespace, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            knn.register_drop_in(cls, name=name, reasons=fused.reasons, replacement=fused)(_factory(fused))
            done.append(cls_name)
    return done


register_seed_blocks(unet)
