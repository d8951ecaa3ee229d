"""GroupNorm's two forward paths (kernels/fused/group_norm_triton.py): the host-side choice and wave
arithmetic of the persistent kernel, the persistent kernel itself (on the interpreter where a row is
one tile, so no program waits on another; on CUDA at the seed's sizes), and its agreement with the
two-pass path and the float64 reference, gradients included."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.fused import group_norm_triton as gnt
from modelkernels.kernels.registry import triton_interpret
from modelkernels.pyimpl import fused as ref

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or triton_interpret()),
                                  reason="Triton needs CUDA or TRITON_INTERPRET=1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _force(monkeypatch: pytest.MonkeyPatch, path: str, **kw: float) -> None:
    """Both configs (CUDA and interpreter) on one path, with optional launch parameters."""
    for name in ("FORWARD_CONFIG", "CPU_FORWARD_CONFIG"):
        monkeypatch.setattr(gnt, name, dataclasses.replace(getattr(gnt, name), path=path, **kw))


def _inputs(shape: tuple[int, ...], groups: int, channels_last: bool, dtype: torch.dtype, seed: int,
            offset: float = 0.5) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + offset
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    return dict(x=x.to(DEV, dtype), r=r.to(DEV, dtype),
                e=torch.randn(shape[0], c, generator=g, dtype=torch.float64).to(DEV, dtype),
                w=(torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(DEV, dtype),
                b=torch.randn(c, generator=g, dtype=torch.float64).to(DEV, dtype))


def _run(t: dict[str, torch.Tensor], groups: int, variant: str, impl: str) -> torch.Tensor:
    kw: dict[str, object] = {"gelu": dict(activation="gelu"), "res": dict(residual=t["r"], activation="gelu"),
                             "emb": dict(emb=t["e"]), "all": dict(residual=t["r"], emb=t["e"], activation="gelu"),
                             "plain": {}}[variant]
    if impl == "ref":
        kw = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        return ref.group_norm_act(t["x"].double(), groups, t["w"].double(), t["b"].double(), **kw)
    return kernels.group_norm_act(t["x"], groups, t["w"], t["b"], backend="triton", **kw)


def _rel(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out.double() - want.double()).norm() / want.double().norm())


# ------------------------------------------------------------------------------------ host-side logic
def test_select_path_is_explicit() -> None:
    assert gnt.select_path("auto", "cuda", interpreting=False) == "persistent"
    assert gnt.select_path("auto", "cuda", interpreting=True) == "two_pass"
    assert gnt.select_path("auto", "cpu", interpreting=True) == "two_pass"
    assert gnt.select_path("persistent", "cpu", interpreting=True) == "persistent"
    assert gnt.select_path("two_pass", "cuda", interpreting=False) == "two_pass"
    with pytest.raises(ValueError, match="path='fast'"):
        gnt.select_path("fast", "cuda", interpreting=False)


def test_plan_persistent_seed_sizes() -> None:
    # B=128, GroupNorm(1, 64) on 64x64: 262144 values a row, 32 tiles of 8192; 2 programs on each of 132 SMs
    plan = gnt.plan_persistent(128, 64 * 64 * 64, 8192, 264)
    assert plan == gnt.PersistentPlan(tiles=32, rows_per_wave=8, grid=256, waves=16)
    # fewer rows than fit: one wave, every row at once
    assert gnt.plan_persistent(3, 1000, 256, 1000) == gnt.PersistentPlan(4, 3, 12, 1)
    # the interpreter holds one program: only one-tile rows, one row per wave
    assert gnt.plan_persistent(5, 90, 128, 1) == gnt.PersistentPlan(1, 1, 1, 5)


def test_plan_persistent_refuses_rows_that_cannot_be_resident() -> None:
    assert gnt.plan_persistent(1, 2**21, 8192, 255) is None  # 256 tiles, 255 resident programs
    assert gnt.plan_persistent(1, 2**21, 8192, 256) is not None
    assert gnt.plan_persistent(7, 129, 128, 1) is None
    for bad in [(0, 10, 8, 8), (1, 0, 8, 8), (1, 10, 0, 8), (1, 10, 8, 0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            gnt.plan_persistent(*bad)


def test_plan_persistent_covers_every_tile_once_within_the_resident_grid() -> None:
    for rows, length, block, resident in itertools.product([1, 2, 7, 16, 129], [1, 100, 4096, 50000],
                                                           [128, 1024, 8192], [1, 3, 64, 264, 1056]):
        plan = gnt.plan_persistent(rows, length, block, resident)
        tiles = -(-length // block)
        if plan is None:
            assert tiles > resident
            continue
        assert plan.tiles == tiles and plan.grid == plan.rows_per_wave * tiles <= resident
        # program p, wave w -> (row, tile): a bijection onto rows x tiles, rows wave-aligned
        seen = {(w * plan.rows_per_wave + p // tiles, p % tiles)
                for w in range(plan.waves) for p in range(plan.grid) if w * plan.rows_per_wave + p // tiles < rows}
        assert len(seen) == rows * tiles
        assert (plan.waves - 1) * plan.rows_per_wave < rows <= plan.waves * plan.rows_per_wave


def test_resident_per_sm_follows_the_occupancy_rule() -> None:
    # H100/H200: 65536 registers, 2048 threads, 228 KiB shared memory per SM
    assert gnt.resident_per_sm(64, 8, 0) == 4  # 2048 registers a warp: 8 warps per sub-partition
    assert gnt.resident_per_sm(96, 8, 0) == 2  # 3072 a warp: 5 per sub-partition, 20 warps, 2 programs
    assert gnt.resident_per_sm(40, 4, 0) == 12  # 1280 a warp: 12 per sub-partition, 48 warps
    assert gnt.resident_per_sm(32, 4, 0) == 16  # 1024 a warp: 64 warps, the 2048-thread limit
    assert gnt.resident_per_sm(32, 8, 100_000) == 2  # shared memory decides
    assert gnt.resident_per_sm(16, 1, 0) == 32  # the 32-program limit
    assert gnt.resident_per_sm(255, 16, 0) == 0  # 8192 a warp: 8 warps per SM, fewer than one program
    with pytest.raises(ValueError, match="n_regs=0"):
        gnt.resident_per_sm(0, 8, 0)


def test_plan_chunks_seed_sizes() -> None:
    # B=128 GroupNorm(1, 64) on 64x64 rows of 262144 values, 8 programs on each of 132 SMs: 8 chunks a row
    assert gnt.plan_chunks(128, 64 * 64 * 64, 4096, 8 * 132) == (32768, 8)
    # B=16: 66 wanted, 64 (the nearest power of two) of 4096 values
    assert gnt.plan_chunks(16, 64 * 64 * 64, 4096, 8 * 132) == (4096, 64)
    # a row shorter than the chunks wanted: one tile a chunk, the last one partial
    assert gnt.plan_chunks(2, 4551, 1024, 64) == (1024, 5)
    # more rows than programs: one chunk a row
    assert gnt.plan_chunks(1000, 300, 128, 64) == (384, 1)
    for bad in [(0, 10, 8, 8), (1, 0, 8, 8), (1, 10, 0, 8), (1, 10, 8, 0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            gnt.plan_chunks(*bad)


def test_plan_chunks_covers_each_row() -> None:
    for rows, length, tile, target in itertools.product([1, 3, 128], [1, 100, 4551, 262144], [64, 1024, 4096],
                                                        [1, 7, 1056]):
        chunk, nchunk = gnt.plan_chunks(rows, length, tile, target)
        assert chunk % tile == 0 and 1 <= nchunk <= 1024
        assert (nchunk - 1) * chunk < length <= nchunk * chunk


# ------------------------------------------------------------------- the two-pass kernels (interpreter too)
TWO_PASS = [  # shape, groups, channels-last: whole chunks (no masks) and partial ones, every apply mode
    ((2, 4, 16, 16), 1, False),   # planes of 256: tiles of one plane (MODE_NCHW_PLANE), whole chunks
    ((3, 6, 7, 9), 3, False),     # per-element channels, partial chunks
    ((2, 8, 8, 4), 1, True),      # channels-last [rows x C] tiles, whole chunks
    ((3, 6, 5, 7), 1, True),      # channels-last, C not a power of two, partial chunks
]


def test_two_pass_plan_is_kept_per_problem_and_config() -> None:
    """The kept launch plan is reused for an equal problem and config, and never for a different shape,
    layout, group count, element size, optional input, activation or config."""
    cfg = gnt.CPU_FORWARD_CONFIG

    def problem(shape: tuple[int, ...] = (2, 8, 4, 4), groups: int = 2, dtype: torch.dtype = torch.float32,
                residual: bool = False, act: int = 1, channels_last: bool = False) -> gnt._Problem:
        x = torch.zeros(shape, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.ones(shape[1], dtype=dtype)
        return gnt._problem(x, groups, w, w, 1e-5, torch.zeros_like(x) if residual else None, None, act)

    plan = gnt.two_pass_plan(problem(), cfg)
    assert gnt.two_pass_plan(problem(), cfg) is plan
    others = [problem(shape=(2, 8, 4, 5)), problem(shape=(3, 8, 4, 4)), problem(groups=4),
              problem(dtype=torch.float16), problem(residual=True), problem(act=0),
              problem(groups=1, channels_last=True)]
    for other in others:
        assert gnt.two_pass_plan(other, cfg) is not plan
    assert gnt.two_pass_plan(problem(groups=1, channels_last=True), cfg).apply.prepared.constexprs["MODE"] != \
        gnt.two_pass_plan(problem(groups=1), cfg).apply.prepared.constexprs["MODE"]
    wider = dataclasses.replace(cfg, block=cfg.block // 2, stats_block=cfg.stats_block // 2)
    assert gnt.two_pass_plan(problem(shape=(2, 8, 64, 64)), wider) is not gnt.two_pass_plan(
        problem(shape=(2, 8, 64, 64)), cfg)
    assert gnt.two_pass_plan(problem(shape=(2, 8, 64, 64)), wider).apply.prepared.constexprs["BLOCK"] == cfg.block // 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.block = 8  # type: ignore[misc]  # a config is never changed in place (plans are kept per config)


@needs_triton
@pytest.mark.parametrize("shape,groups,cl", TWO_PASS)
@pytest.mark.parametrize("merge,keep", [(False, 0.0), (True, 0.0), (False, 0.001)])
@pytest.mark.parametrize("variant", ["all", "gelu", "plain"])
def test_two_pass_tiles_chunks_and_merge_match_the_reference(monkeypatch: pytest.MonkeyPatch,
                                                             shape: tuple[int, ...], groups: int, cl: bool,
                                                             merge: bool, keep: float, variant: str) -> None:
    """Small tiles so that every program walks several tiles (the prefetch, the reverse walk) and every row
    several chunks (Chan's merge in the apply prologue, or by the statistics pass's last program; with
    ``keep``, the last chunk or two loaded evict_last); the row counters back at zero after each call."""
    _force(monkeypatch, "two_pass", block=32, stats_block=64, per_sm=4, merge=merge, l2_keep_mb=keep)
    counters = torch.zeros(64, dtype=torch.int32, device=DEV)
    monkeypatch.setattr(gnt, "_counters", lambda device, rows: counters)
    t = _inputs(shape, groups, cl, torch.float32, seed=21)
    want = _run(t, groups, variant, "ref")
    for _ in range(2):
        out = _run(t, groups, variant, "triton")
        assert out.is_contiguous(memory_format=torch.channels_last) == cl
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        assert int(counters.abs().sum()) == 0


@needs_triton
@pytest.mark.parametrize("merge", [False, True])
def test_two_pass_saves_the_row_statistics(monkeypatch: pytest.MonkeyPatch, merge: bool) -> None:
    """mean and rstd (saved for the backward) from either merge, against float64."""
    _force(monkeypatch, "two_pass", block=32, stats_block=64, per_sm=4, merge=merge)
    t = _inputs((3, 6, 7, 9), 3, False, torch.float32, seed=22)
    _, mean, rstd, _, _, _ = gnt.group_norm_act_forward(t["x"], 3, t["w"], t["b"], 1e-5, None, None, True)
    xg = t["x"].double().reshape(9, -1)
    torch.testing.assert_close(mean.double(), xg.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), (xg.var(1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("path", ["two_pass", "persistent"])
def test_gelu_within_the_erf_approximation_error(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """GELU inputs y spread over [-6, 6] (a normalized ramp times 3.5), against the exact GELU of the same
    y: Abramowitz & Stegun 7.1.26 bounds the erf error by 1.5e-7, so the GELU's by |y| * 0.75e-7, plus the
    output's fp32 rounding: within 6e-7 everywhere (a wrong coefficient shows as several 1e-6)."""
    _force(monkeypatch, path)
    x = torch.linspace(-1.0, 1.0, 2 * 4 * 16 * 16).reshape(2, 4, 16, 16).to(DEV)
    w = torch.full((4,), 3.5).to(DEV)
    y = kernels.group_norm_act(x, 1, w, None, backend="triton").double()  # the GELU's input, as computed
    out = kernels.group_norm_act(x, 1, w, None, activation="gelu", backend="triton").double()
    assert float(y.abs().max()) > 5.5
    assert float((out - ref.gelu(y)).abs().max()) < 6e-7


# -------------------------------------------------------------- the persistent kernel (interpreter too)
MODES = [  # shape, groups, channels-last, persistent mode on the interpreter (4096-value tiles)
    ((5, 6, 7, 9), 3, False, gnt.MODE_NCHW),
    ((2, 4, 16, 16), 4, False, gnt.MODE_NCHW_PLANE),
    ((3, 8, 5, 3), 1, True, gnt.MODE_NHWC_TILE),
    ((3, 6, 5, 3), 1, True, gnt.MODE_NHWC),
    ((3, 6, 4, 4), 2, False, gnt.MODE_NCHW_PLANES),
]


@needs_triton
@pytest.mark.parametrize("shape,groups,cl,mode", MODES)
@pytest.mark.parametrize("variant", ["all", "plain"])
@pytest.mark.parametrize("early", [False, True])
def test_persistent_kernel_matches_the_reference(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...],
                                                 groups: int, cl: bool, mode: int, variant: str, early: bool) -> None:
    """Every tile layout, one row per wave on the interpreter (several waves), the counters back at zero
    after each call (the next call reuses them), output written everywhere and in x's layout."""
    length = shape[1] // groups * shape[2] * shape[3]
    assert gnt._persistent_mode(cl, shape[1], shape[2] * shape[3], gnt.triton.next_power_of_2(length)) == mode
    _force(monkeypatch, "persistent", early_publish=early)
    counters = torch.zeros(64, dtype=torch.int32, device=DEV)
    monkeypatch.setattr(gnt, "_counters", lambda device, rows: counters)
    t = _inputs(shape, groups, cl, torch.float32, seed=11)
    want = _run(t, groups, variant, "ref")
    for _ in range(2):
        out = _run(t, groups, variant, "triton")
        assert not out.isnan().any() and out.is_contiguous(memory_format=torch.channels_last) == cl
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        assert int(counters.abs().sum()) == 0


@needs_triton
def test_persistent_kernel_gradients_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _force(monkeypatch, "persistent")
    t = _inputs((3, 6, 5, 3), 2, False, torch.float32, seed=12)
    ins = [t[k].requires_grad_(True) for k in ("x", "w", "b", "r", "e")]
    out = kernels.group_norm_act(ins[0], 2, ins[1], ins[2], residual=ins[3], emb=ins[4], activation="gelu",
                                 backend="triton")
    dy = torch.randn(out.shape, generator=_gen(13), dtype=torch.float64).to(DEV)
    got = torch.autograd.grad(out, ins, dy.float())
    ins64 = [v.detach().double().requires_grad_(True) for v in ins]
    want = torch.autograd.grad(ref.group_norm_act(ins64[0], 2, ins64[1], ins64[2], residual=ins64[3],
                                                  emb=ins64[4], activation="gelu"), ins64, dy)
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_.double(), w_, rtol=1e-4, atol=1e-4)


@needs_triton
def test_forced_persistent_path_refuses_a_row_it_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row of 2**17 values in 128-value tiles is 1024 tiles: more than the interpreter's one program
    and than any current GPU keeps resident. Forced: a ValueError naming the shape; 'auto': two-pass."""
    _force(monkeypatch, "persistent", persistent_block=128)
    x = torch.randn(1, 4, 256, 128, generator=_gen(14)).to(DEV)
    with pytest.raises(ValueError, match=r"x.shape=\(1, 4, 256, 128\).*more tiles of 128"):
        kernels.group_norm_act(x, 1, backend="triton")
    _force(monkeypatch, "auto", persistent_block=128)
    torch.testing.assert_close(kernels.group_norm_act(x, 1, backend="triton").double(),
                               ref.group_norm_act(x.double(), 1), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- on CUDA
GPU_CASES = [  # shape, groups, channels-last, dtype
    ((16, 64, 64, 64), 1, False, torch.bfloat16),   # the seed's 64x64 level
    ((128, 64, 64, 64), 1, False, torch.bfloat16),  # many waves
    ((64, 128, 32, 32), 1, True, torch.bfloat16),   # channels-last from the attention blocks
    ((7, 320, 17, 17), 32, False, torch.float16),   # many groups, odd planes
    ((3, 24, 37, 37), 6, False, torch.float32),
    ((5, 6, 33, 31), 1, True, torch.float32),       # channels-last, C not a power of two
    ((2, 96, 40, 40), 32, False, torch.bfloat16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,groups,cl,dtype", GPU_CASES)
@pytest.mark.parametrize("variant", ["gelu", "res", "emb", "all"])
def test_persistent_matches_two_pass_and_reference_on_cuda(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...],
                                                           groups: int, cl: bool, dtype: torch.dtype,
                                                           variant: str) -> None:
    t = _inputs(shape, groups, cl, dtype, seed=sum(shape))
    want = _run(t, groups, variant, "ref")
    _force(monkeypatch, "two_pass")
    two = _run(t, groups, variant, "triton")
    _force(monkeypatch, "persistent")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for _ in range(3):  # the counters must come back to zero for the next call
        out = _run(t, groups, variant, "triton")
        assert _rel(out, want) < tol and _rel(out, two) < tol
        assert out.is_contiguous(memory_format=torch.channels_last) == cl


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_persistent_statistics_with_a_large_mean_on_cuda(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    _force(monkeypatch, "persistent", persistent_block=1024)
    x = (torch.randn(3, 5, 61, 67, generator=_gen(2), dtype=torch.float64) + offset).cuda()
    out = kernels.group_norm_act(x.float(), 1, backend="triton")
    tol = 2e-5 if offset == 0 else 2e-3  # fp32 input rounding near 1e4, as the two-pass test
    torch.testing.assert_close(out.double(), ref.group_norm_act(x, 1), rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("early", [False, True])
def test_persistent_many_waves_one_program_per_sm(monkeypatch: pytest.MonkeyPatch, early: bool) -> None:
    """One program per SM and 512-value tiles: rows of 1024 values are 2 tiles, 66 rows a wave on 132
    SMs, 6 waves; a CUDA-graph replay on new values."""
    _force(monkeypatch, "persistent", persistent_block=512, ctas_per_sm=1, early_publish=early)
    t = _inputs((96, 16, 16, 16), 4, False, torch.float32, seed=5)
    want = _run(t, 4, "all", "ref")
    assert _rel(_run(t, 4, "all", "triton"), want) < 1e-5
    static = t["x"].clone()
    t2 = dict(t, x=static)
    graph = torch.cuda.CUDAGraph()
    _run(t2, 4, "all", "triton")
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out = _run(t2, 4, "all", "triton")
    for seed in (6, 7):
        fresh = _inputs((96, 16, 16, 16), 4, False, torch.float32, seed=seed)
        static.copy_(fresh["x"])
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(out, _run(dict(t, x=fresh["x"]), 4, "all", "ref")) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("cl", [False, True])
def test_persistent_gradients_equal_two_pass_on_cuda(monkeypatch: pytest.MonkeyPatch, cl: bool) -> None:
    """The backward reads the forward's mean and rstd: the same gradients on either forward path."""
    t = _inputs((16, 64, 32, 32), 1, cl, torch.float32, seed=9)
    dy = torch.randn(t["x"].shape, generator=_gen(10)).cuda()
    grads = []
    for path in ("two_pass", "persistent"):
        _force(monkeypatch, path)
        ins = [t[k].detach().clone().requires_grad_(True) for k in ("x", "w", "b", "r", "e")]
        out = kernels.group_norm_act(ins[0], 1, ins[1], ins[2], residual=ins[3], emb=ins[4], activation="gelu",
                                     backend="triton")
        grads.append(torch.autograd.grad(out, ins, dy))
    for a, b in zip(*grads):
        assert _rel(b, a) < 1e-5
