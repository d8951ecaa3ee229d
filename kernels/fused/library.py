"""The fused ops as ``torch.library`` ops, ``torch.ops.modelkernels.<op>`` (with their backward ops),
registered once at import; see kernels/torch_ops.py for how the ops compose with torch.compile."""

from __future__ import annotations

from typing import Any

import torch

from modelkernels.kernels.fused import ops
from modelkernels.kernels.torch_ops import (
    Tensor,
    autograd,
    define,
    fake,
    fake_grads,
    from_op,
    input_grads,
    memory_format,
    owned,
    wanted_grads,
)

# ------------------------------------------------------------------------------ group_norm_act

@define("group_norm_act")
def group_norm_act(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
                   residual: Tensor | None, emb: Tensor | None, activation: str, backend: str | None) -> Tensor:
    """``kernels.group_norm_act`` as one graph node; the output keeps x's memory format."""
    out = ops.group_norm_act(x, num_groups, weight, bias, eps, residual=residual, emb=emb, activation=activation,
                             backend=backend)
    return owned([out.contiguous(memory_format=memory_format(x))], (x, residual, emb))[0]


@fake("group_norm_act")
def _(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float, residual: Tensor | None,
      emb: Tensor | None, activation: str, backend: str | None) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))


@define("group_norm_act_backward")
def group_norm_act_backward(grad: Tensor, x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None,
                            eps: float, residual: Tensor | None, emb: Tensor | None, activation: str,
                            backend: str | None, wanted: list[bool]) -> list[Tensor]:
    def fn(x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
           emb: Tensor | None) -> Tensor:
        return ops.group_norm_act(x, num_groups, weight, bias, eps, residual=residual, emb=emb, activation=activation,
                     backend=backend)

    return input_grads(fn, (x, weight, bias, residual, emb), (grad,), wanted)


@fake("group_norm_act_backward")
def _(grad: Tensor, x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
      residual: Tensor | None, emb: Tensor | None, activation: str, backend: str | None,
      wanted: list[bool]) -> list[Tensor]:
    return fake_grads((x, weight, bias, residual, emb))


_GN_TENSORS = (0, 2, 3, 5, 6)  # x, weight, bias, residual, emb among the op's inputs


def _gn_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(*(inputs[i] for i in _GN_TENSORS))
    ctx.num_groups, ctx.eps, ctx.activation, ctx.backend = inputs[1], inputs[4], inputs[7], inputs[8]


def _gn_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, bias, residual, emb = ctx.saved_tensors
    wanted = wanted_grads(ctx, _GN_TENSORS)
    gx, gw, gb, gr, ge = from_op(group_norm_act_backward(grad, x, ctx.num_groups, weight, bias, ctx.eps, residual,
                                                          emb, ctx.activation, ctx.backend, wanted), wanted)
    return gx, None, gw, gb, None, gr, ge, None, None


autograd("group_norm_act", _gn_grad, setup_context=_gn_setup)


# --------------------------------------------------------------------------- tokens_layer_norm

@define("tokens_layer_norm")
def tokens_layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      backend: str | None) -> tuple[Tensor, Tensor]:
    """``kernels.tokens_layer_norm`` as one graph node; both (B, H*W, C) outputs contiguous."""
    tokens, normed = ops.tokens_layer_norm(x, weight, bias, eps, backend=backend)
    tokens, normed = owned([tokens.contiguous(), normed.contiguous()], (x,))
    return tokens, normed


@fake("tokens_layer_norm")
def _(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None) -> tuple[Tensor, Tensor]:
    b, c = x.shape[:2]
    shape = (b, x[0, 0].numel(), c)
    return x.new_empty(shape), x.new_empty(shape)


@define("tokens_layer_norm_backward")
def tokens_layer_norm_backward(grad_tokens: Tensor | None, grad_normed: Tensor | None, x: Tensor,
                               weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None,
                               wanted: list[bool]) -> list[Tensor]:
    def fn(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return ops.tokens_layer_norm(x, weight, bias, eps, backend=backend)

    return input_grads(fn, (x, weight, bias), (grad_tokens, grad_normed), wanted)


@fake("tokens_layer_norm_backward")
def _(grad_tokens: Tensor | None, grad_normed: Tensor | None, x: Tensor, weight: Tensor | None, bias: Tensor | None,
      eps: float, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return fake_grads((x, weight, bias))


def _tln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, weight, bias, eps, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps, ctx.backend = eps, backend


def _tln_grad(ctx: Any, grad_tokens: Tensor | None, grad_normed: Tensor | None) -> tuple[Tensor | None, ...]:
    x, weight, bias = ctx.saved_tensors
    wanted = wanted_grads(ctx, (0, 1, 2))
    grads = tokens_layer_norm_backward(grad_tokens, grad_normed, x, weight, bias, ctx.eps, ctx.backend, wanted)
    return (*from_op(grads, wanted), None, None)


autograd("tokens_layer_norm", _tln_grad, setup_context=_tln_setup)


# ------------------------------------------------------------------------------ add_layer_norm

@define("add_layer_norm")
def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                   backend: str | None) -> tuple[Tensor, Tensor]:
    """``kernels.add_layer_norm`` as one graph node; both outputs contiguous."""
    s, normed = ops.add_layer_norm(x, residual, weight, bias, eps, backend=backend)
    s, normed = owned([s.contiguous(), normed.contiguous()], (x, residual))
    return s, normed


@fake("add_layer_norm")
def _(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
      backend: str | None) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape)


@define("add_layer_norm_backward")
def add_layer_norm_backward(grad_sum: Tensor | None, grad_normed: Tensor | None, x: Tensor, residual: Tensor,
                            weight: Tensor | None, bias: Tensor | None, eps: float, backend: str | None,
                            wanted: list[bool]) -> list[Tensor]:
    def fn(x: Tensor, residual: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return ops.add_layer_norm(x, residual, weight, bias, eps, backend=backend)

    return input_grads(fn, (x, residual, weight, bias), (grad_sum, grad_normed), wanted)


@fake("add_layer_norm_backward")
def _(grad_sum: Tensor | None, grad_normed: Tensor | None, x: Tensor, residual: Tensor, weight: Tensor | None,
      bias: Tensor | None, eps: float, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return fake_grads((x, residual, weight, bias))


def _aln_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, residual, weight, bias, eps, backend = inputs
    ctx.save_for_backward(x, residual, weight, bias)
    ctx.eps, ctx.backend = eps, backend


def _aln_grad(ctx: Any, grad_sum: Tensor | None, grad_normed: Tensor | None) -> tuple[Tensor | None, ...]:
    x, residual, weight, bias = ctx.saved_tensors
    wanted = wanted_grads(ctx, (0, 1, 2, 3))
    grads = add_layer_norm_backward(grad_sum, grad_normed, x, residual, weight, bias, ctx.eps, ctx.backend, wanted)
    return (*from_op(grads, wanted), None, None)


autograd("add_layer_norm", _aln_grad, setup_context=_aln_setup)


# ----------------------------------------------------------------------------- upsample_concat

@define("upsample_concat")
def upsample_concat(x: Tensor, skip: Tensor, backend: str | None) -> Tensor:
    """``kernels.upsample_concat`` as one graph node; the output keeps skip's memory format."""
    out = ops.upsample_concat(x, skip, backend=backend).contiguous(memory_format=memory_format(skip))
    return owned([out], (x, skip))[0]


@fake("upsample_concat")
def _(x: Tensor, skip: Tensor, backend: str | None) -> Tensor:
    shape = (skip.shape[0], skip.shape[1] + x.shape[1], *skip.shape[2:])
    return skip.new_empty(shape).contiguous(memory_format=memory_format(skip))


@define("upsample_concat_backward")
def upsample_concat_backward(grad: Tensor, x: Tensor, skip: Tensor, backend: str | None,
                             wanted: list[bool]) -> list[Tensor]:
    def fn(x: Tensor, skip: Tensor) -> Tensor:
        return ops.upsample_concat(x, skip, backend=backend)

    return input_grads(fn, (x, skip), (grad,), wanted)


@fake("upsample_concat_backward")
def _(grad: Tensor, x: Tensor, skip: Tensor, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return fake_grads((x, skip))


def _up_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, skip, backend = inputs
    ctx.save_for_backward(x, skip)
    ctx.backend = backend


def _up_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, skip = ctx.saved_tensors
    wanted = wanted_grads(ctx, (0, 1))
    return (*from_op(upsample_concat_backward(grad, x, skip, ctx.backend, wanted), wanted), None)


autograd("upsample_concat", _up_grad, setup_context=_up_setup)


# -------------------------------------------------------------------------------- feed_forward

@define("feed_forward")
def feed_forward(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                 backend: str | None) -> Tensor:
    """``kernels.feed_forward`` as one graph node; the output is contiguous."""
    out = ops.feed_forward(h, s, w1, b1, w2, b2, backend=backend).contiguous()
    return owned([out], (h, s, w1, b1, w2, b2))[0]


@fake("feed_forward")
def _(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
      backend: str | None) -> Tensor:
    return h.new_empty(h.shape, dtype=torch.promote_types(h.dtype, s.dtype))


@define("feed_forward_backward")
def feed_forward_backward(grad: Tensor, h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                          b2: Tensor | None, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    def fn(h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
        return ops.feed_forward(h, s, w1, b1, w2, b2, backend=backend)

    return input_grads(fn, (h, s, w1, b1, w2, b2), (grad,), wanted)


@fake("feed_forward_backward")
def _(grad: Tensor, h: Tensor, s: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
      backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return fake_grads((h, s, w1, b1, w2, b2))


def _ff_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs[:6])
    ctx.backend = inputs[6]


def _ff_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    wanted = wanted_grads(ctx, range(6))
    grads = feed_forward_backward(grad, *ctx.saved_tensors, ctx.backend, wanted)
    return (*from_op(grads, wanted), None)


autograd("feed_forward", _ff_grad, setup_context=_ff_setup)
