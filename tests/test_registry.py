"""The registry and dispatcher contract: registration, lookup, reasons, fallback, forcing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels import registry
from modelkernels.kernels.registry import Sample


@pytest.fixture
def toy():
    """A throwaway op 'toy_scale' with a reference and two backends; removed afterwards."""
    def ref(x, factor=2.0):
        return x * factor

    registry.define_op("toy_scale", reference=ref, dtypes=("float32", "float64"),
                       samples=[Sample("n=3", lambda d, t: ((torch.ones(3, dtype=getattr(torch, t), device=d),), {}))])

    @registry.register_kernel("toy_scale", "fast", devices=("cpu",), dtypes=("float32",), priority=5,
                              reasons=lambda x, factor=2.0: [] if factor > 0 else [f"factor={factor}: supported > 0"])
    def fast(x, factor=2.0):
        return x * factor + 0  # same result, different path

    @registry.register_kernel("toy_scale", "missing", devices=("cpu",), dtypes=("float32",), priority=9,
                              available=lambda: "toy extension not built")
    def missing(x, factor=2.0):
        raise AssertionError("an unavailable backend must never run")

    yield registry.get_op("toy_scale")
    del registry._OPS["toy_scale"]


def test_list_and_is_kernel(toy) -> None:
    assert "toy_scale" in kernels.list_kernels()
    assert kernels.list_kernels("toy_*") == ["toy_scale"]
    assert kernels.list_kernels("nothing*") == []
    assert kernels.is_kernel("toy_scale") and not kernels.is_kernel("toy_scal")


def test_unknown_name_suggests_closest(toy) -> None:
    with pytest.raises(KeyError, match="did you mean 'toy_scale'"):
        kernels.get_op("toy_scal")
    with pytest.raises(KeyError, match="insertion_sort"):
        kernels.get_op("insertion_srt")


def test_registration_warns_on_overwrite(toy) -> None:
    with pytest.warns(UserWarning, match="registered again"):
        registry.register_kernel("toy_scale", "fast", devices=("cpu",), dtypes=("float32",))(lambda x: x)


def test_register_on_unknown_op_raises() -> None:
    with pytest.raises(KeyError, match="unknown kernel"):
        registry.register_kernel("no_such_op", "x", devices=("cpu",), dtypes=("float32",))(lambda x: x)


def test_dispatch_picks_highest_priority_that_can_run(toy) -> None:
    x = torch.ones(4)
    assert registry.select("toy_scale", (x,), {}).name == "fast"  # 'missing' has higher priority, unavailable
    assert registry.select("toy_scale", (x.double(),), {}).name == "reference"  # dtype not supported by fast
    assert registry.select("toy_scale", (x,), {"factor": -1.0}).name == "reference"  # reasons reject
    assert torch.equal(registry.call("toy_scale", x, factor=3.0), x * 3)


def test_dispatch_key_remembers_the_automatic_choice(toy) -> None:
    calls = []

    def key(x, factor=2.0):
        calls.append(factor)
        if not isinstance(factor, (int, float)) or factor == 0:
            return None
        return x.device, x.dtype, factor > 0

    toy.dispatch_key = key
    x = torch.ones(4)
    fast = toy.backends["fast"]
    seen = []
    original = fast.reasons_fn
    fast.reasons_fn = lambda x, factor=2.0: seen.append(factor) or original(x, factor)
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    assert registry.select("toy_scale", (x,), {"factor": 5.0}).name == "fast"  # same key: reasons skipped
    assert seen == [2.0]
    assert registry.select("toy_scale", (x,), {"factor": -1.0}).name == "reference"  # another key
    assert registry.select("toy_scale", (x.double(),), {}).name == "reference"
    assert registry.select("toy_scale", (x,), {"factor": 0}).name == "reference"  # key None: decided afresh
    assert seen == [2.0, -1.0, 0]
    with registry.use_backend("reference"):  # forcing bypasses the memory
        assert registry.select("toy_scale", (x,), {}).name == "reference"
    with pytest.raises(ValueError, match="different devices"):  # mixed devices never reach the memory
        registry.select("toy_scale", (x, torch.ones(1, device="meta")), {})
    registry.register_kernel("toy_scale", "faster", devices=("cpu",), dtypes=("float32",), priority=7)(
        lambda x, factor=2.0: x * factor)
    assert toy.decisions == {}  # a new backend forgets the old choices
    assert registry.select("toy_scale", (x,), {}).name == "faster"


def test_forced_backend_fails_loudly_with_reasons(toy) -> None:
    x = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'fast' \(forced by argument backend=\).*dtype=float64: supported float32"):
        registry.call("toy_scale", x, backend="fast")
    with pytest.raises(ValueError, match="toy extension not built"):
        registry.call("toy_scale", torch.ones(2), backend="missing")
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        registry.call("toy_scale", x, backend="fats")


def test_use_backend_context_and_nesting(toy) -> None:
    x = torch.ones(2)
    with kernels.use_backend(toy_scale="reference"):
        assert registry.select("toy_scale", (x,), {}).name == "reference"
        with kernels.use_backend(toy_scale="fast"):
            assert registry.select("toy_scale", (x,), {}).name == "fast"
        assert registry.select("toy_scale", (x,), {}).name == "reference"
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    with kernels.use_backend("reference"):  # global: every op with such a backend
        assert registry.select("toy_scale", (x,), {}).name == "reference"
        assert registry.select("insertion_sort", (np.zeros(3),), {}).name == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        with kernels.use_backend(toy_scale="nope"):
            pass


def test_environment_override(toy, monkeypatch) -> None:
    x = torch.ones(2)
    monkeypatch.setenv("KERNELS_BACKEND", "reference")
    assert registry.select("toy_scale", (x,), {}).name == "reference"
    monkeypatch.setenv("KERNELS_BACKEND_TOY_SCALE", "fast")  # per op beats global
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    monkeypatch.setenv("KERNELS_BACKEND_TOY_SCALE", "fast")
    with pytest.raises(ValueError, match="environment KERNELS_BACKEND_TOY_SCALE"):
        registry.select("toy_scale", (x.double(),), {})
    monkeypatch.setenv("KERNELS_BACKEND", "triton")  # a global name the op lacks: automatic dispatch
    monkeypatch.delenv("KERNELS_BACKEND_TOY_SCALE")
    assert registry.select("toy_scale", (x,), {}).name == "fast"


def test_argument_beats_context_beats_environment(toy, monkeypatch) -> None:
    x = torch.ones(2)
    monkeypatch.setenv("KERNELS_BACKEND_TOY_SCALE", "reference")
    with kernels.use_backend(toy_scale="fast"):
        assert registry.select("toy_scale", (x,), {}).name == "fast"
        assert registry.select("toy_scale", (x,), {}, backend="reference").name == "reference"


def test_nothing_fits_lists_every_backend(toy) -> None:
    x = torch.ones(2, dtype=torch.float16)
    with pytest.raises(NotImplementedError) as e:
        registry.call("toy_scale", x)
    msg = str(e.value)
    assert "fast: dtype=float16" in msg and "missing: toy extension not built" in msg
    assert "reference: dtype=float16" in msg


def test_mixed_devices_rejected() -> None:
    with pytest.raises(ValueError, match="different devices"):
        registry.array_device((np.zeros(2), torch.zeros(2, device="meta")), {})


def test_explain_names_the_choice(toy) -> None:
    text = kernels.explain("toy_scale", torch.ones(2, dtype=torch.float64))
    assert "fast" in text and "dtype=float64: supported float32" in text
    assert "-> runs 'reference'" in text
    text = kernels.explain("toy_scale", torch.ones(2), backend="missing")
    assert "forced: 'missing'" in text and "-> raises ValueError" in text


def test_triton_style_interpret_device_only_when_forced(toy, monkeypatch) -> None:
    registry.register_kernel("toy_scale", "gpu_only", devices=("cuda",), dtypes=("float32",), priority=50,
                             interpret_devices=("cpu",))(lambda x, factor=2.0: x * factor)
    x = torch.ones(2)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert registry.select("toy_scale", (x,), {}).name == "fast"  # never picked automatically on CPU
    assert registry.select("toy_scale", (x,), {}, backend="gpu_only").name == "gpu_only"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        registry.select("toy_scale", (x,), {}, backend="gpu_only")


def test_parity_harness_catches_a_wrong_backend(toy) -> None:
    from modelkernels.kernels import parity

    registry.register_kernel("toy_scale", "wrong", devices=("cpu",), dtypes=("float32",))(
        lambda x, factor=2.0: x * factor + 1e-3)
    results = parity.run_parity(["toy_scale"], backends=["wrong"], devices=["cpu"])
    assert [r.status for r in results] == ["FAIL"]
    assert "out of tolerance" in results[0].detail
    ok = parity.run_parity(["toy_scale"], backends=["fast"], devices=["cpu"])
    assert [r.status for r in ok] == ["ok"]


def test_compare_handles_nan_inf_and_shapes() -> None:
    from modelkernels.kernels.parity import compare
    from modelkernels.kernels.registry import Tolerance

    tol = Tolerance(1e-6, 0)
    a = np.array([1.0, np.nan, np.inf])
    assert compare(a, a.copy(), tol)[0]
    assert not compare(np.array([1.0, 0.0, np.inf]), a, tol)[0]
    assert not compare(np.array([1.0, np.nan, -np.inf]), a, tol)[0]
    assert not compare(np.zeros(2), np.zeros(3), tol)[0]
    assert compare(np.zeros((0, 3)), np.zeros((0, 3)), tol)[0]


def test_compare_reports_error_to_tolerance_ratio() -> None:
    from modelkernels.kernels.parity import compare
    from modelkernels.kernels.registry import Tolerance

    c = compare(np.array([1.0 + 5e-7, 2.0]), np.array([1.0, 2.0]), Tolerance(1e-6, 0))
    assert c.ok and abs(c.ratio - 0.5) < 1e-6 and abs(c.max_error - 5e-7) < 1e-12
    assert not compare(np.array([1.1]), np.array([1.0]), Tolerance(0, 0)).ok


class _Compiled:
    """A compiled Triton kernel's stand-in: ``run`` records its arguments in ``runs``."""

    function, packed_metadata = "fn", "meta"

    def __init__(self, runs: list[tuple[object, ...]]) -> None:
        self.runs = runs

    def run(self, *args: object) -> None:
        self.runs.append(args)


def _as_on_a_gpu(monkeypatch: pytest.MonkeyPatch, triton_launch: object) -> None:
    """``kernels.triton_launch``'s fast path as on a GPU: no interpreter, no launch hooks, device 0, stream 7."""
    monkeypatch.setattr(triton_launch, "triton_interpret", lambda: False)
    monkeypatch.setattr(triton_launch, "hooks_installed", lambda: False)
    monkeypatch.setattr(triton_launch, "device_and_stream", lambda: (lambda: 0, lambda device: 7))


def test_prepared_launch_keeps_compiled_kernels_per_specialisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast(kernel).prepare(**constexprs)`` with a stand-in kernel: the first call of a specialisation
    compiles through ``kernel[grid]`` with the fixed constexprs, later ones run the compiled launcher with the
    runtime arguments then the constexprs in signature order; a misaligned pointer, another integer or
    another dtype compiles again; under a launch hook every call takes Triton's own path."""
    pytest.importorskip("triton")
    from modelkernels.kernels import triton_launch

    compiles: list[tuple[tuple[int, ...], dict[str, object]]] = []
    runs: list[tuple[object, ...]] = []

    class Kernel:
        arg_names = ("P", "N", "BLOCK", "FLAG")
        params = ()

        def __getitem__(self, grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
            def compile_and_run(*args: object, **kw: object) -> _Compiled:
                compiles.append((grid, kw))
                return _Compiled(runs)
            return compile_and_run

    _as_on_a_gpu(monkeypatch, triton_launch)
    hooks = [False]
    monkeypatch.setattr(triton_launch, "hooks_installed", lambda: hooks[0])
    prepared = triton_launch.CachedKernel(Kernel()).prepare(BLOCK=32, FLAG=True, num_warps=4)
    x = torch.zeros(64, dtype=torch.float16)
    prepared((3,), x, 100)
    prepared((5,), x, 100)
    assert compiles == [((3,), {"BLOCK": 32, "FLAG": True, "num_warps": 4})]
    assert runs == [(5, 1, 1, 7, "fn", "meta", None, None, None, x, 100, 32, True)]
    prepared((3,), x[1:], 100)  # misaligned
    prepared((3,), x, 101)  # another integer
    prepared((3,), x.float(), 100)  # another dtype
    assert len(compiles) == 4 and len(runs) == 1
    hooks[0] = True
    prepared((3,), x, 100)
    assert len(compiles) == 5 and len(runs) == 1


def test_cached_triton_launch_reuses_the_compiled_kernel_per_specialisation(monkeypatch) -> None:
    """``kernels.triton_launch.fast`` with a stand-in kernel: the first call of a specialisation goes
    through ``kernel[grid]``; later equal calls go straight to the compiled launcher with the runtime
    arguments and then the constexprs (defaults included) in signature order; another dtype, alignment,
    integer, constexpr or warp count compiles again; the interpreter always takes Triton's path."""
    pytest.importorskip("triton")
    from modelkernels.kernels import triton_launch

    compiles: list[tuple[int, ...]] = []
    runs: list[tuple[object, ...]] = []

    class Param:
        def __init__(self, name: str, default: object = None, has_default: bool = False) -> None:
            self.name, self.default, self.has_default = name, default, has_default

    class Kernel:
        arg_names = ("X", "N", "EPS", "BLOCK", "FLAG")
        params = (Param("X"), Param("N"), Param("EPS"), Param("BLOCK"), Param("FLAG", False, True))

        def __getitem__(self, grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
            def compile_and_run(*args: object, **kw: object) -> _Compiled:
                compiles.append(grid)
                return _Compiled(runs)
            return compile_and_run

    _as_on_a_gpu(monkeypatch, triton_launch)
    kernel, x = Kernel(), torch.zeros(64, dtype=torch.float16)
    launcher = triton_launch.fast(kernel)
    assert triton_launch.fast(kernel) is launcher
    launcher[(4,)](x, 100, 0.5, BLOCK=32, num_warps=4)
    launcher[(5, 2)](x, 100, 0.25, BLOCK=32, num_warps=4)
    assert compiles == [(4,)]
    assert runs == [(5, 2, 1, 7, "fn", "meta", None, None, None, x, 100, 0.25, 32, False)]
    launcher[(4,)](x[1:], 100, 0.5, BLOCK=32, num_warps=4)  # misaligned pointer
    launcher[(4,)](x.float(), 100, 0.5, BLOCK=32, num_warps=4)  # another dtype
    launcher[(4,)](x, 101, 0.5, BLOCK=32, num_warps=4)  # another integer
    launcher[(4,)](x, 100, 0.5, BLOCK=64, num_warps=4)  # another constexpr
    launcher[(4,)](x, 100, 0.5, BLOCK=32, num_warps=8)  # other launch options
    assert len(compiles) == 6 and len(runs) == 1
    monkeypatch.setattr(triton_launch, "triton_interpret", lambda: True)
    launcher[(4,)](x, 100, 0.5, BLOCK=32, num_warps=4)
    assert len(compiles) == 7 and len(runs) == 1


def test_decision_remembered_per_signature_and_invalidated_by_every_override(toy, monkeypatch) -> None:
    """The default signature (devices, dtypes, shapes, scalars) keys the decision: a repeated call asks
    no reasons; backend=, use_backend, the environment, TRITON_INTERPRET, another dtype, device, shape or
    scalar, and a newly registered backend each decide afresh; explain asks every reason."""
    fast = toy.backends["fast"]
    asked = []
    original = fast.reasons_fn
    fast.reasons_fn = lambda x, factor=2.0: asked.append(factor) or original(x, factor)
    x = torch.ones(4)
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    assert registry.select("toy_scale", (torch.zeros(4),), {}).name == "fast"  # same signature: not asked
    assert asked == [2.0]
    assert registry.select("toy_scale", (x,), {"factor": -1.0}).name == "reference"  # another scalar
    assert registry.select("toy_scale", (x,), {"factor": -1}).name == "reference"  # another scalar type
    assert registry.select("toy_scale", (torch.ones(5),), {}).name == "fast"  # another shape
    assert len(asked) == 4
    assert registry.select("toy_scale", (x.double(),), {}).name == "reference"  # another dtype
    assert registry.select("toy_scale", (x,), {"factor": -1.0}).name == "reference"  # remembered
    assert len(asked) == 4
    assert registry.select("toy_scale", (x,), {}, backend="reference").name == "reference"
    with pytest.raises(ValueError, match="forced by argument"):
        registry.select("toy_scale", (x.double(),), {}, backend="fast")
    with pytest.raises(ValueError, match="forced by argument"):  # a failed decision is not remembered
        registry.select("toy_scale", (x.double(),), {}, backend="fast")
    with kernels.use_backend("reference"):
        assert registry.select("toy_scale", (x,), {}).name == "reference"
        with kernels.use_backend(toy_scale="fast"):
            assert registry.select("toy_scale", (x,), {}).name == "fast"
        assert registry.select("toy_scale", (x,), {}).name == "reference"
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    with kernels.use_backend(toy_scale="reference"):  # a new block with the same contents as an old one
        assert registry.select("toy_scale", (x,), {}).name == "reference"
    monkeypatch.setenv("KERNELS_BACKEND_TOY_SCALE", "reference")
    assert registry.select("toy_scale", (x,), {}).name == "reference"
    monkeypatch.setenv("KERNELS_BACKEND_TOY_SCALE", "fast")
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    monkeypatch.delenv("KERNELS_BACKEND_TOY_SCALE")
    monkeypatch.setenv("KERNELS_BACKEND", "reference")
    assert registry.select("toy_scale", (x,), {}).name == "reference"
    monkeypatch.delenv("KERNELS_BACKEND")
    assert registry.select("toy_scale", (x,), {}).name == "fast"
    if torch.cuda.is_available():
        assert registry.select("toy_scale", (x.cuda(),), {}).name == "reference"  # another device
    else:
        with pytest.raises(ValueError, match="different devices"):  # never remembered
            registry.select("toy_scale", (x, torch.ones(1, device="meta")), {})
    assert "-> runs 'fast'" in kernels.explain("toy_scale", x)
    n = len(asked)
    kernels.explain("toy_scale", x)
    assert len(asked) > n  # explain asks the reasons afresh
    registry.register_kernel("toy_scale", "faster", devices=("cpu",), dtypes=("float32",), priority=7)(
        lambda x, factor=2.0: x * factor)
    assert registry.select("toy_scale", (x,), {}).name == "faster"  # a new backend is seen at once
    assert "-> runs 'faster'" in kernels.explain("toy_scale", x)


def test_interpreter_switch_changes_a_remembered_forced_choice(toy, monkeypatch) -> None:
    toy.backends["fast"].devices = ("cuda",)
    toy.backends["fast"].interpret_devices = ("cpu",)
    x = torch.ones(3)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert registry.select("toy_scale", (x,), {}, backend="fast").name == "fast"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        registry.select("toy_scale", (x,), {}, backend="fast")


def test_unhashable_or_unknown_arguments_decide_afresh(toy) -> None:
    asked = []
    fast = toy.backends["fast"]
    original = fast.reasons_fn
    fast.reasons_fn = lambda x, factor=2.0: asked.append(1) or original(x, factor)
    x = torch.ones(2)
    for _ in range(2):
        assert registry.select("toy_scale", (x,), {"factor": np.float64(3.0)}).name == "fast"
    assert len(asked) == 2
    assert registry.signature((x, 1, "a", None), {"k": 2.0}) == (
        (x.device, x.dtype, x.shape), (int, 1), (str, "a"), (type(None), None), (float, 2.0), ("k",))
    assert registry.signature((x, 2.0), {}) != registry.signature((x,), {"k": 2.0})  # the names count


def test_launch_layer_steps_down_a_tile_and_keeps_plain_integers_unspecialised(monkeypatch) -> None:
    """``fast(kernel).fitted``: a tile that runs out of resources steps down (remembered), callable
    constexprs are evaluated on the tile used, and the later call goes to the compiled launcher with the
    grid of that tile. An integer declared ``do_not_specialize`` (a per-call seed) reuses the kernel."""
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from modelkernels.kernels import triton_launch

    tried: list[tuple[object, ...]] = []
    runs: list[tuple[object, ...]] = []

    class Param:
        def __init__(self, name: str, plain: bool = False) -> None:
            self.name, self.default, self.has_default, self.do_not_specialize = name, None, False, plain

    class Kernel:
        arg_names = ("X", "N", "SEED", "BLOCK", "EVEN")
        params = (Param("X"), Param("N"), Param("SEED", plain=True), Param("BLOCK"), Param("EVEN"))

        def __getitem__(self, grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
            def compile_and_run(*args: object, **kw: object) -> _Compiled:
                tried.append((grid, kw["BLOCK"], kw["EVEN"], kw["num_warps"]))
                if kw["BLOCK"] > 32:
                    raise OutOfResources(100, 50, "shared memory")
                return _Compiled(runs)
            return compile_and_run

    _as_on_a_gpu(monkeypatch, triton_launch)
    launcher = triton_launch.CachedKernel(Kernel())
    x, n = torch.zeros(64), 96

    def launch(seed: int) -> object:
        return launcher.fitted(128, lambda block: ((n + block - 1) // block,), (x, n, seed),
                               lambda block: {"BLOCK": block, "num_warps": 4}, lambda block: block // 2 or None,
                               "variant", EVEN=lambda block: n % block == 0)

    assert launch(5) == 32
    assert tried == [((1,), 128, False, 4), ((2,), 64, False, 4), ((3,), 32, True, 4)]
    assert launch(6) == 32 and launch(2**40) == 32  # a new seed; an i64 one compiles once more
    assert runs == [(3, 1, 1, 7, "fn", "meta", None, None, None, x, 96, 6, 32, True)]
    assert len(tried) == 4 and tried[-1] == ((3,), 32, True, 4)  # straight to the fitted tile
    assert launcher.fitted(128, lambda block: (1,), (x, 97, 5), lambda block: {"BLOCK": block, "num_warps": 4},
                           lambda block: block // 2 or None, "variant", EVEN=lambda block: False) == 32
    assert len(tried) == 5  # another integer N: compiled again, on the remembered tile
    spec = triton_launch.specialisation((x, 16, 3), frozenset({2}))
    assert spec == ((torch.float32, True), 16, ("int", True, False))


def test_checked_by_key_validates_once_per_signature_and_overrides() -> None:
    """A ``checked_by_key`` op runs a backend's checked entry until one call with a signature has
    returned, then its ``run``; a refused call remembers nothing; other overrides, other signatures and a
    newly registered backend start over."""
    calls: list[str] = []

    def check(x, factor=2.0):
        if not factor > 0:
            raise ValueError(f"factor={factor}: must be > 0")

    def ref(x, factor=2.0):
        check(x, factor)
        calls.append("reference")
        return x * factor

    registry.define_op("toy_checked", reference=ref, dtypes=("float32",), checked_by_key=True,
                       samples=[Sample("n=3", lambda d, t: ((torch.ones(3, device=d),), {}))])

    def fast_run(x, factor=2.0):
        calls.append("run")
        return x * factor

    @registry.register_kernel("toy_checked", "fast", devices=("cpu",), dtypes=("float32",), priority=5,
                              run=fast_run)
    def fast(x, factor=2.0):
        check(x, factor)
        calls.append("fn")
        return x * factor

    try:
        x = torch.ones(3)
        for _ in range(2):
            with pytest.raises(ValueError, match=r"factor=-1\.0"):
                registry.call("toy_checked", x, -1.0)
        assert calls == []  # refused twice: nothing was remembered
        for _ in range(3):
            assert torch.equal(registry.call("toy_checked", x, 3.0), x * 3)
        assert calls == ["fn", "run", "run"]
        calls.clear()
        registry.call("toy_checked", torch.ones(4), 3.0)  # another shape: checked again
        registry.call("toy_checked", x, 3.0, backend="reference")  # other overrides: the reference, checked
        registry.call("toy_checked", x, 3.0, backend="reference")  # the reference registered no run
        with registry.use_backend(toy_checked="reference"):
            registry.call("toy_checked", x, 3.0)
        assert calls == ["fn", "reference", "reference", "reference"]
        calls.clear()
        with pytest.warns(UserWarning, match="registered again"):
            registry.register_kernel("toy_checked", "fast", devices=("cpu",), dtypes=("float32",), priority=5,
                                     run=fast_run)(fast)
        registry.call("toy_checked", x, 3.0)  # a registration forgets what was checked
        registry.call("toy_checked", x, 3.0)
        assert calls == ["fn", "run"]
    finally:
        del registry._OPS["toy_checked"]


def test_a_lazy_entry_point_is_kept_resolved() -> None:
    """A backend registered with ``run=lazy(module, name)`` imports nothing until called, and the registry
    keeps the imported function itself as the runner (no wrapper call on later calls)."""
    from modelkernels.kernels.availability import LazyEntry, lazy

    entry = lazy("modelkernels.pyimpl.fused", "feed_forward_dtype")
    assert isinstance(entry, LazyEntry) and entry.__name__ == "feed_forward_dtype"
    x = torch.ones(2, dtype=torch.float16)
    assert entry(x, x.float()) == torch.float32

    def ref(x):
        return x * 2

    registry.define_op("toy_lazy", reference=ref, dtypes=("float32",), checked_by_key=True,
                       samples=[Sample("n=3", lambda d, t: ((torch.ones(3, device=d),), {}))])
    registry.register_kernel("toy_lazy", "fast", devices=("cpu",), dtypes=("float32",), priority=5,
                             run=lazy("modelkernels.pyimpl.attention", "default_scale"))(ref)
    try:
        registry.call("toy_lazy", torch.ones(3))
        (runner,) = registry.get_op("toy_lazy").runners.values()
        from modelkernels.pyimpl.attention import default_scale
        assert runner is default_scale
    finally:
        del registry._OPS["toy_lazy"]
