"""pytest glue for the suites: the ``bench`` fixture records what each measurement is (suite, case,
series, size, implementation, its role: ours / reference / peer) and times the implementations of
one row together.

A row's implementations are the parametrizations of one test that differ only in ``impl`` / ``role``.
Collection puts them next to each other; each test verifies its implementation and hands it to
``bench``; after the row's last test, its implementations are timed interleaved
(``benchmarks.harness.time_interleaved``), under torch's grad mode as it was at the hand-over
(other context managers around ``bench`` do not carry over: enter them inside ``fn``).
``--bench-json PATH`` writes every row's samples; one line per suite goes to the console as it
finishes.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import Contender, dump, machine_info, time_interleaved

ROW_PARAMS = ("impl", "role")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quick", action="store_true", help="small sizes and few rounds (a smoke run)")
    parser.addoption("--bench-json", default=None, help="write every row's timing samples to this JSON file")


def _row_key(item: pytest.Item) -> tuple[Any, ...]:
    params = getattr(getattr(item, "callspec", None), "params", {})
    rest = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in ROW_PARAMS))
    return (item.path, getattr(item, "originalname", item.name), rest)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the implementations of one row next to each other (rows keep their first-seen order)."""
    order: dict[tuple[Any, ...], int] = {}
    for item in items:
        order.setdefault(_row_key(item), len(order))
    items.sort(key=lambda item: order[_row_key(item)])


class Recorder:
    """A plugin: the pending row, the finished rows, and the per-suite progress lines."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.quick = bool(config.getoption("--quick"))
        self.pending: list[Contender] = []
        self.rows: list[dict[str, Any]] = []
        self.group = 0
        self.suite: str | None = None
        self.suite_rows = 0
        self.suite_start = time.monotonic()
        self.lines: list[str] = []

    def flush(self) -> None:
        """Time the pending implementations together and record one row each."""
        pending, self.pending = self.pending, []
        by_mode: dict[tuple[str, bool, int | None], list[Contender]] = {}
        for c in pending:
            by_mode.setdefault((c.meta["device"], c.grad_enabled, c.threads), []).append(c)
        for (device, grad_enabled, threads), group in by_mode.items():
            with _grad_mode(grad_enabled), _torch_threads(threads):
                samples, iterations = time_interleaved(group, device=device, quick=self.quick)
            self.group += 1
            for c, s, it in zip(group, samples, iterations):
                if c.meta["suite"] != self.suite:
                    self.end_suite()
                    self.suite, self.suite_rows, self.suite_start = c.meta["suite"], 0, time.monotonic()
                self.rows.append(dict(c.meta, group=self.group, iterations=it, samples_ms=s))
                self.suite_rows += 1

    def end_suite(self) -> None:
        if self.suite is not None and self.suite_rows:
            self.lines.append(f"[bench] {self.suite}: {self.suite_rows} measurements, "
                              f"{time.monotonic() - self.suite_start:.0f} s")
        self.suite = None

    def print_lines(self) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for line in self.lines:
            if reporter is not None:
                reporter.write_line(line)
        self.lines.clear()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """After a row's last test (before its fixtures go): time the row."""
        if self.pending and (nextitem is None or _row_key(nextitem) != _row_key(item)):
            self.flush()

    def pytest_runtest_logfinish(self) -> None:
        self.print_lines()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.end_suite()
        self.print_lines()
        path = session.config.getoption("--bench-json")
        if path:
            dump(Path(path), {"machine": machine_info(), "quick": self.quick, "rows": self.rows})


def _grad_mode(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Torch's grad mode as it was when the row's tests handed their implementations over."""
    torch = sys.modules.get("torch")
    return torch.set_grad_enabled(enabled) if torch is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` while a row is timed (None: left as they are)."""
    torch = sys.modules.get("torch")
    if threads is None or torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _grad_enabled() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch.is_grad_enabled()) if torch is not None else True


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(Recorder(config), RECORDER)


RECORDER = "modelkernels-bench-recorder"


@pytest.fixture
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture
def bench(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``bench(fn, suite=, case=, impl=, role=, series=, size=, size_label=, device=, setup=, work=,
    rounds=, extra=)`` hands one implementation of a row over for timing after the row's last test.

    ``setup() -> (args, kwargs)`` builds fresh arguments per call, untimed. ``rounds``: the rounds
    asked for (the row runs the fewest any of its implementations asks, see ``harness``). ``threads``:
    torch's intra-op threads while timing (e.g. 1 for calls on tiny tensors, where waking a thread pool on
    every call would be the measurement; None: as set).
    ``work``: units of work per call (elements, FLOPs, bytes); ``extra``: other figures to record
    (accuracy, model size); ``size_label``: the quantity and unit of ``size`` for the plots.
    """
    rec: Recorder = request.config.pluginmanager.get_plugin(RECORDER)

    def add(fn: Callable[..., Any], *, suite: str, case: str, impl: str, role: str, series: str = "",
            size: float | None = None, size_label: str | None = None, device: str = "cpu",
            setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
            work: dict[str, float] | None = None, rounds: int | None = None,
            extra: dict[str, Any] | None = None, threads: int | None = None) -> None:
        if role not in ("ours", "reference", "peer"):
            raise ValueError(f"role={role!r}: expected ours, reference or peer")
        if rounds is not None and rounds < 1:
            raise ValueError(f"rounds={rounds}: expected at least 1 (or None for about a second)")
        meta = dict(suite=suite, case=case, impl=impl, role=role, series=series, size=size, size_label=size_label,
                    device=device, work=work or {}, extra=extra or {}, test=request.node.nodeid)
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}: expected at least 1 (or None for as set)")
        rec.pending.append(Contender(fn, setup, rounds, meta, grad_enabled=_grad_enabled(), threads=threads))

    return add
