"""The call path's cost on a CUDA GPU, in one process: issue 11's tables.

    PYTHONPATH=$PWD python3 benchmarks/gpu_call_path.py --out $OUT/gpu_call_path.json
    PYTHONPATH=$PWD python3 benchmarks/gpu_call_path.py --device cpu --quick --out /tmp/call_path.json

``unet``: one sampling step of the seed's UNet (the seed's update around the model, bf16 autocast, 64x64)
at batch 16 and 128 for eager with SDPA (unpatched), torch.compile of it, ``kernels.nn.patch(model)`` and
the patched model under torch.compile (``fullgraph=True``), each ms per call (no graph, do_bench median)
and replayed from a CUDA graph; outputs checked against the seed's fp32 model first.
``host``: per public op (the fused ops at the seed's B=16 shapes, bf16, and ``kernels.attention``), µs per
call of back-to-back calls by wall clock and by CUDA events, the ``timeit`` host figure, and the same for
the op's bare kernel launch(es) (the compiled launchers it called, recorded once and replayed), whose
difference is the call path's host cost; the GPU time from a CUDA graph beside it.
``attention``: ``kernels.attention`` against SDPA per call (wall clock / CUDA events) and do_bench
TFLOP/s of the op, its kernel alone and SDPA, at (16, 4, 64, 64) and (16, 4, 256, 64) fp16.
Run from an older checkout (the script copied there) it gives the before figures on the same machine.
``--parts a,b`` picks parts; ``--device cpu --quick`` runs every part's CPU-runnable code at small sizes
(no graphs, no compile, no CUDA events) to check the script itself. JSON to ``--out``; summary printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import timeit
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import back_to_back_us
from benchmarks.sdpa_peer import sdpa_model
from modelkernels import kernels
from modelkernels.pyimpl.unet import UNet

SUMMARY: list[str] = []


def note(line: str) -> None:
    print(line, flush=True)
    SUMMARY.append(line)


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


class Bench:
    """Timing on the chosen device: do_bench medians and CUDA graphs on CUDA, wall clock on the CPU."""

    def __init__(self, device: str, quick: bool) -> None:
        self.device, self.quick, self.cuda = device, quick, device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, fn: Callable[[], Any]) -> float:
        """Median ms per call (no graph): the host's issue time shows where it exceeds the GPU's."""
        if self.cuda:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=20, rep=100 if self.quick else 200, return_mode="median"))
        fn()
        times = []
        for _ in range(3 if self.quick else 10):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    def graph_ms(self, fn: Callable[[], Any]) -> float | None:
        """Median ms of ``fn`` replayed from a CUDA graph (None on the CPU)."""
        if not self.cuda:
            return None
        from benchmarks.harness import graphed

        return self.ms(graphed(fn))

    def per_call_us(self, fn: Callable[[], Any]) -> tuple[float, float | None]:
        """(wall-clock µs, CUDA-event µs) per call over back-to-back calls (events None on the CPU)."""
        n = 200 if self.quick else 2000
        for _ in range(20):
            fn()
        self.sync()
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n * 1e6, None
        return back_to_back_us(fn, n)

    def host_us(self, fn: Callable[[], Any]) -> float:
        """``timeit``'s figure: the best of three runs of back-to-back calls, µs per call."""
        n = 200 if self.quick else 2000
        value = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6
        self.sync()
        return value


# ------------------------------------------------------------------------------------------- unet

def _seed_step(model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, i: int, device: str) -> torch.Tensor:
    """The seed's reverse update at step i around the model (linear schedule, 1000 steps)."""
    beta = torch.linspace(1e-4, 0.02, 1000, device=device)
    alpha = 1 - beta
    alpha_hat = torch.cumprod(alpha, 0)
    eps = model(x, t)
    a, ah, b = (v[i] for v in (alpha, alpha_hat, beta))
    noise = torch.randn_like(x)
    return 1 / torch.sqrt(a) * (x - ((1 - a) / torch.sqrt(1 - ah)) * eps) + torch.sqrt(b) * noise


def part_unet(bench: Bench, res: dict[str, Any]) -> None:
    dev = bench.device
    size, width = (16, 16) if bench.quick else (64, 64)
    torch.manual_seed(0)
    base = UNet(image_size=size, base_channels=width).to(dev).eval()
    peer = sdpa_model(base)
    ours = copy.deepcopy(base)
    report = kernels.nn.patch(ours)
    note(f"patched seed UNet: {len(report.replaced)} modules replaced, {len(report.kept)} kept")
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    res["unet"] = rows = []
    for b in (2,) if bench.quick else (16, 128):
        x = torch.randn(b, 3, size, size, device=dev)
        t = torch.full((b,), 500, device=dev, dtype=torch.long)
        with torch.no_grad():
            want = base(x, t).float()
        torch._dynamo.reset()
        variants: list[tuple[str, Callable[..., Any]]] = [("eager SDPA", peer), ("patched", ours)]
        if bench.cuda:
            variants += [("torch.compile", torch.compile(peer, dynamic=False)),
                         ("patched + torch.compile", torch.compile(ours, dynamic=False, fullgraph=True))]
        row: dict[str, Any] = {"batch": b}
        rows.append(row)
        for name, model in variants:

            def step(model: Callable[..., Any] = model, x: torch.Tensor = x, t: torch.Tensor = t) -> torch.Tensor:
                with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=bench.cuda):
                    return _seed_step(model, x, t, 500, dev)

            try:
                t0 = time.time()
                with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=bench.cuda):
                    err = rel_err(model(x, t).float(), want)
                row[name] = {"rel_err": err, "first_call_s": time.time() - t0, "ms": bench.ms(step),
                             "graph_ms": bench.graph_ms(step)}
            except Exception as ex:  # report and go on: one run must bring back what it can
                row[name] = {"error": f"{type(ex).__name__}: {str(ex)[:300]}"}
            print(f"unet B={b} {name}: {row[name]}", flush=True)
        cells = []
        for name, _ in variants:
            r = row[name]
            if "ms" in r:
                graph = f"{r['graph_ms']:.2f}" if r["graph_ms"] is not None else "-"
                cells.append(f"{name} {r['ms']:.2f} / {graph} (err {r['rel_err']:.1e})")
            else:
                cells.append(f"{name} {r['error']}")
        note(f"UNet step B={b} ms per call / in a CUDA graph: " + "; ".join(cells))


# ------------------------------------------------------------------------------------------- host

def _recorded_launches(fn: Callable[[], Any]) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
    """The compiled launchers ``fn`` called through the launch layer, with their arguments: one warm call
    of ``fn`` with every kept compiled kernel wrapped by a recorder (restored afterwards)."""
    from modelkernels.kernels import triton_launch

    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    class Recorder:
        def __init__(self, compiled: Any) -> None:
            self.compiled = compiled
            self.function, self.packed_metadata = compiled.function, compiled.packed_metadata

        def run(self, *args: Any) -> None:
            calls.append((self.compiled.run, args))
            self.compiled.run(*args)

    saved: list[tuple[dict[Any, Any], Any, Any]] = []
    # getattr: the script also runs on a checkout from before the one launch layer (for before/after figures)
    tables: list[dict[Any, Any]] = [t for c in triton_launch._CACHED.values()
                                    for t in (c.handles, getattr(c, "fitted_handles", {}),
                                              *(p.handles for p in getattr(c, "prepared", ())))]
    for table in tables:
        for key, entry in list(table.items()):
            saved.append((table, key, entry))
            table[key] = (Recorder(entry[0]), *entry[1:])
    try:
        fn()
    finally:
        for table, key, entry in saved:
            table[key] = entry
    return calls


def _op_calls(dev: str, quick: bool, ops: Any = kernels, size: tuple[int, int, int] | None = None
              ) -> dict[str, Callable[[], Any]]:
    """The public calls the patched seed UNet makes at batch 16 (64x64, width 64), bf16 on CUDA; ``ops``:
    where the functions come from (``benchmarks/host_path.py`` passes the Triton implementations),
    ``size``: (batch, channels, side) instead."""
    b, c, s = size or ((2, 8, 8) if quick else (16, 64, 64))
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dev, dtype)

    x, r, e, w, bias = rnd(b, c, s, s), rnd(b, c, s, s), rnd(b, c), rnd(c), rnd(c)
    tok, att = rnd(b, s * s, c), rnd(b, s * s, c)
    xu, sk = rnd(b, c, s // 2, s // 2), rnd(b, c, s, s)
    w1, w2 = rnd(c, c) * c**-0.5, rnd(c, c) * c**-0.5
    n = (s // 4) ** 2  # the attention of the 16x16 level: 256 tokens, 4 heads of C/4
    q, k, v = (rnd(b, n, 4, c // 4) for _ in range(3))
    return {
        "group_norm_act (GN+GELU)": lambda: ops.group_norm_act(x, 1, w, bias, activation="gelu"),
        "group_norm_act (GN+residual+GELU+emb)": lambda: ops.group_norm_act(x, 1, w, bias, residual=r, emb=e,
                                                                            activation="gelu"),
        "tokens_layer_norm": lambda: ops.tokens_layer_norm(x, w, bias),
        "add_layer_norm": lambda: ops.add_layer_norm(att, tok, w, bias),
        "upsample_concat": lambda: ops.upsample_concat(xu, sk),
        "feed_forward": lambda: ops.feed_forward(att, tok, w1, bias, w2, bias),
        "attention (B,N,H,D) view": lambda: ops.attention(q, k, v, layout="bnhd"),
    }


def part_host(bench: Bench, res: dict[str, Any]) -> None:
    res["host"] = rows = {}
    with torch.no_grad():
        for name, fn in _op_calls(bench.device, bench.quick).items():
            fn()
            bench.sync()
            launches = _recorded_launches(fn) if bench.cuda else []

            def bare(launches: list[tuple[Callable[..., Any], tuple[Any, ...]]] = launches) -> None:
                for run, args in launches:
                    run(*args)

            wall, events = bench.per_call_us(fn)
            row: dict[str, Any] = {"launches": len(launches), "wall_us": wall, "events_us": events,
                                   "timeit_us": bench.host_us(fn)}
            if launches:
                row["bare_wall_us"], row["bare_events_us"] = bench.per_call_us(bare)
                row["bare_timeit_us"] = bench.host_us(bare)
                row["over_bare_us"] = row["timeit_us"] - row["bare_timeit_us"]
            graph = bench.graph_ms(fn)
            row["gpu_us"] = graph * 1e3 if graph is not None else None
            rows[name] = row
            over = f"{row['over_bare_us']:.1f}" if "over_bare_us" in row else "-"
            bare_t = f"{row['bare_timeit_us']:.1f}" if "bare_timeit_us" in row else "-"
            gpu = f"{row['gpu_us']:.1f}" if row["gpu_us"] is not None else "-"
            ev = f"{events:.1f}" if events is not None else "-"
            note(f"host µs per call, {name}: wall {wall:.1f}, events {ev}, timeit {row['timeit_us']:.1f}; "
                 f"bare launch x{len(launches)} timeit {bare_t}; over bare {over}; GPU (graph) {gpu}")


# ---------------------------------------------------------------------------------------- profile

def part_profile(bench: Bench, res: dict[str, Any]) -> None:
    """Where each public call's host time goes: cProfile over back-to-back calls, the functions with the
    most own time (µs per public call; cProfile's own overhead inflates the absolute figures)."""
    import cProfile
    import pstats

    res["profile"] = rows = {}
    calls = 50 if bench.quick else 500
    with torch.no_grad():
        for name, fn in _op_calls(bench.device, bench.quick).items():
            fn()
            bench.sync()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                fn()
            prof.disable()
            bench.sync()
            stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            top = sorted(((tt / calls * 1e6, ct / calls * 1e6, nc // calls, f"{fname.rsplit('/', 2)[-1]}:{line} {func}")
                          for (fname, line, func), (_, nc, tt, ct, _) in stats.items()), reverse=True)[:14]
            total = sum(tt for (_, _, tt, _, _) in stats.values()) / calls * 1e6
            rows[name] = {"total_us": total, "top": top}
            note(f"profile {name}: {total:.1f} µs per call under cProfile; own time per call (µs), cumulative, calls:")
            for own, cum, nc, where in top:
                note(f"    {own:7.2f} {cum:7.2f} {nc:3d}  {where}")


# -------------------------------------------------------------------------------------- attention

def part_attention(bench: Bench, res: dict[str, Any]) -> None:
    res["attention"] = rows = []
    for shape in [(2, 4, 16, 16)] if bench.quick else [(16, 4, 64, 64), (16, 4, 256, 64)]:
        rows.append(_attention_shape(bench, shape))


def _attention_shape(bench: Bench, shape: tuple[int, int, int, int]) -> dict[str, Any]:
    from modelkernels.kernels.attention.flash import flash_forward

    b, h, n, d = shape
    dtype = torch.float16 if bench.cuda else torch.float32
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(bench.device, dtype) for _ in range(3))
    flop = 4 * b * h * n * n * d
    scale = 1 / math.sqrt(d)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        err = rel_err(kernels.attention(q, k, v), want)
        calls: dict[str, Callable[[], Any]] = {"kernels.attention": lambda: kernels.attention(q, k, v),
                                               "sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
        if bench.cuda:
            calls["kernel alone (flash_forward)"] = lambda: flash_forward(q, k, v, None, False, scale, False,
                                                                          need_lse=False)
        row: dict[str, Any] = {"shape": shape, "rel_err": err}
        for name, fn in calls.items():
            wall, events = bench.per_call_us(fn)
            t = bench.ms(fn)
            row[name] = {"wall_us": wall, "events_us": events, "ms": t, "tflops": flop / (t * 1e-3) / 1e12}
    gap = row["kernels.attention"]["wall_us"] - row["sdpa"]["wall_us"]
    note(f"attention {shape} {str(dtype).removeprefix('torch.')} (err {err:.1e}): "
         + "; ".join(f"{name} {r['wall_us']:.1f}/{r['events_us'] or float('nan'):.1f} µs per call, "
                     f"{r['tflops']:.1f} TFLOP/s" for name, r in row.items() if isinstance(r, dict))
         + f"; kernels.attention - sdpa = {gap:+.1f} µs per call")
    return row


PARTS = {"unet": part_unet, "host": part_host, "attention": part_attention, "profile": part_profile}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="path of the JSON to write")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (checks the script)")
    p.add_argument("--parts", default="host,attention,unet", help="comma-separated: " + ", ".join(PARTS))
    args = p.parse_args(argv)
    bench = Bench(args.device, args.quick)
    from benchmarks.harness import machine_info

    res: dict[str, Any] = {"machine": machine_info(), "device": args.device, "quick": args.quick}
    start = time.time()
    for part in args.parts.split(","):
        if part not in PARTS:
            raise SystemExit(f"--parts: unknown part {part!r} (known: {', '.join(PARTS)})")
        t0 = time.time()
        try:
            PARTS[part](bench, res)
        except Exception as ex:  # report and go on with the next part
            import traceback

            traceback.print_exc()
            note(f"part {part} failed: {type(ex).__name__}: {str(ex)[:300]}")
        res[f"{part}_s"] = time.time() - t0
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1, default=str)
    print(f"\n==== summary ({res['machine'].get('gpu') or res['machine']['cpu']}, "
          f"commit {res['machine']['commit']}, {time.time() - start:.0f} s) ====")
    print("\n".join(SUMMARY))
    return res


if __name__ == "__main__":
    main()
