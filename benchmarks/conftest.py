"""pytest-benchmark glue: the ``bench`` fixture records what each measurement is (suite, case,
series, size, implementation, its role: ours / reference / peer) for the report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.harness import cuda_time


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", help="small sizes and few rounds (a smoke run)")


@pytest.fixture
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture
def bench(benchmark: Any, quick: bool) -> Callable[..., Any]:
    """``bench(fn, suite=, case=, impl=, role=, series=, size=, device=, setup=, work=)``.

    CPU: pytest-benchmark times ``fn`` (``setup`` builds fresh arguments per round, untimed).
    CUDA: CUDA events time ``fn`` (median), pytest-benchmark keeps a few synchronized rounds.
    ``work``: units of work per call (elements, FLOPs, bytes) for throughput columns.
    """

    def run(fn: Callable[..., Any], *, suite: str, case: str, impl: str, role: str, series: str = "",
            size: float | None = None, device: str = "cpu", setup: Callable[[], Any] | None = None,
            work: dict[str, float] | None = None, rounds: int | None = None) -> Any:
        if role not in ("ours", "reference", "peer"):
            raise ValueError(f"role={role!r}: expected ours, reference or peer")
        benchmark.group = f"{suite}: {case}"
        benchmark.extra_info.update(suite=suite, case=case, impl=impl, role=role, series=series, size=size,
                                    device=device, work=work or {})
        if device == "cuda":
            import torch

            t = cuda_time(fn, warmup=3 if quick else 10, rep=10 if quick else 50)
            benchmark.extra_info.update(t)

            def synced() -> None:
                fn()
                torch.cuda.synchronize()

            return benchmark.pedantic(synced, rounds=3, iterations=1)
        if setup is not None:
            n_rounds = rounds or 50
            return benchmark.pedantic(fn, setup=setup, rounds=max(3, n_rounds // 10) if quick else n_rounds,
                                      iterations=1, warmup_rounds=1)
        if rounds is not None:
            return benchmark.pedantic(fn, rounds=max(2, rounds // 10) if quick else rounds, iterations=1,
                                      warmup_rounds=1)
        return benchmark(fn)

    return run
