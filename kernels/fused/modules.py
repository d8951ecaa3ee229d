"""Drop-in modules for the seed's UNet blocks (``pyimpl.unet``: DoubleConv, Down, Up, SelfAttention)
that run the fused ops. Each is a second view of the block it replaces (``from_module``): it shares
the block's submodules and parameters, so ``state_dict`` keys and weights are the block's, and
``kernels.nn.patch`` (``kernels.fused.drop_ins`` registers them) swaps the inner DoubleConvs and
the attention of a fused block as well.

- ``FusedDoubleConv``: conv, GroupNorm+GELU (one fused pass), conv, GroupNorm(+residual+GELU)(+emb).
- ``FusedDown``: max-pool, two fused DoubleConvs; the time embedding is added by the last one's
  GroupNorm pass instead of a separate ``repeat`` and add.
- ``FusedUp``: upsample+concat in one pass, two fused DoubleConvs, the embedding as in Down.
- ``FusedSelfAttention``: transpose+LayerNorm in one pass, the attention with ``need_weights=False``
  (the seed discards the weights), the residual add fused with the feed-forward's LayerNorm, and the
  feed-forward (Linear, GELU, Linear, residual add) in one kernel when both are plain ``nn.Linear``.

Each module resolves what its forward passes besides the activations (the submodules it runs, the norms'
weights and epsilons, the feed-forward's weights cast to the activations' dtype) at its first forward and
keeps it until a parameter changes (storage, version counter, dtype, device), a submodule is swapped or the
activations' dtype changes (``_Resolved``).

Which backend runs is the dispatcher's choice per call: Triton for CUDA tensors, the references
(plain PyTorch) on the CPU unless Triton is forced under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from torch import nn

from modelkernels.kernels.autograd import needs_autograd
from modelkernels.kernels.block_views import view_of
from modelkernels.kernels.fused.ops import (
    add_layer_norm,
    feed_forward,
    group_norm_act,
    tokens_layer_norm,
    upsample_concat,
)

__all__ = [
    "FusedDoubleConv",
    "FusedDown",
    "FusedSelfAttention",
    "FusedUp",
    "double_conv_reasons",
    "down_reasons",
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


_View = TypeVar("_View", bound="_BlockView")


def parameter_state(params: tuple[torch.Tensor | None, ...]) -> tuple[Any, ...]:
    """What a resolved constant derived from ``params`` depends on: each one's storage address, version
    counter (bumped by every in-place update, an optimizer step included), dtype and device."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) if p is not None else None for p in params)


class _Resolved:
    """One module's resolved forward arguments with the key they were built for (see the module docstring)."""

    __slots__ = ("key", "value")

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None

    def get(self, key: Callable[[], Any], build: Callable[[], Any]) -> Any:
        """The value ``build()`` made for ``key()``, rebuilt when the key differs. Under torch.compile the
        value is built in the traced graph each time (the graph then holds it; no key, no side effect)."""
        if torch.compiler.is_compiling():
            return build()
        now = key()
        if now != self.key:
            self.value = build()
            self.key = now
        return self.value


class _BlockView(nn.Module):
    """A drop-in that is a second view of a live block: it shares the block's submodule, parameter
    and buffer dictionaries, so parameters, ``state_dict`` keys, device and dtype are the block's,
    and a submodule that ``kernels.nn.patch`` swaps inside the block (its attention, its inner
    DoubleConvs) is swapped here too (and put back by ``unpatch``)."""

    ATTRIBUTES: tuple[str, ...] = ()
    _resolved: _Resolved
    reasons: Callable[[nn.Module], list[str]]  # why a module is not the block this class fuses

    @classmethod
    def from_module(cls: type[_View], m: nn.Module) -> _View:
        """The fused view of block ``m``; ValueError naming every reason it does not fit."""
        why = cls.reasons(m)
        if why:
            raise ValueError(f"{type(m).__name__} cannot be fused: " + "; ".join(why))
        out: _View = cls._view(m)
        return out

    @classmethod
    def _view(cls, m: nn.Module) -> Any:
        new = view_of(cls, m)
        new._resolved = _Resolved()
        for name in cls.ATTRIBUTES:
            setattr(new, name, getattr(m, name))
        return new


def _double_conv(block: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Run a DoubleConv child, fused or not, adding ``emb`` (N, C) after it."""
    if isinstance(block, FusedDoubleConv):
        return block(x, emb=emb)
    return block(x) + emb[:, :, None, None]


class FusedDoubleConv(_BlockView):
    """The seed's ``DoubleConv`` with each GroupNorm fused with what follows it.

    ``forward(x, emb=None)``: ``emb`` (N, C_out) is added after the block (what ``Down`` / ``Up`` do).
    """

    ATTRIBUTES = ("residual",)
    residual: bool

    reasons = staticmethod(double_conv_reasons)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        conv1, norm1, conv2, norm2 = self._constants()
        h = group_norm_act(conv1(x), *norm1, activation="gelu")
        h = conv2(h)
        if self.residual:
            return group_norm_act(h, *norm2, residual=x, emb=emb, activation="gelu")
        return group_norm_act(h, *norm2, emb=emb)

    def _constants(self) -> tuple[nn.Module, tuple[Any, ...], nn.Module, tuple[Any, ...]]:
        """(conv1, GroupNorm 1's (groups, weight, bias, eps), conv2, GroupNorm 2's), resolved once."""
        seq = _child(self, "double_conv")
        children = tuple(seq._modules.values())
        gn1, gn2 = children[1], children[4]
        out: tuple[nn.Module, tuple[Any, ...], nn.Module, tuple[Any, ...]] = self._resolved.get(
            lambda: (children, gn1.eps, gn2.eps, gn1.num_groups, gn2.num_groups,
                     parameter_state((gn1.weight, gn1.bias, gn2.weight, gn2.bias))),
            lambda: (children[0], _gn(gn1), children[3], _gn(gn2)))
        return out


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


class FusedDown(_BlockView):
    """The seed's ``Down``: the time embedding is added inside the last GroupNorm pass (when that
    DoubleConv is fused too, as ``kernels.nn.patch`` does)."""

    reasons = staticmethod(down_reasons)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pool, dc1, dc2 = _child(self, "maxpool_conv")
        return _double_conv(dc2, dc1(pool(x)), _child(self, "emb_layer")(t))


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


class FusedUp(_BlockView):
    """The seed's ``Up``: upsample and concatenation in one pass, the embedding in the last GroupNorm."""

    reasons = staticmethod(up_reasons)

    def forward(self, x: torch.Tensor, skip_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dc1, dc2 = _child(self, "conv")
        return _double_conv(dc2, dc1(upsample_concat(x, skip_x)), _child(self, "emb_layer")(t))


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


def _plain_linears(lin1: nn.Module, lin2: nn.Module, channels: int) -> bool:
    """Both feed-forward layers are plain ``nn.Linear`` (not a subclass with its own forward) from C
    channels back to C: ``feed_forward`` runs them with the GELU and the residual add in one kernel."""
    return (type(lin1) is nn.Linear and type(lin2) is nn.Linear and lin1.in_features == channels
            and lin2.out_features == channels and lin2.in_features == lin1.out_features)


class FusedSelfAttention(_BlockView):
    """The seed's ``SelfAttention`` block with its layout change, norms and feed-forward fused. The
    feed-forward runs ``feed_forward`` when ``ff_self``'s Linears are plain ``nn.Linear(C, F)``,
    ``nn.Linear(F, C)``, else the modules themselves (GELU and the residual add as separate ops)."""

    ATTRIBUTES = ("channels", "size")
    channels: int
    size: int

    reasons = staticmethod(self_attention_reasons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        ln, mha, ff_ln, (lin1, act, lin2), ff = self._constants(dtype or x.dtype)
        tokens, x_ln = tokens_layer_norm(x, *ln)
        attention, _ = mha(x_ln, x_ln, x_ln, need_weights=False)
        s, h = add_layer_norm(attention, tokens, *ff_ln)
        if ff is not None:
            if dtype is not None:  # what autocast would do to the Linear's input
                h = h.to(dtype)
            out = feed_forward(h, s, *ff)
        else:
            out = lin2(act(lin1(h))) + s
        return out.swapaxes(2, 1).view(-1, self.channels, x.shape[-2], x.shape[-1])

    def _constants(self, dtype: torch.dtype) -> Any:
        """(ln's (weight, bias, eps), mha, ff LayerNorm's, ff_self's Linear, GELU, Linear, and the arguments
        of ``feed_forward`` or None), resolved once. ``dtype``: the feed-forward's input dtype; its weights
        are kept cast to it (``feed_forward`` rounds them so anyway) unless they need gradients."""
        ln, mha = _child(self, "ln"), _child(self, "mha")
        ff_ln, lin1, act, lin2 = children = tuple(_child(self, "ff_self")._modules.values())
        params = (ln.weight, ln.bias, ff_ln.weight, ff_ln.bias, lin1.weight, lin1.bias, lin2.weight, lin2.bias)

        def key() -> Any:
            return ln, mha, children, ln.eps, ff_ln.eps, dtype, torch.is_grad_enabled(), parameter_state(params)

        def build() -> Any:
            ff = None
            if _plain_linears(lin1, lin2, self.channels):
                w1, w2 = lin1.weight, lin2.weight
                if not needs_autograd(w1, w2) and w1.is_floating_point():
                    w1, w2 = w1.detach().to(dtype), w2.detach().to(dtype)
                ff = (w1, lin1.bias, w2, lin2.bias)
            return (ln.weight, ln.bias, ln.eps), mha, (ff_ln.weight, ff_ln.bias, ff_ln.eps), (lin1, act, lin2), ff

        return self._resolved.get(key, build)
