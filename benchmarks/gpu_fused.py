"""Fused norm / activation / upsample kernels on a CUDA GPU, in one process.

    PYTHONPATH=$PWD python3 benchmarks/gpu_fused.py check sweep kernels unet
    PYTHONPATH=$PWD python3 benchmarks/gpu_fused.py gn check --ops group_norm_act --baseline OLD.py
        (issue 7's GroupNorm run; OLD.py: the previous group_norm_triton.py, e.g. from git show)

Parts: ``check`` runs the registry's parity cases on CUDA (``--ops a,b`` for some ops only) and larger
seed-sized shapes against a float64 reference (forward and gradients); ``sweep`` times the two-pass
GroupNorm launch parameters and keeps the best for the rest of the run; ``gn`` times GroupNorm alone:
the two-pass launch parameters (statistics and apply launches apart and together, each after the
harness's zero-fill L2 flush and after a reading one), against the previous module (``--baseline``) and
PyTorch moving the same bytes in the same run, then the best of them, the previous module, torch.compile
and the same-bytes copy per pattern at batch 16/64/128 (the best stays selected for the parts after it),
and with ``--probe`` the persistent kernel's check (in a subprocess with a timeout, so that a deadlock
costs the timeout, not the call); ``kernels`` measures
the copy bandwidth, then times each fused kernel against eager PyTorch and torch.compile of the same
pattern on the seed's 64x64 UNet shapes (batch 16, 64, 128, bf16), verified first, as GPU time (each
call captured in a CUDA graph, as the sampler runs it; the per-call time with the host's launch overhead
is listed too), with achieved bandwidth (bytes = inputs read once + outputs written once) against the
copy bandwidth; ``unet`` times one sampling step of the seed's UNet with the seed's update formula (as
the project's anchor script ``seed_unet.py`` runs it): eager with SDPA (bf16 autocast), that step
CUDA-graph captured, torch.compile, and the model patched by ``kernels.nn.patch`` (fused blocks and
attention) CUDA-graph captured, also compiled; ``sample`` times the whole 999-step sampling of 16 images
with the library's sampler (CUDA graph) unpatched and patched, against the seed's loop as written.
Results go to $OUT/gpu_fused.json; a short table is printed last. ``--budget S`` stops starting new
measurements after S seconds; ``--compile-patched`` also times the patched model under torch.compile,
``--compile-all`` compiles the peer at every batch (each compile of the UNet costs a minute or more).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from triton.testing import do_bench

from benchmarks.harness import cuda_time, graphed
from benchmarks.sdpa_peer import sdpa_model
from modelkernels import kernels
from modelkernels.kernels import parity
from modelkernels.kernels.fused import group_norm_triton as gnt
from modelkernels.pyimpl import fused as ref
from modelkernels.pyimpl.unet import UNet

DEV = "cuda"
OUT = os.environ.get("OUT", ".")
RESULTS: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
SUMMARY: list[str] = []
FUSED_OPS = ["group_norm_act", "tokens_layer_norm", "add_layer_norm", "upsample_concat"]
START = time.time()
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 480.0


def left() -> float:
    return BUDGET - (time.time() - START)


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


def note(line: str) -> None:
    print(line, flush=True)
    SUMMARY.append(line)


# ---------------------------------------------------------------------------------------------- check
def part_check() -> None:
    t0 = time.time()
    ops = sys.argv[sys.argv.index("--ops") + 1].split(",") if "--ops" in sys.argv else FUSED_OPS
    results = parity.run_parity(ops=ops, devices=["cuda"])
    fails = [r for r in results if r.status == "FAIL"]
    for r in fails:
        print("PARITY FAIL", r.case.id, r.detail[:300], flush=True)
    RESULTS["parity"] = parity.summarize(results)
    note(f"parity (registry samples on cuda, fwd+grad): {len(results) - len(fails)}/{len(results)} ok, "
         f"{len(fails)} failed, {time.time() - t0:.0f}s")
    worst: dict[str, float] = {}
    gen = torch.Generator(device=DEV).manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for (b, c, s), cl in (((16, 64, 64), False), ((3, 128, 31), True), ((5, 512, 8), False)):
            x = torch.randn(b, c, s, s, device=DEV, dtype=dtype, generator=gen) * 3 + 1
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            r, e = torch.randn_like(x), torch.randn(b, c, device=DEV, dtype=dtype, generator=gen)
            w, bb = torch.rand(c, device=DEV) + 0.5, torch.randn(c, device=DEV)
            ins = [x, w, bb, r, e]
            for t in ins:
                t.requires_grad_(True)
            out = kernels.group_norm_act(x, 1, w, bb, residual=r, emb=e, activation="gelu", backend="triton")
            g = torch.randn_like(out)
            grads = torch.autograd.grad(out, ins, g)
            ins64 = [t.detach().double().requires_grad_(True) for t in ins]
            want = ref.group_norm_act(ins64[0], 1, ins64[1], ins64[2], residual=ins64[3], emb=ins64[4],
                                      activation="gelu")
            wgrads = torch.autograd.grad(want, ins64, g.double())
            errs = [rel_err(out, want)] + [rel_err(a, b_) for a, b_ in zip(grads, wgrads)]
            key = f"group_norm_act {str(dtype).removeprefix('torch.')}"
            worst[key] = max(worst.get(key, 0.0), *errs)
            xs = x.detach()[:, :, : s // 2 * 2, : s // 2 * 2]
            up = kernels.upsample_concat(xs[:, :, ::2, ::2].contiguous(), xs, backend="triton")
            uwant = ref.upsample_concat(xs[:, :, ::2, ::2].double().contiguous(), xs.double())
            key = f"upsample_concat {str(dtype).removeprefix('torch.')}"
            worst[key] = max(worst.get(key, 0.0), rel_err(up, uwant))
            tok, y = kernels.tokens_layer_norm(x.detach(), w, bb, backend="triton")
            tw, yw = ref.tokens_layer_norm(x.detach().double(), w.double(), bb.double())
            key = f"tokens_layer_norm {str(dtype).removeprefix('torch.')}"
            worst[key] = max(worst.get(key, 0.0), rel_err(tok, tw), rel_err(y, yw))
    RESULTS["check_big"] = worst
    note("relative L2 error vs float64, seed-sized shapes (out and every gradient): "
         + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


# -------------------------------------------------------------------------------------------- kernels
def gpu_ms(fn: Callable[[], Any]) -> float:
    """GPU time of one call without the host's launch overhead: ``fn`` captured in a CUDA graph
    (as the sampler runs it), replays timed with CUDA events, L2 flushed in between."""
    return cuda_time(graphed(fn))["median_ms"]


def copy_bandwidth() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device=DEV).random_()
    y = torch.empty_like(x)
    t = cuda_time(lambda: y.copy_(x), warmup=5, rep=30)["median_ms"]
    return 2 * x.numel() / t / 1e6  # GB/s, bytes read + written


def gelu(z: torch.Tensor) -> torch.Tensor:
    return F.gelu(z)


def patterns(b: int) -> list[dict[str, Any]]:
    """The seed's fused patterns at batch b, 64x64 level (C=64), bf16: eager fn, ours, bytes."""
    bf = torch.bfloat16
    c, s = 64, 64
    x = torch.randn(b, c, s, s, device=DEV, dtype=bf)
    r = torch.randn_like(x)
    e = torch.randn(b, c, device=DEV, dtype=bf)
    w, bb = (torch.rand(c, device=DEV) + 0.5).to(bf), torch.randn(c, device=DEV, dtype=bf)
    tok = torch.randn(b, s * s, c, device=DEV, dtype=bf)
    att = torch.randn_like(tok)
    xu = torch.randn(b, c, s // 2, s // 2, device=DEV, dtype=bf).contiguous(memory_format=torch.channels_last)
    sk = torch.randn(b, c, s, s, device=DEV, dtype=bf).contiguous(memory_format=torch.channels_last)
    n = x.numel() * 2  # bytes of one activation
    return [
        dict(name="GN(1,C)+GELU", bytes=2 * n,
             eager=lambda: F.gelu(F.group_norm(x, 1, w, bb)),
             ours=lambda: kernels.group_norm_act(x, 1, w, bb, activation="gelu")),
        dict(name="GN(1,C)+residual+GELU", bytes=3 * n,
             eager=lambda: F.gelu(r + F.group_norm(x, 1, w, bb)),
             ours=lambda: kernels.group_norm_act(x, 1, w, bb, residual=r, activation="gelu")),
        dict(name="GN(1,C)+emb (repeat+add)", bytes=2 * n,
             eager=lambda: F.group_norm(x, 1, w, bb) + e[:, :, None, None].repeat(1, 1, s, s),
             ours=lambda: kernels.group_norm_act(x, 1, w, bb, emb=e)),
        dict(name="transpose+LayerNorm", bytes=3 * n,
             eager=lambda: (lambda t: (t, F.layer_norm(t, (c,), w, bb)))(x.view(b, c, s * s).swapaxes(1, 2)),
             ours=lambda: kernels.tokens_layer_norm(x, w, bb)),
        dict(name="add+LayerNorm", bytes=4 * n,
             eager=lambda: (lambda t: (t, F.layer_norm(t, (c,), w, bb)))(att + tok),
             ours=lambda: kernels.add_layer_norm(att, tok, w, bb)),
        dict(name="upsample2x+concat (channels-last in)", bytes=(xu.numel() + sk.numel() + 2 * sk.numel()) * 2,
             eager=lambda: torch.cat([sk, F.interpolate(xu, scale_factor=2, mode="bilinear", align_corners=True)], 1),
             ours=lambda: kernels.upsample_concat(xu, sk)),
    ]


def part_sweep() -> None:
    """GroupNorm forward launch parameters (tile, warps, erf) on GN+GELU and GN+residual+GELU at the
    seed's shapes; the best total becomes FORWARD_CONFIG for the rest of this run."""
    bf = torch.bfloat16
    shapes = [(16, 64, 64, False), (128, 64, 64, False), (128, 128, 32, True)]
    cases = []
    for b, c, s, cl in shapes:
        x = torch.randn(b, c, s, s, device=DEV, dtype=bf)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        cases.append((f"B={b} C={c} {s}x{s}{' NHWC' if cl else ''}", x, torch.randn_like(x), torch.rand(c, device=DEV),
                      torch.randn(c, device=DEV)))
    wants = [F.gelu(F.group_norm(x.float(), 1, w, bb)) for _, x, _, w, bb in cases]
    rows = []
    best = None
    for block, warps, fast in ((2048, 8, False), (2048, 8, True), (4096, 8, True), (4096, 4, True), (8192, 8, True)):
        gnt.FORWARD_CONFIG = gnt.ForwardConfig(block, warps, fast)
        errs = [rel_err(kernels.group_norm_act(x, 1, w, bb, activation="gelu"), want)
                for (_, x, _, w, bb), want in zip(cases, wants)]
        if not max(errs) < 1e-2:
            note(f"sweep {gnt.FORWARD_CONFIG}: WRONG, rel errors {errs}")
            continue
        times = []
        for _, x, r, w, bb in cases:
            times.append(gpu_ms(lambda x=x, w=w, bb=bb: kernels.group_norm_act(x, 1, w, bb, activation="gelu")))
            times.append(gpu_ms(lambda x=x, r=r, w=w, bb=bb: kernels.group_norm_act(
                x, 1, w, bb, residual=r, activation="gelu")))
        rows.append(dict(block=block, warps=warps, fast_erf=fast, us=[t * 1e3 for t in times],
                         total_us=sum(times) * 1e3, rel_err=max(errs)))
        print(f"sweep block={block} warps={warps} fast_erf={fast:d}: total {sum(times) * 1e3:.1f}us "
              + " ".join(f"{t * 1e3:.1f}" for t in times), flush=True)
        if best is None or sum(times) < best[1]:
            best = (gnt.FORWARD_CONFIG, sum(times))
    assert best is not None
    gnt.FORWARD_CONFIG = best[0]
    RESULTS["sweep"] = dict(cases=[c[0] for c in cases], rows=rows, best=best[0].__dict__)
    note(f"GroupNorm sweep (GN+GELU, GN+res+GELU on {', '.join(c[0] for c in cases)}): best {best[0]} "
         f"total {best[1] * 1e3:.1f}us")


def part_kernels() -> None:
    bw = copy_bandwidth()
    RESULTS["copy_bandwidth_GBps"] = bw
    note(f"copy bandwidth (1 GiB device-to-device, read+write): {bw:.0f} GB/s")
    rows = []
    for b in (16, 64, 128):
        for p in patterns(b):
            if left() < 150:
                note("kernels: time budget reached, stopping")
                RESULTS["kernels"] = rows
                return
            want, out = p["eager"](), p["ours"]()
            wl = want if isinstance(want, tuple) else (want,)
            ol = out if isinstance(out, tuple) else (out,)
            err = max(rel_err(o, w_) for o, w_ in zip(ol, wl))
            assert err < 1e-2, f"{p['name']} batch {b}: ours differs from eager, rel err {err:.2e}"
            row: dict[str, Any] = dict(pattern=p["name"], batch=b, rel_err=err, bytes=p["bytes"])
            row["ours_call_ms"] = cuda_time(p["ours"])["median_ms"]
            row["ours_ms"] = gpu_ms(p["ours"])
            row["eager_ms"] = gpu_ms(p["eager"])
            row["compile_ms"] = None
            if b != 64:  # torch.compile at batch 16 and 128 (each compile costs seconds of the lease)
                try:
                    cfn = torch.compile(p["eager"])
                    cfn()
                    row["compile_ms"] = gpu_ms(cfn)
                except Exception as ex:  # a compile failure is reported, not fatal
                    print(f"torch.compile {p['name']} failed: {type(ex).__name__} {str(ex)[:200]}", flush=True)
            row["ours_GBps"] = p["bytes"] / row["ours_ms"] / 1e6
            row["ours_frac_copy"] = row["ours_GBps"] / bw
            rows.append(row)
            cm = row["compile_ms"]
            note(f"{p['name']:36s} B={b:3d} ours {row['ours_ms'] * 1e3:6.1f}us ({row['ours_GBps']:5.0f} GB/s, "
                 f"{100 * row['ours_frac_copy']:3.0f}% copy; {row['ours_call_ms'] * 1e3:5.1f}us per eager call) "
                 f"eager {row['eager_ms'] * 1e3:6.1f}us compile {cm * 1e3 if cm else float('nan'):6.1f}us "
                 f"err {err:.1e}")
    RESULTS["kernels"] = rows


# ------------------------------------------------------------------------------------------------- gn
GN_SHAPES = [(16, 64, 64, False), (64, 64, 64, False), (128, 64, 64, False),
             (16, 128, 32, True), (64, 128, 32, True), (128, 128, 32, True)]
GN_VARIANTS = ("GN+GELU", "GN+res+GELU", "GN+emb")
def gn_case(b: int, c: int, s: int, cl: bool, variant: str, dtype: torch.dtype = torch.bfloat16,
            groups: int = 1) -> dict[str, Any]:
    """Inputs of one GroupNorm pattern and its eager / ours callables (ours takes a config)."""
    gen = torch.Generator(device=DEV).manual_seed(b * 1000 + c + s)
    x = torch.randn(b, c, s, s, device=DEV, dtype=dtype, generator=gen) * 2 + 0.5
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    r = torch.randn(x.shape, device=DEV, dtype=dtype, generator=gen).contiguous(memory_format=(
        torch.channels_last if cl else torch.contiguous_format))
    e = torch.randn(b, c, device=DEV, dtype=dtype, generator=gen)
    w = (torch.rand(c, device=DEV, generator=gen) + 0.5).to(dtype)
    bb = torch.randn(c, device=DEV, generator=gen).to(dtype)
    kw: dict[str, Any] = {"GN+GELU": dict(activation="gelu"), "GN+res+GELU": dict(residual=r, activation="gelu"),
                          "GN+emb": dict(emb=e)}[variant]
    eager = {"GN+GELU": lambda: F.gelu(F.group_norm(x, groups, w, bb)),
             "GN+res+GELU": lambda: F.gelu(r + F.group_norm(x, groups, w, bb)),
             "GN+emb": lambda: F.group_norm(x, groups, w, bb) + e[:, :, None, None]}[variant]
    n = x.numel() * x.element_size()
    return dict(name=f"{variant} B={b} C={c} {s}x{s}{' NHWC' if cl else ''}", x=x, w=w, bb=bb, kw=kw,
                eager=eager, groups=groups, bytes=(3 if variant == "GN+res+GELU" else 2) * n,
                want=lambda: ref.group_norm_act(x.double(), groups, w.double(), bb.double(),
                                                **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                   for k, v in kw.items()}))


def ours_with(case: dict[str, Any], cfg: gnt.ForwardConfig) -> Callable[[], torch.Tensor]:
    def f() -> torch.Tensor:
        old = gnt.FORWARD_CONFIG
        gnt.FORWARD_CONFIG = cfg
        try:
            return kernels.group_norm_act(case["x"], case["groups"], case["w"], case["bb"], backend="triton",
                                          **case["kw"])
        finally:
            gnt.FORWARD_CONFIG = old

    return f


def part_probe() -> None:
    """The persistent kernel's first run on a device, meant for a subprocess (a deadlock there costs
    its timeout, not the call): odd shapes, many groups, channels-last, every variant, repeated calls
    (the counters must come back to zero), graph replay, the cooperative launch; exit 0 only if all
    are right."""
    cfg = dataclasses.replace(gnt.FORWARD_CONFIG, path="persistent")
    cases = [gn_case(3, 24, 37, False, "GN+res+GELU", torch.float32, groups=6),
             gn_case(5, 16, 33, True, "GN+GELU", torch.float16),
             gn_case(2, 96, 40, False, "GN+emb", torch.bfloat16, groups=32),
             gn_case(16, 64, 64, False, "GN+GELU"), gn_case(128, 64, 64, False, "GN+res+GELU"),
             gn_case(64, 128, 32, True, "GN+emb"), gn_case(7, 320, 17, False, "GN+GELU", groups=32),
             gn_case(1, 512, 64, False, "GN+GELU")]  # a row too long to be resident: refused, two-pass
    worst = 0.0
    for i, case in enumerate(cases):
        want = case["want"]()
        ccfg = cfg if i < len(cases) - 1 else dataclasses.replace(cfg, path="auto")
        for attempt in range(3):
            out = ours_with(case, ccfg)()
            err = rel_err(out, want)
            worst = max(worst, err)
            print(f"probe {case['name']} dtype={case['x'].dtype} call {attempt}: rel err {err:.2e}", flush=True)
            assert err < 1e-2, case["name"]
        replay = graphed(ours_with(case, ccfg))
        replay()
        torch.cuda.synchronize()
    coop = dataclasses.replace(cfg, cooperative=True)
    case = cases[4]
    err = rel_err(ours_with(case, coop)(), case["want"]())
    print(f"probe cooperative eager: rel err {err:.2e}", flush=True)
    try:
        replay = graphed(ours_with(case, coop))
        replay()
        torch.cuda.synchronize()
        print("probe cooperative launch under graph capture: ok", flush=True)
    except Exception as ex:  # reported: decides whether the cooperative launch can be the default
        print(f"probe cooperative launch under graph capture: {type(ex).__name__} {str(ex)[:200]}", flush=True)
    for k, v in gnt.KERNEL_INFO.items():
        print(f"probe kernel (n_regs, shared, per SM) = {v} for {dict(k[2])}", flush=True)
    print(f"PROBE OK worst rel err {worst:.2e}", flush=True)


def probe_persistent() -> bool:
    import subprocess

    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, __file__, "probe"], capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as ex:
        out = (ex.stdout or b"").decode() if isinstance(ex.stdout, bytes) else (ex.stdout or "")
        print(out[-3000:], flush=True)
        note(f"persistent probe: TIMED OUT after {time.time() - t0:.0f}s (deadlock?)")
        return False
    print(res.stdout[-6000:], res.stderr[-3000:], flush=True)
    ok = res.returncode == 0 and "PROBE OK" in res.stdout
    note(f"persistent probe: {'ok' if ok else 'FAILED'} in {time.time() - t0:.0f}s; "
         + " ".join(line for line in res.stdout.splitlines() if "cooperative" in line or "PROBE" in line))
    return ok


# two-pass launch parameters tried by the gn part (version 4), call 9's best first (a budget cut drops the
# last): (statistics tile, statistics warps, apply tile, apply warps, programs per SM, merge, asm, L2 keep MiB)
GN_TWO_PASS_SWEEP = [(4096, 8, 2048, 8, 8, False, True, 0.0), (4096, 8, 2048, 8, 8, False, True, 24.0),
                     (4096, 8, 2048, 8, 8, False, True, 36.0), (4096, 8, 2048, 8, 16, False, True, 24.0),
                     (4096, 8, 4096, 8, 8, False, True, 24.0), (4096, 8, 2048, 8, 4, False, True, 0.0)]


def load_baseline() -> Any:
    """The previous GroupNorm module (``--baseline FILE``, e.g. the last commit's group_norm_triton.py),
    timed in the same run; None without the option."""
    if "--baseline" not in sys.argv:
        return None
    import importlib.util

    path = sys.argv[sys.argv.index("--baseline") + 1]
    spec = importlib.util.spec_from_file_location("gn_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gn_baseline"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


FLUSH_READ: list[torch.Tensor] = []


def clean_ms(fn: Callable[[], Any]) -> float:
    """As gpu_ms, but L2 is flushed by reading 256 MiB (clean lines) instead of zero-filling them: the
    timed kernel then pays no write-back of the flush's dirty lines."""
    replay = graphed(fn)
    if not FLUSH_READ:
        FLUSH_READ.append(torch.ones(256 * 2**20 // 4, dtype=torch.float32, device=DEV))
    buf = FLUSH_READ[0]
    for _ in range(5):
        replay()
    times = []
    for _ in range(40):
        buf.sum()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        replay()
        e.record()
        times.append((s, e))
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in times)[len(times) // 2]


def both_us(fn: Callable[[], Any]) -> tuple[float, float]:
    """(zero-fill flush, read flush) GPU times in µs."""
    return gpu_ms(fn) * 1e3, clean_ms(fn) * 1e3


def floors(case: dict[str, Any]) -> dict[str, float]:
    """The same bytes moved by PyTorch, timed the same two ways: a copy (x -> y; x + r -> y with a
    residual) and a read of x alone (a sum: the floor of the statistics pass)."""
    x = case["x"]
    y = torch.empty_like(x)
    r = case["kw"].get("residual")
    copy = (lambda: torch.add(x, r, out=y)) if r is not None else (lambda: y.copy_(x))
    out: dict[str, float] = {}
    out["copy_us"], out["copy_clean_us"] = both_us(copy)
    out["read_us"], out["read_clean_us"] = both_us(lambda: x.sum(dtype=torch.float32))
    return out


def gn_cfg(stats_block: int, stats_warps: int, block: int, warps: int, per_sm: int, merge: bool,
           asm: bool, keep: float) -> gnt.ForwardConfig:
    return dataclasses.replace(gnt.FORWARD_CONFIG, path="two_pass", stats_block=stats_block,
                               stats_warps=stats_warps, block=block, warps=warps, per_sm=per_sm, merge=merge, asm=asm,
                               l2_keep_mb=keep)


def passes_us(case: dict[str, Any], launches: Callable[..., tuple[Any, Any]], problem: Callable[..., Any],
              cfg: Any) -> tuple[float, float, float, float]:
    """The statistics and apply launches of one GN+GELU case timed apart (µs): zero-fill flush, then
    read flush, for each."""
    p = problem(case["x"], 1, case["w"], case["bb"], 1e-5, None, None, True)
    stats, apply = launches(p, cfg)
    stats()
    return (*both_us(stats), *both_us(apply))


def part_gn() -> None:
    """GroupNorm on the GPU (version 4): the two-pass launch parameters swept (statistics and apply passes
    timed apart, and together, on GN+GELU and GN+res+GELU at three seed shapes; every time twice, after the
    harness's zero-fill L2 flush and after a reading one), against the previous module (``--baseline``) in
    the same run and PyTorch moving the same bytes; the best stays selected; then every pattern: new,
    previous, torch.compile, copy; the persistent kernel's probe if time is left (``--probe``)."""
    bw = RESULTS.get("copy_bandwidth_GBps") or copy_bandwidth()
    RESULTS["copy_bandwidth_GBps"] = bw
    note(f"copy bandwidth (1 GiB device-to-device, read+write): {bw:.0f} GB/s")
    old = load_baseline()
    shapes = (GN_SHAPES[0], GN_SHAPES[2], GN_SHAPES[5])
    cases = [gn_case(*sh, v) for sh in shapes for v in ("GN+GELU", "GN+res+GELU")]
    wants = [c["want"]() for c in cases]
    fl = [floors(cs) for cs in cases]
    RESULTS["gn_floors"] = [dict(case=cs["name"], **f) for cs, f in zip(cases, fl)]
    for cs, f in zip(cases, fl):
        note(f"floor {cs['name']:34s} copy {f['copy_us']:.1f} / {f['copy_clean_us']:.1f}us read of x "
             f"{f['read_us']:.1f} / {f['read_clean_us']:.1f}us (zero-fill / read flush)")

    def old_call(case: dict[str, Any]) -> Callable[[], torch.Tensor]:
        return lambda: old.group_norm_act(case["x"], case["groups"], case["w"], case["bb"], **case["kw"])

    def row(name: Any, call: Callable[[dict[str, Any]], Callable[[], Any]], launches: Any, problem: Any,
            cfg: Any) -> float:
        errs = [rel_err(call(cs)(), w) for cs, w in zip(cases, wants)]
        if not max(errs) < 1e-2:
            note(f"gn sweep {name}: WRONG {errs}")
            return float("inf")
        whole = [both_us(call(cs)) for cs in cases]
        per = [passes_us(cs, launches, problem, cfg) for cs in cases[::2]]
        total = sum(w[0] for w in whole)
        srows.append(dict(config=name, whole_us=whole, total_us=total, passes_us=per, rel_err=max(errs)))
        note(f"gn sweep {name}: total {total:6.1f}us | whole " + " ".join(f"{a:.1f}/{b:.1f}" for a, b in whole)
             + " | stats, apply " + " ".join(f"{a:.1f}/{b:.1f}, {c:.1f}/{d:.1f}" for a, b, c, d in per)
             + f" err {max(errs):.1e}")
        save()
        return total

    srows: list[dict[str, Any]] = []
    RESULTS["gn_two_pass_sweep"] = srows
    if old is not None:
        row("previous (version 3 two-pass)", old_call, old.two_pass_launches, old._problem, old.FORWARD_CONFIG)
    best, best_total = gnt.FORWARD_CONFIG, float("inf")
    for params in GN_TWO_PASS_SWEEP:
        if left() < 130:
            note("gn sweep: time budget reached")
            break
        cfg = gn_cfg(*params)
        try:
            total = row(params, lambda cs, cfg=cfg: ours_with(cs, cfg), gnt.two_pass_launches, gnt._problem, cfg)
        except Exception as ex:  # a configuration that does not compile is reported
            note(f"gn sweep {params}: {type(ex).__name__} {str(ex)[:200]}")
            continue
        if total < best_total:
            best, best_total = cfg, total
    gnt.FORWARD_CONFIG = best
    RESULTS["gn_best"] = dataclasses.asdict(best)
    note(f"gn best two-pass: stats {best.stats_block}/{best.stats_warps} apply {best.block}/{best.warps} "
         f"per_sm {best.per_sm} merge {best.merge:d} asm {best.asm:d} keep {best.l2_keep_mb} MiB: "
         f"total {best_total:.1f}us")
    prow: list[dict[str, Any]] = []
    RESULTS["gn_patterns"] = prow
    for b, c, s, cl in GN_SHAPES:
        for v in GN_VARIANTS:
            if left() < 45:
                note("gn patterns: time budget reached")
                break
            case = gn_case(b, c, s, cl, v)
            want = case["want"]()
            pr: dict[str, Any] = dict(case=case["name"], bytes=case["bytes"], copy_rate_us=case["bytes"] / bw / 1e3)
            pr.update(floors(case))
            pr["new_us"], pr["new_clean_us"] = both_us(ours_with(case, best))
            pr["err_new"] = rel_err(ours_with(case, best)(), want)
            if old is not None:
                pr["previous_us"], pr["previous_clean_us"] = both_us(old_call(case))
            pr["compile_us"] = None
            if b != 64 and v != "GN+emb":
                try:
                    cfn = torch.compile(case["eager"])
                    cfn()
                    pr["compile_us"] = gpu_ms(cfn) * 1e3
                except Exception as ex:  # a compile failure is reported, not fatal
                    print(f"torch.compile {case['name']} failed: {type(ex).__name__} {str(ex)[:200]}", flush=True)
            pr["frac_copy"] = pr["copy_us"] / pr["new_us"]
            pr["frac_copy_clean"] = pr["copy_clean_us"] / pr["new_clean_us"]
            prow.append(pr)
            cu = pr["compile_us"]
            note(f"{case['name']:30s} new {pr['new_us']:6.1f} / {pr['new_clean_us']:6.1f}us "
                 f"({100 * pr['frac_copy']:3.0f}% / {100 * pr['frac_copy_clean']:3.0f}% of copy) previous "
                 f"{pr.get('previous_us', float('nan')):6.1f} / {pr.get('previous_clean_us', float('nan')):6.1f}us "
                 f"copy {pr['copy_us']:5.1f} / {pr['copy_clean_us']:5.1f}us compile "
                 f"{cu if cu else float('nan'):6.1f}us err {pr['err_new']:.1e}")
            save()
    if "--probe" in sys.argv and left() > 60:
        probe_persistent()


# ----------------------------------------------------------------------------------------------- unet
T = 1000


def patched_model(model: nn.Module) -> tuple[nn.Module, kernels.nn.PatchReport]:
    m = copy.deepcopy(model)
    return m, kernels.nn.patch(m)


def seed_step_fn(model: nn.Module, x: torch.Tensor, i: int) -> torch.Tensor:
    beta = torch.linspace(1e-4, 0.02, T, device=DEV)
    alpha = 1 - beta
    alpha_hat = torch.cumprod(alpha, 0)
    n = x.shape[0]
    t = (torch.ones(n, device=DEV) * i).long()
    predicted_noise = model(x, t)
    a, ah, b = alpha[t][:, None, None, None], alpha_hat[t][:, None, None, None], beta[t][:, None, None, None]
    noise = torch.randn_like(x) if i > 1 else torch.zeros_like(x)
    return 1 / torch.sqrt(a) * (x - ((1 - a) / (torch.sqrt(1 - ah))) * predicted_noise) + torch.sqrt(b) * noise


def step(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def f() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return seed_step_fn(model, x, 500)

    return f


def ms(fn: Callable[[], Any]) -> float:
    return float(do_bench(fn, warmup=20, rep=200, return_mode="median"))


def model_error(model: nn.Module, want: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> float:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return rel_err(model(x, t).float(), want)


def save() -> None:
    with open(os.path.join(OUT, "gpu_fused.json"), "w") as fh:
        json.dump(RESULTS, fh, indent=1, default=str)


def part_unet() -> None:
    """One sampling step of the seed's UNet: each figure printed and saved as soon as it is taken
    (a call that runs out of time still brings back what it measured)."""
    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    peer = sdpa_model(base)
    ours, report = patched_model(base)
    RESULTS["patch_report"] = str(report)
    RESULTS["unet"] = rows = []
    note(f"patched seed UNet: {len(report.replaced)} modules replaced, {len(report.kept)} kept")
    for b in (16, 64, 128):
        if left() < 60:
            note("unet: time budget reached, stopping")
            break
        x = torch.randn(b, 3, 64, 64, device=DEV)
        t = torch.full((b,), 500, device=DEV, dtype=torch.long)
        with torch.no_grad():
            want = base(x, t).float()  # fp32, need_weights=True: the seed as written
        row: dict[str, Any] = dict(batch=b, err_peer_bf16=model_error(peer, want, x, t),
                                   err_ours_bf16=model_error(ours, want, x, t))
        rows.append(row)
        timings: list[tuple[str, Callable[[], Callable[[], Any]]]] = [
            ("sdpa_bf16_ms", lambda x=x: step(peer, x)),
            ("sdpa_bf16_cudagraph_ms", lambda x=x: graphed(step(peer, x))),
            ("ours_bf16_ms", lambda x=x: step(ours, x)),
            ("ours_bf16_cudagraph_ms", lambda x=x: graphed(step(ours, x))),
        ]
        if b == 16 or "--compile-all" in sys.argv:
            timings.append(("compiled_bf16_ms", lambda x=x: step(torch.compile(peer), x)))
        if "--compile-patched" in sys.argv:
            timings.append(("ours_compiled_bf16_ms", lambda x=x: step(torch.compile(ours), x)))
        for key, build in timings:
            if left() < 20:
                break
            try:
                fn = build()
                fn()
                row[key] = ms(fn)
            except Exception as ex:  # report and go on
                row[key] = None
                print(f"unet B={b} {key}: {type(ex).__name__} {str(ex)[:300]}", flush=True)
            print(f"unet B={b} {key} = {row[key]}", flush=True)
            save()
        note(f"UNet step B={b}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in row.items() if k != "batch"))


class Autocast(nn.Module):
    """The model under bf16 autocast, returning fp32 noise (for the library's sampler)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image_size, self.c_in = model.image_size, model.c_in

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out: torch.Tensor = self.model(x, t)
        return out.float()


def part_sample() -> None:
    """The whole 999-step sampling of 16 images with the library's sampler (CUDA graph), unpatched
    (SDPA, bf16 autocast) and patched; the seed's loop as written (fp32, need_weights=True) timed over
    50 steps and scaled to 999."""
    from modelkernels.kernels.diffusion.sampler import sample

    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    x = torch.randn(16, 3, 64, 64, device=DEV)
    with torch.no_grad():
        for i in range(3):
            seed_step_fn(base, x, 999 - i)
        torch.cuda.synchronize()
        t0 = time.time()
        for i in range(50):
            seed_step_fn(base, x, 999 - i)
        torch.cuda.synchronize()
    seed_s = (time.time() - t0) / 50 * 999
    RESULTS["sample"] = res = {"seed_fp32_999_steps_s (from 50)": seed_s}
    note(f"sampling 16 images, 999 steps: the seed's loop as written {seed_s:.2f} s (50 steps scaled)")
    images = {}
    for name, model in (("sdpa_bf16", sdpa_model(base)), ("ours_bf16", patched_model(base)[0])):
        if left() < 40:
            note("sample: time budget reached, stopping")
            break
        wrapped = Autocast(model)
        torch.cuda.synchronize()
        t0 = time.time()
        images[name] = sample(wrapped, 16, cuda_graph=True, progress=False, output="float", seed=0)
        torch.cuda.synchronize()
        res[f"{name}_s"] = dt = time.time() - t0
        note(f"sampling 16 images, 999 steps, library sampler + CUDA graph, {name}: {dt:.2f} s, "
             f"{16 / dt:.2f} images/s, {seed_s / dt:.2f}x the seed's loop")
        save()
    if len(images) == 2:
        res["rel_err_ours_vs_sdpa"] = rel_err(images["ours_bf16"], images["sdpa_bf16"])
        note(f"final images, ours vs unpatched (same noise): relative L2 {res['rel_err_ours_vs_sdpa']:.2e}")


def main() -> None:
    if sys.argv[1:] == ["probe"]:
        part_probe()
        return
    parts = [a for a in sys.argv[1:] if a in ("check", "sweep", "kernels", "gn", "unet", "sample")]
    for name in parts:
        try:
            {"check": part_check, "sweep": part_sweep, "kernels": part_kernels, "gn": part_gn, "unet": part_unet,
             "sample": part_sample}[name]()
        except Exception as ex:  # report and go on to the next part: one call must bring back what it can
            import traceback

            traceback.print_exc()
            note(f"part {name} failed: {type(ex).__name__}: {str(ex)[:300]}")
        save()
    print("\n==== summary (" + RESULTS["device"] + f", {time.time() - START:.0f}s) ====")
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
