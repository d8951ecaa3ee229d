"""BatchNorm folded into the convolution before it, derived from the live modules and kept current.

``FoldedConv(modules, "conv1", "bn1").weight_and_bias()`` returns ``(W', b')`` of ``pyimpl.resnet.fold_batch_norm``:
W' rounded once to the convolution's weight dtype, b' kept in float32 (float64 for float64 models),
for the epilogue to add. Nothing of the model is changed, so ``unpatch`` needs to restore nothing.

The folded pair is cached and recomputed when any input of the fold changes: a parameter or buffer
replaced (another tensor), written in place (its version counter: ``load_state_dict``, ``fill_``,
an optimizer step), or moved (``model.to(...)``: device, dtype, storage), or ``eps`` changed. Under
``torch.compile`` the fold is traced into the graph instead (a few elementwise kernels over the
weights per call; inductor's ``freezing`` turns them into constants).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelkernels.pyimpl.resnet import fold_batch_norm

__all__ = ["FoldedConv"]


class FoldedConv:
    """The (weight, bias) of ``bn(conv(x))`` as one convolution, ``conv`` and ``bn`` looked up by name in
    ``modules`` (a block's submodule dictionary, shared with the live block) on every call."""

    __slots__ = ("bn_name", "conv_name", "key", "modules", "value")

    def __init__(self, modules: dict[str, Any], conv_name: str, bn_name: str) -> None:
        self.modules = modules
        self.conv_name = conv_name
        self.bn_name = bn_name
        self.key: Any = None
        self.value: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def conv(self) -> nn.Conv2d:
        conv: nn.Conv2d = self.modules[self.conv_name]
        return conv

    @property
    def bn(self) -> nn.BatchNorm2d:
        bn: nn.BatchNorm2d = self.modules[self.bn_name]
        return bn

    def _inputs(self) -> tuple[Any, ...]:
        params, bn = self.modules[self.conv_name]._parameters, self.modules[self.bn_name]
        buffers, bn_params = bn._buffers, bn._parameters
        return (params["weight"], params.get("bias"), buffers["running_mean"], buffers["running_var"],
                bn_params.get("weight"), bn_params.get("bias"))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fold from the current parameters (traceable: no cache)."""
        weight, bias, mean, var, gamma, beta = self._inputs()
        w, b = fold_batch_norm(weight, bias, mean, var, gamma, beta, self.bn.eps)
        return w.to(weight.dtype), b

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached fold, recomputed if anything it was derived from changed since."""
        if torch.compiler.is_compiling():
            return self.compute()
        # a tensor written in place bumps its version; replaced or moved, its storage changes
        key: list[Any] = [self.bn.eps]
        for t in self._inputs():
            key += (None, None) if t is None else (t._version, t.data_ptr())
        if self.value is None or key != self.key:
            with torch.no_grad():
                self.value = self.compute()
            self.key = key
        return self.value
