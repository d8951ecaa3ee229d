"""Sampling throughput across GPUs with ``kernels.diffusion.distributed``: images/s at 1, 2, 4, 8 ranks.

    PYTHONPATH=$PWD python3 benchmarks/gpu_multi.py --out $OUT/gpu_multi.json
    PYTHONPATH=$PWD python3 benchmarks/gpu_multi.py --device cpu --quick --out /tmp/gpu_multi.json

One ``torchrun --standalone`` per world size (1, 2, 4, 8 up to the GPUs present; NCCL with NVLink
multicast off, ``NCCL_NVLS_ENABLE=0``). Each rank samples B images (B per GPU 16 and 128) with the
seed's UNet (64x64, width 64) patched (``kernels.nn.patch``), channels-last, one bf16 autocast region
and the sampler's CUDA graph, the seed's update on a schedule of ``--steps`` + 1 timesteps: a scaled
step count (the seed runs 999; the time per step is the same), then the gather to rank 0. A run is
timed by CUDA events on every rank from a barrier to the gathered result, the slowest rank counts;
median of ``--reps`` runs after one warm-up run. Scaling efficiency = images/s at W / (W * images/s at 1),
all world sizes measured in the same call.

Before timing, every world size samples 6 images (10 steps; at 8 ranks two shards are empty) and
compares the gathered images with the one-rank run: ``bitwise_same_shards`` against one GPU
sampling the same shards one after the other (``sample(..., shard=)``: the same batch sizes, so the
same kernels: expected bitwise), and the differing uint8 pixels against one GPU sampling all 6 in
one batch (cuDNN / cuBLAS may pick other algorithms for another batch size: rounding, reported).
``--device cpu --quick``: gloo, 1 and 2 ranks, a tiny UNet, 2 steps, no graph or autocast (checks
the script). The JSON goes to ``--out``; a summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
VERIFY_N, VERIFY_STEPS = 6, 10


def _model(device: torch.device, quick: bool) -> torch.nn.Module:
    from modelkernels import kernels
    from modelkernels.pyimpl.unet import UNet

    torch.manual_seed(0)
    size, width = (8, 8) if quick else (64, 64)
    model = UNet(image_size=size, base_channels=width).to(device).eval()
    if device.type == "cuda":
        kernels.nn.patch(model)
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _sample_kwargs(device: torch.device, steps: int) -> dict[str, Any]:
    from modelkernels.pyimpl.diffusion import make_schedule

    cuda = device.type == "cuda"
    return {"schedule": make_schedule(num_train_timesteps=steps + 1), "seed": 0, "cuda_graph": cuda,
            "autocast": torch.bfloat16 if cuda else None, "progress": False}


def worker(args: argparse.Namespace) -> None:
    """One rank: verification against the one-rank files, then the timed runs; rank 0 writes JSON."""
    import torch.distributed as dist

    from modelkernels.kernels.diffusion.distributed import distributed_sample, init_from_env, shard_bounds
    from modelkernels.kernels.diffusion.sampler import sample

    device = init_from_env(timeout_s=300, cuda=args.device == "cuda")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = _model(device, args.quick)
    folder = Path(args.work)
    res: dict[str, Any] = {"world": world}
    vkw = _sample_kwargs(device, 2 if args.quick else VERIFY_STEPS)
    got = distributed_sample(model, VERIFY_N, **vkw)
    if world == 1 and got is not None:
        torch.save(got.cpu(), folder / "one_batch.pt")
        for w in args.worlds:
            shards = [sample(model, VERIFY_N, shard=shard_bounds(VERIFY_N, w, r), **vkw) for r in range(w)]
            torch.save(torch.cat(shards).cpu(), folder / f"same_shards_{w}.pt")
    if rank == 0 and got is not None:
        same = torch.load(folder / f"same_shards_{world}.pt")
        one = torch.load(folder / "one_batch.pt")
        res["verify"] = {"n": VERIFY_N, "steps": vkw["schedule"].num_train_timesteps - 1,
                         "bitwise_same_shards": bool(torch.equal(got.cpu(), same)),
                         "pixels_differing_vs_one_batch": int((got.cpu() != one).sum()),
                         "max_abs_uint8_diff_vs_one_batch": int((got.cpu().int() - one.int()).abs().max()),
                         "pixels": one.numel()}
    kw = _sample_kwargs(device, args.steps)
    res["runs"] = []
    for per_gpu in args.batches:
        n = per_gpu * world
        distributed_sample(model, n, **kw)  # warm-up: compiles, autotunes, allocates
        times = []
        for _ in range(args.reps):
            times.append(_timed(lambda n=n: distributed_sample(model, n, **kw), device))
        ms = statistics.median(times)
        res["runs"].append({"batch_per_gpu": per_gpu, "images": n, "steps": args.steps, "ms_all": times,
                            "ms_median": ms, "images_per_s": n / (ms / 1e3)})
        if rank == 0:
            print(f"world {world} B/GPU {per_gpu}: {ms:.1f} ms, {n / (ms / 1e3):.1f} images/s", flush=True)
    if rank == 0:
        (folder / f"world_{world}.json").write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


def _timed(fn: Any, device: torch.device) -> float:
    """ms of fn from a barrier, the slowest rank's (CUDA events on GPU, the wall clock on CPU)."""
    import torch.distributed as dist

    dist.barrier()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = torch.tensor([start.elapsed_time(end)], device=device)
    else:
        t0 = time.perf_counter()
        fn()
        ms = torch.tensor([(time.perf_counter() - t0) * 1e3])
    dist.all_reduce(ms, op=dist.ReduceOp.MAX)
    return float(ms.item())


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """torchrun per world size, then the efficiencies against one rank."""
    from benchmarks.harness import machine_info

    res: dict[str, Any] = {"machine": machine_info(), "device": args.device, "quick": args.quick,
                           "steps": args.steps, "steps_note": f"{args.steps} of the seed's 999 steps (scaled)",
                           "worlds": {}, "errors": {}}
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as work:
        for world in args.worlds:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                   __file__, "--worker", "--work", work, "--device", args.device, "--steps", str(args.steps),
                   "--reps", str(args.reps), "--batches", ",".join(map(str, args.batches)),
                   "--worlds", ",".join(map(str, args.worlds)), *(["--quick"] if args.quick else [])]
            t0 = time.time()
            try:
                run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                res["errors"][str(world)] = f"timed out after {args.timeout} s"
                continue
            print(run.stdout, end="", flush=True)
            part = Path(work) / f"world_{world}.json"
            if run.returncode != 0 or not part.exists():
                res["errors"][str(world)] = f"exit {run.returncode}: {run.stderr[-3000:]}"
                print(run.stderr[-3000:], file=sys.stderr)
                if world == 1:
                    break  # the others compare with the one-rank files
                continue
            res["worlds"][str(world)] = dict(json.loads(part.read_text()), wall_s=time.time() - t0)
            Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    _efficiency(res)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return res


def _efficiency(res: dict[str, Any]) -> None:
    one = {r["batch_per_gpu"]: r["images_per_s"] for r in res["worlds"].get("1", {}).get("runs", [])}
    print("\n==== images/s (scaling efficiency vs 1) ====")
    for world, part in res["worlds"].items():
        for r in part["runs"]:
            base = one.get(r["batch_per_gpu"])
            r["efficiency"] = None if base is None else r["images_per_s"] / (int(world) * base)
            eff = "" if r["efficiency"] is None else f", efficiency {100 * r['efficiency']:.1f} %"
            print(f"world {world} B/GPU {r['batch_per_gpu']}: {r['images_per_s']:.1f} images/s{eff}")
        print(f"world {world} verify: {part.get('verify')}")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", default="gpu_multi.json", help="path of the JSON to write")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="tiny model, 2 steps, 1 and 2 ranks (checks the script)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 100; 2 with --quick)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per case (default 3; 1 with --quick)")
    p.add_argument("--batches", type=_ints, default=None, help="images per GPU, comma-separated (default 16,128)")
    p.add_argument("--worlds", type=_ints, default=None, help="world sizes (default 1,2,4,8 up to the GPUs present)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds allowed per world size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 100)
    args.reps = args.reps or (1 if args.quick else 3)
    args.batches = args.batches or ([2] if args.quick else [16, 128])
    if args.worlds is None:
        most = torch.cuda.device_count() if args.device == "cuda" else 2
        args.worlds = [w for w in (1, 2, 4, 8) if w <= most and (w <= 2 or not args.quick)]
    if not args.worlds or args.worlds[0] != 1:
        raise SystemExit(f"--worlds={args.worlds}: must start with 1 (the efficiencies and checks compare with it)")
    if args.worker:
        worker(args)
    else:
        launch(args)


if __name__ == "__main__":
    main()
