"""Timing and verification helpers shared by the suites.

GPU: CUDA events around each call, warm-up first, the L2 cache flushed between calls, median
of the repeats (as ``triton.testing.do_bench``). CPU: pytest-benchmark's timer. Every suite
verifies its output against the reference with ``verify`` before timing anything.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernels.parity import compare
from kernels.registry import Tolerance


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
