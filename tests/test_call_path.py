"""The call path from a public op or drop-in to the kernel: no autograd Function without gradients,
drop-in constants resolved once and re-resolved when the parameters change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import kernels
from kernels.registry import triton_interpret

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or triton_interpret()),
                                reason="Triton needs CUDA or TRITON_INTERPRET=1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _calls() -> list[tuple[str, str, Callable[[bool], Any]]]:
    """(module, Function class, call with every input requiring grad or none)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, grad: bool) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(DEV).requires_grad_(grad)

    return [
        ("kernels.fused.group_norm_triton", "GroupNormActFunction",
         lambda grad: kernels.group_norm_act(rnd(2, 4, 3, 3, grad=grad), 2, rnd(4, grad=grad), rnd(4, grad=grad),
                                             residual=rnd(2, 4, 3, 3, grad=grad), activation="gelu",
                                             backend="triton")),
        ("kernels.fused.layer_norm_triton", "TokensLayerNormFunction",
         lambda grad: kernels.tokens_layer_norm(rnd(2, 4, 3, 3, grad=grad), rnd(4, grad=grad), None,
                                                backend="triton")),
        ("kernels.fused.layer_norm_triton", "AddLayerNormFunction",
         lambda grad: kernels.add_layer_norm(rnd(2, 5, 4, grad=grad), rnd(2, 5, 4, grad=grad), None, None,
                                             backend="triton")),
        ("kernels.fused.upsample_triton", "UpsampleConcatFunction",
         lambda grad: kernels.upsample_concat(rnd(1, 2, 2, 3, grad=grad), rnd(1, 3, 4, 6, grad=grad),
                                              backend="triton")),
        ("kernels.fused.feed_forward_triton", "FeedForwardFunction",
         lambda grad: kernels.feed_forward(rnd(2, 3, 8, grad=grad), rnd(2, 3, 8, grad=grad), rnd(8, 8, grad=grad),
                                           None, rnd(8, 8, grad=grad), None, backend="triton")),
        ("kernels.attention.flash", "FlashAttention",
         lambda grad: kernels.attention(rnd(1, 2, 5, 16, grad=grad), rnd(1, 2, 5, 16, grad=grad),
                                        rnd(1, 2, 5, 16, grad=grad), backend="triton")),
    ]


@pytest.mark.parametrize("index", range(6), ids=[c[1] for c in _calls()])
def test_no_autograd_function_without_gradients(monkeypatch, index: int) -> None:
    """Inference (inputs without grad, ``no_grad``, ``inference_mode``) launches the forward directly and
    gives the same values; an input that requires grad goes through the Function."""
    import importlib

    module, cls, _ = _calls()[index]

    def run(grad: bool) -> Any:  # fresh inputs from the same seed each time
        return _calls()[index][2](grad)

    function = getattr(importlib.import_module(module), cls)
    applied = []
    original = function.apply

    def counting(*args: Any) -> Any:
        applied.append(1)
        return original(*args)

    monkeypatch.setattr(function, "apply", counting)
    want = run(True)
    assert applied == [1]
    first = want[0] if isinstance(want, tuple) else want
    assert first.requires_grad
    outputs = [run(False)]
    with torch.no_grad():
        outputs.append(run(True))
    with torch.inference_mode():
        outputs.append(run(True))
    assert applied == [1]
    for out in outputs:
        for got, ref in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
            assert not got.requires_grad
            torch.testing.assert_close(got, ref.detach(), rtol=0, atol=0)
