"""The fused ResNet blocks registered as drop-ins of ``kernels.nn.patch``.

``kernels.nn.patch`` matches a module's exact class, so each library's ``BasicBlock`` / ``Bottleneck``
class is registered: ``pyimpl.resnet``'s now, torchvision's (``torchvision.models.resnet``) and timm's
(``timm.models.resnet``) as soon as that module is imported, before or after this one, without this
library importing either (a post-import hook: importing torchvision here would cost seconds and fail
where its build does not match torch's). ``register_resnet_blocks(namespace)`` registers the block
classes of any other module of the same structure; ``patch`` still checks each block
(``block_reasons``) and reports the ones it leaves.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from modelkernels.kernels.block_views import register_blocks
from modelkernels.kernels.resnet.modules import FusedBasicBlock, FusedBottleneck
from modelkernels.pyimpl import resnet

__all__ = ["WATCHED", "register_resnet_blocks"]

BLOCKS = {"BasicBlock": ("resnet_basic_block", FusedBasicBlock), "Bottleneck": ("resnet_bottleneck", FusedBottleneck)}
WATCHED = ("torchvision.models.resnet", "timm.models.resnet")  # registered when imported


def register_resnet_blocks(namespace: ModuleType | Any) -> list[str]:
    """Register the fused drop-ins for ``namespace.BasicBlock`` / ``namespace.Bottleneck`` (a module or
    any object with those attributes); returns the class names registered."""
    return register_blocks(namespace, BLOCKS)


class _Loader(importlib.abc.Loader):
    """Runs a module's own loader, then ``after(module)``; anything else is the wrapped loader's."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], object]) -> None:
        self.loader = loader
        self.after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        module.__loader__ = self.loader  # the module's own loader from now on (a reload runs it alone)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        try:
            self.after(module)
        except Exception as e:  # a failed registration must not break the user's import
            warnings.warn(f"kernels.resnet: the ResNet drop-ins for {module.__name__} were not registered: {e}",
                          stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _WhenImported(importlib.abc.MetaPathFinder):
    """Calls ``after(module)`` once each watched module has been imported."""

    def __init__(self, names: Sequence[str], after: Callable[[ModuleType], object]) -> None:
        self.pending = set(names)
        self.after = after

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self.after)
                return spec
        return None


def _register_when_imported(names: Sequence[str]) -> None:
    pending = []
    for name in names:
        if name in sys.modules:
            register_resnet_blocks(sys.modules[name])
        else:
            pending.append(name)
    if pending:
        sys.meta_path.insert(0, _WhenImported(pending, register_resnet_blocks))


register_resnet_blocks(resnet)
_register_when_imported(WATCHED)
