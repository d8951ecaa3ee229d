"""Host cost of the call path: a public op on tiny CPU tensors against the function its dispatch runs,
called directly, so the difference is the dispatch, the argument checks and the wrappers.

``kernels.attention`` runs SDPA on the CPU: the peer is ``F.scaled_dot_product_attention`` on the same
tensors. On the CPU ``group_norm_act`` and ``feed_forward`` run their ``torch`` backends: those functions
called directly are the yardstick. The report's ratio is peer or reference time over ours (1.0: no
overhead); the tensors are a few hundred elements, so the kernels themselves take a few µs. Inference
(``torch.no_grad``), as a patched model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.fused import feed_forward_torch, group_norm_torch
from modelkernels.kernels.registry import Tolerance


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return dict(q=rnd(1, 2, 8, 16), k=rnd(1, 2, 8, 16), v=rnd(1, 2, 8, 16), x=rnd(2, 4, 4, 4), w=rnd(4), b=rnd(4),
                h=rnd(2, 4, 8), s=rnd(2, 4, 8), w1=rnd(8, 8), b1=rnd(8), w2=rnd(8, 8), b2=rnd(8))


def _calls(t: dict[str, torch.Tensor]) -> dict[tuple[str, str], Callable[[], Any]]:
    q, k, v, x, w, b = t["q"], t["k"], t["v"], t["x"], t["w"], t["b"]
    ff = (t["h"], t["s"], t["w1"], t["b1"], t["w2"], t["b2"])
    return {
        ("attention", "kernels.attention"): lambda: kernels.attention(q, k, v),
        ("attention", "torch-sdpa"): lambda: F.scaled_dot_product_attention(q, k, v),
        ("group_norm_act", "kernels.group_norm_act"): lambda: kernels.group_norm_act(x, 2, w, b, activation="gelu"),
        ("group_norm_act", "torch backend"): lambda: group_norm_torch.group_norm_act(x, 2, w, b, activation="gelu"),
        ("feed_forward", "kernels.feed_forward"): lambda: kernels.feed_forward(*ff),
        ("feed_forward", "torch backend"): lambda: feed_forward_torch.feed_forward(*ff),
    }


CASES = [("attention", "kernels.attention", "ours"), ("attention", "torch-sdpa", "peer"),
         ("group_norm_act", "kernels.group_norm_act", "ours"), ("group_norm_act", "torch backend", "reference"),
         ("feed_forward", "kernels.feed_forward", "ours"), ("feed_forward", "torch backend", "reference")]
SHAPES = {"attention": "q, k, v (1,2,8,16)", "group_norm_act": "x (2,4,4,4) G=2 +GELU",
          "feed_forward": "h, s (2,4,8) F=8"}


@pytest.mark.parametrize("op,impl,role", CASES, ids=[f"{op}-{impl}" for op, impl, _ in CASES])
def test_dispatch_cost(bench, op: str, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    calls = _calls(_tensors())
    fn = calls[(op, impl)]
    yardstick = next(f for (o, i), f in calls.items() if o == op and i != impl) if role == "ours" else fn
    with torch.no_grad():
        verify(fn(), yardstick(), Tolerance(1e-6, 1e-6), what=f"{impl} (dispatch cost)")
        bench(fn, suite="dispatch cost (CPU, tiny tensors)", case=f"{op} {SHAPES[op]}", impl=impl, role=role,
              device="cpu", threads=1)  # more threads: the pool's wake-up per call (ms, unstable) is the figure
