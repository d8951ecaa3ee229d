"""Drop-in modules and ``patch(model)``: swap supported submodules of a live model for fused ones.

Drop-ins register here as kernels register in the registry: ``@register_drop_in(SourceClass)``
on a factory that builds the replacement from a live module (sharing its parameters, so weights,
device, dtype and the optimizer's view of them stay as they were), with a ``reasons`` function
that says why a particular module cannot be replaced. ``patch(model)`` walks
``model.named_modules()``, replaces what it can in place and returns a ``PatchReport``;
``unpatch(model)`` puts the original modules back (as Liger-Kernel's ``apply_liger_kernel_to_*``
and HF ``kernelize`` do for their models).

    import kernels.nn
    report = kernels.nn.patch(unet, need_weights=False)   # the seed's UNet discards the weights
    print(report)
    kernels.nn.unpatch(unet)

Registered now: ``torch.nn.MultiheadAttention`` -> ``kernels.nn.MultiheadAttention``.
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels.attention.ops import attention
from pyimpl import attention as ref

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


_WARNED_WEIGHTS = False


def _warn_weights_once() -> None:
    global _WARNED_WEIGHTS
    if not _WARNED_WEIGHTS:
        _WARNED_WEIGHTS = True
        warnings.warn("kernels.nn.MultiheadAttention: need_weights=True computes the (L, S) attention weights through "
                      "the reference path (O(N^2) memory, slow); pass need_weights=False for the fused kernel",
                      stacklevel=3)


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` on the fused attention kernel (``kernels.attention``).

    Same constructor, parameters and ``state_dict`` keys, so checkpoints load unchanged; it is a
    subclass, so ``isinstance`` checks hold. ``add_bias_kv`` and ``add_zero_attn`` are refused.
    With ``need_weights=False`` the projections feed the kernel as (B, N, H, D) views (for
    self-attention one fused in-projection, sliced by strides) and no (L, S) matrix exists.
    ``need_weights=True`` returns the weights computed by the reference (warns once).
    Float or 3-D ``attn_mask``, float ``key_padding_mask``, and dropout while training run
    torch's own implementation. A query that sees no key returns 0 (torch gives NaN).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        if add_bias_kv:
            raise ValueError("add_bias_kv=True: not supported by kernels.nn.MultiheadAttention (the fused path has "
                             "no learned bias key/value); use torch.nn.MultiheadAttention")
        if add_zero_attn:
            raise ValueError("add_zero_attn=True: not supported by kernels.nn.MultiheadAttention; "
                             "use torch.nn.MultiheadAttention")
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim,
                         batch_first=batch_first, device=device, dtype=dtype)
        self.ignore_need_weights = False

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, need_weights: bool | None = None) -> MultiheadAttention:
        """A drop-in sharing ``module``'s parameters, buffers, hooks and training mode.

        need_weights=False: never compute the weights; return None for them even when asked.
        """
        why = _mha_reasons(module)
        if why:
            raise ValueError("cannot replace this nn.MultiheadAttention: " + "; ".join(why))
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key, value in module.__dict__.items():
            new.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
        new.ignore_need_weights = need_weights is False
        return new

    def _fallback_reason(self, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                         query: torch.Tensor) -> str:
        if attn_mask is not None:
            return "attn_mask"
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            return "float key_padding_mask"
        if self.training and self.dropout > 0.0:
            return "dropout while training"
        if query.dim() not in (2, 3):
            return "query shape"
        return ""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal or self._fallback_reason(key_padding_mask, attn_mask, query):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        weights = need_weights and not self.ignore_need_weights
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._project(query, key, value)
        if weights:
            _warn_weights_once()
            qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            p = ref.attention_probabilities(qh, kh, key_padding_mask=key_padding_mask)
            out = torch.matmul(p, vh).transpose(1, 2)
            attn: torch.Tensor | None = p.mean(dim=1) if average_attn_weights else p
        else:
            out = attention(q, k, v, key_padding_mask=key_padding_mask, layout="bnhd")
            attn = None
        out = F.linear(out.flatten(2), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            return out.squeeze(0), (attn.squeeze(0) if attn is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, attn

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, N, H, D) views of the in-projections (one matmul for self-attention)."""
        h, d = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim and query is key and key is value:
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, h, d))
            q, k, v = qkv.unbind(dim=2)
            return q, k, v
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        return (F.linear(query, w_q, b_q).unflatten(-1, (h, d)), F.linear(key, w_k, b_k).unflatten(-1, (h, d)),
                F.linear(value, w_v, b_v).unflatten(-1, (h, d)))


def _mha_reasons(module: nn.Module) -> list[str]:
    out = []
    if getattr(module, "bias_k", None) is not None:
        out.append("add_bias_kv=True: the fused path has no learned bias key/value")
    if getattr(module, "add_zero_attn", False):
        out.append("add_zero_attn=True: not supported")
    return out


@register_drop_in(nn.MultiheadAttention, name="attention", reasons=_mha_reasons, replacement=MultiheadAttention)
def multihead_attention_drop_in(module: nn.Module, *, need_weights: bool | None = None,
                                **_: Any) -> MultiheadAttention:
    """nn.MultiheadAttention -> kernels.nn.MultiheadAttention (shared parameters)."""
    assert isinstance(module, nn.MultiheadAttention)
    return MultiheadAttention.from_torch(module, need_weights=need_weights)
