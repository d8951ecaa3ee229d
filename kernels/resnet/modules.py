"""Drop-ins for ResNet's residual blocks (torchvision's, timm's and ``pyimpl.resnet``'s ``BasicBlock`` and
``Bottleneck``) in eval mode: each convolution runs cuDNN with its BatchNorm folded into the weight
(``kernels.resnet.folding``), and what follows it runs as one ``conv_epilogue`` pass: bias + ReLU after
the inner convolutions, bias + shortcut (+ the downsample convolution's folded bias) + ReLU after the
last one. Per Bottleneck that is 6 kernels (7 with a downsample) instead of 10 (12).

A drop-in is a second view of the block (it shares the block's submodule, parameter and buffer
dictionaries), so ``state_dict`` keys, device and dtype are the block's. In train mode, or when a
gradient is needed, it runs the block's own forward. Blocks are recognised by structure
(``block_reasons``), not by where their class comes from.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelkernels.kernels.block_views import view_of
from modelkernels.kernels.resnet.folding import FoldedConv
from modelkernels.kernels.resnet.ops import conv_epilogue

__all__ = ["FusedBasicBlock", "FusedBottleneck", "block_reasons"]

# submodules whose place in the forward is known: torchvision's names and timm's
_ACTIVATIONS = ("relu", "act1", "act2", "act3")
_IDENTITIES = ("drop_block", "aa", "se", "drop_path")  # timm: nn.Identity or None in a plain ResNet


def _convs(m: nn.Module) -> list[tuple[str, str]]:
    return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if f"conv{i}" in m._modules]


def _pair_reasons(where: str, conv: Any, bn: Any) -> list[str]:
    if type(conv) is not nn.Conv2d:
        return [f"{where}: {type(conv).__name__}, expected a plain nn.Conv2d"]
    out = []
    if conv.padding_mode != "zeros":
        out.append(f"{where}.padding_mode={conv.padding_mode!r}: the folded convolution pads with zeros")
    if type(bn) is not nn.BatchNorm2d:
        out.append(f"{where}: followed by {type(bn).__name__}, expected nn.BatchNorm2d")
    elif bn.running_mean is None or bn.running_var is None:
        out.append(f"{where}: its BatchNorm2d has track_running_stats=False (no statistics to fold)")
    elif bn.num_features != conv.out_channels:
        out.append(f"{where}: BatchNorm2d({bn.num_features}) after a convolution of {conv.out_channels} channels")
    return out


def block_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a ResNet BasicBlock / Bottleneck the drop-in runs (empty: it is)."""
    if m.training:
        return ["train mode: BatchNorm normalises with batch statistics, so there is nothing to fold; "
                "call model.eval() before kernels.nn.patch(model)"]
    mods = m._modules
    pairs = _convs(m)
    want = 3 if type(m).__name__ == "Bottleneck" else 2
    if [c for c, _ in pairs] != [f"conv{i}" for i in range(1, want + 1)]:
        return [f"expected conv1..conv{want} with bn1..bn{want}"]
    out = [w for conv, bn in pairs for w in _pair_reasons(conv, mods.get(conv), mods.get(bn))]
    known = {name for pair in pairs for name in pair} | {*_ACTIVATIONS, *_IDENTITIES, "downsample"}
    out += [f"submodule {name!r} ({type(sub).__name__}): its place in the forward is unknown"
            for name, sub in mods.items() if name not in known and sub is not None]
    acts = [name for name in _ACTIVATIONS if name in mods]
    if "relu" not in acts and acts != [f"act{i}" for i in range(1, want + 1)]:
        out.append(f"expected .relu or .act1..act{want}")
    out += [f"{name}={mods[name]!r}: the fused epilogue applies ReLU" for name in acts
            if type(mods[name]) is not nn.ReLU]
    out += [f"{name}={sub!r}: expected nn.Identity or None" for name in _IDENTITIES
            if (sub := mods.get(name, getattr(m, name, None))) is not None and type(sub) is not nn.Identity]
    down = mods.get("downsample")
    if down is not None:
        if type(down) is not nn.Sequential or len(down) != 2:
            out.append(f"downsample={type(down).__name__}: expected Sequential(Conv2d, BatchNorm2d)")
        else:
            out += _pair_reasons("downsample.0", down[0], down[1])
    return out


def _folded_conv(x: torch.Tensor, fold: FoldedConv) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution on its folded weight without the bias, and the folded bias for the epilogue."""
    conv = fold.conv
    w, b = fold.weight_and_bias()
    return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups), b


class _FusedResidualBlock(nn.Module):
    """A fused view of a residual block: its convolutions folded, their epilogues fused."""

    reasons = staticmethod(block_reasons)  # why a module is not a block this class fuses

    def __init__(self) -> None:  # built by from_module only
        raise TypeError(f"build {type(self).__name__} with {type(self).__name__}.from_module(block)")

    @classmethod
    def from_module(cls, m: nn.Module) -> _FusedResidualBlock:
        """The fused view of block ``m``; ValueError naming every reason it does not fit."""
        why = block_reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        new = view_of(cls, m)
        new.__dict__["source"] = m  # not a submodule: its children are already this module's
        new.__dict__["branch"] = [FoldedConv(m._modules, conv, bn) for conv, bn in _convs(m)]
        down = m._modules.get("downsample")
        new.__dict__["shortcut"] = FoldedConv(down._modules, "0", "1") if down is not None else None
        return new

    source: nn.Module
    branch: list[FoldedConv]
    shortcut: FoldedConv | None

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self._needs_grad(x):
            self.source.training = self.training
            out: torch.Tensor = self.source.forward(x)
            return out
        *inner, last = self.branch
        h = x
        for fold in inner:
            h = conv_epilogue(*_folded_conv(h, fold))
        h, b = _folded_conv(h, last)
        if self.shortcut is None:
            return conv_epilogue(h, b, x.to(h.dtype))
        r, bs = _folded_conv(x, self.shortcut)
        return conv_epilogue(h, b, r.to(h.dtype), bs)


class FusedBasicBlock(_FusedResidualBlock):
    """ResNet-18/34's BasicBlock: conv3x3 + bias + ReLU, conv3x3 + bias + shortcut + ReLU."""


class FusedBottleneck(_FusedResidualBlock):
    """ResNet-50/101's Bottleneck: two conv + bias + ReLU passes, then conv1x1 + bias + shortcut + ReLU."""
