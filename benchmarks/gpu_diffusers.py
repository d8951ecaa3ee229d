"""Stable Diffusion 1.5's UNet2DConditionModel (from its config dict, random weights, fp16) on a CUDA GPU:
diffusers eager (SDPA), torch.compile, patched by ``kernels.nn.patch``, and patched + torch.compile.

    PYTHONPATH=$PWD python3 benchmarks/gpu_diffusers.py --batches 1 4 8 --budget 270

For each batch (64x64 latents, a 77x768 text context): one UNet call, timed per call and replayed
from a CUDA graph, and a 50-step DDIM loop (diffusers' DDIMScheduler with SD's config for the
unpatched model, ours from the same config for the patched one), per call and as one CUDA graph.
Before timing, each variant's UNet output is checked against the unpatched eager model (relative L2
error below ``TOL``) and the loops' final latents against each other. torch.compile uses the default
mode (``--mode max-autotune-no-cudagraphs`` to change it), a static-shape compile per batch; a
compile starts only while more than 100 s of the budget are left. Results: $OUT/gpu_diffusers.json;
a summary is printed last.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.harness import Run, rel_err

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_DDIM: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
STEPS = 50
TOL = 2e-2  # relative L2 error of an fp16 UNet output against the unpatched fp16 model
LOOP_TOL = 5e-2  # final latents after 50 fp16 steps


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _batches() -> list[int]:
    if "--batches" not in sys.argv:
        return [1, 4, 8]
    out = []
    for a in sys.argv[sys.argv.index("--batches") + 1:]:
        if not a.isdigit():
            break
        out.append(int(a))
    return out


BUDGET = float(_arg("--budget", "270"))
MODE = _arg("--mode", "default")
RUN = Run("gpu_diffusers.json", BUDGET)
RESULTS, SUMMARY, START = RUN.results, RUN.summary, RUN.start
left, note, save = RUN.left, RUN.note, RUN.save


def ms(fn: Callable[[], Any], warmup: int, rep: int) -> float:
    from benchmarks.harness import cuda_time

    return cuda_time(fn, warmup=warmup, rep=rep, flush_l2=False)["median_ms"]


def unet_call(model: Any, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> Callable[[], torch.Tensor]:
    def f() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = model(x, t, encoder_hidden_states=ctx).sample
            return out

    return f


def ddim_loop(model: Any, scheduler: Any, x0: torch.Tensor, ctx: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The 50-step DDIM loop from ``x0``. Timesteps reach the UNet as device tensors made beforehand and
    the scheduler as ints, so the loop has no host synchronization and can be captured whole."""
    scheduler.set_timesteps(STEPS)
    ts = [int(t) for t in scheduler.timesteps]
    t_dev = [torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long) for t in ts]

    def f() -> torch.Tensor:
        x = x0
        with torch.no_grad():
            for t, td in zip(ts, t_dev):
                eps = model(x, td, encoder_hidden_states=ctx).sample
                x = scheduler.step(eps, t, x).prev_sample
        return x

    return f


class Batch:
    """One batch's inputs, the unpatched model's output on them, and what each variant measured."""

    def __init__(self, b: int, base: Any) -> None:
        g = torch.Generator(device="cuda").manual_seed(b)
        self.x = torch.randn(b, 4, 64, 64, device="cuda", dtype=torch.float16, generator=g)
        self.ctx = torch.randn(b, 77, 768, device="cuda", dtype=torch.float16, generator=g)
        self.t = torch.full((b,), 500, device="cuda", dtype=torch.long)
        self.want = unet_call(base, self.x, self.t, self.ctx)()
        self.row: dict[str, Any] = {"batch": b}
        self.final: dict[str, torch.Tensor] = {}
        RESULTS.setdefault("rows", []).append(self.row)


def measure(batch: Batch, name: str, model: Any, scheduler: Any) -> None:
    """Check the variant's UNet output, then time one call and the 50-step loop, per call and graphed."""
    from benchmarks.harness import graphed

    row = batch.row
    try:
        t0 = time.time()
        call = unet_call(model, batch.x, batch.t, batch.ctx)
        row[f"{name}_err"] = err = rel_err(call(), batch.want)  # compiles on the first call
        row[f"{name}_first_call_s"] = time.time() - t0
        if err > TOL:
            raise AssertionError(f"relative error {err:.2e} against the unpatched model > {TOL}")
        row[f"{name}_unet_ms"] = ms(call, 3, 20)
        row[f"{name}_unet_graph_ms"] = ms(graphed(call), 3, 20)
        loop = ddim_loop(model, scheduler, batch.x, batch.ctx)
        batch.final[name] = loop()
        if name != "diffusers" and "diffusers" in batch.final:
            row[f"{name}_loop_err"] = err = rel_err(batch.final[name], batch.final["diffusers"])
            if err > LOOP_TOL:
                raise AssertionError(f"50-step latents differ from diffusers' by {err:.2e} (> {LOOP_TOL})")
        row[f"{name}_loop_ms"] = ms(loop, 0, 2)
        row[f"{name}_loop_graph_ms"] = ms(graphed(loop, warmup=1), 0, 2)
    except Exception as ex:  # report and go on: one run brings back what it measured
        note(f"B={row['batch']} {name}: {type(ex).__name__}: {str(ex)[:300]}")
        row[f"{name}_error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
    print(f"B={row['batch']} {name}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k.startswith(name + "_")),
          flush=True)
    save()


VARIANTS = ("diffusers", "patched", "compile", "patched+compile")


def summarize(batch: Batch) -> None:
    row = batch.row
    base_ms = row.get("diffusers_unet_ms")
    cells = []
    for name in VARIANTS:
        if f"{name}_unet_ms" in row:
            ratio = f" ({base_ms / row[f'{name}_unet_ms']:.2f}x)" if base_ms else ""
            cells.append(f"{name} {row[f'{name}_unet_ms']:.2f}/{row[f'{name}_unet_graph_ms']:.2f}{ratio}")
    note(f"SD1.5 UNet fp16 B={row['batch']}, one call, ms per call / CUDA graph (x diffusers eager): "
         + ", ".join(cells))
    loops = [f"{n} {row[f'{n}_loop_ms']:.0f}/{row[f'{n}_loop_graph_ms']:.0f}" for n in VARIANTS
             if f"{n}_loop_ms" in row]
    note("  50-step DDIM loop, ms per call / one graph: " + ", ".join(loops))
    note("  rel. error vs unpatched: " + ", ".join(f"{n} {row[f'{n}_err']:.1e}" for n in VARIANTS
                                                  if f"{n}_err" in row)
         + "; compile s: " + ", ".join(f"{n} {row[f'{n}_first_call_s']:.0f}" for n in VARIANTS[2:]
                                       if f"{n}_first_call_s" in row))


def main() -> None:
    import diffusers

    import modelkernels.kernels.diffusion.diffusers_patch  # noqa: F401  (registers the diffusers drop-ins)
    from modelkernels import kernels

    RESULTS.update({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "diffusers": diffusers.__version__, "kernels": kernels.__version__, "mode": MODE})
    torch.manual_seed(0)
    base: Any = diffusers.UNet2DConditionModel(**SD15_UNET).to("cuda", torch.float16).eval()
    base.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())
    fast = copy.deepcopy(base)
    report = kernels.nn.patch(fast)
    kinds: dict[str, int] = {}
    for _, old, _ in report.replaced:
        kinds[old] = kinds.get(old, 0) + 1
    RESULTS["patch"] = {"replaced": kinds, "kept": [list(k) for k in report.kept]}
    note(f"patched SD1.5 UNet: {kinds}, {len(report.kept)} kept")
    from modelkernels.kernels.diffusion.scheduler import DDIMScheduler

    batches = [Batch(b, base) for b in _batches()]
    for batch in batches:  # eager first, for every batch
        measure(batch, "diffusers", base, diffusers.DDIMScheduler(**SD15_DDIM))
        measure(batch, "patched", fast, DDIMScheduler(**SD15_DDIM))
    kw: dict[str, Any] = {"dynamic": False} if MODE == "default" else {"dynamic": False, "mode": MODE}
    for batch in batches if "--no-compile" not in sys.argv else []:  # a static-shape compile per batch
        for name, model, scheduler in [("compile", base, diffusers.DDIMScheduler(**SD15_DDIM)),
                                       ("patched+compile", fast, DDIMScheduler(**SD15_DDIM))]:
            if left() < 100:
                note(f"B={batch.row['batch']}: {name} not started, {left():.0f} s of the budget left")
                continue
            torch._dynamo.reset()
            measure(batch, name, torch.compile(model, **kw), scheduler)
    for batch in batches:
        summarize(batch)
    save()
    print(f"\n==== summary ({RESULTS['device']}, {time.time() - START:.0f}s) ====")
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
