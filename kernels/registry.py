"""Op and backend records, registration, and dispatch.

An *op* is a named function with one reference implementation in ``pyimpl`` plus the sample
inputs, error inputs and tolerances that tests and benchmarks draw from (PyTorch's OpInfo).
A *backend* is one implementation of an op for some devices and dtypes; ``reasons(*args, **kw)``
returns why it cannot run those inputs (empty: it can), as xformers' ``not_supported_reasons``.

Dispatch (``call``): the device of the array arguments picks the candidates, ordered by priority;
the first with no reasons runs. A backend forced by argument, ``use_backend`` or the environment
(``KERNELS_BACKEND``, ``KERNELS_BACKEND_<OP>``) must run or raise ``ValueError`` with its reasons.
The decision is made once per call signature and remembered (``Op.decisions``): the signature is
the op's ``dispatch_key`` when it declares one, else the devices, dtypes and shapes of the array
arguments and the types and values of the scalar ones (only the devices and the first dtype for an op
whose backends have no ``reasons``), together with what forces a backend (the ``backend=`` argument, the
``use_backend`` block, the environment variables, ``TRITON_INTERPRET``). A repeated call reads those
and goes to the remembered backend; registering a backend forgets the op's decisions. Reasons must
depend only on what the signature holds; an op whose reasons look further declares a ``dispatch_key``.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import itertools
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Backend",
    "ErrorSample",
    "Op",
    "Sample",
    "Tolerance",
    "array_device",
    "array_dtype",
    "backends_for",
    "call",
    "define_op",
    "explain",
    "get_op",
    "is_kernel",
    "list_kernels",
    "register_kernel",
    "select",
    "triton_interpret",
    "use_backend",
]

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance: ``|out - ref| <= atol + rtol * |ref|``."""

    atol: float = 0.0
    rtol: float = 0.0


EXACT = Tolerance(0.0, 0.0)


@dataclass
class Sample:
    """One set of inputs for an op. ``make(device, dtype)`` builds fresh arrays each call, so
    in-place ops can run twice (backend and reference) from identical inputs."""

    name: str
    make: Callable[[str, str], tuple[tuple[Any, ...], dict[str, Any]]]
    dtypes: tuple[str, ...] | None = None  # None: every dtype the op declares
    grad: bool = False  # also compare gradients of the floating inputs


@dataclass
class ErrorSample:
    """Inputs that must raise ``error`` with ``match`` in the message, on every backend."""

    name: str
    make: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]
    error: type[BaseException]
    match: str


@dataclass
class Op:
    """A named function: its reference, samples, error samples and how to compare outputs.

    ``result(args, kwargs, returned)`` picks what is compared (for in-place ops, the mutated
    argument); the default compares the returned value.
    """

    name: str
    reference: Callable[..., Any]
    dtypes: tuple[str, ...]
    samples: list[Sample]
    error_samples: list[ErrorSample] = field(default_factory=list)
    result: Callable[[tuple[Any, ...], dict[str, Any], Any], Any] | None = None
    reference_dtype: Callable[[str], str] | None = None  # run the reference in this dtype
    doc: str = ""
    backends: dict[str, Backend] = field(default_factory=dict)
    check: Callable[..., Any] | None = None  # the call's argument checks, for explain
    ordered: list[Backend] = field(default_factory=list)  # backends, highest priority first
    env_key: str = ""  # KERNELS_BACKEND_<NAME>
    dispatch_key: Callable[..., Hashable | None] | None = None
    decisions: dict[Hashable, Backend] = field(default_factory=dict)  # (signature, overrides) -> backend
    checked_by_key: bool = False  # the signature fixes the outcome of every backend's argument checks
    runners: dict[Hashable, Callable[..., Any]] = field(default_factory=dict)  # (signature, overrides) -> run
    has_reasons: bool = False  # some backend has a reasons function (the signature then holds shapes)
    read_env: Callable[[], Any] = field(default=lambda: None, repr=False)  # reads KERNELS_BACKEND_<NAME>

    def __post_init__(self) -> None:
        self.env_key = f"KERNELS_BACKEND_{self.name.upper()}"
        self.read_env = environment_reader(self.env_key)

    def add_backend(self, backend: Backend) -> None:
        self.backends[backend.name] = backend
        self.ordered = sorted(self.backends.values(), key=lambda b: -b.priority)
        self.has_reasons = any(b.reasons_fn is not None for b in self.ordered)
        self.decisions.clear()
        self.runners.clear()

    def output(self, args: tuple[Any, ...], kwargs: dict[str, Any], returned: Any) -> Any:
        return returned if self.result is None else self.result(args, kwargs, returned)


@dataclass
class Backend:
    """One implementation of an op.

    ``devices``: where automatic dispatch may pick it. ``interpret_devices``: extra devices it
    runs on only when forced (Triton on CPU tensors under ``TRITON_INTERPRET=1``).
    ``available()`` returns why the backend cannot run at all here (None: it can), e.g. a
    missing compiled extension; ``reasons`` rejects particular inputs.
    """

    op: str
    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    priority: int = 0
    reasons_fn: Callable[..., list[str]] | None = None
    available: Callable[[], str | None] | None = None
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    interpret_devices: tuple[str, ...] = ()
    deterministic: bool = True
    doc: str = ""
    run: Callable[..., Any] | None = None  # fn without the argument checks every backend shares

    def unavailable(self) -> str | None:
        return None if self.available is None else self.available()

    def tolerance(self, dtype: str) -> Tolerance:
        return self.tolerances.get(dtype, self.tolerances.get("*", EXACT))

    def runs_on(self, device: str, forced: bool) -> bool:
        if device in self.devices:
            return True
        return forced and device in self.interpret_devices and triton_interpret()

    def reasons(self, args: Sequence[Any], kwargs: dict[str, Any], forced: bool = False) -> list[str]:
        """Why this backend cannot run these inputs; empty when it can."""
        why = self.unavailable()
        if why is not None:
            return [why]
        out: list[str] = []
        device, dtype = inspect_arrays(args, kwargs)
        if device is not None and not self.runs_on(device, forced):
            allowed = list(self.devices)
            if self.interpret_devices:
                allowed += [f"{d} (forced, TRITON_INTERPRET=1)" for d in self.interpret_devices]
            out.append(f"device={device}: supported {', '.join(allowed)}")
        if dtype is not None and dtype not in self.dtypes:
            out.append(f"dtype={dtype}: supported {', '.join(self.dtypes)}")
        if not out and self.reasons_fn is not None:
            out.extend(self.reasons_fn(*args, **kwargs))
        return out


def environment_reader(name: str) -> Callable[[], Any]:
    """A getter of environment variable ``name`` (None when unset) that skips ``os.environ.get``'s
    key encoding (~0.3 µs) by reading its mapping directly; the value is raw (bytes on POSIX)."""
    data, encode = getattr(os.environ, "_data", None), getattr(os.environ, "encodekey", None)
    if isinstance(data, dict) and callable(encode):
        key = encode(name)
        return lambda: data.get(key)
    return lambda: os.environ.get(name)


_OPS: dict[str, Op] = {}
DECISION_LIMIT = 4096  # remembered dispatch decisions per op; the memory starts over past this
_SERIALS = itertools.count(1)
# the use_backend state: (serial, op -> backend); each block gets a new serial, so it can key decisions
_FORCED: contextvars.ContextVar[tuple[int, dict[str, str]] | None] = contextvars.ContextVar("kernels_forced",
                                                                                             default=None)
_READ_GLOBAL = environment_reader("KERNELS_BACKEND")
_READ_INTERPRET = environment_reader("TRITON_INTERPRET")
_OFF = (None, "", "0", b"", b"0")


def triton_interpret() -> bool:
    """True when Triton kernels run on CPU tensors through Triton's interpreter."""
    return _READ_INTERPRET() not in _OFF


def define_op(
    name: str,
    *,
    reference: Callable[..., Any],
    dtypes: Iterable[str],
    samples: Iterable[Sample],
    error_samples: Iterable[ErrorSample] = (),
    result: Callable[[tuple[Any, ...], dict[str, Any], Any], Any] | None = None,
    reference_dtype: Callable[[str], str] | None = None,
    doc: str = "",
    dispatch_key: Callable[..., Hashable | None] | None = None,
    check: Callable[..., Any] | None = None,
    checked_by_key: bool = False,
) -> Op:
    """Declare an op with its reference. The reference also becomes the ``reference`` backend.

    ``dispatch_key(*args, **kwargs)``, optional: a cheap hashable summary of the inputs that fixes the
    choice, i.e. everything every backend's device/dtype check and ``reasons`` look at (devices and
    dtypes of all arrays included), or None to decide afresh; without it the default signature
    (``signature``) is used. Dispatch remembers its choice per signature and overrides and skips the
    reasons on later calls; the chosen backend must validate its arguments itself (as every backend
    does), since invalid inputs are no longer rejected by the reasons first.

    ``check(*args, **kwargs)``, optional: the argument checks every backend runs, raising as the
    call would; ``explain`` runs it first and reports the error the call would raise.

    ``checked_by_key``: the dispatch key (or the default signature) holds everything the argument checks
    look at (shapes, dtypes, devices, the scalars' types and values), so equal keys pass or fail them
    alike. Once a call of the chosen backend has returned, later calls with an equal key and overrides go
    to its ``run`` (the backend without those checks) where it registered one: validated once per
    signature."""
    if name in _OPS:
        warnings.warn(f"op {name!r} is defined again; the new definition replaces it", stacklevel=2)
    op = Op(
        name=name,
        reference=reference,
        dtypes=tuple(dtypes),
        samples=list(samples),
        error_samples=list(error_samples),
        result=result,
        reference_dtype=reference_dtype,
        doc=doc or (reference.__doc__ or "").strip().split("\n")[0],
        dispatch_key=dispatch_key,
        check=check,
        checked_by_key=checked_by_key,
    )
    _OPS[name] = op
    op.add_backend(Backend(
        op=name,
        name="reference",
        fn=reference,
        devices=DEVICES,
        dtypes=op.dtypes,
        priority=-1000,
        doc="pure Python / NumPy / PyTorch reference (pyimpl)",
    ))
    return op


def register_kernel(
    op: str,
    backend: str,
    *,
    devices: Iterable[str],
    dtypes: Iterable[str],
    priority: int = 0,
    reasons: Callable[..., list[str]] | None = None,
    available: Callable[[], str | None] | None = None,
    tolerances: dict[str, Tolerance] | None = None,
    interpret_devices: Iterable[str] = (),
    deterministic: bool = True,
    run: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as backend ``backend`` of ``op`` (timm's ``register_model``). ``run``:
    ``fn`` without the op's shared argument checks, for ops whose key fixes them (``checked_by_key``)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        record = get_op(op)
        if backend in record.backends:
            warnings.warn(f"backend {backend!r} of op {op!r} is registered again; the new one replaces it",
                          stacklevel=2)
        record.add_backend(Backend(
            op=op,
            name=backend,
            fn=fn,
            devices=tuple(devices),
            dtypes=tuple(dtypes),
            priority=priority,
            reasons_fn=reasons,
            available=available,
            tolerances=dict(tolerances or {}),
            interpret_devices=tuple(interpret_devices),
            deterministic=deterministic,
            doc=(fn.__doc__ or "").strip().split("\n")[0],
            run=run,
        ))
        return fn

    return deco


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none'})"


def get_op(name: str) -> Op:
    """The op record; unknown names raise ``KeyError`` naming the closest known ops."""
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(_unknown("kernel", name, _OPS)) from None


def list_kernels(pattern: str = "*") -> list[str]:
    """Names of registered ops matching a shell-style wildcard, sorted."""
    return sorted(n for n in _OPS if fnmatch.fnmatchcase(n, pattern))


def is_kernel(name: str) -> bool:
    return name in _OPS


def backends_for(op: str) -> list[Backend]:
    """The op's backends, highest priority first."""
    return list(get_op(op).ordered)


def _arrays(args: Sequence[Any], kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for i, a in enumerate(args):
        yield f"argument {i}", a
    yield from kwargs.items()


_ARRAY_KIND: dict[type, str | None] = {}  # type -> "numpy" | "torch" | None (not an array)
_DTYPE_NAME: dict[Any, str] = {}


def _array_kind(x: Any) -> str | None:
    t = type(x)
    kind = _ARRAY_KIND.get(t, "?")
    if kind == "?":
        if isinstance(x, np.ndarray):
            kind = "numpy"
        elif hasattr(x, "device") and hasattr(x.device, "type") and hasattr(x, "dtype"):
            kind = "torch"
        else:
            kind = None
        _ARRAY_KIND[t] = kind
    return kind


def _dtype_name(dtype: Any) -> str:
    name = _DTYPE_NAME.get(dtype)
    if name is None:
        name = _DTYPE_NAME[dtype] = str(dtype).removeprefix("torch.")
    return name


def inspect_arrays(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    """(device, dtype) of the array arguments: the device all of them live on ('cpu' for NumPy)
    and the dtype name of the first one; None without arrays. Arrays on different devices raise
    ``ValueError`` naming them."""
    device = dtype = where = None
    for i, a in enumerate(args) if not kwargs else _arrays(args, kwargs):
        kind = _array_kind(a)
        if kind is None:
            continue
        d = "cpu" if kind == "numpy" else a.device.type
        if device is None:
            device, dtype, where = d, _dtype_name(a.dtype), i
        elif d != device:
            first = f"argument {where}" if isinstance(where, int) else where
            here = f"argument {i}" if isinstance(i, int) else i
            raise ValueError(f"inputs are on different devices ({first} on {device}, {here} on {d}); "
                             "move them to one device")
    return device, dtype


def array_device(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """The device all array arguments live on ('cpu' for NumPy); None without arrays."""
    return inspect_arrays(args, kwargs)[0]


def array_dtype(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """The dtype name ('float32', 'bfloat16', ...) of the first array argument."""
    return inspect_arrays(args, kwargs)[1]


def forced_backend(op: str, backend: str | None = None) -> tuple[str | None, str]:
    """The backend forced for ``op`` and by what: argument, use_backend, or environment.

    A global choice (``use_backend("x")`` or ``KERNELS_BACKEND=x``) applies to the ops that
    have a backend named ``x``; the others dispatch automatically. A per-op choice must exist.
    """
    if backend is not None:
        return backend, "argument backend="
    state = _FORCED.get()
    forced = state[1] if state is not None else {}
    if op in forced:
        return forced[op], f"use_backend({op}=...)"
    record = get_op(op)
    per_op = os.environ.get(record.env_key)
    if per_op:
        return per_op, f"environment {record.env_key}"
    global_choices = ((forced.get("*"), "use_backend(...)"),
                      (os.environ.get("KERNELS_BACKEND"), "environment KERNELS_BACKEND"))
    for name, source in global_choices:
        if name and name in record.backends:
            return name, source
    return None, ""


@contextlib.contextmanager
def use_backend(name: str | None = None, **per_op: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block: ``use_backend("reference")`` for every op that
    has it, ``use_backend(insertion_sort="native")`` for one op. Nested blocks override."""
    for op, be in per_op.items():
        record = get_op(op)
        if be not in record.backends:
            raise ValueError(_unknown(f"backend of op {op!r}:", be, record.backends))
    state = _FORCED.get()
    current = dict(state[1]) if state is not None else {}
    if name is not None:
        current["*"] = name
    current.update(per_op)
    token = _FORCED.set((next(_SERIALS), current))
    try:
        yield
    finally:
        _FORCED.reset(token)


_SCALARS = frozenset((int, float, bool, str, type(None)))


def signature(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """The default call signature: per argument, an array's (device, dtype, shape) (NumPy: dtype and
    shape), a scalar's (type, value), kwargs with their names; None (decide afresh) when an argument is
    anything else. Runs on every call of an op keyed by it: the kinds of known types are looked up inline."""
    parts: list[Any] = []
    for a in (*args, *kwargs.values()):
        t = type(a)
        kind = _ARRAY_KIND.get(t, "?")
        if kind == "?":
            kind = _array_kind(a)
        if kind == "torch":
            parts.append((a.device, a.dtype, a.shape))
        elif kind == "numpy":
            parts.append((a.dtype, a.shape))
        elif t in _SCALARS:
            parts.append((t, a))
        else:
            return None
    if kwargs:
        parts.append(tuple(kwargs))  # the names, in call order
    return tuple(parts)


def _signature(record: Op, args: Sequence[Any], kwargs: dict[str, Any]) -> Hashable | None:
    if record.dispatch_key is not None:
        return record.dispatch_key(*args, **kwargs)
    if not (record.has_reasons or record.checked_by_key):  # the choice depends on the device and first dtype only
        return inspect_arrays(args, kwargs)
    return signature(args, kwargs)


def _overrides(record: Op, backend: str | None) -> tuple[Any, ...]:
    """Everything besides the inputs that can change the choice: the ``backend=`` argument, the
    ``use_backend`` block, the environment variables."""
    state = _FORCED.get()
    return backend, state[0] if state is not None else 0, record.read_env(), _READ_GLOBAL(), _READ_INTERPRET()


def decide(record: Op, args: Sequence[Any], kwargs: dict[str, Any], backend: str | None = None) -> Backend:
    """The backend for these inputs, decided afresh (every reason asked): what ``select`` remembers."""
    op = record.name
    name, source = forced_backend(op, backend)
    if name is not None:
        if name not in record.backends:
            raise ValueError(f"{source}: " + _unknown(f"backend of op {op!r}:", name, record.backends))
        chosen = record.backends[name]
        why = chosen.reasons(args, kwargs, forced=True)
        if why:
            raise ValueError(f"{op}: backend {name!r} (forced by {source}) cannot run these inputs: " + "; ".join(why))
        return chosen
    rejected: list[str] = []
    for b in record.ordered:
        why = b.reasons(args, kwargs)
        if not why:
            return b
        rejected.append(f"  {b.name}: " + "; ".join(why))
    raise NotImplementedError(f"no backend of {op} can run these inputs:\n" + "\n".join(rejected))


def _decided(record: Op, key: Hashable, args: Sequence[Any], kwargs: dict[str, Any], backend: str | None) -> Backend:
    """The remembered choice for ``key`` (signature, overrides), decided afresh on a miss."""
    hit = record.decisions.get(key)
    if hit is not None:
        return hit
    chosen = decide(record, args, kwargs, backend)
    if len(record.decisions) >= DECISION_LIMIT:
        record.decisions.clear()
    record.decisions[key] = chosen
    return chosen


def _select(record: Op, args: Sequence[Any], kwargs: dict[str, Any], backend: str | None) -> Backend:
    sig = _signature(record, args, kwargs)
    if sig is None:
        return decide(record, args, kwargs, backend)
    return _decided(record, (sig, _overrides(record, backend)), args, kwargs, backend)


def select(op: str, args: Sequence[Any], kwargs: dict[str, Any], backend: str | None = None) -> Backend:
    """The backend that ``call`` would run for these inputs (remembered per call signature)."""
    return _select(get_op(op), args, kwargs, backend)


def call(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """Run ``op`` on the backend dispatch selects (or the one forced). For a ``checked_by_key`` op, a call
    whose signature and overrides have passed the checks before goes straight to the backend's ``run``."""
    record = _OPS.get(op)
    if record is None:
        record = get_op(op)
    if not record.checked_by_key:
        return _select(record, args, kwargs, backend).fn(*args, **kwargs)
    sig = _signature(record, args, kwargs)
    if sig is None:
        return decide(record, args, kwargs, backend).fn(*args, **kwargs)
    key = (sig, _overrides(record, backend))
    run = record.runners.get(key)
    if run is not None:
        return run(*args, **kwargs)
    chosen = _decided(record, key, args, kwargs, backend)
    out = chosen.fn(*args, **kwargs)  # raises for arguments the checks refuse: nothing is remembered then
    if len(record.runners) >= DECISION_LIMIT:
        record.runners.clear()
    run = chosen.run if chosen.run is not None else chosen.fn
    resolve = getattr(run, "resolve", None)  # a lazily imported entry point (availability.lazy): the function
    record.runners[key] = resolve() if resolve is not None else run
    return out


def explain(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> str:
    """A readable account of the dispatch decision for these inputs, one line per backend (every
    reason asked afresh, never the remembered decision)."""
    record = get_op(op)
    checks = record.check
    device, dtype = inspect_arrays(args, kwargs)
    lines = [f"{op}: inputs on {device or 'no device'}, dtype {dtype or 'n/a'}"]
    if checks is not None:
        try:
            checks(*args, **kwargs)
        except (TypeError, ValueError, IndexError) as e:
            return "\n".join([*lines, f"-> raises {type(e).__name__}: {str(e).splitlines()[0]} (every backend "
                               "checks these arguments)"])
    name, source = forced_backend(op, backend)
    if name is not None:
        lines.append(f"forced: {name!r} by {source}")
    for b in backends_for(op):
        why = b.reasons(args, kwargs, forced=(b.name == name))
        lines.append(f"  [{b.priority:>5}] {b.name:<10} " + ("can run" if not why else "no: " + "; ".join(why)))
    try:
        chosen = decide(record, args, kwargs, backend).name
        lines.append(f"-> runs {chosen!r}")
    except (ValueError, NotImplementedError) as e:
        lines.append(f"-> raises {type(e).__name__}: {str(e).splitlines()[0]}")
    return "\n".join(lines)
