"""The one Triton launch layer of the library: ``fast(kernel)[grid](*args, **constexprs)``, and
``fast(kernel).fitted(...)`` for kernels whose tile may not fit the GPU.

Triton 3.6's ``kernel[grid](...)`` binds and specialises every argument and builds launch metadata on
each call: 25-50 µs of Python for kernels of 20-30 arguments on the lent GPUs' hosts, more than many
of this library's kernels take on the GPU. ``fast(kernel)`` keeps the compiled kernel per
specialisation (the constexprs, the launch options such as ``num_warps`` / ``num_stages``, each runtime
argument's kind: a tensor's dtype and 16-byte alignment, an integer's exact value, a float, a bool, None;
the device), a key at least as fine as Triton's own (integers on == 1 and divisibility by 16, pointers
on dtype and alignment), and calls its launcher directly on later calls. An integer the kernel declares
in ``do_not_specialize`` (the diffusion steps' per-call seed and offset) is keyed by its Triton type
(i32 / i64 / u64) only, so a new value each call reuses the compiled kernel. The first call of a
specialisation, calls under the Triton interpreter and calls with a launch hook installed (a
profiler) take Triton's own path. Runtime arguments are passed positionally and constexprs by
keyword, in the kernel's signature order (runtime arguments first), as this library's kernels are
written.

``fitted`` adds what a tiled kernel needs: a tile (any hashable config) that is stepped down through
``smaller`` when a launch runs out of resources (remembered per key and tile), the grid computed from
the tile finally used, and constexprs given as callables of that tile (``EVEN_N`` depends on BLOCK_N).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch
import triton
from triton import knobs
from triton.runtime.errors import OutOfResources

from modelkernels.kernels.registry import triton_interpret

HANDLE_LIMIT = 4096  # specialisations kept per kernel; the cache starts over past this
PLAN_LIMIT = 1024  # launch plans kept per table (``keep_plan``); the table starts over past this


@functools.cache
def device_and_stream() -> tuple[Callable[[], int], Callable[[int], int]]:
    """Triton's active driver's (current device, current stream of a device) getters, looked up once."""
    return triton.runtime.driver.active.get_current_device, triton.runtime.driver.active.get_current_stream


@functools.lru_cache(maxsize=16)
def sm_count(index: int) -> int:
    """The streaming multiprocessors of CUDA device ``index`` (asked once: the property lookup costs
    microseconds of host time per call)."""
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def hooks_installed() -> bool:
    """Whether a Triton launch hook is set (a profiler): launches must then take Triton's own path."""
    runtime = knobs.runtime
    return bool(getattr(runtime.launch_enter_hook, "calls", True) or getattr(runtime.launch_exit_hook, "calls", True))


def specialisation(args: tuple[Any, ...], plain: frozenset[int] = frozenset()) -> tuple[Any, ...]:
    """Per runtime argument, what the compiled kernel depends on (see the module docstring); ``plain``:
    the positions of integers the kernel does not specialise on. One comprehension, integers tested
    first: this runs on every launch (4 µs for 24 arguments on the CI CPU, was 5.4)."""
    key: list[Any] = [a if type(a) is int else (a.dtype, not a.data_ptr() & 15) if isinstance(a, torch.Tensor)
                      else (type(a), a) if type(a) is bool or a is None else type(a) for a in args]
    for i in plain:
        if i < len(key) and type(key[i]) is int:
            n = key[i]
            key[i] = ("int", -(2**31) <= n < 2**31, n >= 2**63)
    return tuple(key)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host-side grids: ``triton.cdiv`` is a ``ConstexprFunction`` in Triton 3.6
    whose call costs ~3.5 µs of host time (0.04 for this)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for n <= 0), as ``triton.next_power_of_2`` on the host, at a
    hundredth of its call cost."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _plain_positions(kernel: Any) -> frozenset[int]:
    """The positions of the parameters declared ``do_not_specialize``."""
    return frozenset(i for i, p in enumerate(getattr(kernel, "params", ())) if getattr(p, "do_not_specialize", False))


def _run(compiled: Any, grid: tuple[int, ...], stream: int, args: tuple[Any, ...], tail: tuple[Any, ...]) -> None:
    """Launch a kept compiled kernel through its launcher: the 3-D grid, the stream, the function and its
    metadata, three hook slots (unused), then the runtime arguments and the constexprs in signature order."""
    g = (*grid, 1, 1)
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, None, None, None, *args,
                 *tail)


def keep_plan(table: dict[Any, Any], key: Any, plan: Any, limit: int = PLAN_LIMIT) -> Any:
    """Keep a launch plan (a ``Bound``, a record holding some, a compiled kernel's entry) under its key; a
    table past ``limit`` starts over. Returns the plan."""
    if len(table) >= limit:
        table.clear()
    table[key] = plan
    return plan


class CachedKernel:
    """``kernel`` with its compiled specialisations kept: ``CachedKernel(k)[grid](*args, **kw)``."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.handles: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
        self.fitted_handles: dict[tuple[Any, ...], tuple[Any, Any, tuple[Any, ...]]] = {}
        self.fits: dict[tuple[Any, ...], Any] = {}  # (key, tile asked for) -> tile that launched
        self.defaults = {p.name: p.default for p in getattr(kernel, "params", ()) if p.has_default}
        self.plain = _plain_positions(kernel)
        self.prepared: weakref.WeakSet[Prepared] = weakref.WeakSet()  # its prepared launches alive

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return functools.partial(self.launch, grid)

    def prepare(self, **constexprs: Any) -> Prepared:
        """This kernel with ``constexprs`` (and launch options) fixed: see ``Prepared``."""
        return Prepared(self, constexprs)

    def _tail(self, args: tuple[Any, ...], constexprs: dict[str, Any]) -> tuple[Any, ...]:
        """The constexprs' values in signature order after the runtime arguments (defaults filled in)."""
        return tuple(constexprs[name] if name in constexprs else self.defaults[name]
                     for name in self.kernel.arg_names[len(args):])

    def launch(self, grid: tuple[int, ...], *args: Any, **constexprs: Any) -> None:
        """``kernel[grid](*args, **constexprs)``; launch options (``num_warps``, ``num_stages``,
        ``launch_cooperative_grid``, ...) pass among the constexprs and are part of the key."""
        fast = not (triton_interpret() or hooks_installed())
        if fast:
            get_device, get_stream = device_and_stream()
            device = get_device()
            key = (specialisation(args, self.plain), tuple(constexprs.items()), device)
            entry = self.handles.get(key)
            if entry is not None:
                _run(entry[0], grid, get_stream(device), args, entry[1])
                return
        compiled = self.kernel[grid](*args, **constexprs)
        if fast and compiled is not None:
            keep_plan(self.handles, key, (compiled, self._tail(args, constexprs)), HANDLE_LIMIT)

    def fitted(self, tile: Any, grid: Callable[[Any], tuple[int, ...]], args: tuple[Any, ...],
               tile_constexprs: Callable[[Any], dict[str, Any]], smaller: Callable[[Any], Any | None],
               key: Hashable = (), **constexprs: Any) -> Any:
        """Launch with ``tile`` (stepping down through ``smaller`` on ``OutOfResources``; the tile that
        fits is remembered per (key, tile)); returns the tile used. ``grid(tile)``: the launch grid;
        ``tile_constexprs(tile)``: the constexprs and launch options the tile sets (block sizes,
        ``num_warps``, ``num_stages``); a callable in ``constexprs`` is evaluated on the tile used and
        may depend only on it and the runtime arguments. ``key`` names what the plain constexprs do not
        (a variant of the call). The compiled kernel is kept per (key, tile asked for, plain constexprs,
        specialisation of the arguments, device)."""
        fast = not (triton_interpret() or hooks_installed())
        if fast:
            get_device, get_stream = device_and_stream()
            device = get_device()
            fixed = tuple((name, v) for name, v in constexprs.items() if not callable(v))
            hkey = (key, tile, fixed, specialisation(args, self.plain), device)
            entry = self.fitted_handles.get(hkey)
            if entry is not None:
                compiled, used, tail = entry
                _run(compiled, grid(used), get_stream(device), args, tail)
                return used
        fit_key = (key, tile)
        used = self.fits.get(fit_key, tile)
        while True:
            values = {name: v(used) if callable(v) else v for name, v in constexprs.items()}
            values.update(tile_constexprs(used))
            try:
                compiled = self.kernel[grid(used)](*args, **values)
            except OutOfResources:
                step = smaller(used)
                if step is None:
                    raise
                used = step
                continue
            break
        self.fits[fit_key] = used
        if fast and compiled is not None:
            keep_plan(self.fitted_handles, hkey, (compiled, used, self._tail(args, values)), HANDLE_LIMIT)
        return used


class Prepared:
    """``kernel`` with its constexprs and launch options fixed once (``fast(kernel).prepare(**constexprs)``):
    ``prepared(grid, *args)`` is ``kernel[grid](*args, **constexprs)``, the compiled kernel kept per
    specialisation of the runtime arguments and device only. For a launch plan kept per problem shape
    (the GroupNorm's): it skips rebuilding and hashing the constexprs on every call."""

    __slots__ = ("__weakref__", "cached", "constexprs", "handles")

    def __init__(self, cached: CachedKernel, constexprs: dict[str, Any]) -> None:
        self.cached, self.constexprs = cached, constexprs
        self.handles: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
        cached.prepared.add(self)

    def __call__(self, grid: tuple[int, ...], *args: Any) -> None:
        if triton_interpret() or hooks_installed():
            self.cached.kernel[grid](*args, **self.constexprs)
            return
        get_device, get_stream = device_and_stream()
        device = get_device()
        key = (specialisation(args, self.cached.plain), device)
        entry = self.handles.get(key)
        if entry is None:
            compiled = self.cached.kernel[grid](*args, **self.constexprs)
            if compiled is not None:
                keep_plan(self.handles, key, (compiled, self.cached._tail(args, self.constexprs)), HANDLE_LIMIT)
            return
        _run(entry[0], grid, get_stream(device), args, entry[1])

    def bind(self, grid: tuple[int, ...], ints: tuple[int, ...]) -> Bound:
        """This launch with its grid and its integer arguments fixed: see ``Bound``."""
        return Bound(self, grid, ints)


class Bound:
    """A prepared launch with its grid and integer arguments fixed, for a plan kept per problem (shape,
    strides, sizes): ``bound(tensors, floats)`` is ``kernel[grid](*tensors, *ints, *floats, **constexprs)``
    for a kernel whose runtime arguments are its pointers, then its integers, then its floats. The
    integers' specialisation is settled at the first launch, so a later call keys the compiled kernel on
    the tensors' dtypes and 16-byte alignment alone (floats are not specialised on)."""

    __slots__ = ("grid", "handles", "ints", "prepared")

    def __init__(self, prepared: Prepared, grid: tuple[int, ...], ints: tuple[int, ...]) -> None:
        self.prepared, self.grid, self.ints = prepared, grid, ints
        self.handles: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}

    def __call__(self, tensors: tuple[torch.Tensor, ...], floats: tuple[float, ...] = ()) -> None:
        if triton_interpret() or hooks_installed():
            self.prepared(self.grid, *tensors, *self.ints, *floats)
            return
        get_device, get_stream = device_and_stream()
        device = get_device()
        key = (tuple([(t.dtype, not t.data_ptr() & 15) for t in tensors]), device)
        entry = self.handles.get(key)
        args = (*tensors, *self.ints, *floats)
        if entry is None:  # the prepared launch compiles (or finds) and keeps the kernel; keep it here too
            self.prepared(self.grid, *args)
            entry = self.prepared.handles.get((specialisation(args, self.prepared.cached.plain), device))
            if entry is not None:
                keep_plan(self.handles, key, entry, HANDLE_LIMIT)
            return
        _run(entry[0], self.grid, get_stream(device), args, entry[1])


_CACHED: dict[int, CachedKernel] = {}


def fast(kernel: Any) -> CachedKernel:
    """The one ``CachedKernel`` of ``kernel``."""
    cached = _CACHED.get(id(kernel))
    if cached is None or cached.kernel is not kernel:
        cached = _CACHED[id(kernel)] = CachedKernel(kernel)
    return cached
