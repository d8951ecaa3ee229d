"""The seed's UNet end to end on a CUDA GPU: patched vs torch.compile, patched + torch.compile, and
where the GPU time of one step goes, by kernel family.

    PYTHONPATH=$PWD python3 benchmarks/gpu_unet.py step profile sample --batches 16 64 128 --budget 500

Parts: ``step`` times one sampling step (the seed's update formula around the model, bf16 autocast,
as ``benchmarks/gpu_fused.py unet`` and the project's anchor script run it) at each batch for:
SDPA eager, torch.compile of the unpatched model (the peer), the model patched by
``kernels.nn.patch``, and the patched model under torch.compile (``fullgraph=True``: the drop-ins
are custom ops, kernels/torch_ops.py). Each is timed per call and captured in a CUDA graph (as the
library's sampler runs a step); outputs are checked against the seed's fp32 model first.
``profile`` runs torch.profiler over eager steps and sums GPU kernel time per family (convolution,
GEMM, attention, GroupNorm, LayerNorm, upsample/concat, feed-forward, elementwise, layout copies),
for the patched and the unpatched step. ``host`` profiles the Python time of an eager patched step
(cProfile). ``layout`` times the graph-captured patched step with the bf16 weight casts kept out of
the graph (one autocast region around capture) and with channels-last weights and input.
``sample`` times the whole 999-step sampling against the seed's loop.
Results go to $OUT/gpu_unet.json; a summary is printed last. ``--budget S`` stops starting new
measurements after S seconds; ``--no-compile`` leaves torch.compile out of ``step``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks import gpu_fused as gf
from benchmarks.harness import Run, breakdown_text, graphed, kernel_breakdown, kernel_family, kernel_times, rel_err
from modelkernels import kernels
from modelkernels.pyimpl.unet import UNet

DEV = "cuda"
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 480.0
RUN = Run("gpu_unet.json", BUDGET)
RESULTS, SUMMARY, START = RUN.results, RUN.summary, RUN.start
RESULTS.update({"device": torch.cuda.get_device_name(), "torch": torch.__version__})
left, note, save = RUN.left, RUN.note, RUN.save


def _batches() -> list[int]:
    if "--batches" not in sys.argv:
        return [16]
    values = []
    for a in sys.argv[sys.argv.index("--batches") + 1:]:
        if not a.isdigit():
            break
        values.append(int(a))
    return values


def _batch(base: torch.nn.Module, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of b noisy 64x64 images at t = 500 and the seed's fp32 model output on it."""
    x = torch.randn(b, 3, 64, 64, device=DEV)
    t = torch.full((b,), 500, device=DEV, dtype=torch.long)
    with torch.no_grad():
        return x, t, base(x, t).float()


def part_step() -> None:
    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    peer = gf.sdpa_model(base)
    ours, report = gf.patched_model(base)
    note(f"patched seed UNet: {len(report.replaced)} modules replaced, {len(report.kept)} kept")
    RESULTS["step"] = rows = []
    for b in _batches():
        x, t, want = _batch(base, b)
        row: dict[str, Any] = {"batch": b}
        rows.append(row)
        torch._dynamo.reset()  # a static-shape compile per batch, as a user with one batch size gets
        variants: list[tuple[str, Any]] = [("sdpa", peer), ("ours", ours)]
        if "--no-compile" not in sys.argv:
            variants += [("compile", torch.compile(peer, dynamic=False)),
                         ("ours+compile", torch.compile(ours, dynamic=False, fullgraph=True))]
        if "--reduce-overhead" in sys.argv:  # torch.compile's own CUDA graphs (cudagraph trees)
            variants += [("compile_ro", torch.compile(peer, dynamic=False, mode="reduce-overhead")),
                         ("ours+compile_ro", torch.compile(ours, dynamic=False, fullgraph=True,
                                                           mode="reduce-overhead"))]
        for name, model in variants:
            if left() < 30:
                note(f"step B={b}: time budget reached before {name}")
                break
            try:
                t0 = time.time()
                row[f"{name}_err"] = gf.model_error(model, want, x, t)  # compiles on first call
                row[f"{name}_first_call_s"] = time.time() - t0
                fn = gf.step(model, x)
                fn()
                row[f"{name}_ms"] = gf.ms(fn)
                if not name.endswith("_ro"):  # already replayed from a graph
                    row[f"{name}_graph_ms"] = gf.ms(graphed(fn))
            except Exception as ex:  # report and go on
                print(f"step B={b} {name}: {type(ex).__name__} {str(ex)[:400]}", flush=True)
                row[f"{name}_error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            print(f"step B={b} {name}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k.startswith(name + "_")),
                  flush=True)
            save()
        cells = [f"{n} {row[n + '_ms']:.2f}/{row.get(n + '_graph_ms', float('nan')):.2f}" for n, _ in variants
                 if n + "_ms" in row]
        note(f"UNet step B={b} bf16, ms per call / in a CUDA graph: " + ", ".join(cells))
        errs = [f"{n} {row[n + '_err']:.1e}" for n, _ in variants if n + "_err" in row]
        note("  rel. L2 error vs the seed's fp32 model: " + ", ".join(errs)
             + "; compile s: " + ", ".join(f"{n} {row[n + '_first_call_s']:.0f}" for n in ("compile", "ours+compile")
                                           if n + "_first_call_s" in row))


FAMILIES = [
    ("attention", r"attention_fwd|attention_bwd|flash|fmha|sdpa|_attn|attn_"),
    ("feed-forward (fused)", r"feed_forward|_ff_"),
    ("GroupNorm", r"group_norm|groupnorm|_gn_|_stats_kernel|_apply_kernel|_persistent|RowwiseMoments|"
                  r"GroupNormKernel|ComputeFusedParams|_norm_act"),
    ("LayerNorm", r"layer_norm|layernorm|_tokens_ln|_add_ln|_ln_"),
    ("upsample / concat", r"upsample|bilinear|_up_concat|CatArray|cat_"),
    ("convolution", r"conv|implicit|fprop|dgrad|wgrad|winograd|xmma_fprop|nhwc.*kernel.*sm"),
    ("GEMM (linear)", r"gemm|cutlass|cublas|sm90_xmma|Kernel2|ampere_|sm80_"),
    ("layout copies", r"nchwToNhwc|nhwcToNchw|transpose|copy_kernel|permute"),
    ("elementwise / reductions", r"elementwise|vectorized|unrolled|reduce_kernel|triton_|index_|fill|gelu|add|mul"),
]


def part_profile() -> None:
    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    RESULTS["profile"] = out = {}
    for b in _batches()[:1]:
        x = torch.randn(b, 3, 64, 64, device=DEV)
        ours_cl = gf.patched_model(base)[0].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for name, model in (("sdpa", gf.sdpa_model(base)), ("ours", gf.patched_model(base)[0]),
                            ("ours_channels_last_cached_casts", ours_cl)):
            if left() < 20:
                break
            if model is ours_cl:
                with cached_casts():
                    per_kernel = kernel_times(functools.partial(gf.seed_step_fn, model, x_cl, 500))
            else:
                per_kernel = kernel_times(gf.step(model, x))
            out[f"{name}_B{b}"] = row = kernel_breakdown(per_kernel, FAMILIES, top=30)
            note(f"GPU time by kernel family, {name}, B={b}, bf16 eager step, " + breakdown_text(row))
            for k, us in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]:
                print(f"    {us:9.1f} us  [{kernel_family(k, FAMILIES)}] {k[:110]}", flush=True)
            save()


def part_host() -> None:
    """Where the host time of a step that is not graph-captured goes: cProfile over 20 calls of the
    patched step, eager and under torch.compile."""
    import cProfile
    import io
    import pstats

    torch.manual_seed(0)
    ours = gf.patched_model(UNet().to(DEV).eval())[0]
    x = torch.randn(16, 3, 64, 64, device=DEV)
    RESULTS["host_profile"] = out = {}
    compiled: Any = torch.compile(ours, dynamic=False, fullgraph=True)
    for name, model in (("eager", ours), ("compiled", compiled)):
        fn = gf.step(model, x)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(20):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        note(f"host profile: patched step B=16, {name}: {(time.perf_counter() - t0) / 20 * 1000:.2f} ms per call "
             "(under cProfile)")
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        out[name] = text.getvalue()
        print(text.getvalue()[:7000], flush=True)


@contextlib.contextmanager
def cached_casts() -> Iterator[None]:
    """One bf16 autocast region around warm-up, capture and replays: autocast caches the weights'
    bf16 casts (made in the warm-up, outside the graph), so the captured step does not recast them."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def part_layout() -> None:
    """The patched step in a CUDA graph, as ``step`` runs it, against two cheaper set-ups: the
    autocast region kept open around capture (no weight casts in the graph), and that plus
    channels-last weights and input (no NCHW/NHWC conversions around cuDNN's convolutions)."""
    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    RESULTS["layout"] = rows = []
    for b in _batches():
        x, t, want = _batch(base, b)
        row: dict[str, Any] = {"batch": b}
        rows.append(row)
        for name, cl in (("ours", False), ("ours_cached_casts", False), ("ours_cached_casts_channels_last", True)):
            if left() < 20:
                break
            model = gf.patched_model(base)[0]
            xin = x
            if cl:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                xin = x.contiguous(memory_format=torch.channels_last)
            if name == "ours":
                row[name + "_graph_ms"] = gf.ms(graphed(gf.step(model, xin)))
                continue
            with cached_casts():
                row[name + "_err"] = rel_err(model(xin, t).float(), want)
                replay = graphed(functools.partial(gf.seed_step_fn, model, xin, 500))
                row[name + "_graph_ms"] = gf.ms(replay)
            save()
        note(f"UNet step B={b}, patched, CUDA graph, ms: " + ", ".join(
            f"{k[:-9]} {v:.2f}" for k, v in row.items() if k.endswith("_graph_ms"))
            + "; rel. L2 error vs fp32 seed: " + ", ".join(f"{k[:-4]} {v:.1e}" for k, v in row.items()
                                                           if k.endswith("_err")))


def part_customop() -> None:
    """Host time of one fused op per call (no graph): the public function, its custom op called
    directly, and a one-op function under torch.compile; then the top host functions of the custom-op
    path (torch.profiler, CPU side)."""
    import timeit

    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(16, 64, 64, 64, device=DEV, dtype=torch.bfloat16)
    w, b = torch.ones(64, device=DEV, dtype=torch.bfloat16), torch.zeros(64, device=DEV, dtype=torch.bfloat16)
    ops = torch.ops.modelkernels

    def public() -> torch.Tensor:
        return kernels.group_norm_act(x, 1, w, b, 1e-5, activation="gelu")

    def custom() -> torch.Tensor:
        return ops.group_norm_act(x, 1, w, b, 1e-5, None, None, "gelu", None)

    compiled = torch.compile(public, fullgraph=True)
    RESULTS["customop"] = res = {}
    with torch.no_grad():
        for name, fn in (("public", public), ("custom op", custom), ("compiled", compiled)):
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            n = 300
            res[name] = timeit.timeit(fn, number=n) / n * 1e6
            torch.cuda.synchronize()
        note("GroupNorm+GELU B=16 host µs per call: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
        import cProfile
        import io
        import pstats

        cprof = cProfile.Profile()
        cprof.enable()
        for _ in range(200):
            public()
        cprof.disable()
        text = io.StringIO()
        pstats.Stats(cprof, stream=text).sort_stats("tottime").print_stats(22)
        print(text.getvalue(), flush=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(50):
                compiled()
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)


def part_sample() -> None:
    """The whole 999-step sampling of 16 images (the seed's schedule and update): the seed's loop as
    written (fp32, need_weights=True; 50 steps timed and scaled), and the library's sampler with a CUDA
    graph and ``autocast=torch.bfloat16`` for the unpatched SDPA model, the patched model, the patched
    model with channels-last weights, and that under torch.compile. Same initial noise and Philox key."""
    from modelkernels.kernels.diffusion.sampler import sample

    torch.manual_seed(0)
    base = UNet().to(DEV).eval()
    x = torch.randn(16, 3, 64, 64, device=DEV)
    with torch.no_grad():
        for i in range(3):
            gf.seed_step_fn(base, x, 999 - i)
        torch.cuda.synchronize()
        t0 = time.time()
        for i in range(50):
            gf.seed_step_fn(base, x, 999 - i)
        torch.cuda.synchronize()
    seed_s = (time.time() - t0) / 50 * 999
    RESULTS["sample"] = res = {"seed_fp32_999_steps_s (from 50)": seed_s}
    note(f"sampling 16 images, 999 steps: the seed's loop as written {seed_s:.2f} s (50 steps scaled)")
    ours = gf.patched_model(base)[0]
    ours_cl = gf.patched_model(base)[0].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    variants: list[tuple[str, Any]] = [("sdpa", gf.sdpa_model(base)), ("ours", ours), ("ours_channels_last", ours_cl),
                                       ("ours_channels_last_compiled", torch.compile(ours_cl, fullgraph=True))]
    images = {}
    for name, model in variants:
        if left() < 40:
            note("sample: time budget reached, stopping")
            break
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):  # compiles, picks cuDNN's kernels
                model(x, torch.full((16,), 999, device=DEV, dtype=torch.long))
            torch.cuda.synchronize()
            t0 = time.time()
            images[name] = sample(model, 16, cuda_graph=True, autocast=torch.bfloat16, progress=False,
                                  output="float", seed=0)
            torch.cuda.synchronize()
        except Exception as ex:  # report and go on
            note(f"sample {name}: {type(ex).__name__} {str(ex)[:300]}")
            continue
        res[f"{name}_s"] = dt = time.time() - t0
        note(f"sampling 16 images, 999 steps, sampler + CUDA graph + bf16 autocast region, {name}: {dt:.2f} s "
             f"(graph capture included), {16 / dt:.2f} images/s, {seed_s / dt:.2f}x the seed's loop")
        save()
    for name in images:
        if name != "sdpa" and "sdpa" in images:
            res[f"rel_err_{name}_vs_sdpa"] = err = rel_err(images[name], images["sdpa"])
            note(f"final images, {name} vs unpatched (same noise): relative L2 {err:.2e}")


def main() -> None:
    table = {"step": part_step, "profile": part_profile, "host": part_host, "layout": part_layout,
             "sample": part_sample, "customop": part_customop}
    RUN.parts(table, sys.argv[1:])
    print("\n==== summary (" + RESULTS["device"] + f", {time.time() - START:.0f}s) ====")
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
