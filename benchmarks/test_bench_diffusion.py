"""DDPM / DDIM step: the library's dispatch (Triton on CUDA; the reference backend on CPU) against
the seed's formula in eager PyTorch and diffusers' schedulers, at small image batches.

CPU by default; on a CUDA machine the same cases run on the GPU with CUDA-event timing and the
fused Triton kernels as "ours". Every implementation is verified against the reference first.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.registry import Tolerance
from modelkernels.pyimpl import diffusion as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(16, 3, 32, 32), (64, 3, 64, 64)]
TOL = Tolerance(atol=1e-5, rtol=1e-5)


def _inputs(shape: tuple[int, ...]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(sum(shape))
    x, eps, z = (torch.randn(shape, generator=g).to(DEVICE) for _ in range(3))
    return {"x": x, "eps": eps, "z": z, "t": 500, "s": ref.make_schedule(device=DEVICE)}


def _seed_formula(d: dict[str, Any]) -> Any:
    s, t = d["s"], torch.full((d["x"].shape[0],), d["t"], device=DEVICE)
    a, ah, b = (v[t][:, None, None, None] for v in (s.alphas, s.alphas_cumprod, s.betas))

    def step() -> torch.Tensor:
        return 1 / torch.sqrt(a) * (d["x"] - ((1 - a) / (torch.sqrt(1 - ah))) * d["eps"]) + torch.sqrt(b) * d["z"]

    return step


def _size(shape: tuple[int, ...]) -> int:
    return int(torch.tensor(shape).prod())


SEED_IMPLS = [("kernels.ddpm_seed_step", "ours"), ("reference", "reference"), ("eager seed formula", "peer")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl,role", SEED_IMPLS, ids=[i for i, _ in SEED_IMPLS])
def test_seed_step(bench, quick, shape: tuple[int, ...], impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if quick and shape != SHAPES[0]:
        pytest.skip("--quick: the smallest shape")
    d = _inputs(shape)
    args = (d["eps"], d["t"], d["x"], d["s"], d["z"])
    if impl == "eager seed formula":
        fn = _seed_formula(d)
    elif impl == "reference":
        fn = lambda: kernels.ddpm_seed_step(*args, backend="reference")
    else:
        fn = lambda: kernels.ddpm_seed_step(*args)
    verify(fn(), ref.ddpm_seed_step(*args), TOL, what=impl)
    n = _size(shape)
    bench(fn, suite="diffusion", case=f"seed step {'x'.join(map(str, shape))}", series="seed step", size=n,
          impl=impl, role=role, device=DEVICE, work={"bytes": 4 * 4 * n}, rounds=50)


DDPM_IMPLS = [("kernels.ddpm_step", "ours"), ("reference", "reference"), ("diffusers.DDPMScheduler.step", "peer")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl,role", DDPM_IMPLS, ids=[i for i, _ in DDPM_IMPLS])
def test_ddpm_step(bench, quick, shape: tuple[int, ...], impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if quick and shape != SHAPES[0]:
        pytest.skip("--quick: the smallest shape")
    d = _inputs(shape)
    opts = {"clip_sample": True, "variance_type": "fixed_small"}
    args = (d["eps"], d["t"], d["x"], d["s"], d["z"])
    if impl.startswith("diffusers"):
        diffusers = pytest.importorskip("diffusers")
        sched = diffusers.DDPMScheduler(**opts)
        sched.alphas_cumprod = sched.alphas_cumprod.to(DEVICE)
        sched.one = sched.one.to(DEVICE)
        gen = torch.Generator(device=DEVICE)

        def fn() -> torch.Tensor:
            gen.manual_seed(0)
            return sched.step(d["eps"], d["t"], d["x"], generator=gen).prev_sample

        gen.manual_seed(0)
        z = torch.randn(d["x"].shape, generator=gen, device=DEVICE)
        verify(fn(), ref.ddpm_step(d["eps"], d["t"], d["x"], d["s"], z, **opts), TOL, what=impl)
    else:
        backend = "reference" if impl == "reference" else None
        fn = lambda: kernels.ddpm_step(*args, backend=backend, **opts)
        verify(fn(), ref.ddpm_step(*args, **opts), TOL, what=impl)
    n = _size(shape)
    bench(fn, suite="diffusion", case=f"DDPM step {'x'.join(map(str, shape))}", series="DDPM step", size=n,
          impl=impl, role=role, device=DEVICE, work={"bytes": 4 * 4 * n}, rounds=50)


Q_IMPLS = [("kernels.q_sample", "ours"), ("eager noise_images", "peer")]


@pytest.mark.parametrize("impl,role", Q_IMPLS, ids=[i for i, _ in Q_IMPLS])
def test_q_sample(bench, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    shape = SHAPES[0]
    d = _inputs(shape)
    t = torch.randint(1, 1000, (shape[0],), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    if impl == "eager noise_images":
        ah = d["s"].alphas_cumprod[t][:, None, None, None]
        fn = lambda: torch.sqrt(ah) * d["x"] + torch.sqrt(1 - ah) * d["z"]
    else:
        fn = lambda: kernels.q_sample(d["x"], t, d["s"], d["z"])
    verify(fn(), ref.q_sample(d["x"], t, d["s"], d["z"]), TOL, what=impl)
    n = _size(shape)
    bench(fn, suite="diffusion", case=f"q_sample {'x'.join(map(str, shape))}", series="q_sample", size=n,
          impl=impl, role=role, device=DEVICE, work={"bytes": 3 * 4 * n}, rounds=50)
