"""Parity harness: every registered (op, backend, device, dtype, sample) against the reference.

The same cases feed the test suite (``tests/test_parity.py``) and ``python -m modelkernels.kernels parity``,
so a new backend is checked by registering it. The reference runs on inputs converted to
``op.reference_dtype(dtype)`` (float64 where low precision needs it), outputs are compared in
float64: ``|out - ref| <= atol + rtol * |ref|`` elementwise, NaN where the reference has NaN.

Anything that raises while a case runs (building the sample, the backend, the reference, the
comparison, a gradient) is a failed case with the error's type and message, never a crash.
``select_cases`` turns a command line's selection into cases and raises ``SelectionError`` for a
selection that cannot mean what was asked (nothing matches, an unknown name, an absent device).
Recorded reference outputs (``kernels.goldens``) can stand in for the reference: ``run_case(case,
recorded=...)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from modelkernels.kernels import registry
from modelkernels.kernels.registry import Backend, ErrorSample, Op, Sample, Tolerance


@dataclasses.dataclass(frozen=True)
class Case:
    op: Op
    backend: Backend
    device: str
    dtype: str
    sample: Sample

    @property
    def id(self) -> str:
        return f"{self.op.name}-{self.backend.name}-{self.device}-{self.dtype}-{self.sample.name}"


@dataclasses.dataclass
class Result:
    case: Case
    status: str  # "ok", "FAIL", "skip"
    max_error: float = 0.0  # largest |out - ref|
    ratio: float = 0.0  # largest |out - ref| / (atol + rtol |ref|): at most 1 passes
    detail: str = ""
    seconds: float = 0.0

    @property
    def tolerance(self) -> Tolerance:
        return self.case.backend.tolerance(self.case.dtype)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def device_available(device: str) -> str | None:
    """Why ``device`` cannot be used here, or None."""
    if device == "cpu":
        return None
    if device == "cuda":
        return None if cuda_available() else "no CUDA device"
    return f"unknown device {device!r}"


def parity_cases(ops: Iterable[str] | None = None, backends: Iterable[str] | None = None,
                 devices: Iterable[str] | None = None) -> list[Case]:
    """All cases the registry declares, reference backends excluded (they are the yardstick)."""
    wanted_ops = list(ops) if ops is not None else registry.list_kernels()
    wanted_backends = set(backends) if backends is not None else None
    wanted_devices = set(devices) if devices is not None else None
    out: list[Case] = []
    for name in wanted_ops:
        op = registry.get_op(name)
        for be in registry.backends_for(name):
            if be.name == "reference" or (wanted_backends is not None and be.name not in wanted_backends):
                continue
            for device in be.devices + be.interpret_devices:
                if wanted_devices is not None and device not in wanted_devices:
                    continue
                for dtype in be.dtypes:
                    if dtype not in op.dtypes:
                        continue
                    for sample in op.samples:
                        if sample.dtypes is None or dtype in sample.dtypes:
                            out.append(Case(op, be, device, dtype, sample))
    return out


class SelectionError(ValueError):
    """A parity selection that cannot run as asked: nothing matches, an unknown op, backend or
    device, or a device asked for explicitly that this machine lacks."""


def _hint(name: str, known: Iterable[str]) -> str:
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return (f"did you mean {', '.join(map(repr, close))}? " if close else "") + f"known: {', '.join(known) or 'none'}"


def select_ops(patterns: Iterable[str]) -> list[str]:
    """The ops matching any of the shell-style ``patterns``; a pattern matching none raises."""
    ops: list[str] = []
    for pattern in patterns:
        found = registry.list_kernels(pattern)
        if not found:
            raise SelectionError(f"op {pattern!r} matches no registered op; {_hint(pattern, registry.list_kernels())}")
        ops += [name for name in found if name not in ops]
    return ops


def check_devices(devices: Iterable[str]) -> None:
    """Raise for a device that is unknown or absent here (each was asked for explicitly)."""
    for device in devices:
        if device not in registry.DEVICES:
            raise SelectionError(f"device {device!r} is unknown; allowed: {', '.join(registry.DEVICES)}")
        why = device_available(device)
        if why:
            raise SelectionError(f"device {device!r} was asked for but cannot be used here: {why}")


def select_cases(ops: Iterable[str] = ("*",), backends: Iterable[str] | None = None,
                 devices: Iterable[str] | None = None, dtypes: Iterable[str] | None = None) -> list[Case]:
    """The cases of a selection (op wildcards, backend names, devices, dtypes; None: all), or
    ``SelectionError`` saying why the selection is empty or names something unknown."""
    names = select_ops(ops)
    if devices is not None:
        devices = list(devices)
        check_devices(devices)
    if backends is not None:
        backends = list(backends)
        known = {be.name for name in names for be in registry.backends_for(name)} - {"reference"}
        for be in backends:
            if be not in known:
                raise SelectionError(f"backend {be!r} is not a backend of the selected ops; {_hint(be, known)}")
    cases = parity_cases(names, backends, devices)
    if dtypes is not None:
        dtypes = list(dtypes)
        known_dtypes = {c.dtype for c in cases}
        for dt in dtypes:
            if dt not in known_dtypes:
                raise SelectionError(f"dtype {dt!r} has no case in the selection; {_hint(dt, known_dtypes)}")
        cases = [c for c in cases if c.dtype in dtypes]
    if not cases:
        what = [f"ops {', '.join(names)}"] + ([f"backends {', '.join(backends)}"] if backends else []) + (
            [f"devices {', '.join(devices)}"] if devices else [])
        raise SelectionError(f"no parity case selected ({'; '.join(what)}): the selected backends declare "
                             "none of these devices, or the ops have only their reference")
    return cases


def case_skip_reason(case: Case) -> str | None:
    """Why a case cannot run on this machine before its inputs are built, or None."""
    why = case.backend.unavailable() or device_available(case.device)
    if why:
        return why
    if case.device not in case.backend.devices and not registry.triton_interpret():
        return f"{case.backend.name} runs on {case.device} only under TRITON_INTERPRET=1"
    return None


def _is_float(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return bool(np.issubdtype(x.dtype, np.floating))
    return bool(getattr(x, "is_floating_point", lambda: False)())


def is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _convert(x: Any, dtype: str) -> Any:
    """Floating arrays in a nested structure converted to ``dtype``."""
    if isinstance(x, (tuple, list)):
        return type(x)(_convert(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _convert(v, dtype) for k, v in x.items()}
    if _is_float(x):
        if is_tensor(x):
            import torch

            return x.detach().to(getattr(torch, dtype))
        return x.astype(dtype)
    return x


def leaves(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [leaf for v in x for leaf in leaves(v)]
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in leaves(x[k])]
    return [x]


def to_numpy(x: Any) -> Any:
    if is_tensor(x):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.double()
        return x.numpy()
    return x


class Comparison(NamedTuple):
    """``ok``; the largest ``|out - ref|``; the largest ratio of that error to what the tolerance
    allows at the element (``ok`` means ratio <= 1); why not, when not ok."""

    ok: bool
    max_error: float
    ratio: float
    message: str


def _fail(message: str, max_error: float = float("inf")) -> Comparison:
    return Comparison(False, max_error, float("inf"), message)


def compare(out: Any, ref: Any, tol: Tolerance) -> Comparison:
    """Compare nested outputs leaf by leaf: shapes, NaN and Inf positions exactly, finite values
    within ``atol + rtol * |ref|``, integers exactly."""
    outs, refs = leaves(out), leaves(ref)
    if len(outs) != len(refs):
        return _fail(f"{len(outs)} outputs, reference has {len(refs)}")
    worst = ratio = 0.0
    for i, (o, r) in enumerate(zip(outs, refs)):
        o, r = to_numpy(o), to_numpy(r)
        if not isinstance(r, np.ndarray):
            if o != r and not (isinstance(r, float) and isinstance(o, float) and np.isnan(r) and np.isnan(o)):
                return _fail(f"output {i}: {o!r} != reference {r!r}")
            continue
        if not isinstance(o, np.ndarray) or o.shape != r.shape:
            return _fail(f"output {i}: shape {getattr(o, 'shape', None)} != reference {r.shape}")
        if o.size == 0:
            continue
        if not np.issubdtype(r.dtype, np.floating):
            bad = np.flatnonzero(o.reshape(-1) != r.reshape(-1))
            if bad.size:
                return _fail(f"output {i}: {bad.size} elements differ, first at {bad[:5].tolist()}")
            continue
        of, rf = o.astype(np.float64).reshape(-1), r.astype(np.float64).reshape(-1)
        nan_o, nan_r = np.isnan(of), np.isnan(rf)
        if (nan_o != nan_r).any():
            idx = np.flatnonzero(nan_o != nan_r)
            return _fail(f"output {i}: NaN differs from reference at {idx[:5].tolist()}")
        inf_r = np.isinf(rf)
        if (of[inf_r] != rf[inf_r]).any():
            return _fail(f"output {i}: Inf differs from reference")
        fin = ~(nan_r | inf_r)
        err = np.abs(of[fin] - rf[fin])
        allowed = tol.atol + tol.rtol * np.abs(rf[fin])
        if err.size:
            worst = max(worst, float(err.max()))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(err == 0, 0.0, err / allowed)
            ratio = max(ratio, float(ratios.max()))
            over = np.flatnonzero(err > allowed)
            if over.size:
                j = over[0]
                return Comparison(False, worst, ratio, (
                    f"output {i}: {over.size}/{err.size} elements out of tolerance (atol={tol.atol}, "
                    f"rtol={tol.rtol}); worst |diff|={err.max():.3g}, first at flat index "
                    f"{np.flatnonzero(fin)[j]}: {of[fin][j]!r} vs {rf[fin][j]!r}"))
    return Comparison(True, worst, ratio, "")


def _grad_inputs(args: Any, kwargs: dict[str, Any]) -> list[Any]:
    inputs = [x for x in leaves(list(args)) + leaves(kwargs) if is_tensor(x) and _is_float(x)]
    for x in inputs:
        x.requires_grad_(True)
    return inputs


def _backward(out: Any, inputs: list[Any], seed: int) -> list[Any]:
    import torch

    outs = [o for o in leaves(out) if is_tensor(o) and o.requires_grad]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


class Recorded(NamedTuple):
    """A case's reference as recorded on another machine (``kernels.goldens``): the output
    leaves, the gradient leaves (None: not recorded), a digest of the inputs it was computed from,
    or why the reference could not be recorded."""

    outputs: list[Any]
    grads: list[Any] | None
    inputs_digest: str
    error: str = ""


def _wants_grad(sample: Sample, dtype: str) -> bool:
    return sample.grad and dtype in ("float16", "bfloat16", "float32", "float64")


def reference_outputs(op: Op, sample: Sample, device: str, dtype: str) -> tuple[Any, list[Any] | None]:
    """The reference's output for a sample (inputs made on ``device`` in ``dtype``, converted to
    the op's reference dtype) and, when the sample has gradients, those of its floating inputs."""
    ref_dtype = op.reference_dtype(dtype) if op.reference_dtype else dtype
    rargs, rkwargs = sample.make(device, dtype)
    rargs, rkwargs = _convert(rargs, ref_dtype), _convert(rkwargs, ref_dtype)
    grad = _wants_grad(sample, dtype)
    rinputs = _grad_inputs(rargs, rkwargs) if grad else []
    ref = op.output(rargs, rkwargs, op.reference(*rargs, **rkwargs))
    return ref, (_backward(ref, rinputs, seed=1234) if grad else None)


def raised_message(stage: str, e: BaseException) -> str:
    return f"{stage} raised {type(e).__name__}: {str(e).strip()[:300]}"


def run_case(case: Case, recorded: Callable[[Case], Recorded | None] | None = None) -> Result:
    """Build the sample, run the backend (forced) and the reference, compare (and gradients).

    ``recorded``, given, looks up the case's recorded reference instead of running the reference
    here; a case without a recording fails. Whatever raises makes the case fail with its stage,
    the error's type and its message."""
    start = time.perf_counter()
    result = _run_case(case, recorded)
    result.seconds = time.perf_counter() - start
    return result


def _run_case(case: Case, recorded: Callable[[Case], Recorded | None] | None) -> Result:
    why = case_skip_reason(case)
    if why:
        return Result(case, "skip", detail=why)
    op, be = case.op, case.backend
    grad = _wants_grad(case.sample, case.dtype)
    stage = "the sample's inputs"
    try:
        args, kwargs = case.sample.make(case.device, case.dtype)
        stage = "the backend's reasons"
        why_list = be.reasons(args, kwargs, forced=True)
        if why_list:
            return Result(case, "skip", detail="; ".join(why_list))
        if recorded is None:
            stage = "the reference"
            ref, ref_grads = reference_outputs(op, case.sample, case.device, case.dtype)
        else:
            stage = "the recording"
            rec = recorded(case)
            if rec is None:
                return Result(case, "FAIL", float("inf"), float("inf"),
                              "no recorded reference for this sample and dtype (record it with --record)")
            if rec.error:
                return Result(case, "FAIL", float("inf"), float("inf"), f"recording: {rec.error}")
            digest = inputs_digest(args, kwargs)
            if digest != rec.inputs_digest:
                return Result(case, "FAIL", float("inf"), float("inf"),
                              "the sample's inputs differ from the recorded ones (the sample is not "
                              f"reproducible on {case.device})")
            ref, ref_grads = rec.outputs, rec.grads
            if grad and ref_grads is None:
                return Result(case, "FAIL", float("inf"), float("inf"), "the recording has no gradients")
        inputs = _grad_inputs(args, kwargs) if grad else []
        stage = "the backend"
        out = op.output(args, kwargs, be.fn(*args, **kwargs))
        stage = "the comparison"
        tol = be.tolerance(case.dtype)
        c = compare(out, ref, tol)
        err, ratio, msg = c.max_error, c.ratio, c.message
        if c.ok and grad:
            stage = "the backend's backward"
            g = _backward(out, inputs, seed=1234)
            stage = "the gradient comparison"
            gc = compare(g, ref_grads, be.tolerances.get(f"grad:{case.dtype}", tol))
            c = gc
            err, ratio = max(err, gc.max_error), max(ratio, gc.ratio)
            msg = f"gradient: {gc.message}" if gc.message else ""
    except Exception as e:  # any error is a failure of the case, reported with where and its type
        return Result(case, "FAIL", float("inf"), float("inf"), raised_message(stage, e))
    return Result(case, "ok" if c.ok else "FAIL", err, ratio, msg)


def inputs_digest(args: Any, kwargs: dict[str, Any]) -> str:
    """SHA-256 over the array arguments' dtypes, shapes and values (on the CPU, as bytes)."""
    h = hashlib.sha256()
    for leaf in leaves(list(args)) + leaves(kwargs):
        if is_tensor(leaf):
            import torch

            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(leaf, np.ndarray):
            h.update(f"{leaf.dtype}{leaf.shape}".encode())
            h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def error_cases(ops: Iterable[str] | None = None) -> list[tuple[Op, Backend, ErrorSample]]:
    """(op, backend, error sample) for every backend usable on the CPU here."""
    out = []
    for name in ops if ops is not None else registry.list_kernels():
        op = registry.get_op(name)
        for be in registry.backends_for(name):
            for es in op.error_samples:
                out.append((op, be, es))
    return out


def run_parity(ops: Iterable[str] | None = None, backends: Iterable[str] | None = None,
               devices: Iterable[str] | None = None) -> list[Result]:
    return [run_case(c) for c in parity_cases(ops, backends, devices)]


def write_junit(results: list[Result], path: str, suite: str = "modelkernels.kernels.parity") -> None:
    """The results as JUnit XML: one testcase per case (classname ``op.backend``, name
    ``device-dtype-sample``), a failure with the detail, a skip with its reason."""
    from xml.etree import ElementTree as ET

    failures = sum(r.status == "FAIL" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    total = sum(r.seconds for r in results)
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failures), errors="0",
                      skipped=str(skipped), time=f"{total:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors="0", skipped=str(skipped), time=f"{total:.3f}")
    for r in results:
        c = r.case
        tc = ET.SubElement(ts, "testcase", classname=f"{c.op.name}.{c.backend.name}",
                           name=f"{c.device}-{c.dtype}-{c.sample.name}", time=f"{r.seconds:.3f}")
        if r.status == "FAIL":
            ET.SubElement(tc, "failure", message=r.detail[:500]).text = r.detail
        elif r.status == "skip":
            ET.SubElement(tc, "skipped", message=r.detail[:500])
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def summarize(results: list[Result]) -> list[dict[str, Any]]:
    """One row per (op, backend, device, dtype): samples run, worst error, tolerance, status."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in results:
        c = r.case
        key = (c.op.name, c.backend.name, c.device, c.dtype)
        tol = r.tolerance
        row = rows.setdefault(key, dict(op=key[0], backend=key[1], device=key[2], dtype=key[3], samples=0,
                                        skipped=0, max_error=0.0, ratio=0.0, atol=tol.atol, rtol=tol.rtol,
                                        status="ok",
                                        detail=""))
        if r.status == "skip":
            row["skipped"] += 1
            row["detail"] = row["detail"] or r.detail
            continue
        row["samples"] += 1
        row["max_error"] = max(row["max_error"], r.max_error)
        row["ratio"] = max(row["ratio"], r.ratio)
        if r.status == "FAIL":
            row["status"] = "FAIL"
            row["detail"] = f"{c.sample.name}: {r.detail}"
    for row in rows.values():
        if row["samples"] == 0:
            row["status"] = "skip"
    return list(rows.values())
