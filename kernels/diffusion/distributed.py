"""Sampling one batch across ``torch.distributed`` ranks: ``distributed_sample(model, n, ...)``.

Launched with ``torchrun --nproc-per-node N script.py``: every rank calls ``distributed_sample`` with
the same arguments; rank r samples its contiguous shard of the n images through ``sample(...,
shard=...)`` (the same loop: CUDA graph, autocast region, patched model), so the images are bitwise
the ones one process would make from the same seed, however the batch is split (on the same card
type and dtype, and for a model whose per-image output does not depend on the batch size). The only
communication is the end: the shards gathered to rank 0 (``write="gather"``), or each rank writes
its own (``"npz"``: ``rank{r}.npz`` with ``images`` and their global ``indices``; ``"png"``: one
``{index:06d}.png`` per image) into ``out_dir``. The progress bar shows on rank 0 only.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from modelkernels.kernels.diffusion.sampler import sample

__all__ = ["WRITE_MODES", "distributed_sample", "init_from_env", "shard_bounds"]

WRITE_MODES = ("gather", "npz", "png")


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, stop) of rank's images: contiguous blocks, the first ``n % world_size`` ranks one more;
    ranks past n get an empty block (start == stop)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def init_from_env(timeout_s: float = 600.0, cuda: bool | None = None) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU) unless already joined, and
    return this rank's device (``cuda:LOCAL_RANK``, or cpu). ``timeout_s`` bounds every collective;
    ``cuda`` defaults to whether CUDA is available."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError("no process group and no RANK / WORLD_SIZE in the environment: launch with torchrun")
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return torch.device("cuda", local) if use_cuda else torch.device("cpu")


def distributed_sample(model: Any, n: int, *, write: str = "gather", out_dir: str | Path | None = None,
                       progress: bool = True, **kwargs: Any) -> torch.Tensor | None:
    """Sample image 0 .. n - 1 of the ``n``-image run, split across the ranks of the process group.

    kwargs go to ``sample`` (seed, method, steps, labels for all n images, cuda_graph, autocast,
    output, ...). write: "gather" returns the (n, C, H, W) result on rank 0 and None on the others;
    "npz" / "png" write each rank's images into ``out_dir`` and return the rank's shard.
    """
    if write not in WRITE_MODES:
        raise ValueError(f"write={write!r}: supported {', '.join(WRITE_MODES)}")
    if write != "gather" and out_dir is None:
        raise ValueError(f"write={write!r} needs out_dir")
    if "shard" in kwargs or "save_path" in kwargs:
        raise ValueError("distributed_sample sets the shard itself; pass write= and out_dir= instead of "
                         f"{', '.join(k for k in ('shard', 'save_path') if k in kwargs)}")
    if write == "png" and kwargs.get("output", "uint8") != "uint8":
        raise ValueError(f"write='png' needs output='uint8', got output={kwargs['output']!r}")
    if not dist.is_initialized():
        raise RuntimeError("distributed_sample needs a process group: call init_from_env() (under torchrun) first")
    rank, world = dist.get_rank(), dist.get_world_size()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: must be a positive integer")
    start, stop = shard_bounds(n, world, rank)
    mine = sample(model, n, shard=(start, stop), progress=progress and rank == 0, **kwargs)
    if write == "gather":
        return _gather(mine, n, world, rank)
    folder = Path(out_dir)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    if write == "npz":
        np.savez(folder / f"rank{rank}.npz", images=mine.cpu().numpy(), indices=np.arange(start, stop))
    else:
        _write_pngs(mine, folder, start)
    dist.barrier()
    return mine


def _gather(mine: torch.Tensor, n: int, world: int, rank: int) -> torch.Tensor | None:
    """The shards all-gathered (padded to the largest shard: collectives need equal sizes), rank 0's result."""
    largest = shard_bounds(n, world, 0)[1]
    padded = torch.zeros((largest, *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    padded[: mine.shape[0]] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    if rank != 0:
        return None
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, (shard_bounds(n, world, r) for r in range(world)))])


def _write_pngs(images: torch.Tensor, folder: Path, start: int) -> None:
    from PIL import Image

    if images.shape[1] not in (1, 3):
        raise ValueError(f"write='png' needs 1 or 3 channels, got images of shape {tuple(images.shape)}")
    for k, img in enumerate(images.permute(0, 2, 3, 1).cpu().numpy()):
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / f"{start + k:06d}.png")
