"""Diffusion on a lent GPU, in one call: parity of the fused kernels on CUDA, then timings with the
peers re-measured on the same card (eager PyTorch, torch.compile of the same formula, the project's
naive Triton anchor kernel, the copy-bandwidth floor) and the seed's 999-step sampling loop.

Run: ``PYTHONPATH=$PWD python3 benchmarks/gpu_diffusion.py`` (writes $OUT/gpu_diffusion.json).
Sections run in order of importance and are skipped when the time budget (``--budget`` seconds)
is spent, so a partial run still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modelkernels.kernels.diffusion import step_triton as st
from modelkernels.kernels.diffusion.sampler import sample
from modelkernels.pyimpl.diffusion import make_schedule, set_philox_rounds
from modelkernels.pyimpl.unet import UNet

DEV = "cuda"
T0 = time.time()
RES: dict[str, Any] = {}


def bench(fn: Any, rep: int = 200) -> float:
    return float(do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def save() -> None:
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_diffusion.json"), "w") as f:
            json.dump(RES, f, indent=1)


def section(name: str, budget: float, fn: Any) -> None:
    left = budget - (time.time() - T0)
    if left < 20:
        RES[name] = {"skipped": f"time budget spent ({time.time() - T0:.0f}s)"}
        print(f"[{name}] skipped", flush=True)
        return
    t = time.time()
    try:
        RES[name] = fn()
    except Exception as e:  # a failed section is reported, the others still run
        RES[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    print(f"[{name}] {time.time() - t:.1f}s: {json.dumps(RES[name])[:1500]}", flush=True)
    save()


# The project's anchor kernel (shared/anchors/gpu_anchors.py): a minimal Triton seed step with tl.randn.
@triton.jit
def anchor_step_kernel(x_ptr, eps_ptr, out_ptr, n, c1, c2, sigma, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    e = tl.load(eps_ptr + offs, mask=m)
    z = tl.randn(seed, offs)
    tl.store(out_ptr + offs, c1 * (x - c2 * e) + sigma * z, mask=m)


def eager_seed_step(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_hat: torch.Tensor,
                    beta: torch.Tensor) -> torch.Tensor:
    """The seed's update as the seed writes it (per-sample (n,1,1,1) coefficients, randn_like noise)."""
    noise = torch.randn_like(x)
    return 1 / torch.sqrt(alpha) * (x - ((1 - alpha) / (torch.sqrt(1 - alpha_hat))) * eps) + torch.sqrt(beta) * noise


compiled_seed_step = torch.compile(eager_seed_step)


def parity(dtypes: tuple[str, ...]) -> dict[str, Any]:
    from modelkernels.kernels import parity as par

    results = [r for r in par.run_parity(["q_sample", "ddpm_seed_step", "ddpm_step", "ddim_step"],
                                         backends=["triton"], devices=["cuda"]) if r.case.dtype in dtypes]
    fails = [f"{r.case.id}: {r.detail}" for r in results if r.status == "FAIL"]
    worst: dict[str, float] = {}
    for r in results:
        key = f"{r.case.op.name}/{r.case.dtype}"
        worst[key] = max(worst.get(key, 0.0), r.max_error)
    return {"cases": len(results), "ok": sum(r.status == "ok" for r in results), "fail": fails[:10], "worst": worst}


def noise_accuracy() -> dict[str, Any]:
    """In-kernel Philox normals of each Box-Muller flavour against the PyTorch reference stream."""
    from modelkernels.pyimpl.diffusion.philox import philox_normal

    sched = make_schedule(device=DEV)
    zeros = torch.zeros(8, 3, 128, 128, device=DEV)
    want = philox_normal(8, 3 * 128 * 128, 123, 2**33 + 5).reshape(zeros.shape)
    want7 = philox_normal(8, 3 * 128 * 128, 123, 2**33 + 5, rounds=7).reshape(zeros.shape)
    res: dict[str, Any] = {}
    default_mode = st.RNG_MODE_GPU
    for mode, rounds in ((0, 10), (1, 10), (2, 10), (2, 7)):
        st.RNG_MODE_GPU = mode
        previous = set_philox_rounds(rounds)
        _, z = st.q_sample_triton(zeros, 999, sched, seed=123, offset=2**33 + 5, return_noise=True)
        set_philox_rounds(previous)
        diff = (z.cpu() - (want if rounds == 10 else want7)).abs()
        res[f"rng{mode}_r{rounds}"] = {"max_abs_diff": float(diff.max()), "mean": float(z.mean()),
                                       "std": float(z.std())}
    st.RNG_MODE_GPU = default_mode
    return res


def copy_bw() -> dict[str, Any]:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEV).random_()
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), rep=100)
    return {"copy_GBps": 2 * (1 << 30) / ms / 1e6}


def big_step(copy_gbps: float, rounds: int = 1) -> dict[str, Any]:
    """The (256, 3, 256, 256) step against its peers, per dtype; ``rounds`` repeats the three dtypes in turn
    (a figure that moves between rounds is noise, not the kernel)."""
    rows = [dict(_big_row(dt, copy_gbps), round=r) for r in range(rounds)
            for dt in (torch.float32, torch.float16, torch.bfloat16)]
    return {"rows": rows}


def _coefficients(sched: Any, t: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(v[t].view(-1, 1, 1, 1).to(dt) for v in (sched.alphas, sched.alphas_cumprod, sched.betas))


def _big_row(dt: torch.dtype, copy_gbps: float) -> dict[str, Any]:
    """One step on (256, 3, 256, 256) (>= 96 MiB per tensor): verified against float64, then timed."""
    shape = (256, 3, 256, 256)
    sched = make_schedule(device=DEV)
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(shape, device=DEV, dtype=dt, generator=g)
    eps = torch.randn(shape, device=DEV, dtype=dt, generator=g)
    z = torch.randn(shape, device=DEV, dtype=dt, generator=g)
    t = torch.randint(2, 1000, (shape[0],), device=DEV, generator=g)
    a, ah, b = _coefficients(sched, t, dt)
    ours = st.ddpm_seed_step_triton(eps, t, x, sched, z)
    a64, ah64, b64 = (v.double() for v in _coefficients(sched, t, torch.float64))
    ref = 1 / torch.sqrt(a64) * (x.double() - ((1 - a64) / torch.sqrt(1 - ah64)) * eps.double())
    ref = ref + torch.sqrt(b64) * z.double()
    err = float(((ours.double() - ref).abs() / (ref.abs() + 1e-2)).max())
    del ref, ours
    esize = x.element_size()
    n = x.numel()
    row: dict[str, Any] = {"shape": shape, "dtype": str(dt).removeprefix("torch."),
                           "MiB_per_tensor": n * esize / 2**20, "max_rel_err_vs_fp64": err}
    row["eager_ms"] = bench(lambda: eager_seed_step(x, eps, a, ah, b), rep=100)
    compiled_seed_step(x, eps, a, ah, b)
    row["compiled_ms"] = bench(lambda: compiled_seed_step(x, eps, a, ah, b), rep=100)
    out = torch.empty_like(x)
    grid = (triton.cdiv(n, 1024),)
    row["anchor_triton_ms"] = bench(
        lambda: anchor_step_kernel[grid](x, eps, out, n, 1.005, 0.01, 0.1, 7, BLOCK=1024), rep=100)
    off = [0]

    def ours_philox() -> torch.Tensor:
        off[0] += 1
        return st.ddpm_seed_step_triton(eps, t, x, sched, seed=7, offset=off[0])

    default_mode = st.RNG_MODE_GPU
    # Box-Muller flavour (0 precise, 1 fast sin/cos, 2 fast sin/cos/log) x Philox rounds
    for mode, rounds in ((0, 10), (1, 10), (2, 10), (2, 7)):
        st.RNG_MODE_GPU = mode
        previous = set_philox_rounds(rounds)
        row[f"ours_philox_rng{mode}_r{rounds}_ms"] = bench(ours_philox, rep=100)
        set_philox_rounds(previous)
    st.RNG_MODE_GPU = default_mode
    row["ours_philox_ms"] = bench(ours_philox, rep=100)
    row["ours_noise_in_ms"] = bench(lambda: st.ddpm_seed_step_triton(eps, t, x, sched, z), rep=100)
    row["ours_ddpm_philox_ms"] = bench(lambda: st.ddpm_step_triton(eps, t, x, sched, seed=3, offset=5), rep=100)
    row["ours_ddim_eta0_ms"] = bench(lambda: st.ddim_step_triton(eps, t, x, sched, prev_t=t - 20), rep=100)
    row["ours_ddim_eta0_again_ms"] = bench(lambda: st.ddim_step_triton(eps, t, x, sched, prev_t=t - 20), rep=100)
    row["floor3_ms"] = 3 * n * esize / (copy_gbps * 1e6)
    row["ours_philox_pct_copy_bw"] = 100 * row["floor3_ms"] / row["ours_philox_ms"]
    row["ours_philox_r7_pct_copy_bw"] = 100 * row["floor3_ms"] / row["ours_philox_rng2_r7_ms"]
    row["ours_noise_in_pct_copy_bw"] = 100 * (4 * n * esize / (copy_gbps * 1e6)) / row["ours_noise_in_ms"]
    row["speedup_vs_eager"] = row["eager_ms"] / row["ours_philox_ms"]
    row["speedup_vs_compiled"] = row["compiled_ms"] / row["ours_philox_ms"]
    print(json.dumps(row), flush=True)
    return row


def small_step() -> dict[str, Any]:
    return {"rows": [_small_row((64, 3, 64, 64), torch.float32), _small_row((16, 4, 128, 128), torch.float16)]}


def _graph_ms_per_step(fn: Any, k: int) -> float:
    """Capture ``fn`` (k chained steps) in one CUDA graph; the replay time per step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench(graph.replay) / k


def _small_row(shape: tuple[int, ...], dt: torch.dtype) -> dict[str, Any]:
    """Launch-bound sizes: per call from the host, and per step of 50 chained steps in one CUDA graph."""
    sched = make_schedule(device=DEV)
    g = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(shape, device=DEV, dtype=dt, generator=g)
    eps = torch.randn(shape, device=DEV, dtype=dt, generator=g)
    t = torch.randint(2, 1000, (shape[0],), device=DEV, generator=g)
    a, ah, b = _coefficients(sched, t, dt)
    row: dict[str, Any] = {"shape": shape, "dtype": str(dt).removeprefix("torch.")}
    row["eager_ms"] = bench(lambda: eager_seed_step(x, eps, a, ah, b))
    compiled_seed_step(x, eps, a, ah, b)
    row["compiled_ms"] = bench(lambda: compiled_seed_step(x, eps, a, ah, b))
    row["ours_ms"] = bench(lambda: st.ddpm_seed_step_triton(eps, t, x, sched, seed=1, offset=0))
    rng = torch.tensor([1, 0], dtype=torch.int64, device=DEV)
    k = 50

    def chain_ours() -> None:
        y = x
        for _ in range(k):
            y = st.ddpm_seed_step_triton(eps, t, y, sched, rng_state=rng)

    def chain_eager() -> None:
        y = x
        for _ in range(k):
            y = eager_seed_step(y, eps, a, ah, b)

    row["ours_graph_ms_per_step"] = _graph_ms_per_step(chain_ours, k)
    row["eager_graph_ms_per_step"] = _graph_ms_per_step(chain_eager, k)
    return row


def sampling_loop() -> dict[str, Any]:
    torch.manual_seed(0)
    model = UNet().to(DEV).eval()
    n, T = 16, 1000
    sched = make_schedule(device=DEV)
    beta, alpha, alpha_hat = sched.betas, sched.alphas, sched.alphas_cumprod

    def seed_loop(steps: int) -> torch.Tensor:
        with torch.no_grad():
            x = torch.randn((n, 3, 64, 64), device=DEV)
            for i in reversed(range(T - steps, T)):
                t = (torch.ones(n, device=DEV) * i).long()
                predicted_noise = model(x, t)
                a = alpha[t][:, None, None, None]
                ah = alpha_hat[t][:, None, None, None]
                b = beta[t][:, None, None, None]
                noise = torch.randn_like(x) if i > 1 else torch.zeros_like(x)
                x = 1 / torch.sqrt(a) * (x - ((1 - a) / (torch.sqrt(1 - ah))) * predicted_noise) + torch.sqrt(b) * noise
        return ((x.clamp(-1, 1) + 1) / 2 * 255).type(torch.uint8)

    def timed(fn: Any) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    seed_loop(5)
    res: dict[str, Any] = {"batch": n, "steps": T - 1, "image": 64,
                           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    x = torch.randn((n, 3, 64, 64), device=DEV)
    tt = torch.full((n,), 500, device=DEV)
    with torch.no_grad():
        res["model_forward_ms"] = bench(lambda: model(x, tt), rep=100)
        res["model_forward_graph_ms"] = _graph_ms_per_step(lambda: model(x, tt), 1)
    warm = make_schedule(num_train_timesteps=3, device=DEV)  # compiles the step kernel outside the timing
    sample(model, n, progress=False, seed=0, schedule=warm)
    sample(model, n, progress=False, seed=0, schedule=warm, cuda_graph=True)
    res["seed_loop_s"] = timed(lambda: seed_loop(T - 1))
    res["ours_loop_s"] = timed(lambda: sample(model, n, progress=False, seed=0))
    res["ours_graph_loop_s"] = timed(lambda: sample(model, n, progress=False, seed=0, cuda_graph=True))
    model_total = res["model_forward_ms"] * (T - 1) / 1e3
    model_graph_total = res["model_forward_graph_ms"] * (T - 1) / 1e3
    for k in ("seed_loop_s", "ours_loop_s", "ours_graph_loop_s"):
        res[k.replace("_s", "_share_outside_model")] = 1 - model_total / res[k]
        res[k.replace("_s", "_share_outside_graphed_model")] = 1 - model_graph_total / res[k]
    img = sample(model, 4, progress=False, seed=1, method="ddim", steps=20)
    res["ddim20_uint8_shape"] = list(img.shape)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=420.0, help="seconds this script may run")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the big step's rows (two: a noise check)")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    RES.update(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               commit=os.environ.get("GIT_COMMIT", ""))
    section("copy", args.budget, copy_bw)
    bw = RES["copy"].get("copy_GBps", 4000.0)
    order = [("big", lambda: big_step(bw, args.rounds)), ("sampling", sampling_loop), ("small", small_step),
             ("noise", noise_accuracy), ("parity32", lambda: parity(("float32",))),
             ("parity16", lambda: parity(("float16", "bfloat16")))]
    for name, fn in order:
        if name not in skip:
            section(name, args.budget, fn)
    RES["wall_s"] = time.time() - T0
    save()
    print("\n== summary (ms) ==")
    for row in RES.get("big", {}).get("rows", []):
        print({k: round(v, 4) for k, v in row.items() if k.startswith("ours_philox_rng")})
        print(f"{row['dtype']:>8} r{row['round']} {row['MiB_per_tensor']:.0f}MiB eager {row['eager_ms']:.3f} "
              f"compiled {row['compiled_ms']:.3f} anchor {row['anchor_triton_ms']:.3f} "
              f"ours {row['ours_philox_ms']:.3f} "
              f"({row['ours_philox_pct_copy_bw']:.0f}% of copy bw; 7 rounds {row['ours_philox_rng2_r7_ms']:.3f} = "
              f"{row['ours_philox_r7_pct_copy_bw']:.0f}%) noise-in {row['ours_noise_in_ms']:.3f} "
              f"floor {row['floor3_ms']:.3f}")
    for row in RES.get("small", {}).get("rows", []):
        print(json.dumps(row))
    print(json.dumps(RES.get("sampling", {})))


if __name__ == "__main__":
    main()
