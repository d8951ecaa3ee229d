"""Attention: dispatch and reasons, layouts, masks and dead rows, NaN/Inf, determinism, random shapes
(CPU, Triton under the interpreter) and, with the ``gpu`` marker, larger shapes and O(N) memory."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelkernels import kernels
from modelkernels.kernels.registry import triton_interpret
from modelkernels.pyimpl import attention as ref

TRITON_CPU = pytest.mark.skipif(not triton_interpret() and not torch.cuda.is_available(),
                                reason="Triton runs on the CPU only under TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(b: int, h: int, nq: int, nk: int, d: int, seed: int, dtype: torch.dtype = torch.float32,
         device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g).to(device, dtype)  # type: ignore[return-value]
                 for s in ((b, h, nq, d), (b, h, nk, d), (b, h, nk, d)))


def _f64(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.detach().double().requires_grad_(x.requires_grad) for x in xs]


def test_cpu_dispatch_runs_sdpa_and_explains_the_triton_backend() -> None:
    q, k, v = _qkv(1, 2, 5, 5, 16, 0)
    text = kernels.explain("attention", q, k, v)
    assert "-> runs 'sdpa'" in text
    assert "triton" in text and "device=cpu" in text


def test_reasons_name_the_head_dim_and_fall_back() -> None:
    q, k, v = _qkv(1, 2, 5, 5, 24, 1)
    reasons = kernels.get_op("attention").backends["triton"].reasons((q, k, v), {}, forced=True)
    assert "head_dim=24: supported 16, 32, 64, 128" in reasons
    with pytest.raises(ValueError, match="head_dim=24: supported 16, 32, 64, 128"):
        kernels.attention(q, k, v, backend="triton")
    out = kernels.attention(q, k, v)  # automatic dispatch falls back quietly
    torch.testing.assert_close(out.double(), ref.attention(*_f64(q, k, v)), atol=1e-5, rtol=1e-5)


def test_forced_triton_rejects_float64_and_negative_scale_with_reasons() -> None:
    q, k, v = _qkv(1, 1, 4, 4, 16, 2, torch.float64)
    with pytest.raises(ValueError, match="dtype=float64: supported float16, bfloat16, float32"):
        kernels.attention(q, k, v, backend="triton")
    q, k, v = _qkv(1, 1, 4, 4, 16, 2)
    why = kernels.get_op("attention").backends["triton"].reasons((q, k, v), {"scale": -0.5}, forced=True)
    assert "scale=-0.5: supported > 0" in why


def test_mixed_devices_are_refused_by_dispatch() -> None:
    q, _, v = _qkv(1, 1, 4, 4, 16, 3)
    with pytest.raises(ValueError, match="different devices"):
        kernels.attention(q, torch.zeros(1, 1, 4, 16, device="meta"), v)


@pytest.mark.parametrize("backend", ["reference", "sdpa", pytest.param("triton", marks=TRITON_CPU)])
def test_bnhd_layout_matches_bhnd_and_returns_bnhd(backend: str) -> None:
    q, k, v = _qkv(2, 3, 19, 23, 16, 4)
    want = kernels.attention(q, k, v, backend="reference")
    got = kernels.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout="bnhd", backend=backend)
    assert got.shape == (2, 19, 3, 16)
    torch.testing.assert_close(got.transpose(1, 2), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", pytest.param("triton", marks=TRITON_CPU)])
def test_rows_that_see_no_key_are_zero_with_zero_gradients(backend: str) -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(2, 2, 9, 17, 16, 5))
    kpm = torch.zeros(2, 17, dtype=torch.bool)
    kpm[0] = True  # batch 0 sees nothing
    kpm[1, :3] = True  # with causal, rows 0..2 of batch 1 see nothing
    out = kernels.attention(q, k, v, causal=True, key_padding_mask=kpm, backend=backend)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))
    assert out[1, :, 3:].abs().sum() > 0
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.equal(dq[0], torch.zeros_like(dq[0])) and torch.equal(dk[0], torch.zeros_like(dk[0]))
    assert torch.equal(dq[1, :, :3], torch.zeros_like(dq[1, :, :3]))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_causal_is_top_left_aligned_like_sdpa() -> None:
    for nq, nk in ((5, 9), (9, 5)):
        q, k, v = _qkv(1, 2, nq, nk, 16, 6, torch.float64)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(ref.attention(q, k, v, causal=True), want)


@TRITON_CPU
@pytest.mark.parametrize("where", ["k", "v"])
def test_triton_propagates_inf_like_the_reference(where: str) -> None:
    q, k, v = _qkv(1, 2, 20, 20, 16, 7, device=DEVICE)
    target = k if where == "k" else v
    target[0, 1, 7, 3] = float("inf")
    target[0, 0, 2, 5] = -float("inf")
    got = kernels.attention(q, k, v, backend="triton").double().cpu()
    want = ref.attention(*(x.double().cpu() for x in (q, k, v)))
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = torch.isfinite(want)
    assert torch.equal(got[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)])
    torch.testing.assert_close(got[finite], want[finite], atol=5e-3, rtol=5e-3)


@TRITON_CPU
def test_deterministic_backward_is_bitwise_repeatable_and_matches_the_atomic_one() -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 37, 29, 16, 8, device=DEVICE))
    do = torch.randn(1, 2, 37, 16, device=DEVICE)
    grads = []
    for deterministic in (True, True, False):
        out = kernels.attention(q, k, v, causal=True, deterministic=deterministic, backend="triton")
        grads.append(torch.autograd.grad(out, (q, k, v), do))
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))
    for a, b in zip(grads[0], grads[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@TRITON_CPU
@settings(max_examples=10)
@given(b=st.integers(1, 2), h=st.integers(1, 3), nq=st.integers(1, 40), nk=st.integers(1, 40),
       d=st.sampled_from([16, 32]), causal=st.booleans(), masked=st.booleans(), bnhd=st.booleans(),
       seed=st.integers(0, 2**16))
def test_triton_matches_the_reference_on_random_shapes(b: int, h: int, nq: int, nk: int, d: int, causal: bool,
                                                      masked: bool, bnhd: bool, seed: int) -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(b, h, nq, nk, d, seed))
    kpm = (torch.rand(b, nk, generator=torch.Generator().manual_seed(seed)) < 0.3) if masked else None
    layout = "bnhd" if bnhd else "bhnd"
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) if bnhd else (q, k, v)
    out = kernels.attention(*args, causal=causal, key_padding_mask=kpm, layout=layout, backend="triton")
    q64, k64, v64 = _f64(q, k, v)
    args64 = (q64.transpose(1, 2), k64.transpose(1, 2), v64.transpose(1, 2)) if bnhd else (q64, k64, v64)
    want = ref.attention(*args64, causal=causal, key_padding_mask=kpm, layout=layout)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(want, (q64, k64, v64), do.double())):
        torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4)


def test_default_scale_is_one_over_sqrt_head_dim() -> None:
    assert ref.default_scale(64, None) == 1 / 8
    q, k, v = _qkv(1, 1, 6, 6, 16, 9, torch.float64)
    torch.testing.assert_close(ref.attention(q, k, v), ref.attention(q, k, v, scale=1 / math.sqrt(16)))


# --------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("causal,masked,deterministic", [(False, False, False), (True, True, True),
                                                         (False, True, False), (True, False, True)])
def test_gpu_larger_shapes_forward_and_backward(dtype: torch.dtype, d: int, causal: bool, masked: bool,
                                                deterministic: bool) -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(2, 3, 517, 301, d, d, dtype, "cuda"))
    kpm = (torch.rand(2, 301, device="cuda") < 0.3) if masked else None
    out = kernels.attention(q, k, v, causal=causal, key_padding_mask=kpm, deterministic=deterministic)
    assert kernels.get_op("attention").ordered[0].name == "triton"
    q64, k64, v64 = _f64(q, k, v)
    want = ref.attention(q64, k64, v64, causal=causal, key_padding_mask=kpm)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    wgrads = torch.autograd.grad(want, (q64, k64, v64), do.double())
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    for got, w in zip((out, *grads), (want, *wgrads)):
        assert float((got.double() - w).norm() / w.norm()) < tol


@pytest.mark.gpu
def test_gpu_memory_is_linear_in_n() -> None:
    q, k, v = _qkv(1, 4, 16384, 16384, 64, 10, torch.float16, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    kernels.attention(q, k, v)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 4 * 16384 * 64 * 2 * 2  # the output and the row statistics; N x N would be 2 GiB


def test_tile_table_and_the_shared_memory_fallback() -> None:
    pytest.importorskip("triton")
    import triton.runtime.errors

    from modelkernels.kernels.attention import flash

    assert flash.forward_config(64, torch.float16, 4096) == flash.FlashConfig(64, 64, 4, 3)
    assert flash.forward_config(128, torch.bfloat16, 4096).variant == "tma"
    assert flash.forward_config(128, torch.float16, 512).variant == "ptr"
    assert flash.forward_config(128, torch.float32, 4096).variant == "ptr"
    assert flash.use_atomic_dq(16, 4096, deterministic=False) and not flash.use_atomic_dq(16, 64, deterministic=True)
    assert not flash.use_atomic_dq(64, 1024, deterministic=False)
    calls: list[tuple[int, int, int, bool]] = []

    class FakeKernel:  # runs out of shared memory above 32 keys per tile or with pipelining
        arg_names = ("X", "EVEN_N", "BLOCK_M", "BLOCK_N")

        def __getitem__(self, grid: tuple[int, ...]) -> object:
            def run(*args: object, BLOCK_M: int, BLOCK_N: int, num_warps: int, num_stages: int, EVEN_N: bool) -> None:
                calls.append((BLOCK_M, BLOCK_N, num_stages, EVEN_N))
                if num_stages > 1 or BLOCK_N > 32:
                    raise triton.runtime.errors.OutOfResources(262144, 232448, "shared memory")
            return run

    start, kernel = flash.FlashConfig(64, 64, 4, 3), FakeKernel()
    flash.launch(kernel, ("test",), start, 48, 1, (), (), EVEN_N=lambda c: 48 % c.block_n == 0)
    assert calls[-1] == (64, 32, 1, False) and len(calls) == 5
    flash.launch(kernel, ("test",), start, 48, 1, (), (), EVEN_N=lambda c: 48 % c.block_n == 0)
    assert len(calls) == 6 and calls[-1] == (64, 32, 1, False)  # the fitted tile is remembered


@TRITON_CPU
@pytest.mark.parametrize("variant", ["ptr", "krows", "tma", "tma_ws"])
def test_forward_variants_match_the_reference(variant: str) -> None:
    """Pointer loads, K rows + tl.trans, and the 4-D tensor-descriptor kernel (the interpreter runs it
    too) on odd shapes: masks with dead rows, causal, (B, N, H, D) views, Nq != Nk, partial tiles."""
    from modelkernels.kernels.attention import flash

    g = torch.Generator().manual_seed(21)
    for b, h, nq, nk, d, causal, masked, bnhd in ((2, 3, 37, 29, 16, False, False, False),
                                                    (1, 2, 33, 40, 32, True, True, True),
                                                    (2, 1, 17, 5, 16, False, True, False)):
        q, k, v = (torch.randn((b, n, h, d) if bnhd else (b, h, n, d), generator=g).to(DEVICE) for n in (nq, nk, nk))
        if bnhd:
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        kpm = (torch.rand(b, nk, generator=g) < 0.3).to(DEVICE) if masked else None
        if kpm is not None:
            kpm[0] = True  # batch 0 sees no key: zero rows
        cfg = flash.FlashConfig(16, 16, 1, 1, variant) if DEVICE == "cpu" else flash.FlashConfig(64, 64, 4, 3, variant)
        assert flash.tma_ready(q, k, v)
        out, lse = flash.flash_forward(q, k, v, kpm, causal, d ** -0.5, bnhd, config=cfg)
        want = ref.attention(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=kpm)
        torch.testing.assert_close(out.double(), want, atol=1e-5 if DEVICE == "cpu" else 5e-3, rtol=1e-5)
        assert lse is not None and lse.shape == (b, h, nq)
        alone, no_lse = flash.flash_forward(q, k, v, kpm, causal, d ** -0.5, bnhd, config=cfg, need_lse=False)
        assert no_lse is None and torch.equal(alone, out)


def test_launch_cache_key_tells_apart_pointer_alignment() -> None:
    pytest.importorskip("triton")
    from modelkernels.kernels.triton_launch import specialisation

    x = torch.zeros(64, dtype=torch.float16)
    aligned, misaligned = (torch.float16, True), (torch.float16, False)
    assert specialisation((x, x[8:])) == (aligned, aligned)  # 16 bytes in: still aligned
    assert specialisation((x, x[4:], x[1:])) == (aligned, misaligned, misaligned)


def test_cached_launch_reuses_the_compiled_kernel_and_recompiles_on_a_new_specialisation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path of ``launch`` with a stand-in kernel: the first call compiles through ``kernel[grid]``,
    later calls with equal integers and alignment go straight to the compiled launcher with the
    arguments in signature order; other integers, alignment or tiles compile again."""
    pytest.importorskip("triton")
    from modelkernels.kernels.attention import flash

    compiles: list[tuple[int, ...]] = []
    runs: list[tuple[object, ...]] = []

    class Compiled:
        function, packed_metadata = "fn", "meta"

        def run(self, *args: object) -> None:
            runs.append(args)

    class Kernel:
        arg_names = ("P", "N", "S", "BLOCK_M", "FLAG", "BLOCK_N")

        def __getitem__(self, grid: tuple[int, ...]) -> object:
            def compile_and_run(*args: object, **kw: object) -> Compiled:
                compiles.append(grid)
                return Compiled()
            return compile_and_run

    from modelkernels.kernels import triton_launch

    monkeypatch.setattr(triton_launch, "triton_interpret", lambda: False)
    monkeypatch.setattr(triton_launch, "hooks_installed", lambda: False)
    monkeypatch.setattr(triton_launch, "device_and_stream", lambda: (lambda: 0, lambda device: 7))
    kernel, cfg, x = Kernel(), flash.FlashConfig(32, 16, 4, 2), torch.zeros(64, dtype=torch.float16)
    flash.launch(kernel, ("fake",), cfg, 100, 3, (x,), (100,), (0.5,), FLAG=True)
    flash.launch(kernel, ("fake",), cfg, 100, 3, (x,), (100,), (0.25,), FLAG=True)
    assert compiles == [(4, 3)]
    assert runs == [(4, 3, 1, 7, "fn", "meta", None, None, None, x, 100, 0.25, 32, True, 16)]
    flash.launch(kernel, ("fake",), cfg, 100, 3, (x[1:],), (100,), (0.5,), FLAG=True)  # misaligned pointer
    flash.launch(kernel, ("fake",), cfg, 101, 3, (x,), (101,), (0.5,), FLAG=True)  # another length
    flash.launch(kernel, ("fake",), cfg._replace(block_m=64), 100, 3, (x,), (100,), (0.5,), FLAG=True)
    assert compiles == [(4, 3), (4, 3), (4, 3), (2, 3)] and len(runs) == 1
    flash.launch(kernel, ("fake",), cfg, 100, 5, (x,), (100,), (0.5,), by_n=True, FLAG=True)
    assert runs[-1][:3] == (7, 5, 1)  # the grid follows the call: 100 keys in tiles of 16, 5 programs


@pytest.mark.gpu
def test_gpu_cached_launch_respecialises_on_strides_alignment_and_lengths() -> None:
    """The cached launch handles must not reuse a kernel compiled for other strides, alignment or N."""
    from modelkernels.kernels.triton_launch import specialisation

    for nq, nk, offset, bnhd in ((64, 64, 0, False), (64, 64, 0, True), (37, 64, 0, False), (64, 64, 4, False),
                                 (64, 64, 0, False), (48, 33, 0, True)):
        buf = torch.randn(3 * 2 * 3 * max(nq, nk) * 64 + offset, device="cuda", dtype=torch.float16)
        parts = []
        for i, n in enumerate((nq, nk, nk)):
            start = offset + i * 2 * 3 * max(nq, nk) * 64
            flat = buf[start:start + 2 * 3 * n * 64]
            parts.append(flat.view(2, n, 3, 64).transpose(1, 2) if bnhd else flat.view(2, 3, n, 64))
        q, k, v = parts
        want = ref.attention(q.double(), k.double(), v.double())
        for _ in range(2):  # the second call takes the cached handle
            out = kernels.attention(q, k, v)
            assert float((out.double() - want).norm() / want.norm()) < 5e-3
        assert specialisation((q,)) == ((torch.float16, offset % 8 == 0),)  # 16-byte aligned or not


def test_explain_runs_the_calls_argument_checks() -> None:
    q, k = torch.zeros(2, 3, 5, 16), torch.zeros(3, 3, 5, 16)
    assert "-> raises ValueError: batch: q has 2, k has 3" in kernels.explain("attention", q, k, k)
    assert "-> raises TypeError: causal='no'" in kernels.explain("attention", q, q, q, causal="no")
    with pytest.raises(TypeError, match="causal='no': must be a bool"):
        kernels.attention(q, q, q, causal="no")
