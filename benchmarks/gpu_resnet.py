"""torchvision's ResNet in eval mode through ``kernels.nn.patch``, on a CUDA GPU, peers in the same process.

    PYTHONPATH=$PWD python3 benchmarks/gpu_resnet.py parity speed profile --budget 270

Parts: ``parity`` checks, on the same random weights (BatchNorm statistics and affine parameters
randomised so that folding is not the identity), the patched torchvision ``resnet18`` / ``resnet50``
and timm's ``resnet50`` against the unpatched model: relative L2 of the logits and top-1 agreement
on random images, in fp32 and in bf16 channels-last (each against the fp32 unpatched model, beside
the unpatched model in bf16); it also loads torchvision's ``state_dict`` into
``pyimpl.resnet`` with ``strict=True`` and compares the outputs. ``speed`` times ResNet-50 (bf16,
channels-last, 224x224) at batch 1 / 32 / 256 and ResNet-18 at batch 256, images/s per call (no
graph: the host's launch time included) and in a CUDA graph, for: torchvision eager, torch.compile
(default mode), patched, patched + torch.compile (``fullgraph=True``); ``--max-autotune`` adds
``mode="max-autotune-no-cudagraphs"`` (minutes of tuning). Every variant's output is checked against
the eager bf16 model before it is timed, and its error against the fp32 model (relative L2, top-1)
is recorded. Batches run 1, 32, 256: torch.compile compiles statically at the first and once with a
dynamic batch at the second, as a user's model does. ``profile`` sums GPU kernel time per kernel family
(convolution, BatchNorm, add/ReLU, the fused epilogue, pooling, GEMM, layout copies) for one eager
call of the unpatched and the patched ResNet-50 at batch 32 and 256; in the patched model the
BatchNorm and ReLU left are the stem's (what fusing the stem would save).

Results go to $OUT/gpu_resnet.json; a summary is printed last. ``--budget S`` stops starting new
measurements after S seconds. ``--smoke`` runs the same code on the CPU at toy sizes with
``pyimpl.resnet`` standing in for torchvision and timm where they do not import (no CUDA graphs,
no timing): what CI can check of this script.
"""

from __future__ import annotations

import copy
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import modelkernels.kernels.nn as knn
from benchmarks.harness import (
    Run,
    breakdown_text,
    cuda_time,
    graphed,
    kernel_breakdown,
    kernel_times,
    machine_info,
    rel_err,
)
from modelkernels.pyimpl import resnet as ref

SMOKE = "--smoke" in sys.argv
DEV = "cpu" if SMOKE else "cuda"
SIZE = 32 if SMOKE else 224
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 270.0
RUN = Run("gpu_resnet.json", BUDGET)
RESULTS, SUMMARY, START = RUN.results, RUN.summary, RUN.start
left, note, save = RUN.left, RUN.note, RUN.save


def top1(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out.argmax(-1) == want.argmax(-1)).double().mean())


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters away from 0 / 1 (what a trained model has)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def build(source: str, name: str) -> nn.Module:
    """``name`` from torchvision, timm or pyimpl.resnet ('reference'), random weights, eval, on DEV.
    Under ``--smoke`` a library that does not import is replaced by the reference (noted)."""
    torch.manual_seed(0)
    model: nn.Module
    try:
        if source == "torchvision":
            import torchvision

            model = getattr(torchvision.models, name)(weights=None)
        elif source == "timm":
            import timm

            model = timm.create_model(name, pretrained=False)
        else:
            model = ref.MODELS[name](1000)
    except ImportError as e:
        if not SMOKE:
            raise
        note(f"--smoke: {source} does not import here ({e}); pyimpl.resnet.{name} stands in for it")
        model = ref.MODELS[name](1000)
    return randomise_batch_norms(model).to(DEV).eval()


def patched(model: nn.Module) -> tuple[nn.Module, knn.PatchReport]:
    out = copy.deepcopy(model)
    return out, knn.patch(out)


def bf16_channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(dtype=torch.bfloat16, memory_format=torch.channels_last)  # type: ignore[call-overload]


def images(batch: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return x.to(DEV, dtype).contiguous(memory_format=torch.channels_last)


def compiled(model: nn.Module, mode: str | None = None, fullgraph: bool = False) -> Callable[..., Any]:
    # on the CPU (--smoke) only the tracing is checked: aot_eager needs no compiler
    return torch.compile(model, mode=mode, fullgraph=fullgraph, backend="aot_eager" if SMOKE else "inductor")


def part_parity() -> None:
    RESULTS["parity"] = rows = []
    batch = 4 if SMOKE else 64
    for source, name in (("torchvision", "resnet18"), ("torchvision", "resnet50"), ("timm", "resnet50")):
        if left() < 30:
            note(f"parity: time budget reached before {source} {name}")
            break
        base = build(source, name)
        x = images(batch)
        ours, report = patched(base)
        lp, hp = bf16_channels_last(base), bf16_channels_last(ours)
        with torch.no_grad():
            want = base(x).float()
            row: dict[str, Any] = {"model": f"{source}.{name}", "batch": batch, "replaced": len(report.replaced),
                                   "kept": [list(k) for k in report.kept]}
            got = ours(x).float()
            row["patched_fp32_rel_err"], row["patched_fp32_top1"] = rel_err(got, want), top1(got, want)
            xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            for label, fn in (("eager_bf16", lp), ("patched_bf16", hp)):
                out = fn(xb).float()
                row[f"{label}_rel_err"], row[f"{label}_top1"] = rel_err(out, want), top1(out, want)
            if source == "torchvision":
                twin = ref.MODELS[name](1000).to(DEV).eval()
                twin.load_state_dict(base.state_dict(), strict=True)
                row["reference_resnet_rel_err"] = rel_err(twin(x).float(), want)
        rows.append(row)
        note(f"{source}.{name}: patched {row['replaced']} blocks, left {len(row['kept'])}; vs unpatched fp32, "
             f"rel. L2 / top-1: fp32 patched {row['patched_fp32_rel_err']:.1e} / {row['patched_fp32_top1']:.3f}; "
             + ", ".join(f"{k} {row[k + '_rel_err']:.1e} / {row[k + '_top1']:.3f}"
                         for k in ("eager_bf16", "patched_bf16"))
             + (f"; pyimpl.resnet with torchvision's state_dict (strict): {row['reference_resnet_rel_err']:.1e}"
                if "reference_resnet_rel_err" in row else ""))
        save()


def _time(fn: Callable[[], Any]) -> float:
    if SMOKE:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return cuda_time(fn, warmup=5, rep=30)["median_ms"]


def part_speed() -> None:
    RESULTS["speed"] = rows = []
    configs = [("resnet50", 1), ("resnet50", 32), ("resnet50", 256), ("resnet18", 256)]
    if SMOKE:
        configs = [("resnet50", 1), ("resnet50", 2), ("resnet18", 2)]
    for name in dict.fromkeys(n for n, _ in configs):
        base = build("torchvision", name)
        eager = bf16_channels_last(base)
        ours = bf16_channels_last(patched(base)[0])
        torch._dynamo.reset()  # per model: a static compile at the first batch, a dynamic one at the next
        variants: list[tuple[str, Callable[..., Any]]] = [
            ("eager", eager), ("compile", compiled(eager)), ("patched", ours),
            ("patched+compile", compiled(ours, fullgraph=True))]
        if "--max-autotune" in sys.argv:
            variants.append(("compile_max_autotune", compiled(eager, mode="max-autotune-no-cudagraphs")))
        for batch in (b for n, b in configs if n == name):
            x = images(batch, dtype=torch.bfloat16)
            row: dict[str, Any] = {"model": name, "batch": batch}
            rows.append(row)
            with torch.no_grad():
                want = eager(x).float()
                want32 = base(x.float()).float()
                for label, model in variants:
                    if left() < 25:
                        note(f"speed {name} B={batch}: time budget reached before {label}")
                        break
                    try:
                        t0 = time.time()
                        row[f"{label}_rel_err_vs_eager"] = err = rel_err(model(x).float(), want)  # compiles
                        row[f"{label}_first_call_s"] = time.time() - t0
                        if err > 5e-2:
                            raise RuntimeError(f"output differs from eager bf16: relative L2 {err:.2e}")
                        out = model(x).float()
                        row[f"{label}_rel_err_vs_fp32"], row[f"{label}_top1_vs_fp32"] = rel_err(out, want32), \
                            top1(out, want32)
                        call = functools.partial(model, x)
                        row[f"{label}_ms"] = _time(call)
                        if not SMOKE:
                            row[f"{label}_graph_ms"] = _time(graphed(call))
                    except Exception as ex:  # report and go on
                        print(f"speed {name} B={batch} {label}: {type(ex).__name__} {str(ex)[:400]}", flush=True)
                        row[f"{label}_error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
                    save()
            cells = [f"{lb} {batch * 1e3 / row[lb + '_ms']:.0f}/"
                     + (f"{batch * 1e3 / row[lb + '_graph_ms']:.0f}" if lb + "_graph_ms" in row else "-")
                     for lb, _ in variants if lb + "_ms" in row]
            note(f"{name} bf16 channels-last B={batch}, images/s per call / in a CUDA graph: " + ", ".join(cells))
            note("  rel. L2 error vs the fp32 model: " + ", ".join(
                f"{lb} {row[lb + '_rel_err_vs_fp32']:.1e}" for lb, _ in variants if lb + "_rel_err_vs_fp32" in row)
                + "; first call s: " + ", ".join(f"{lb} {row[lb + '_first_call_s']:.0f}" for lb, _ in variants
                                                 if lb + "_first_call_s" in row))


FAMILIES = [  # first match wins
    ("fused epilogue (Triton)", r"_epilogue_kernel"),
    ("layout copies", r"nchwToNhwc|nhwcToNchw|transpose|copy_kernel|permute"),
    ("BatchNorm", r"batch_norm|batchnorm|bn_fw|bn_"),
    ("convolution", r"conv|implicit|fprop|winograd|nhwc|cudnn"),
    ("pooling", r"pool|adaptive"),
    ("GEMM (fc)", r"gemm|cublas|cutlass|Kernel2"),
    ("add / ReLU / elementwise", r"elementwise|vectorized|unrolled|add|relu|clamp|threshold|triton_"),
]


def part_profile() -> None:
    if SMOKE:
        note("profile: needs CUDA (torch.profiler's CUDA activity); skipped under --smoke")
        return
    base = build("torchvision", "resnet50")
    RESULTS["profile"] = out = {}
    for label, model in (("eager", bf16_channels_last(base)), ("patched", bf16_channels_last(patched(base)[0]))):
        for batch in (32, 256):
            if left() < 15:
                return
            x = images(batch, dtype=torch.bfloat16)
            with torch.no_grad():
                per_kernel = kernel_times(functools.partial(model, x))
            out[f"{label}_B{batch}"] = row = kernel_breakdown(per_kernel, FAMILIES, top=25)
            note(f"GPU time by kernel family, resnet50 {label}, B={batch}, " + breakdown_text(row))
            save()


def main() -> None:
    RESULTS.update(machine_info())
    table = {"parity": part_parity, "speed": part_speed, "profile": part_profile}
    RUN.parts(table, sys.argv[1:])
    print(f"\n==== summary ({RESULTS.get('gpu') or RESULTS.get('cpu')}, {time.time() - START:.0f}s) ====")
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
