"""Launching Triton kernels with less host time: ``fast(kernel)[grid](*args, **constexprs)``.

Triton 3.6's ``kernel[grid](...)`` binds and specialises every argument and builds launch metadata on
each call: 25-50 µs of Python for kernels of 20-30 arguments on the lent GPUs' hosts, more than many
of this library's kernels take on the GPU. ``fast(kernel)`` keeps the compiled kernel per
specialisation (the constexprs, ``num_warps`` / ``num_stages``, each runtime argument's kind: a
tensor's dtype and 16-byte alignment, an integer's exact value, a float, a bool, None; the device),
a key at least as fine as Triton's own (integers on == 1 and divisibility by 16, pointers on dtype and
alignment), and calls its launcher directly on later calls. The first call of a specialisation, calls
under the Triton interpreter and calls with a launch hook installed (a profiler) take Triton's own
path. Runtime arguments are passed positionally and constexprs by keyword, in the kernel's signature
order (runtime arguments first), as this library's kernels are written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import triton
from triton import knobs

from kernels.registry import triton_interpret

HANDLE_LIMIT = 4096  # specialisations kept per kernel; the cache starts over past this


@functools.cache
def device_and_stream() -> tuple[Callable[[], int], Callable[[int], int]]:
    """Triton's active driver's (current device, current stream of a device) getters, looked up once."""
    return triton.runtime.driver.active.get_current_device, triton.runtime.driver.active.get_current_stream


def hooks_installed() -> bool:
    """Whether a Triton launch hook is set (a profiler): launches must then take Triton's own path."""
    runtime = knobs.runtime
    return bool(getattr(runtime.launch_enter_hook, "calls", True) or getattr(runtime.launch_exit_hook, "calls", True))


def specialisation(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Per runtime argument, what the compiled kernel depends on (see the module docstring)."""
    out: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append((a.dtype, a.data_ptr() % 16 == 0))
        elif type(a) is bool or a is None:
            out.append((type(a), a))
        elif type(a) is int:
            out.append(a)
        else:
            out.append(type(a))
    return tuple(out)


class CachedKernel:
    """``kernel`` with its compiled specialisations kept: ``CachedKernel(k)[grid](*args, **kw)``."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.handles: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
        self.defaults = {p.name: p.default for p in getattr(kernel, "params", ()) if p.has_default}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return functools.partial(self.launch, grid)

    def launch(self, grid: tuple[int, ...], *args: Any, num_warps: int | None = None, num_stages: int | None = None,
               **constexprs: Any) -> None:
        fast = not (triton_interpret() or hooks_installed())
        if fast:
            get_device, get_stream = device_and_stream()
            device = get_device()
            key = (specialisation(args), tuple(constexprs.items()), num_warps, num_stages, device)
            entry = self.handles.get(key)
            if entry is not None:
                compiled, tail = entry
                g = (*grid, 1, 1)
                compiled.run(g[0], g[1], g[2], get_stream(device), compiled.function, compiled.packed_metadata,
                             None, None, None, *args, *tail)
                return
        options: dict[str, Any] = {}
        if num_warps is not None:
            options["num_warps"] = num_warps
        if num_stages is not None:
            options["num_stages"] = num_stages
        compiled = self.kernel[grid](*args, **constexprs, **options)
        if fast and compiled is not None:
            tail = tuple(constexprs[name] if name in constexprs else self.defaults[name]
                         for name in self.kernel.arg_names[len(args):])
            if len(self.handles) >= HANDLE_LIMIT:
                self.handles.clear()
            self.handles[key] = (compiled, tail)


_CACHED: dict[int, CachedKernel] = {}


def fast(kernel: Any) -> CachedKernel:
    """The one ``CachedKernel`` of ``kernel``."""
    cached = _CACHED.get(id(kernel))
    if cached is None or cached.kernel is not kernel:
        cached = _CACHED[id(kernel)] = CachedKernel(kernel)
    return cached
