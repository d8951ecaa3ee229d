"""The ``torch.library`` machinery the domains' ops share: the ``modelkernels`` library, ``define`` /
``fake`` / ``autograd`` to register an op once, and the helpers of their backward ops. The ops themselves
live with their domains: ``kernels/attention/library.py`` (``attention``) and ``kernels/fused/library.py``
(the fused ops).

Under ``torch.compile`` the public functions (``kernels.attention``, ``kernels.group_norm_act``,
``kernels.tokens_layer_norm``, ``kernels.add_layer_norm``, ``kernels.upsample_concat``,
``kernels.feed_forward``) call
``torch.ops.modelkernels.<op>``: dynamo records one opaque node per call instead of tracing the
dispatcher and the Triton launch, so a patched model compiles as one graph (``fullgraph=True``
holds). At run time the node runs the usual dispatch. Each op's fake implementation gives the
output's shape, dtype and memory format, and the real one returns that same layout.

Backward: a second custom op re-runs the forward under autograd and returns the input gradients
(``torch.autograd.grad``), so every backend's own backward is used, at the price of computing the
forward twice in compiled training. Eager calls never pass through here.

Inference: a differentiable op's autograd kernel is Python and runs on every call, gradients or not
(~4 µs a call on the CI CPU, under torch.compile as in eager). Each such op therefore has a twin,
``<op>_nograd``: the same implementation and fake, no autograd kernel. ``entry`` picks the op a compiled
graph records from what the call needs: the twin where no input needs a gradient (``torch.no_grad``,
``inference_mode``, inputs that do not require grad), which dynamo decides while tracing and guards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from modelkernels.kernels.autograd import needs_autograd

Tensor = torch.Tensor
LIBRARY = torch.library.Library("modelkernels", "DEF")  # the namespace; the domains define their ops in it


NOGRAD = "_nograd"  # the suffix of a differentiable op's twin without an autograd kernel
_IMPLS: dict[str, Callable[..., Any]] = {}
_FAKES: dict[str, Callable[..., Any]] = {}


def define(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Define ``modelkernels::<name>`` with the schema of the decorated function's annotations and the
    function as its one implementation on every device (``CompositeExplicitAutograd``): the dispatcher
    then calls it directly, without the per-call Python wrappers of ``torch.library.custom_op``. Returns
    the op (``torch.ops.modelkernels.<name>``)."""

    def deco(fn: Callable[..., Any]) -> Any:
        LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
        LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        _IMPLS[name] = fn
        return getattr(torch.ops.modelkernels, name)

    return deco


def fake(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Register the fake (meta) implementation of ``modelkernels::<name>``: shapes, dtypes, strides."""

    def deco(fn: Callable[..., Any]) -> Any:
        _FAKES[name] = fn
        return torch.library.register_fake(f"modelkernels::{name}", lib=LIBRARY)(fn)

    return deco


def autograd(name: str, backward: Callable[..., Any], *, setup_context: Callable[..., Any]) -> None:
    """Register ``modelkernels::<name>``'s backward formula, once, and define its twin ``<name>_nograd``
    (same implementation and fake, no autograd kernel) for calls that need no gradient (``entry``)."""
    torch.library.register_autograd(f"modelkernels::{name}", backward, setup_context=setup_context, lib=LIBRARY)
    define(name + NOGRAD)(_IMPLS[name])
    fake(name + NOGRAD)(_FAKES[name])


def entry(name: str, *tensors: Tensor | None) -> Any:
    """The op a compiled graph records for a call of ``<name>`` on ``tensors``: the differentiable op where
    one of them needs a gradient, else its twin without the autograd kernel's per-call Python."""
    return getattr(torch.ops.modelkernels, name if needs_autograd(*tensors) else name + NOGRAD)


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout an output shaped like ``x`` keeps: channels-last where ``x`` is stored so, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def autograd_inside_op() -> Iterator[None]:
    """Record autograd inside a custom op's implementation. The dispatcher runs an op's kernel with
    the autograd keys excluded (it sits below autograd); the backward op needs them back to replay
    the forward under ``torch.autograd.grad``."""
    keys = torch._C.DispatchKey
    with (torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False),
          torch._C._SetExcludeDispatchKeyGuard(keys.ADInplaceOrView, False), torch.enable_grad()):
        yield


def input_grads(fn: Callable[..., Any], inputs: Sequence[Tensor | None], grads: Sequence[Tensor | None],
                 wanted: Sequence[bool]) -> list[Tensor]:
    """d(fn(*inputs))/d(inputs) · grads by re-running ``fn`` under autograd, each in its input's
    strides (as the fake promises) and in memory of its own; an empty tensor where no gradient was
    asked for (a custom op returns tensors only)."""
    like = inputs[0]
    assert like is not None
    with autograd_inside_op():
        leaves = [t.detach().requires_grad_(w) if t is not None else None for t, w in zip(inputs, wanted)]
        out = fn(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        need = [t for t in leaves if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], need, [g for _, g in pairs], allow_unused=True)
                   if pairs and need else [None] * len(need))
    result: list[Tensor] = []
    taken = {x.untyped_storage().data_ptr() for x in (*inputs, *grads) if x is not None}
    for leaf, t in zip(leaves, inputs):
        if leaf is None or t is None or not leaf.requires_grad:
            result.append(like.new_empty(0))
            continue
        g = next(got)
        if g is None:
            g = torch.zeros_like(t)
        elif g.stride() != t.stride() or g.untyped_storage().data_ptr() in taken:  # an op's outputs own their memory
            g = torch.empty_like(t).copy_(g)
        taken.add(g.untyped_storage().data_ptr())
        result.append(g)
    return result


def owned(outputs: Sequence[Tensor], inputs: Sequence[Any]) -> list[Tensor]:
    """``outputs``, each copied where it shares memory with an input or an earlier output (a view
    such as a contiguous swapaxes): a custom op's outputs must own their memory."""
    taken = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, Tensor)}
    result = []
    for out in outputs:
        if out.untyped_storage().data_ptr() in taken:
            out = out.clone()
        taken.add(out.untyped_storage().data_ptr())
        result.append(out)
    return result


def fake_grads(inputs: Sequence[Tensor | None]) -> list[Tensor]:
    like = inputs[0]
    assert like is not None
    return [torch.empty_like(t) if t is not None else like.new_empty(0) for t in inputs]


def wanted_grads(ctx: Any, positions: Sequence[int]) -> list[bool]:
    return [bool(ctx.needs_input_grad[i]) for i in positions]


def from_op(grads: Sequence[Tensor], wanted: Sequence[bool]) -> list[Tensor | None]:
    return [g if w else None for g, w in zip(grads, wanted)]
