"""Insertion sort: C++ vs the plain-Python reference vs numpy's in-place sort, n = 8 .. 4096, on
random, sorted, reversed and few-distinct inputs: where O(n^2) insertion sort stops paying."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.native import native, native_unavailable
from modelkernels.kernels.sort.ops import _values

SIZES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
KINDS = ["random", "sorted", "reversed", "few"]
REFERENCE_MAX_N = {"random": 512, "sorted": 4096, "reversed": 512, "few": 512}  # O(n^2) Python is slow


def _impls(kind: str, n: int) -> list[tuple[str, str]]:
    out = [("native", "ours"), ("native-binding", "ours"), ("numpy.sort", "peer")]
    if n <= REFERENCE_MAX_N[kind]:
        out.append(("reference", "reference"))
    return out


def _run(impl: str):  # type: ignore[no-untyped-def]
    if impl == "numpy.sort":
        return lambda a: a.sort()
    if impl == "native-binding":  # the C++ kernel without the dispatcher's ~2.5 us
        binding = native().insertion_sort
        return lambda a: binding(a, 0, a.shape[0], None)
    return lambda a: kernels.insertion_sort(a, backend=impl)


CASES = [(kind, n, impl, role) for kind in KINDS for n in SIZES for impl, role in _impls(kind, n)]


@pytest.mark.parametrize("kind,n,impl,role", CASES, ids=[f"{k}-{n}-{i}" for k, n, i, _ in CASES])
def test_insertion_sort(bench, quick, kind: str, n: int, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if impl.startswith("native") and native_unavailable():
        pytest.skip(native_unavailable())
    if quick and n > 512:
        pytest.skip("--quick: n <= 512")
    base = _values(n, "float64", kind, seed=n)
    fn = _run(impl)
    check = base.copy()
    fn(check)
    verify(check, np.sort(base), what=f"{impl} n={n} {kind}")
    bench(fn, suite="insertion_sort", case=f"n={n} {kind}", series=kind, size=n, impl=impl, role=role,
          setup=lambda: ((base.copy(),), {}), rounds=20 if impl == "reference" else 200)
