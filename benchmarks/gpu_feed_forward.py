"""The fused feed-forward (``kernels.feed_forward``) on a CUDA GPU, in one process.

    PYTHONPATH=$PWD python3 benchmarks/gpu_feed_forward.py [check] [sweep] [time] [unet] [--budget S]

Parts: ``check`` runs the registry's parity cases of ``feed_forward`` on CUDA (fp32/fp16/bf16, forward
and gradients), then seed-sized inputs against a float64 reference (relative L2 error of the output and of
every gradient); ``sweep`` times launch configurations of the Triton kernel at every seed shape and
reports the fastest next to the default; ``time`` measures the copy bandwidth, then GPU time (one call
captured in a CUDA graph, L2 flushed before each replay) of ours, eager PyTorch (Linear, GELU, Linear, add
with bf16 weights) and ``torch.compile`` of that same function, at the seed UNet's attention shapes
(B = 16 and 128; C = 64 N = 4096, C = 128 N = 1024, C = 256 N = 256 and 64), bf16, each verified against
eager first; also forward + backward per call (not graphed) at one shape; ``unet`` times one forward of the
patched seed UNet (bf16 autocast, CUDA graph) with the fused feed-forward and with the eager one.
Results go to $OUT/gpu_feed_forward.json; a short table is printed last. ``--budget S`` stops starting
new measurements after S seconds; ``--commit X`` records the commit the tree was sent at.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton

from benchmarks.harness import cuda_time, graphed
from modelkernels import kernels
from modelkernels.kernels import parity
from modelkernels.kernels.fused import feed_forward_triton as fft
from modelkernels.kernels.fused import modules
from modelkernels.pyimpl import fused as ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to smoke-test ``check`` under the interpreter
OUT = os.environ.get("OUT", ".")
START = time.time()
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 330.0
SHAPES = [(b, n, c) for b in (16, 128) for n, c in ((4096, 64), (1024, 128), (256, 256), (64, 256))]
RESULTS: dict[str, Any] = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
                           "torch": torch.__version__, "triton": triton.__version__}
SUMMARY: list[str] = []


def left() -> float:
    return BUDGET - (time.time() - START)


def note(line: str) -> None:
    print(line, flush=True)
    SUMMARY.append(line)


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    out, want = out.detach().double(), want.detach().double()
    return float((out - want).norm() / want.norm().clamp_min(1e-30))


def inputs(b: int, n: int, c: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """h, s ~ N(0, 1) (B, N, C); nn.Linear(C, C)-scaled weights and biases, in ``dtype``."""
    g = torch.Generator(device=DEV).manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=DEV, generator=g) * scale).to(dtype)

    return r(b, n, c), r(b, n, c), r(c, c, scale=c**-0.5), r(c, scale=0.5), r(c, c, scale=c**-0.5), r(c, scale=0.5)


# ---------------------------------------------------------------------------------------------- check
def part_check() -> None:
    t0 = time.time()
    results = parity.run_parity(ops=["feed_forward"], devices=["cuda"])
    fails = [r for r in results if r.status == "FAIL"]
    for r in fails:
        print("PARITY FAIL", r.case.id, r.detail[:300], flush=True)
    worst = max((r.ratio for r in results if r.status == "ok"), default=0.0)
    RESULTS["parity"] = parity.summarize(results)
    ok = sum(r.status == "ok" for r in results)
    note(f"parity (registry samples on cuda, fwd+grad): {ok}/{len(results)} ok, {len(fails)} failed, "
         f"worst error/tolerance {worst:.2f}, {time.time() - t0:.0f}s")
    errs: dict[str, float] = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for c, rows in ((64, 1031), (128, 517), (256, 263)):
            ins = [t.requires_grad_(True) for t in inputs(3, rows, c, dtype, seed=c)]
            out = kernels.feed_forward(*ins, backend="triton")
            g = torch.randn_like(out)
            grads = torch.autograd.grad(out, ins, g)
            ins64 = [t.detach().double().requires_grad_(True) for t in ins]
            want = ref.feed_forward(*ins64)
            wgrads = torch.autograd.grad(want, ins64, g.double())
            key = str(dtype).removeprefix("torch.")
            errs[f"{key} out"] = max(errs.get(f"{key} out", 0.0), rel_err(out, want))
            errs[f"{key} grads"] = max(errs.get(f"{key} grads", 0.0),
                                       *(rel_err(a, w) for a, w in zip(grads, wgrads)))
    RESULTS["check_big"] = errs
    note("relative L2 error vs float64, (3, N, C) C = 64/128/256: "
         + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))


# -------------------------------------------------------------------------------------------- timing
def gpu_us(fn: Callable[[], Any]) -> float:
    """GPU time of one call: captured in a CUDA graph, replays timed with CUDA events, L2 flushed before each."""
    return 1e3 * cuda_time(graphed(fn), warmup=3, rep=30)["median_ms"]


def eager_ff(h: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
             b2: torch.Tensor) -> torch.Tensor:
    return F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2) + s


def candidates(c: int) -> list[fft.Config]:
    """Tiles to time beside the default (rows, hidden units per step, warps, stages). Version 1's sweep
    (docs/notes/fused-gpu.md) picked the defaults; these explore around them."""
    base = {64: [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 2, 2), (64, 32, 4, 2), (32, 64, 2, 2), (128, 64, 8, 2)],
            128: [(32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 4, 2), (64, 64, 4, 3), (32, 32, 4, 2), (64, 64, 4, 2)],
            256: [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 128, 8, 1),
                  (64, 128, 4, 1), (128, 64, 4, 2), (32, 64, 4, 2), (16, 64, 4, 2)]}
    return [fft.Config(*t) for t in base[c]]


def part_sweep() -> None:
    best: dict[str, Any] = {}
    for b, n, c in SHAPES:
        if left() < 60:
            note("sweep: budget reached")
            break
        ins = inputs(b, n, c, torch.bfloat16)
        m = b * n
        default = fft.default_config(m, c, torch.bfloat16, ins[0].device)
        times = {}
        for cfg in [default] + [x for x in candidates(c) if x != default]:
            try:
                times[cfg] = gpu_us(lambda cfg=cfg, ins=ins: fft.forward(*ins, config=cfg))
            except Exception as e:  # a configuration that does not fit this GPU is reported and skipped
                print(f"sweep {b},{n},{c} {cfg}: {type(e).__name__} {str(e)[:120]}", flush=True)
        top = min(times, key=lambda k: times[k])
        best[f"B={b} N={n} C={c}"] = {"default": [default.__dict__, times.get(default)],
                                      "best": [top.__dict__, times[top]],
                                      "all": [[k.__dict__, v] for k, v in times.items()]}
        note(f"sweep B={b} N={n} C={c}: default {default} {times.get(default, float('nan')):.1f} us, best {top} "
             f"{times[top]:.1f} us; all " + " ".join(f"({k.block_m},{k.block_f},{k.warps},{k.stages}):{v:.1f}"
                                                    for k, v in times.items()))
    RESULTS["sweep"] = best


def copy_bandwidth() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device=DEV).random_()
    y = torch.empty_like(x)
    t = cuda_time(lambda: y.copy_(x), warmup=5, rep=30)["median_ms"]
    return 2 * x.numel() / t / 1e6  # GB/s, bytes read + written


def part_time() -> None:
    bw = copy_bandwidth()
    RESULTS["copy_GBps"] = bw
    note(f"copy bandwidth {bw:.0f} GB/s")
    rows = []
    for b, n, c in SHAPES:
        if left() < 40:
            note("time: budget reached")
            break
        ins = inputs(b, n, c, torch.bfloat16)
        want = eager_ff(*ins)
        ours = fft.forward(*ins)
        err = rel_err(ours, want)
        assert err < 1e-2, f"ours vs eager at {(b, n, c)}: relative L2 {err:.2e}"
        torch._dynamo.reset()
        compiled = torch.compile(eager_ff, dynamic=False)
        cerr = rel_err(compiled(*ins), want)
        row = {"B": b, "N": n, "C": c, "err_vs_eager": err, "compile_err_vs_eager": cerr,
               "ours_us": gpu_us(lambda ins=ins: fft.forward(*ins)),
               "eager_us": gpu_us(lambda ins=ins: eager_ff(*ins)),
               "compile_us": gpu_us(lambda ins=ins, fn=compiled: fn(*ins))}
        nbytes = 3 * b * n * c * 2
        row["ours_GBps"] = nbytes / row["ours_us"] / 1e3
        row["ours_TFLOPs"] = 4 * b * n * c * c / row["ours_us"] / 1e6
        rows.append(row)
        note(f"B={b} N={n} C={c}: ours {row['ours_us']:.1f} us ({row['ours_GBps']:.0f} GB/s, "
             f"{100 * row['ours_GBps'] / bw:.0f}% of copy, {row['ours_TFLOPs']:.0f} TFLOP/s), "
             f"eager {row['eager_us']:.1f}, torch.compile {row['compile_us']:.1f}; rel L2 vs eager {err:.1e} "
             f"(compile {cerr:.1e})")
    RESULTS["time"] = rows
    if left() > 30:  # forward + backward per call (host included, not graphed), one shape
        leaves = [t.requires_grad_(True) for t in inputs(128, 4096, 64, torch.bfloat16)]
        g = torch.randn_like(leaves[0])

        def train(fn: Callable[..., torch.Tensor]) -> Callable[[], Any]:
            return lambda: torch.autograd.grad(fn(*leaves), leaves, g)

        fb = {"ours_ms": cuda_time(train(lambda *a: kernels.feed_forward(*a, backend="triton")))["median_ms"],
              "eager_ms": cuda_time(train(eager_ff))["median_ms"]}
        RESULTS["fwd_bwd_B128_N4096_C64"] = fb
        note(f"forward+backward B=128 N=4096 C=64 bf16 (per call, not graphed): ours {fb['ours_ms']:.3f} ms, "
             f"eager {fb['eager_ms']:.3f} ms")


# ----------------------------------------------------------------------------------------------- unet
def part_unet() -> None:
    from modelkernels.pyimpl.unet import UNet

    torch.manual_seed(0)
    model = UNet().to(DEV).eval()
    patched = copy.deepcopy(model)
    kernels.nn.patch(patched)
    res = {}
    for b in (16, 128):
        if left() < 40:
            note("unet: budget reached")
            break
        x = torch.randn(b, 3, 64, 64, device=DEV)
        t = torch.full((b,), 500, device=DEV)

        def step(x: torch.Tensor = x, t: torch.Tensor = t) -> torch.Tensor:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                out: torch.Tensor = patched(x, t)
                return out

        fused_out = step()
        fused = gpu_us(step)
        plain = modules._plain_linears
        modules._plain_linears = lambda *a: False  # the eager feed-forward inside the same patched model
        try:
            eager_out = step()
            eager = gpu_us(step)
        finally:
            modules._plain_linears = plain
        with torch.no_grad():
            want = model(x, t)
        res[b] = {"fused_ff_us": fused, "eager_ff_us": eager, "fused_err_vs_fp32": rel_err(fused_out, want),
                  "eager_err_vs_fp32": rel_err(eager_out, want)}
        note(f"patched seed UNet forward B={b} bf16 CUDA graph: fused feed-forward {fused / 1e3:.3f} ms, eager "
             f"feed-forward {eager / 1e3:.3f} ms; rel L2 vs fp32 unpatched {res[b]['fused_err_vs_fp32']:.1e} "
             f"(eager ff {res[b]['eager_err_vs_fp32']:.1e})")
    RESULTS["unet"] = res


def main() -> None:
    # the device's copy of the tree may carry another HEAD: the caller passes the commit it sent
    RESULTS["commit"] = sys.argv[sys.argv.index("--commit") + 1] if "--commit" in sys.argv else "unknown"
    note(f"{RESULTS['device']}, torch {RESULTS['torch']}, triton {RESULTS['triton']}, commit {RESULTS['commit']}")
    parts = {"check": part_check, "time": part_time, "sweep": part_sweep, "unet": part_unet}
    wanted = [p for p in parts if p in sys.argv[1:]] or list(parts)
    try:
        for p in wanted:
            if left() < 20:
                note(f"{p}: skipped, budget reached")
                continue
            try:
                parts[p]()
            except Exception:  # report and go on with the next part: one call measures what it can
                note(f"{p}: FAILED\n{traceback.format_exc()[-1500:]}")
    finally:
        with open(os.path.join(OUT, "gpu_feed_forward.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
        print("\n== summary ==")
        for line in SUMMARY:
            print(line)


if __name__ == "__main__":
    main()
