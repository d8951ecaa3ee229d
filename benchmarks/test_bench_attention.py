"""Attention forward (and forward + backward): ours against the reference and the peers, on the seed
UNet's shapes (B, 4 heads, N = 64 .. 4096 tokens, head dim 16 / 32 / 64).

CPU: ours is ``kernels.attention`` (dispatch picks SDPA there; the Triton kernels need CUDA) against
``torch.nn.functional.scaled_dot_product_attention`` called directly, ``nn.MultiheadAttention`` with
the seed's ``need_weights=True`` (whole module), and the float64-free reference. CUDA: ours is the
Triton kernel, the peers SDPA's flash, cuDNN and memory-efficient backends. FLOPs: 4·B·H·N²·D.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.registry import Tolerance
from modelkernels.pyimpl import attention as ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.float16 if CUDA else torch.float32
# the seed UNet's six blocks (64x64 images, base width 64, 4 heads): tokens and head dim
UNET_BLOCKS = [("sa1", 1024, 32), ("sa2", 256, 64), ("sa3", 64, 64), ("sa4", 256, 32), ("sa5", 1024, 16),
               ("sa6", 4096, 16)]
REFERENCE_MAX_N = 1024  # the reference materialises B·H·N² scores


def _impls(n: int) -> list[tuple[str, str]]:
    out = [("kernels.attention", "ours")]
    if CUDA:
        out += [("sdpa-flash", "peer"), ("sdpa-cudnn", "peer"), ("sdpa-efficient", "peer")]
    else:
        out += [("torch-sdpa", "peer"), ("nn.MultiheadAttention(need_weights=True)", "peer")]
    if n <= REFERENCE_MAX_N:
        out.append(("reference", "reference"))
    return out


def _runner(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], Any]:
    if impl == "kernels.attention":
        return lambda: kernels.attention(q, k, v)
    if impl == "reference":
        return lambda: ref.attention(q, k, v)
    if impl == "torch-sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if impl.startswith("sdpa-"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION}[impl.removeprefix("sdpa-")]

        def run() -> Any:
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v)

        return run
    b, h, n, d = q.shape
    mha = torch.nn.MultiheadAttention(h * d, h, batch_first=True, device=q.device, dtype=q.dtype).eval()
    x = q.transpose(1, 2).reshape(b, n, h * d)
    return lambda: mha(x, x, x)


CASES = [(block, n, d, impl, role) for block, n, d in UNET_BLOCKS for impl, role in _impls(n)]


@pytest.mark.parametrize("block,n,d,impl,role", CASES, ids=[f"{c[0]}-N{c[1]}-D{c[2]}-{c[3]}" for c in CASES])
def test_attention_forward(bench, quick: bool, block: str, n: int, d: int, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 256:
        pytest.skip("--quick: N <= 256")
    b, h = (16, 4) if CUDA else (2, 4)
    g = torch.Generator().manual_seed(n + d)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    fn = _runner(impl, q, k, v)
    with torch.no_grad():
        if not impl.startswith("nn.MultiheadAttention"):  # the module has its own projections
            want = ref.attention(q.double(), k.double(), v.double())
            verify(fn(), want, Tolerance(1e-2, 1e-2) if CUDA else Tolerance(1e-4, 1e-4), what=f"{impl} {block}")
        bench(fn, suite="attention", case=f"{block} B={b} H={h} N={n} D={d}", series=f"D={d}", size=n, impl=impl,
              role=role, device=DEVICE, work={"flop": 4 * b * h * n * n * d},
              rounds=10 if impl == "reference" or n >= 4096 else 50)


@pytest.mark.parametrize("n,d", [(256, 32), (1024, 16)], ids=["N256-D32", "N1024-D16"])
@pytest.mark.parametrize("impl,role", [("kernels.attention", "ours"), ("torch-sdpa", "peer"),
                                       ("reference", "reference")])
def test_attention_forward_backward(bench, quick: bool, n: int, d: int, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 256:
        pytest.skip("--quick: N <= 256")
    b, h = (16, 4) if CUDA else (2, 4)
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(DEVICE, DTYPE).requires_grad_() for _ in range(3))
    do = torch.randn(b, h, n, d, generator=g).to(DEVICE, DTYPE)
    fwd = _runner(impl, q, k, v)

    def step() -> Any:
        return torch.autograd.grad(fwd(), (q, k, v), do)

    grads = step()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = torch.autograd.grad(ref.attention(q64, k64, v64), (q64, k64, v64), do.double())
    verify(list(grads), list(want), Tolerance(5e-2, 5e-2) if CUDA else Tolerance(1e-4, 1e-4), what=f"{impl} grads")
    bench(step, suite="attention fwd+bwd", case=f"B={b} H={h} N={n} D={d}", series=f"D={d}", size=n, impl=impl,
          role=role, device=DEVICE, work={"flop": 3.5 * 4 * b * h * n * n * d}, rounds=10 if n >= 1024 else 30)
