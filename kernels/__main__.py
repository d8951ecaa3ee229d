"""``python -m modelkernels.kernels {info, parity, bench}``.

info    ops x backends x whether each can run here (and why not)
parity  every registered backend against its reference; a table; exit 1 on any failure, 2 when
        the selection is empty or names something unknown; --record / --against for goldens
bench   the benchmark suites (interleaved timing) and the report: summary, tables, JSON, PNG
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from modelkernels.kernels import parity, registry


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with a header row and aligned columns."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _environment() -> str:
    import numpy
    import torch

    parts = [f"python {platform.python_version()}", f"numpy {numpy.__version__}", f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton: not installed")
    try:
        import numba

        parts.append(f"numba {numba.__version__}")
    except ImportError:
        parts.append("numba: not installed")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    parts.append(dev)
    if registry.triton_interpret():
        parts.append("TRITON_INTERPRET=1")
    return ", ".join(parts)


def cmd_info(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.list_kernels(args.op):
        for be in registry.backends_for(name):
            why = be.unavailable()
            devices = ", ".join(be.devices + tuple(f"{d}*" for d in be.interpret_devices))
            usable = [d for d in be.devices if parity.device_available(d) is None]
            rows.append(dict(op=name, backend=be.name, priority=be.priority, devices=devices,
                             dtypes=", ".join(be.dtypes),
                             here="no: " + why if why else ("yes (" + ", ".join(usable) + ")" if usable
                                                            else "no: " + "; ".join(
                                                                str(parity.device_available(d)) for d in be.devices))))
    print(_environment())
    print(format_table(rows, ["op", "backend", "priority", "devices", "dtypes", "here"]))
    print("* forced only, under TRITON_INTERPRET=1 (Triton's interpreter on CPU tensors)")
    return 0


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _writable(path: str, flag: str) -> str | None:
    """Why ``path`` cannot be written (checked before any case runs), or None."""
    p = Path(path)
    if p.is_dir():
        return f"{flag} {path!r} is a directory, not a file"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"{flag} {path!r}: the folder {str(parent)!r} does not exist"
    if (p.exists() and not os.access(p, os.W_OK)) or not os.access(parent, os.W_OK):
        return f"{flag} {path!r} is not writable"
    return None


def _usage_error(message: str) -> int:
    print(f"python -m modelkernels.kernels parity: {message}", file=sys.stderr)
    return 2


def _print_results(results: list[parity.Result], args: argparse.Namespace) -> int:
    rows = parity.summarize(results)
    shown = [dict(row) for row in rows if row["status"] != "skip" or args.verbose]
    for row in shown:
        ran = row["status"] != "skip"
        row["max_error"] = f"{row['max_error']:.3g}" if ran else "-"
        row["err/tol"] = f"{row['ratio']:.2f}" if ran else "-"
        row["tolerance"] = f"atol={row['atol']:g} rtol={row['rtol']:g}"
        row["samples"] = f"{row['samples']}" + (f" (+{row['skipped']} skipped)" if row["skipped"] else "")
    print(_environment())
    print(format_table(shown, ["op", "backend", "device", "dtype", "samples", "max_error", "err/tol", "tolerance",
                               "status"]))
    failed = [r for r in results if r.status == "FAIL"]
    for r in failed:
        c = r.case
        print(f"FAIL {c.op.name} backend={c.backend.name} device={c.device} dtype={c.dtype} "
              f"sample={c.sample.name!r}: {r.detail}")
    skipped_rows = [row for row in rows if row["status"] == "skip"]
    if skipped_rows:
        why = Counter(_skip_reason(row["detail"]) for row in skipped_rows)
        print(f"not run here ({len(skipped_rows)} op/backend/device/dtype combinations; -v lists each): "
              + "; ".join(f"{n} x {reason}" for reason, n in why.most_common()))
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        if args.junit:
            parity.write_junit(results, args.junit)
    except OSError as e:  # checked before the run; the disk can still fill or the folder vanish
        return _usage_error(f"could not write the results: {e}")
    ran = sum(1 for r in results if r.status != "skip")
    skipped = [r for r in results if r.status == "skip"]
    print(f"{ran} cases run, {len(failed)} failed, {len(skipped)} skipped")
    if failed:
        return 1
    if not ran:
        print("python -m modelkernels.kernels parity: no selected case could run here; the first reason: "
              f"{skipped[0].detail if skipped else 'none'}", file=sys.stderr)
        return 2
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    for path, flag in ((args.json, "--json"), (args.junit, "--junit"), (args.record, "--record")):
        why = path and _writable(path, flag)
        if why:
            return _usage_error(why)
    if args.record and args.against:
        return _usage_error("--record and --against exclude each other: record on one machine, check on another")
    try:
        if args.record:
            return _record(args)
        recording = None
        if args.against:
            from modelkernels.kernels import goldens

            recording = goldens.load(args.against)
        cases = parity.select_cases(_split(args.op) or ["*"], _split(args.backend), _split(args.device),
                                    _split(args.dtype))
    except ValueError as e:  # SelectionError, RecordingError
        return _usage_error(str(e))
    if recording is not None:
        print(f"checking against {args.against} (recorded with {recording.environment or 'an unknown setup'})")
    results = []
    for i, case in enumerate(cases):
        results.append(parity.run_case(case, None if recording is None else recording.lookup))
        if args.verbose:
            r = results[-1]
            print(f"[{i + 1}/{len(cases)}] {case.id}: {r.status} {r.detail}", flush=True)
    return _print_results(results, args)


def _record(args: argparse.Namespace) -> int:
    from modelkernels.kernels import goldens

    if args.backend or args.json or args.junit:
        return _usage_error("--record runs only the references; --backend, --json and --junit apply to checks")
    ops = parity.select_ops(_split(args.op) or ["*"])
    devices = _split(args.device) or ["cpu"]
    parity.check_devices(devices)
    if len(devices) != 1:
        return _usage_error(f"--record runs the references on one device; got {', '.join(devices)}")
    rows = goldens.record(args.record, ops, _split(args.dtype), devices[0], environment=_environment())
    if not rows:
        return _usage_error("nothing to record: the selected ops have no sample in the selected dtypes")
    failed = [r for r in rows if r.error]
    for r in failed:
        print(f"FAIL {r.op} sample={r.sample!r} dtype={r.dtype}: {r.error}")
    print(f"{len(rows)} reference outputs of {len(ops)} ops recorded to {args.record}, {len(failed)} failed")
    return 1 if failed else 0


def _skip_reason(detail: str) -> str:
    """A skip reason without its op and dtype: "triton runs on cpu only under TRITON_INTERPRET=1"."""
    return re.sub(r"\b(float|bfloat|int)\d+\b", "<dtype>", detail.split(": ", 1)[-1]) or "no reason given"


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cmd_bench(args: argparse.Namespace) -> int:
    root = _repo_root()
    bench_dir = root / "benchmarks"
    if not bench_dir.is_dir():
        print(f"benchmarks/ not found next to {root / 'kernels'}: run from a source checkout", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw, log = out / "samples.json", out / "pytest.log"
    raw.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-rfE", "-p", "no:cacheprovider",
           "-p", "no:benchmark", f"--bench-json={raw}"]
    if args.suite:
        cmd += ["-k", args.suite]
    if args.quick:
        cmd += ["--quick"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    print(f"running the suites{' (quick)' if args.quick else ''}; pytest's output: {log}", flush=True)
    rc = _run_quietly(cmd, root, env, log)
    if not raw.exists():
        print(f"no benchmark results were written: see {log}", file=sys.stderr)
        return rc or 1
    sys.path.insert(0, str(root))
    from benchmarks.report import write_report

    print(write_report(raw, out))
    print(f"full tables, crossovers and plots: {out / 'report.md'}")
    return rc


def _run_quietly(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Run ``cmd`` with its output going to ``log``; echo the per-suite progress lines, failures and
    pytest's last line."""
    last = ""
    with log.open("w") as f, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            text = line.strip()
            progress = text.find("[bench]")
            if progress >= 0 or text.startswith(("FAILED", "ERROR")):
                print(text[max(progress, 0):], flush=True)
            if text:
                last = text
    if last:
        print(last.strip("= "))
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelkernels.kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="ops x backends x available here")
    pi.add_argument("--op", default="*", help="wildcard over op names (default: all)")
    pp = sub.add_parser("parity", help="check every backend against its reference")
    pp.add_argument("--op", default="*", help="wildcards over op names, comma-separated (default: all)")
    pp.add_argument("--backend", help="only these backends (comma-separated)")
    pp.add_argument("--device", help="only these devices (cpu, cuda; comma-separated); absent ones are an error")
    pp.add_argument("--dtype", help="only these dtypes (comma-separated)")
    pp.add_argument("--json", help="also write the table as JSON to this path")
    pp.add_argument("--junit", help="also write every case as JUnit XML to this path")
    pp.add_argument("--record", metavar="FILE",
                    help="run only the references (on the CPU) and record their outputs to FILE (.npz)")
    pp.add_argument("--against", metavar="FILE",
                    help="check the backends against the outputs recorded in FILE instead of the reference")
    pp.add_argument("-v", "--verbose", action="store_true", help="print every case as it runs")
    pb = sub.add_parser("bench", help="run the benchmark suites and write the report")
    pb.add_argument("--out", default="benchmarks/report", help="report folder (default: benchmarks/report)")
    pb.add_argument("--suite", help="pytest -k expression selecting suites, e.g. 'sort'")
    pb.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    args = p.parse_args(argv)
    return {"info": cmd_info, "parity": cmd_parity, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
