"""``kernels.attention`` as the ``torch.library`` op ``torch.ops.modelkernels.attention`` (and its backward op),
registered once at import; see kernels/torch_ops.py for how the ops compose with torch.compile."""

from __future__ import annotations

from typing import Any

from modelkernels.kernels.attention import ops
from modelkernels.kernels.torch_ops import (
    Tensor,
    autograd,
    define,
    fake,
    fake_grads,
    from_op,
    input_grads,
    owned,
    wanted_grads,
)


@define("attention")
def attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, scale: float | None,
              layout: str, deterministic: bool, backend: str | None) -> Tensor:
    """``kernels.attention`` as one graph node; the output is contiguous in q's layout."""
    out = ops.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout,
                deterministic=deterministic, backend=backend)
    return owned([out.contiguous()], (q, k, v))[0]


@fake("attention")
def _(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, scale: float | None,
      layout: str, deterministic: bool, backend: str | None) -> Tensor:
    return q.new_empty(q.shape)


@define("attention_backward")
def attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
                       scale: float | None, layout: str, deterministic: bool, backend: str | None,
                       wanted: list[bool]) -> list[Tensor]:
    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return ops.attention(q, k, v, causal=causal, scale=scale, key_padding_mask=key_padding_mask, layout=layout,
                     deterministic=deterministic, backend=backend)

    return input_grads(fn, (q, k, v), (grad,), wanted)


@fake("attention_backward")
def _(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
      scale: float | None, layout: str, deterministic: bool, backend: str | None, wanted: list[bool]) -> list[Tensor]:
    return fake_grads((q, k, v))


def _attention_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    q, k, v, key_padding_mask = inputs[:4]
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.options = inputs[4:]


def _attention_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    q, k, v, key_padding_mask = ctx.saved_tensors
    wanted = wanted_grads(ctx, (0, 1, 2))
    grads = attention_backward(grad, q, k, v, key_padding_mask, *ctx.options, wanted)
    return (*from_op(grads, wanted), None, None, None, None, None, None)


autograd("attention", _attention_grad, setup_context=_attention_setup)
