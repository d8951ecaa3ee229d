"""What the fused drop-ins of ``kernels.fused`` and ``kernels.resnet`` share: a fused block built as a
view of a live block (same submodules, parameters and buffers), and the registration of a table of them
with ``kernels.nn``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from torch import nn

from modelkernels.kernels import nn as knn

_M = TypeVar("_M", bound=nn.Module)


def view_of(cls: type[_M], m: nn.Module) -> _M:
    """A ``cls`` built without its ``__init__`` that shares ``m``'s submodules, parameters, buffers and
    training mode (so weights, device, dtype and the optimizer's view of them stay as they were)."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new._modules = m._modules
    new._parameters = m._parameters
    new._buffers = m._buffers
    new.training = m.training
    return new


def _factory(fused: Any) -> Callable[..., nn.Module]:
    def build(module: nn.Module, **_: Any) -> nn.Module:
        out: nn.Module = fused.from_module(module)
        return out

    build.__qualname__ = f"{fused.__name__}.from_module"
    return build


def register_blocks(namespace: ModuleType | Any, blocks: dict[str, tuple[str, Any]]) -> list[str]:
    """Register ``fused.from_module`` as the drop-in of ``namespace.<class name>`` for each
    ``class name -> (drop-in name, fused class)`` of ``blocks`` that ``namespace`` has (as an
    ``nn.Module`` subclass), with ``fused.reasons`` saying why a block does not fit; returns the class
    names registered."""
    done = []
    for cls_name, (name, fused) in blocks.items():
        cls = getattr(namespace, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            knn.register_drop_in(cls, name=name, reasons=fused.reasons, replacement=fused)(_factory(fused))
            done.append(cls_name)
    return done
