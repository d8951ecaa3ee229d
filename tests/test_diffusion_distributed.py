"""Sampling split across ranks: ``sample(..., shard=...)`` in one process, then two gloo ranks under
``torchrun --standalone`` (it picks a free port) on a tiny UNet, compared bitwise with one process."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modelkernels.kernels.diffusion.distributed import distributed_sample, shard_bounds
from modelkernels.kernels.diffusion.sampler import sample
from tests.distributed_worker import CASES, case_kwargs, tiny_model

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 120


def _torchrun(out_dir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(out_dir), mode]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.mark.parametrize(("n", "world"), [(5, 2), (7, 3), (1, 2), (3, 8), (16, 4)])
def test_shard_bounds_cover_the_batch_once(n: int, world: int) -> None:
    bounds = [shard_bounds(n, world, r) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _same(got: torch.Tensor, want: torch.Tensor, per_image: bool) -> None:
    if per_image:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_shards_are_bitwise_slices_of_the_whole_run() -> None:
    """Every shard, empty ones too, equals the matching rows of the single-process result: bitwise
    with a per-image model (initial noise and every step's noise keyed on the global index)."""
    for n, kw, per_image in CASES.values():
        model = tiny_model("labels" in kw, per_image)
        whole = sample(model, n, **case_kwargs(kw))
        for start, stop in [(0, 0), (n, n), (n - 1, n), (0, (n + 1) // 2)]:
            part = sample(model, n, shard=(start, stop), **case_kwargs(kw))
            assert part.shape == (stop - start, *whole.shape[1:])
            _same(part, whole[start:stop], per_image)


def test_shard_and_write_errors_name_the_argument() -> None:
    model = tiny_model(False)
    for bad in [(2, 1), (0, 4), (-1, 1), [0, 1], (0.0, 1)]:
        with pytest.raises(ValueError, match=r"shard=.*0 <= start <= stop <= n=3"):
            sample(model, 3, shard=bad, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="write='zip': supported gather, npz, png"):
        distributed_sample(model, 3, write="zip")
    with pytest.raises(ValueError, match="write='npz' needs out_dir"):
        distributed_sample(model, 3, write="npz")
    with pytest.raises(ValueError, match="sets the shard itself"):
        distributed_sample(model, 3, shard=(0, 1))
    with pytest.raises(ValueError, match="write='png' needs output='uint8'"):
        distributed_sample(model, 3, write="png", out_dir=".", output="float")
    with pytest.raises(RuntimeError, match="needs a process group"):
        distributed_sample(model, 3)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        shard_bounds(3, 2, 2)


def test_two_gloo_ranks_gather_the_single_process_images(tmp_path: Path) -> None:
    run = _torchrun(tmp_path, "cases")
    assert run.returncode == 0, run.stderr[-3000:]
    for name, (n, kw, per_image) in CASES.items():
        got = torch.load(tmp_path / f"{name}.pt")
        want = sample(tiny_model("labels" in kw, per_image), n, **case_kwargs(kw))
        _same(got, want, per_image)
    want = sample(tiny_model(False), 3, **dict(case_kwargs({"seed": 3}), output="uint8"))
    for rank, (start, stop) in enumerate([(0, 2), (2, 3)]):
        with np.load(tmp_path / "npz" / f"rank{rank}.npz") as f:
            assert f["indices"].tolist() == list(range(start, stop))
            assert np.array_equal(f["images"], want[start:stop].numpy())


def test_a_failing_rank_fails_the_run_with_its_error(tmp_path: Path) -> None:
    run = _torchrun(tmp_path, "fail")
    assert run.returncode != 0
    assert "rank 1 failed on purpose" in run.stdout + run.stderr


@pytest.mark.gpu
def test_shards_replay_the_whole_run_on_gpu() -> None:
    """On CUDA with the sampler's graph: a shard is bitwise the whole run's rows (per-image model)."""
    n, kw, _ = CASES["odd"]
    model = tiny_model(False).cuda()
    whole = sample(model, n, cuda_graph=True, **case_kwargs(kw))
    for start, stop in [(0, 2), (2, 5), (4, 5)]:
        part = sample(model, n, shard=(start, stop), cuda_graph=True, **case_kwargs(kw))
        assert torch.equal(part, whole[start:stop]), (start, stop)


def test_gpu_multi_script_runs_its_cpu_smoke_mode(tmp_path: Path) -> None:
    """benchmarks/gpu_multi.py --device cpu --quick: one and two gloo ranks measured, the gathered
    images checked against the one-rank run (bitwise: the tiny UNet on the same shard sizes)."""
    import json

    out = tmp_path / "multi.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_multi.py"), "--device", "cpu", "--quick", "--out", str(out)]
    run = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["errors"] == {} and list(res["worlds"]) == ["1", "2"]
    for world, part in res["worlds"].items():
        assert part["verify"]["bitwise_same_shards"], world
        assert part["runs"][0]["images"] == 2 * int(world) and part["runs"][0]["images_per_s"] > 0
    assert res["worlds"]["1"]["runs"][0]["efficiency"] == 1.0
