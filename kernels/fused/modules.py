"""Drop-in modules for the seed's UNet blocks (``pyimpl.unet``: DoubleConv, Down, Up, SelfAttention)
that run the fused ops. Each keeps the original's submodules under the same names, so parameters
are shared with the module it replaces (``from_module``) and ``state_dict`` keys are unchanged.

- ``FusedDoubleConv``: conv, GroupNorm+GELU (one fused pass), conv, GroupNorm(+residual+GELU)(+emb).
- ``FusedDown``: max-pool, two fused DoubleConvs; the time embedding is added by the last one's
  GroupNorm pass instead of a separate ``repeat`` and add.
- ``FusedUp``: upsample+concat in one pass, two fused DoubleConvs, the embedding as in Down.
- ``FusedSelfAttention``: transpose+LayerNorm in one pass, the attention with ``need_weights=False``
  (the seed discards the weights), the residual add fused with the feed-forward's LayerNorm.

Which backend runs is the dispatcher's choice per call: Triton for CUDA tensors, the references
(plain PyTorch) on the CPU unless Triton is forced under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from kernels.fused.ops import add_layer_norm, group_norm_act, tokens_layer_norm, upsample_concat

__all__ = [
    "DROP_INS",
    "FusedDoubleConv",
    "FusedDown",
    "FusedSelfAttention",
    "FusedUp",
    "double_conv_reasons",
    "down_reasons",
    "fuse_seed_blocks",
    "self_attention_reasons",
    "up_reasons",
]


def _child(m: nn.Module, name: str) -> Any:
    """An attribute of a module the reasons functions have checked (typed loosely on purpose)."""
    return getattr(m, name)


def _gn(m: nn.Module) -> tuple[int, torch.Tensor | None, torch.Tensor | None, float]:
    gn = cast(nn.GroupNorm, m)
    return gn.num_groups, gn.weight, gn.bias, gn.eps


def _is_gelu(m: nn.Module) -> bool:
    return isinstance(m, nn.GELU) and m.approximate == "none"


def double_conv_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a DoubleConv the fused module can run (empty: it is)."""
    seq = getattr(m, "double_conv", None)
    if isinstance(m, FusedDoubleConv):
        return []
    if not isinstance(seq, nn.Sequential) or len(seq) != 5:
        return ["expected .double_conv = Sequential(conv, GroupNorm, GELU, conv, GroupNorm)"]
    conv1, gn1, act, conv2, gn2 = seq
    out = []
    if not (isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)):
        out.append("double_conv[0] and [3] must be Conv2d")
    if not (isinstance(gn1, nn.GroupNorm) and isinstance(gn2, nn.GroupNorm)):
        out.append("double_conv[1] and [4] must be GroupNorm")
    if not _is_gelu(act):
        out.append(f"double_conv[2]={act!r}: the fused pass applies the exact GELU (approximate='none')")
    if not isinstance(getattr(m, "residual", None), bool):
        out.append("expected a boolean .residual")
    return out


class FusedDoubleConv(nn.Module):
    """The seed's ``DoubleConv`` with each GroupNorm fused with what follows it.

    ``forward(x, emb=None)``: ``emb`` (N, C_out) is added after the block (what ``Down`` / ``Up`` do).
    """

    def __init__(self, double_conv: nn.Sequential, residual: bool) -> None:
        super().__init__()
        self.double_conv = double_conv
        self.residual = residual

    @classmethod
    def from_module(cls, m: nn.Module) -> FusedDoubleConv:
        if isinstance(m, FusedDoubleConv):
            return m
        why = double_conv_reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        return cls(_child(m, "double_conv"), bool(_child(m, "residual")))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        conv1, gn1, _, conv2, gn2 = self.double_conv
        h = group_norm_act(conv1(x), *_gn(gn1), activation="gelu")
        h = conv2(h)
        if self.residual:
            return group_norm_act(h, *_gn(gn2), residual=x, emb=emb, activation="gelu")
        return group_norm_act(h, *_gn(gn2), emb=emb)


def _emb_reasons(m: nn.Module) -> list[str]:
    emb = getattr(m, "emb_layer", None)
    if not isinstance(emb, nn.Module):
        return ["expected .emb_layer (SiLU, Linear)"]
    return []


def down_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a seed ``Down`` block (MaxPool2d, DoubleConv, DoubleConv; emb_layer)."""
    seq = getattr(m, "maxpool_conv", None)
    if not isinstance(seq, nn.Sequential) or len(seq) != 3 or not isinstance(seq[0], nn.MaxPool2d):
        return ["expected .maxpool_conv = Sequential(MaxPool2d, DoubleConv, DoubleConv)"]
    return [f"maxpool_conv[{i}]: {w}" for i in (1, 2) for w in double_conv_reasons(seq[i])] + _emb_reasons(m)


class FusedDown(nn.Module):
    """The seed's ``Down``: the time embedding is added inside the last GroupNorm pass."""

    def __init__(self, maxpool_conv: nn.Sequential, emb_layer: nn.Module) -> None:
        super().__init__()
        self.maxpool_conv = maxpool_conv
        self.emb_layer = emb_layer

    @classmethod
    def from_module(cls, m: nn.Module) -> FusedDown:
        why = down_reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        pool, dc1, dc2 = _child(m, "maxpool_conv")
        seq = nn.Sequential(pool, FusedDoubleConv.from_module(dc1), FusedDoubleConv.from_module(dc2))
        return cls(seq, _child(m, "emb_layer"))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pool, dc1, dc2 = self.maxpool_conv
        return dc2(dc1(pool(x)), emb=self.emb_layer(t))


def up_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a seed ``Up`` block (bilinear 2x align_corners Upsample, two DoubleConvs)."""
    up = getattr(m, "up", None)
    out = []
    if not (isinstance(up, nn.Upsample) and up.mode == "bilinear" and up.align_corners
            and up.size is None and up.scale_factor in (2, 2.0, (2.0, 2.0))):
        out.append(f".up={up!r}: the fused pass does Upsample(scale_factor=2, mode='bilinear', align_corners=True)")
    seq = getattr(m, "conv", None)
    if not isinstance(seq, nn.Sequential) or len(seq) != 2:
        return [*out, "expected .conv = Sequential(DoubleConv, DoubleConv)"]
    return out + [f"conv[{i}]: {w}" for i in (0, 1) for w in double_conv_reasons(seq[i])] + _emb_reasons(m)


class FusedUp(nn.Module):
    """The seed's ``Up``: upsample and concatenation in one pass, the embedding in the last GroupNorm."""

    def __init__(self, up: nn.Module, conv: nn.Sequential, emb_layer: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.conv = conv
        self.emb_layer = emb_layer

    @classmethod
    def from_module(cls, m: nn.Module) -> FusedUp:
        why = up_reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        dc1, dc2 = _child(m, "conv")
        return cls(_child(m, "up"), nn.Sequential(FusedDoubleConv.from_module(dc1), FusedDoubleConv.from_module(dc2)),
                   _child(m, "emb_layer"))

    def forward(self, x: torch.Tensor, skip_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dc1, dc2 = self.conv
        h = upsample_concat(x, skip_x)
        return dc2(dc1(h), emb=self.emb_layer(t))


def self_attention_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a seed ``SelfAttention`` block (ln, mha, ff_self = LN, Linear, GELU, Linear)."""
    out = []
    if not isinstance(getattr(m, "channels", None), int) or not isinstance(getattr(m, "size", None), int):
        out.append("expected integer .channels and .size")
    ln = getattr(m, "ln", None)
    if not (isinstance(ln, nn.LayerNorm) and len(ln.normalized_shape) == 1):
        out.append("expected .ln = LayerNorm([channels])")
    if not callable(getattr(m, "mha", None)):
        out.append("expected .mha (a MultiheadAttention with batch_first=True)")
    elif getattr(m.mha, "batch_first", True) is not True:
        out.append(".mha.batch_first=False: the seed's block passes (B, N, C) tokens")
    ff = getattr(m, "ff_self", None)
    if not (isinstance(ff, nn.Sequential) and len(ff) == 4 and isinstance(ff[0], nn.LayerNorm)
            and isinstance(ff[1], nn.Linear) and _is_gelu(ff[2]) and isinstance(ff[3], nn.Linear)):
        out.append("expected .ff_self = Sequential(LayerNorm, Linear, GELU(), Linear)")
    return out


class FusedSelfAttention(nn.Module):
    """The seed's ``SelfAttention`` block with its layout change and norms fused."""

    def __init__(self, channels: int, size: int, mha: nn.Module, ln: nn.LayerNorm, ff_self: nn.Sequential) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.mha = mha
        self.ln = ln
        self.ff_self = ff_self

    @classmethod
    def from_module(cls, m: nn.Module) -> FusedSelfAttention:
        why = self_attention_reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        return cls(*(_child(m, k) for k in ("channels", "size", "mha", "ln", "ff_self")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ff_ln, lin1, act, lin2 = self.ff_self
        tokens, x_ln = tokens_layer_norm(x, self.ln.weight, self.ln.bias, self.ln.eps)
        attention, _ = self.mha(x_ln, x_ln, x_ln, need_weights=False)
        norm = cast(nn.LayerNorm, ff_ln)
        s, h = add_layer_norm(attention, tokens, norm.weight, norm.bias, norm.eps)
        out = lin2(act(lin1(h))) + s
        return out.swapaxes(2, 1).view(-1, self.channels, x.shape[-2], x.shape[-1])


# The seed's block classes (matched by name, so the seed's own ddpm.py modules, pyimpl.unet and
# copies of it qualify), each with why an instance cannot be fused and how to build its drop-in.
DROP_INS: dict[str, tuple[Callable[[nn.Module], list[str]], Callable[[nn.Module], nn.Module]]] = {
    "DoubleConv": (double_conv_reasons, FusedDoubleConv.from_module),
    "Down": (down_reasons, FusedDown.from_module),
    "Up": (up_reasons, FusedUp.from_module),
    "SelfAttention": (self_attention_reasons, FusedSelfAttention.from_module),
}


def fuse_seed_blocks(model: nn.Module) -> list[tuple[str, str, str]]:
    """Swap the seed's blocks inside ``model`` (in place) for their fused drop-ins, sharing parameters.

    Returns ``(qualified name, class, 'fused' or the reasons it was left)`` for every candidate.
    """
    report: list[tuple[str, str, str]] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            entry = DROP_INS.get(type(child).__name__)
            if entry is None:
                visit(child, qual + ".")
                continue
            reasons, build = entry
            why = reasons(child)
            if why:
                report.append((qual, type(child).__name__, "; ".join(why)))
                visit(child, qual + ".")
                continue
            setattr(parent, name, build(child))
            report.append((qual, type(child).__name__, "fused"))

    visit(model, "")
    return report
