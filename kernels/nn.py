"""Drop-in modules and ``patch(model)``: swap supported submodules of a live model for fused ones.

Drop-ins register here as kernels register in the registry: ``@register_drop_in(SourceClass)``
on a factory that builds the replacement from a live module (sharing its parameters, so weights,
device, dtype and the optimizer's view of them stay as they were), with a ``reasons`` function
that says why a particular module cannot be replaced. ``patch(model)`` walks
``model.named_modules()``, replaces what it can in place and returns a ``PatchReport``;
``unpatch(model)`` puts the original modules back (as Liger-Kernel's ``apply_liger_kernel_to_*``
and HF ``kernelize`` do for their models).

    from modelkernels import kernels
    report = kernels.nn.patch(unet, need_weights=False)   # the seed's UNet discards the weights
    print(report)
    kernels.nn.unpatch(unet)

Each domain registers its own drop-ins: ``torch.nn.MultiheadAttention`` -> ``kernels.nn.MultiheadAttention``
(``kernels.attention.modules``, re-exported here), the seed UNet's blocks (``kernels.fused.drop_ins``).
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # at run time ``__getattr__`` below imports it (it imports this module)
    from modelkernels.kernels.attention.modules import MultiheadAttention

__all__ = ["DropIn", "MultiheadAttention", "PatchReport", "list_drop_ins", "patch", "register_drop_in", "unpatch"]


@dataclass
class DropIn:
    """A replacement for one module class: ``factory(module, **options)`` builds it from a live module;
    ``reasons(module)`` returns why that module cannot be replaced (empty: it can)."""

    name: str
    source: type[nn.Module]
    factory: Callable[..., nn.Module]
    reasons: Callable[[nn.Module], list[str]] | None = None
    replacement: type[nn.Module] | None = None  # modules of this type are already fused: left silently


_DROP_INS: dict[type[nn.Module], DropIn] = {}
_ORIGINALS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def register_drop_in(source: type[nn.Module], *, name: str | None = None,
                     reasons: Callable[[nn.Module], list[str]] | None = None,
                     replacement: type[nn.Module] | None = None
                     ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory`` as the drop-in for modules of exactly type ``source``.

    ``reasons(module)``: why a module cannot be replaced. ``replacement``: the class the factory
    builds, so modules already of that class are left without comment."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if source in _DROP_INS:
            warnings.warn(f"drop-in for {source.__qualname__} is registered again; the new one replaces it",
                          stacklevel=2)
        _DROP_INS[source] = DropIn(name or source.__name__, source, factory, reasons, replacement)
        return factory

    return deco


def list_drop_ins() -> list[str]:
    """``"name: Source -> factory"`` for every registered drop-in."""
    return [f"{d.name}: {d.source.__module__}.{d.source.__qualname__} -> {d.factory.__qualname__}"
            for d in _DROP_INS.values()]


@dataclass
class PatchReport:
    """What ``patch`` replaced (path, old class, new class) and what it left (path, class, why)."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"patched {len(self.replaced)} module(s), left {len(self.kept)}"]
        lines += [f"  replaced {path or '<model>'}: {old} -> {new}" for path, old, new in self.replaced]
        lines += [f"  kept     {path or '<model>'} ({cls}): {why}" for path, cls, why in self.kept]
        return "\n".join(lines)


def _drop_in_for(module: nn.Module) -> tuple[DropIn | None, str]:
    """The drop-in for this module's exact class, or None with the reason when only a base class has one."""
    exact = _DROP_INS.get(type(module))
    if exact is not None:
        return exact, ""
    for source, d in _DROP_INS.items():
        if d.replacement is not None and isinstance(module, d.replacement):
            return None, ""
        if isinstance(module, source):
            return None, (f"a subclass of {source.__qualname__} ({type(module).__qualname__}) may change its "
                          f"forward; only {source.__qualname__} itself is replaced")
    return None, ""


def _children(parent: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every (name, child), a module registered under two names included (``named_children`` drops those)."""
    return [(name, child) for name, child in parent._modules.items() if child is not None]


def patch(model: nn.Module, *, drop_ins: Iterable[str] | None = None, skip: Iterable[str] = (),
          **options: Any) -> PatchReport:
    """Replace every supported submodule of ``model`` in place; return what was replaced and what not.

    drop_ins: names of the drop-ins to apply (default: all, see ``list_drop_ins()``).
    skip: shell-style patterns of module paths to leave alone (``"sa6.*"``).
    options: passed to each factory; ``need_weights=False`` makes patched attention modules return
    None for the weights even when the caller asks (for code that discards them, as the seed's UNet).
    The walk descends into each replacement, so drop-ins nest (a fused block whose attention is
    then swapped too). The replacements share the originals' parameters; ``unpatch(model)``
    restores the originals.
    """
    wanted = set(drop_ins) if drop_ins is not None else None
    patterns = list(skip)
    report = PatchReport()
    built: dict[int, nn.Module] = {}  # a module shared at several paths gets one replacement
    visited: set[int] = set()
    if type(model) in _DROP_INS:
        report.kept.append(("", type(model).__name__, "the model itself cannot be replaced in place; build the "
                            "drop-in from it directly (e.g. kernels.nn.MultiheadAttention.from_torch(model))"))

    def replacement(path: str, child: nn.Module) -> nn.Module | None:
        if id(child) in built:  # the same module under a second name
            new = built[id(child)]
            report.replaced.append((path, type(child).__name__, f"{type(new).__module__}.{type(new).__qualname__}"))
            return new
        d, why = _drop_in_for(child)
        if d is None:
            if why:
                report.kept.append((path, type(child).__name__, why))
            return None
        if wanted is not None and d.name not in wanted:
            report.kept.append((path, type(child).__name__, f"drop-in {d.name!r} not in drop_ins"))
            return None
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            report.kept.append((path, type(child).__name__, "skipped by pattern"))
            return None
        reasons = d.reasons(child) if d.reasons is not None else []
        if reasons:
            report.kept.append((path, type(child).__name__, "; ".join(reasons)))
            return None
        new = d.factory(child, **options)
        _ORIGINALS[new] = child
        built[id(child)] = new
        report.replaced.append((path, type(child).__name__, f"{type(new).__module__}.{type(new).__qualname__}"))
        return new

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in _children(parent):
            path = f"{prefix}.{name}" if prefix else name
            new = replacement(path, child)
            if new is not None:
                setattr(parent, name, new)
                child = new
            if id(child) not in visited:
                visited.add(id(child))
                walk(child, path)

    walk(model, "")
    return report


def unpatch(model: nn.Module) -> int:
    """Put back the original modules that ``patch`` replaced; returns how many places were restored."""
    restored = 0
    visited: set[int] = set()

    def walk(parent: nn.Module) -> None:
        nonlocal restored
        for name, child in _children(parent):
            original = _ORIGINALS.get(child)
            if original is not None:
                setattr(parent, name, original)
                restored += 1
                child = original
            if id(child) not in visited:
                visited.add(id(child))
                walk(child)

    walk(model)
    return restored


def __getattr__(name: str) -> Any:
    """``kernels.nn.MultiheadAttention``: the attention domain's drop-in, imported on first use (it imports
    this module to register itself)."""
    if name == "MultiheadAttention":
        from modelkernels.kernels.attention.modules import MultiheadAttention

        return MultiheadAttention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
