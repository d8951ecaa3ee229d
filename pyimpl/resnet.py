"""ResNet-18/34/50/101 (He et al. 2016, "Deep Residual Learning for Image Recognition") as torchvision
builds them, and the references of what ``kernels.resnet`` fuses: BatchNorm folded into the convolution
before it, and the epilogue after a block's convolution.

Module and parameter names are torchvision's (``torchvision/models/resnet.py``): ``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` / ``.1``, ``fc``, ..., so a torchvision ``state_dict``
loads with ``strict=True``.

- ``BasicBlock`` (ResNet-18/34): ``y = relu(bn2(conv3x3(relu(bn1(conv3x3_s(x))))) + shortcut(x))``.
- ``Bottleneck`` (ResNet-50/101): ``y = relu(bn3(conv1x1(relu(bn2(conv3x3_s(relu(bn1(conv1x1(x)))))))) +
  shortcut(x))``, the stride on the 3x3 convolution (torchvision's "ResNet v1.5"; the paper strides the
  first 1x1).
- ``shortcut(x)`` is ``x``, or ``bn(conv1x1_s(x))`` (``downsample``) where the stride or the width changes.

Pure PyTorch; imports nothing of ``kernels``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "check_conv_epilogue_args",
    "conv_epilogue",
    "fold_batch_norm",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, ReLU between, the shortcut added before the last ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand by 4, each with BatchNorm; the shortcut before the last ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool), four stages of blocks (widths 64..512, the
    first of stages 2-4 strided), global average pool, ``fc``. Initialised as torchvision does (Kaiming
    normal, fan-out, for convolutions; BatchNorm weight 1, bias 0)."""

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def resnet101(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes)


MODELS: dict[str, Callable[[int], ResNet]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
}


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, running_mean: torch.Tensor,
                    running_var: torch.Tensor, bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode ``BatchNorm2d`` after a convolution, folded into the convolution's weight and bias.

    ``bn(conv(x)) = s * (W * x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, so
    ``W' = s[o] * W[o]`` and ``b' = beta + s * (b - mean)`` (Ioffe & Szegedy 2015, eq. in Alg. 2 at
    inference). Computed in float32 (float64 for float64 inputs) from whatever dtype the parameters
    have; returned in that precision for the caller to round once to the dtype it runs in.
    """
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    scale = torch.rsqrt(running_var.to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(acc)
    shift = -running_mean.to(acc) if bias is None else bias.to(acc) - running_mean.to(acc)
    folded_bias = shift * scale
    if bn_bias is not None:
        folded_bias = folded_bias + bn_bias.to(acc)
    folded_weight = weight.to(acc) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight, folded_bias


def check_conv_epilogue_args(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                             residual_bias: torch.Tensor | None, relu: bool) -> None:
    """The argument checks every ``conv_epilogue`` backend runs; errors name the argument and the value."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x.dtype={getattr(x, 'dtype', type(x).__name__)}: expected a floating-point tensor")
    if x.dim() != 4:
        raise ValueError(f"x.shape={tuple(x.shape)}: expected (N, C, H, W)")
    c = x.shape[1]
    for name, b in (("bias", bias), ("residual_bias", residual_bias)):
        if b is None:
            continue
        if not isinstance(b, torch.Tensor) or not b.is_floating_point():
            raise TypeError(f"{name}.dtype={getattr(b, 'dtype', type(b).__name__)}: expected a floating-point tensor")
        if tuple(b.shape) != (c,):
            raise ValueError(f"{name}.shape={tuple(b.shape)}: expected (C,) = ({c},)")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype:
            raise TypeError(f"residual.dtype={getattr(residual, 'dtype', type(residual).__name__)}: "
                            f"expected x.dtype={x.dtype}")
        if residual.shape != x.shape:
            raise ValueError(f"residual.shape={tuple(residual.shape)}: expected x.shape={tuple(x.shape)}")
    elif residual_bias is not None:
        raise ValueError("residual_bias is given without a residual: it is the shortcut convolution's bias")
    if not isinstance(relu, bool):
        raise TypeError(f"relu={relu!r}: expected True or False")


def conv_epilogue(x: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                  residual_bias: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """What follows a convolution whose BatchNorm was folded: ``act(x + bias[c] + residual + residual_bias[c])``.

    x: the convolution's output (N, C, H, W) without its bias; bias, residual_bias: (C,) or None (the
    folded biases of the block's last convolution and of the shortcut convolution); residual: x's
    shape and dtype, or None; act: ReLU (NaN propagates) or the identity. Computed in float32
    (float64 for float64 x), rounded once to x's dtype; the output keeps x's memory format.
    """
    check_conv_epilogue_args(x, bias, residual, residual_bias, relu)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(acc)
    if bias is not None:
        y = y + bias.to(acc).reshape(1, -1, 1, 1)
    if residual is not None:
        y = y + residual.to(acc)
        if residual_bias is not None:
            y = y + residual_bias.to(acc).reshape(1, -1, 1, 1)
    if relu:
        y = F.relu(y)
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    return y.to(x.dtype).contiguous(memory_format=fmt)
