"""The PyTorch ops of the registry as ``torch.library`` ops, so they compose with torch.compile.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

Tensor = torch.Tensor
LIBRARY = torch.library.Library("modelkernels", "DEF")  # the namespace: every op below is defined in it


def _op(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Define ``modelkernels::<name>`` with the schema of the decorated function's annotations and the
    function as its one implementation on every device (``CompositeExplicitAutograd``): the dispatcher
    then calls it directly, without the per-call Python wrappers of ``torch.library.custom_op``. Returns
    the op (``torch.ops.modelkernels.<name>``)."""

    def deco(fn: Callable[..., Any]) -> Any:
        LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
        LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        return getattr(torch.ops.modelkernels, name)

    return deco


def _fake(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Register the fake (meta) implementation of ``modelkernels::<name>``: shapes, dtypes, strides."""
    return torch.library.register_fake(f"modelkernels::{name}", lib=LIBRARY)  # type: ignore[no-any-return]


def _autograd(name: str, backward: Callable[..., Any], *, setup_context: Callable[..., Any]) -> None:
    """Register ``modelkernels::<name>``'s backward formula, once."""
    torch.library.register_autograd(f"modelkernels::{name}", backward, setup_context=setup_context, lib=LIBRARY)


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout an output shaped like ``x`` keeps: channels-last where ``x`` is stored so, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def _autograd_inside_op() -> Iterator[None]:
    """Record autograd inside a custom op's implementation. The dispatcher runs an op's kernel with
    the autograd keys excluded (it sits below autograd); the backward op needs them back to replay
    the forward under ``torch.autograd.grad``."""
    keys = torch._C.DispatchKey
    with (torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False),
          torch._C._SetExcludeDispatchKeyGuard(keys.ADInplaceOrView, False), torch.enable_grad()):
        yield


def _input_grads(fn: Callable[..., Any], inputs: Sequence[Tensor | None], grads: Sequence[Tensor | None],
                 wanted: Sequence[bool]) -> list[Tensor]:
    """d(fn(*inputs))/d(inputs) · grads by re-running ``fn`` under autograd, each in its input's
    strides (as the fake promises) and in memory of its own; an empty tensor where no gradient was
    asked for (a custom op returns tensors only)."""
    like = inputs[0]
    assert like is not None
    with _autograd_inside_op():
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


def _owned(outputs: Sequence[Tensor], inputs: Sequence[Any]) -> list[Tensor]:
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


def _fake_grads(inputs: Sequence[Tensor | None]) -> list[Tensor]:
    like = inputs[0]
    assert like is not None
    return [torch.empty_like(t) if t is not None else like.new_empty(0) for t in inputs]


def _wanted(ctx: Any, positions: Sequence[int]) -> list[bool]:
    return [bool(ctx.needs_input_grad[i]) for i in positions]


def _from_op(grads: Sequence[Tensor], wanted: Sequence[bool]) -> list[Tensor | None]:
    return [g if w else None for g, w in zip(grads, wanted)]


# ----------------------------------------------------------------------------------- attention

@_op("attention")
def attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, scale: float | None,
              layout: str, deterministic: bool, backend: str | None) -> Tensor:
    """``kernels.attention`` as one graph node; the output is contiguous in q's layout."""
    from kernels.attention.ops import attention as eager

    out = eager(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout,
                deterministic=deterministic, backend=backend)
    return _owned([out.contiguous()], (q, k, v))[0]


@_fake("attention")
def _(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, scale: float | None,
      layout: str, deterministic: bool, backend: str | None) -> Tensor:
    return q.new_empty(q.shape)


@_op("attention_backward")
def attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
                       scale: float | None, layout: str, deterministic: bool, backend: str | None,
                       wanted: list[bool]) -> list[Tensor]:
    from kernels.attention.ops import attention as eager

    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return eager(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout,
                     deterministic=deterministic, backend=backend)

    return _input_grads(fn, (q, k, v), (grad,), wanted)


@_fake("attention_backward")
def _(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
      scale: float | None, layout: str, deterministic: bool, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((q, k, v))


def _attention_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    q, k, v, key_padding_mask = inputs[:4]
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.options = inputs[4:]


def _attention_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    q, k, v, key_padding_mask = ctx.saved_tensors
    wanted = _wanted(ctx, (0, 1, 2))
    grads = attention_backward(grad, q, k, v, key_padding_mask, *ctx.options, wanted)
    return (*_from_op(grads, wanted), None, None, None, None, None, None)


_autograd("attention", _attention_grad, setup_context=_attention_setup)


# ------------------------------------------------------------------------------ group_norm_act

@_op("group_norm_act")
def group_norm_act(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
                   residual: Tensor | None, emb: Tensor | None, activation: str, backend: str | None) -> Tensor:
    """``kernels.group_norm_act`` as one graph node; the output keeps x's memory format."""
    from kernels.fused.ops import group_norm_act as eager

    out = eager(x, num_groups, weight, bias, eps, residual=residual, emb=emb, activation=activation, backend=backend)
    return _owned([out.contiguous(memory_format=memory_format(x))], (x, residual, emb))[0]


@_fake("group_norm_act")
def _(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float, residual: Tensor | None,
      emb: Tensor | None, activation: str, backend: str | None) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))


@_op("group_norm_act_backward")
def group_norm_act_backward(grad: Tensor, x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
                            eps: float, residual: Tensor | None, emb: Tensor | None, activation: str,
                            backend: str | None, wanted: list[bool]) -> list[Tensor]:
    from kernels.fused.ops import group_norm_act as eager

    def fn(x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
           emb: Tensor | None) -> Tensor:
        return eager(x, num_groups, weight, bias, eps, residual=residual, emb=emb, activation=activation,
                     backend=backend)

    return _input_grads(fn, (x, weight, bias, residual, emb), (grad,), wanted)


@_fake("group_norm_act_backward")
def _(grad: Tensor, x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
      residual: Tensor | None, emb: Tensor | None, activation: str, backend: str | None,
      wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((x, weight, bias, residual, emb))


_GN_TENSORS = (0, 2, 3, 5, 6)  # x, weight, bias, residual, emb among the op's inputs


def _gn_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(*(inputs[i] for i in _GN_TENSORS))
    ctx.num_groups, ctx.eps, ctx.activation, ctx.backend = inputs[1], inputs[4], inputs[7], inputs[8]


def _gn_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, bias, residual, emb = ctx.saved_tensors
    wanted = _wanted(ctx, _GN_TENSORS)
    gx, gw, gb, gr, ge = _from_op(group_norm_act_backward(grad, x, ctx.num_groups, weight, bias, ctx.eps, residual,
                                                          emb, ctx.activation, ctx.backend, wanted), wanted)
    return gx, None, gw, gb, None, gr, ge, None, None


_autograd("group_norm_act", _gn_grad, setup_context=_gn_setup)


# --------------------------------------------------------------------------- tokens_layer_norm

@_op("tokens_layer_norm")
def tokens_layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      backend: str | None) -> tuple[Tensor, Tensor]:
    """``kernels.tokens_layer_norm`` as one graph node; both (B, H*W, C) outputs contiguous."""
    from kernels.fused.ops import tokens_layer_norm as eager

    tokens, normed = eager(x, weight, bias, eps, backend=backend)
    tokens, normed = _owned([tokens.contiguous(), normed.contiguous()], (x,))
    return tokens, normed


@_fake("tokens_layer_norm")
def _(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None) -> tuple[Tensor, Tensor]:
    b, c = x.shape[:2]
    shape = (b, x[0, 0].numel(), c)
    return x.new_empty(shape), x.new_empty(shape)


@_op("tokens_layer_norm_backward")
def tokens_layer_norm_backward(grad_tokens: Tensor | None, grad_normed: Tensor | None, x: Tensor,
                               weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None,
                               wanted: list[bool]) -> list[Tensor]:
    from kernels.fused.ops import tokens_layer_norm as eager

    def fn(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return eager(x, weight, bias, eps, backend=backend)

    return _input_grads(fn, (x, weight, bias), (grad_tokens, grad_normed), wanted)


@_fake("tokens_layer_norm_backward")
def _(grad_tokens: Tensor | None, grad_normed: Tensor | None, x: Tensor, weight: Tensor | None, bias: Tensor | None,
      eps: float, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((x, weight, bias))


def _tln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, weight, bias, eps, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps, ctx.backend = eps, backend


def _tln_grad(ctx: Any, grad_tokens: Tensor | None, grad_normed: Tensor | None) -> tuple[Tensor | None, ...]:
    x, weight, bias = ctx.saved_tensors
    wanted = _wanted(ctx, (0, 1, 2))
    grads = tokens_layer_norm_backward(grad_tokens, grad_normed, x, weight, bias, ctx.eps, ctx.backend, wanted)
    return (*_from_op(grads, wanted), None, None)


_autograd("tokens_layer_norm", _tln_grad, setup_context=_tln_setup)


# ------------------------------------------------------------------------------ add_layer_norm

@_op("add_layer_norm")
def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                   backend: str | None) -> tuple[Tensor, Tensor]:
    """``kernels.add_layer_norm`` as one graph node; both outputs contiguous."""
    from kernels.fused.ops import add_layer_norm as eager

    s, normed = eager(x, residual, weight, bias, eps, backend=backend)
    s, normed = _owned([s.contiguous(), normed.contiguous()], (x, residual))
    return s, normed


@_fake("add_layer_norm")
def _(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
      backend: str | None) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape)


@_op("add_layer_norm_backward")
def add_layer_norm_backward(grad_sum: Tensor | None, grad_normed: Tensor | None, x: Tensor, residual: Tensor,
                            weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None,
                            wanted: list[bool]) -> list[Tensor]:
    from kernels.fused.ops import add_layer_norm as eager

    def fn(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return eager(x, residual, weight, bias, eps, backend=backend)

    return _input_grads(fn, (x, residual, weight, bias), (grad_sum, grad_normed), wanted)


@_fake("add_layer_norm_backward")
def _(grad_sum: Tensor | None, grad_normed: Tensor | None, x: Tensor, residual: Tensor, weight: Tensor | None,
      bias: Tensor | None, eps: float, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((x, residual, weight, bias))


def _aln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, residual, weight, bias, eps, backend = inputs
    ctx.save_for_backward(x, residual, weight, bias)
    ctx.eps, ctx.backend = eps, backend


def _aln_grad(ctx: Any, grad_sum: Tensor | None, grad_normed: Tensor | None) -> tuple[Tensor | None, ...]:
    x, residual, weight, bias = ctx.saved_tensors
    wanted = _wanted(ctx, (0, 1, 2, 3))
    grads = add_layer_norm_backward(grad_sum, grad_normed, x, residual, weight, bias, ctx.eps, ctx.backend, wanted)
    return (*_from_op(grads, wanted), None, None)


_autograd("add_layer_norm", _aln_grad, setup_context=_aln_setup)


# ----------------------------------------------------------------------------- upsample_concat

@_op("upsample_concat")
def upsample_concat(x: Tensor, skip: Tensor, backend: str | None) -> Tensor:
    """``kernels.upsample_concat`` as one graph node; the output keeps skip's memory format."""
    from kernels.fused.ops import upsample_concat as eager

    out = eager(x, skip, backend=backend).contiguous(memory_format=memory_format(skip))
    return _owned([out], (x, skip))[0]


@_fake("upsample_concat")
def _(x: Tensor, skip: Tensor, backend: str | None) -> Tensor:
    shape = (skip.shape[0], skip.shape[1] + x.shape[1], *skip.shape[2:])
    return skip.new_empty(shape).contiguous(memory_format=memory_format(skip))


@_op("upsample_concat_backward")
def upsample_concat_backward(grad: Tensor, x: Tensor, skip: Tensor, backend: str | None,
                             wanted: list[bool]) -> list[Tensor]:
    from kernels.fused.ops import upsample_concat as eager

    def fn(x: Tensor, skip: Tensor) -> Tensor:
        return eager(x, skip, backend=backend)

    return _input_grads(fn, (x, skip), (grad,), wanted)


@_fake("upsample_concat_backward")
def _(grad: Tensor, x: Tensor, skip: Tensor, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((x, skip))


def _up_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, skip, backend = inputs
    ctx.save_for_backward(x, skip)
    ctx.backend = backend


def _up_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, skip = ctx.saved_tensors
    wanted = _wanted(ctx, (0, 1))
    return (*_from_op(upsample_concat_backward(grad, x, skip, ctx.backend, wanted), wanted), None)


_autograd("upsample_concat", _up_grad, setup_context=_up_setup)


# -------------------------------------------------------------------------------- feed_forward

@_op("feed_forward")
def feed_forward(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                 backend: str | None) -> Tensor:
    """``kernels.feed_forward`` as one graph node; the output is contiguous."""
    from kernels.fused.ops import feed_forward as eager

    out = eager(h, s, w1, b1, w2, b2, backend=backend).contiguous()
    return _owned([out], (h, s, w1, b1, w2, b2))[0]


@_fake("feed_forward")
def _(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
      backend: str | None) -> Tensor:
    return h.new_empty(h.shape, dtype=torch.promote_types(h.dtype, s.dtype))


@_op("feed_forward_backward")
def feed_forward_backward(grad: Tensor, h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                          b2: Tensor | None, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    from kernels.fused.ops import feed_forward as eager

    def fn(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
        return eager(h, s, w1, b1, w2, b2, backend=backend)

    return _input_grads(fn, (h, s, w1, b1, w2, b2), (grad,), wanted)


@_fake("feed_forward_backward")
def _(grad: Tensor, h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
      backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return _fake_grads((h, s, w1, b1, w2, b2))


def _ff_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs[:6])
    ctx.backend = inputs[6]


def _ff_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    wanted = _wanted(ctx, range(6))
    grads = feed_forward_backward(grad, *ctx.saved_tensors, ctx.backend, wanted)
    return (*_from_op(grads, wanted), None)


_autograd("feed_forward", _ff_grad, setup_context=_ff_setup)
