"""The launch layer's compiled path (``kernels/triton_launch.py``) on a CPU: what a GPU call does after its
first launch, with the interpreter standing in for the compiled kernel.

On CUDA the first launch of a specialisation goes through ``kernel[grid]`` and later ones call the kept
compiled kernel's launcher directly, with the runtime arguments and the constexprs in signature order.
Under the interpreter the layer normally takes Triton's own path every time, so that ordering would
only be exercised on a GPU. Here the interpreter's launch returns a stand-in "compiled kernel" whose
launcher maps the positional arguments back to the kernel's parameter names and interprets the kernel
again: every registered Triton backend runs each of its samples three times; the third run must go
through kept launchers only and all three must agree bit for bit.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.registry import triton_interpret

pytestmark = pytest.mark.skipif(not triton_interpret(), reason="needs TRITON_INTERPRET=1 (the CPU stand-in)")

STREAM = 7


def _params(function: Any) -> list[SimpleNamespace]:
    """A JITFunction's ``params`` (name, default, do_not_specialize) for an interpreted function."""
    plain = function.kwargs.get("do_not_specialize") or ()
    names = list(inspect.signature(function.fn).parameters.values())
    return [SimpleNamespace(name=p.name, default=p.default, has_default=p.default is not p.empty,
                            do_not_specialize=p.name in plain or i in plain) for i, p in enumerate(names)]


@pytest.fixture
def replayed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """The launch layer's compiled path, with launchers that re-interpret the kernel: yields the count
    of launches through ``kernel[grid]`` ("compiled") and through a kept launcher ("kept")."""
    from triton.runtime.interpreter import InterpretedFunction

    from modelkernels.kernels import triton_launch
    from modelkernels.kernels.attention import flash
    from modelkernels.kernels.fused import feed_forward_triton, group_norm_triton, layer_norm_triton, upsample_triton

    interpret = InterpretedFunction.run
    replays: Counter[str] = Counter()

    class Launcher:
        """What ``kernel[grid](...)`` returns on CUDA, as far as the launch layer uses it."""

        function, packed_metadata = "function", "metadata"

        def __init__(self, kernel: Any) -> None:
            self.kernel = kernel

        def run(self, gx: int, gy: int, gz: int, stream: int, function: Any, metadata: Any, *rest: Any) -> None:
            assert (stream, function, metadata, rest[:3]) == (STREAM, "function", "metadata", (None, None, None))
            args = rest[3:]
            names = self.kernel.arg_names
            assert len(args) == len(names), f"{self.kernel.__name__}: {len(args)} arguments for {names}"
            replays["kept"] += 1
            interpret(self.kernel, grid=(gx, gy, gz), warmup=False, **dict(zip(names, args, strict=True)))

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Launcher:
        interpret(self, *args, grid=grid, warmup=warmup, **kwargs)
        replays["compiled"] += 1
        return Launcher(self)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    flash.interpreter_index_fix()
    for module in (triton_launch, flash):  # flash: its kept forward plans and the GPU's tiles
        monkeypatch.setattr(module, "triton_interpret", lambda: False)
    monkeypatch.setattr(flash, "_FORWARD_PLANS", {})
    for module, table in ((group_norm_triton, "_PLANS"), (feed_forward_triton, "_PLANS"),
                          (layer_norm_triton, "_FORWARD_PLANS"), (upsample_triton, "_FORWARD_PLANS")):
        monkeypatch.setattr(module, table, {})  # plans made outside the stand-in hold launches it never kept
    monkeypatch.setattr(triton_launch, "hooks_installed", lambda: False)
    monkeypatch.setattr(triton_launch, "device_and_stream", lambda: (lambda: 0, lambda device: STREAM))
    monkeypatch.setattr(InterpretedFunction, "params", property(_params), raising=False)
    for cached in list(triton_launch._CACHED.values()):  # made before the stand-in: what CUDA would have read
        if not isinstance(cached.kernel, InterpretedFunction):  # another test's stand-in kernel
            continue
        monkeypatch.setattr(cached, "defaults", {p.name: p.default for p in _params(cached.kernel) if p.has_default})
        monkeypatch.setattr(cached, "plain", triton_launch._plain_positions(cached.kernel))
        for table in ("handles", "fitted_handles", "fits"):
            monkeypatch.setattr(cached, table, {})
        for prepared in list(cached.prepared):
            monkeypatch.setattr(prepared, "handles", {})
    monkeypatch.setattr(triton_launch, "_CACHED", dict(triton_launch._CACHED))
    yield replays


def _cases() -> list[tuple[str, str]]:
    return [(op, sample.name) for op in kernels.list_kernels() if "triton" in kernels.get_op(op).backends
            for sample in kernels.get_op(op).samples]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num()) \
            and torch.equal(a.isnan(), b.isnan())
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("op,sample", _cases(), ids=[f"{o}-{s}" for o, s in _cases()])
def test_kept_launcher_gives_the_first_launchs_result(replayed: Counter[str], op: str, sample: str) -> None:
    record = kernels.get_op(op)
    backend = record.backends["triton"]
    found = next(s for s in record.samples if s.name == sample)
    if found.dtypes is not None and "float32" not in found.dtypes:
        pytest.skip("the interpreter runs the float32 samples")
    args, kwargs = found.make("cpu", "float32")
    if backend.reasons(args, kwargs, forced=True):
        pytest.skip("; ".join(backend.reasons(args, kwargs, forced=True)))
    with torch.no_grad():
        first = backend.fn(*args, **kwargs)
        launched = replayed["compiled"] + replayed["kept"]
        second = backend.fn(*args, **kwargs)  # may still go through kernel[grid] once: a plan kept by the first
        before = replayed.copy()
        third = backend.fn(*args, **kwargs)
    assert replayed["compiled"] == before["compiled"], "a repeated call went through kernel[grid]"
    assert (replayed["kept"] > before["kept"]) == (launched > 0), "a repeated call did not launch as the first"
    assert _same(first, second) and _same(first, third)
