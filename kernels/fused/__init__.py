"""Fused norm / activation / upsample kernels for the seed's DDPM UNet, and its drop-in modules.

Ops (``kernels.fused.ops``): ``group_norm_act``, ``tokens_layer_norm``, ``add_layer_norm``,
``upsample_concat``, ``feed_forward``; references in ``pyimpl.fused``; Triton backends in ``*_triton.py``.
Drop-ins for the seed UNet's blocks (``kernels.fused.modules``) are registered with ``kernels.nn.patch``.
"""

from modelkernels.kernels.fused import library
from modelkernels.kernels.fused.drop_ins import register_seed_blocks
from modelkernels.kernels.fused.ops import (
    add_layer_norm,
    feed_forward,
    group_norm_act,
    tokens_layer_norm,
    upsample_concat,
)

__all__ = ["add_layer_norm", "feed_forward", "group_norm_act", "library", "register_seed_blocks",
           "tokens_layer_norm", "upsample_concat"]
