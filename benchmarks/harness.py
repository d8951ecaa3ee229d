"""Timing and verification helpers shared by the suites.

``time_interleaved`` times the implementations of one benchmark row together: every round calls
each of them once, in an order that rotates from round to round, so a stall of a busy machine hits
all of them alike and the per-round ratios stay paired (``benchmarks.stats``). CPU: the wall clock
(``time.perf_counter_ns``), calls shorter than ~0.2 ms repeated within a sample. GPU: CUDA events
around each call, warm-up first, the L2 cache flushed between calls (as ``triton.testing.do_bench``).
Every suite verifies its output against the reference with ``verify`` before timing anything.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkernels.kernels.parity import compare
from modelkernels.kernels.registry import Tolerance


class VerificationError(AssertionError):
    pass


EXACT = Tolerance()


def verify(out: Any, ref: Any, tol: Tolerance = EXACT, what: str = "") -> None:
    """Raise ``VerificationError`` unless ``out`` matches ``ref`` within ``tol``."""
    c = compare(out, ref, tol)
    if not c.ok:
        raise VerificationError(f"{what}: output differs from the reference before timing: {c.message}")


def cuda_time(fn: Callable[[], Any], warmup: int = 10, rep: int = 50, flush_l2: bool = True) -> dict[str, float]:
    """Median / min / max milliseconds of ``fn`` on the current CUDA stream, timed with events.

    A 256 MiB buffer is zeroed before each call so inputs smaller than L2 are not timed from cache.
    """
    import torch

    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for s, e in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1]}


@dataclass
class Contender:
    """One implementation of a benchmark row: ``fn(*args, **kwargs)`` with ``setup() -> (args, kwargs)``
    building fresh arguments before each call (untimed), or ``fn()`` when ``setup`` is None.
    ``rounds``: how many rounds it asks for (None: as many as fit in about a second). ``threads``: torch's
    intra-op threads while it is timed (None: as they are)."""

    fn: Callable[..., Any]
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    rounds: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    grad_enabled: bool = True
    threads: int | None = None


SAMPLE_MS = 0.2  # a CPU sample lasts at least this long: shorter calls are repeated within it
MAX_ITERATIONS = 1000
AUTO_BUDGET_MS = 1000.0  # rounds=None: about this much time per implementation


def _args(c: Contender) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return c.setup() if c.setup is not None else ((), {})


def _call_ms(c: Contender, iterations: int = 1) -> float:
    args, kwargs = _args(c)
    t0 = time.perf_counter_ns()
    for _ in range(iterations):
        c.fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / 1e6


def _group_rounds(contenders: list[Contender], call_ms: list[float], quick: bool) -> int:
    """One number of rounds for the whole row (the pairs need it): the fewest any implementation
    asks for, at least 5 (3 for calls over 0.5 s; what was asked for calls over 5 s)."""
    asked = [c.rounds for c in contenders if c.rounds is not None]
    slowest = max(call_ms)
    n = min(asked) if asked else int(AUTO_BUDGET_MS / max(slowest, 1e-6))
    floor = 5 if slowest < 500 else 3 if slowest < 5000 else 1
    n = max(n, floor)
    if quick:
        n = max(min(floor, 3), n // 10)
    return min(n, 200)


def time_interleaved(contenders: list[Contender], *, device: str = "cpu", quick: bool = False
                     ) -> tuple[list[list[float]], list[int]]:
    """Milliseconds per call of each contender in each round, and the calls per sample.

    Round ``r`` calls the contenders in the order rotated by ``r``; after one warm-up call each
    (ten on CUDA, three with ``quick``), CPU calls shorter than ``SAMPLE_MS`` are repeated within a
    sample when they need no fresh arguments.
    """
    if not contenders:
        raise ValueError("contenders is empty: nothing to time")
    if device == "cuda":
        return _time_cuda(contenders, quick), [1] * len(contenders)
    first = [_call_ms(c) for c in contenders]
    call_ms = [min(f, _call_ms(c)) for f, c in zip(first, contenders)]
    iterations = [1 if c.setup is not None else max(1, min(MAX_ITERATIONS, int(SAMPLE_MS / max(t, 1e-6))))
                  for c, t in zip(contenders, call_ms)]
    rounds = _group_rounds(contenders, call_ms, quick)
    samples: list[list[float]] = [[] for _ in contenders]
    k = len(contenders)
    for r in range(rounds):
        for j in [(r + i) % k for i in range(k)]:
            samples[j].append(_call_ms(contenders[j], iterations[j]) / iterations[j])
    return samples, iterations


def _time_cuda(contenders: list[Contender], quick: bool) -> list[list[float]]:
    import torch

    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for c in contenders:
        for _ in range(3 if quick else 10):
            args, kwargs = _args(c)
            c.fn(*args, **kwargs)
    torch.cuda.synchronize()
    asked = [c.rounds for c in contenders if c.rounds is not None]
    rounds = 10 if quick else max(min(asked) if asked else 50, 10)
    events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
              for _ in contenders]
    k = len(contenders)
    for r in range(rounds):
        for j in [(r + i) % k for i in range(k)]:
            args, kwargs = _args(contenders[j])
            flush.zero_()
            start, end = events[j][r]
            start.record()
            contenders[j].fn(*args, **kwargs)
            end.record()
    torch.cuda.synchronize()
    return [[s.elapsed_time(e) for s, e in row] for row in events]


def graphed(fn: Callable[[], Any], warmup: int = 3) -> Callable[[], Any]:
    """``fn`` captured in a CUDA graph (after ``warmup`` calls on a side stream, as capture requires);
    returns the replay: timing it measures the GPU work alone, as the library's sampler runs a step."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def back_to_back_us(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall-clock µs, CUDA-event µs) per call over ``n`` back-to-back calls of ``fn``, the GPU idle
    first (warm up and synchronize before): both are the host's issue time when the GPU work per call
    is shorter than it."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6, start.elapsed_time(end) * 1e3 / n


def kernel_times(fn: Callable[[], Any], calls: int = 5) -> dict[str, float]:
    """GPU time (µs per call) of each CUDA kernel name over ``calls`` calls of ``fn`` (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            totals[evt.name] += float(getattr(evt, "device_time", None) or evt.cuda_time) / calls
    return dict(totals)


def kernel_family(kernel: str, families: list[tuple[str, str]]) -> str:
    """The first family of ``(family, regex)`` pairs whose pattern matches ``kernel`` (any case), or "other"."""
    for fam, pattern in families:
        if re.search(pattern, kernel, re.IGNORECASE):
            return fam
    return "other"


def kernel_breakdown(per_kernel: dict[str, float], families: list[tuple[str, str]], top: int) -> dict[str, Any]:
    """``kernel_times``'s µs summed by ``kernel_family``: ``families_us``, ``total_us`` and
    ``top_kernels_us`` (the ``top`` slowest kernels)."""
    fams: dict[str, float] = defaultdict(float)
    for k, us in per_kernel.items():
        fams[kernel_family(k, families)] += us
    return {"families_us": dict(fams), "total_us": sum(fams.values()),
            "top_kernels_us": dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top])}


def breakdown_text(row: dict[str, Any]) -> str:
    """``"total T ms: family t ms (p%), ..."`` of a ``kernel_breakdown`` row, the largest family first."""
    total = row["total_us"]
    return f"total {total / 1000:.2f} ms: " + ", ".join(
        f"{f} {us / 1000:.3f} ms ({100 * us / total:.0f}%)"
        for f, us in sorted(row["families_us"].items(), key=lambda kv: -kv[1]))


def rel_err(out: Any, want: Any) -> float:
    """``‖out - want‖ / ‖want‖`` of two tensors, in float64."""
    return float((out.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


class Run:
    """One GPU script's run: its results (written as JSON to ``$OUT/<filename>``), the summary lines
    printed at the end and its time budget in seconds."""

    def __init__(self, filename: str, budget_s: float) -> None:
        self.path = os.path.join(os.environ.get("OUT", "."), filename)
        self.results: dict[str, Any] = {}
        self.summary: list[str] = []
        self.start = time.time()
        self.budget_s = budget_s

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.budget_s - (time.time() - self.start)

    def note(self, line: str) -> None:
        """Print ``line`` now and keep it for the summary."""
        print(line, flush=True)
        self.summary.append(line)

    def save(self) -> None:
        with open(self.path, "w") as fh:
            json.dump(self.results, fh, indent=1, default=str)

    def parts(self, table: dict[str, Callable[[], None]], names: list[str]) -> None:
        """Run the parts of ``table`` named in ``names``, in that order, saving after each; a part that
        raises is reported and noted, and the rest still run: one call must bring back what it can."""
        for name in [n for n in names if n in table]:
            try:
                table[name]()
            except Exception as ex:
                import traceback

                traceback.print_exc()
                self.note(f"part {name} failed: {type(ex).__name__}: {str(ex)[:300]}")
            self.save()


def git_commit(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Device, CPU, library versions and commit: recorded with every report."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": git_commit(),
    }
    for mod in ("numpy", "torch", "triton", "numba", "sklearn", "diffusers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
