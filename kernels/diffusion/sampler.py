"""The reverse-diffusion sampling loop on the device: ``sample(model, n, ...)``.

As the seed's ``Diffusion.sample``: x_T ~ N(0, I), then for i = T-1 .. 1 the model predicts the
noise at t = i and the seed's update gives x_{i-1}; with labels and ``cfg_scale > 0`` the noise is
``torch.lerp(uncond, cond, cfg_scale)`` (``ddpm_condition.py``); the result is
``((x.clamp(-1, 1) + 1) / 2 * 255).to(uint8)``. Methods: ``"seed"`` (the seed's update, every
step), ``"ddpm"`` (diffusers' DDPM step, fixed_small, on ``steps`` leading-spaced timesteps) and
``"ddim"`` (``steps`` leading-spaced timesteps, ``eta``).

The loop never synchronizes with the host: timesteps are device tensors, the step is one fused
kernel with its coefficients gathered on the device, the noise is Philox drawn in the kernel with
(seed, offset) advanced on the host. With ``cuda_graph=True`` one step (model call(s) + fused step +
advancing the timestep index and the Philox offset on the device) is captured once as a CUDA graph
and replayed ``steps`` times.

``shard=(start, stop)`` samples images start .. stop - 1 of the ``n``-image run alone, bitwise the
same numbers: the initial noise is the whole run's draw sliced, and every step's Philox counters are
keyed on the global sample index (sample b uses counters ``offset + b * noise_counters(1, M)`` +
...; the offset advances by the whole run's count each step). ``kernels.diffusion.distributed``
splits a batch over ``torch.distributed`` ranks this way.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modelkernels.kernels.diffusion import ops
from modelkernels.kernels.progress import progress_bar
from modelkernels.pyimpl.diffusion.philox import noise_counters
from modelkernels.pyimpl.diffusion.schedule import Schedule, make_schedule

__all__ = ["METHODS", "cfg_model_output", "sample", "sampling_timesteps", "save_grid"]

METHODS = ("seed", "ddpm", "ddim")


def sampling_timesteps(method: str, num_train_timesteps: int, steps: int | None) -> tuple[list[int], list[int]]:
    """(timesteps, previous timesteps) of the loop: the seed's T-1 .. 1, or ``steps`` leading-spaced ones."""
    T = num_train_timesteps
    if method not in METHODS:
        raise ValueError(f"method={method!r}: supported {', '.join(METHODS)}")
    if method == "seed":
        if steps is not None and steps != T - 1:
            raise ValueError(f"steps={steps}: the seed's loop runs every step (T - 1 = {T - 1}); use method='ddim'")
        ts = list(range(T - 1, 0, -1))
        return ts, [t - 1 for t in ts]
    n = T if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ValueError(f"steps={steps!r}: must be an integer in 1..{T}")
    ratio = T // n
    ts = [k * ratio for k in range(n - 1, -1, -1)]
    if method == "ddim":
        return ts, [t - ratio for t in ts]
    return ts, [*ts[1:], -1]


def cfg_model_output(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                     labels: torch.Tensor | None, cfg_scale: float,
                     batched: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(conditional output, unconditional output or None) as the seed's ddpm_condition.py gets them.

    ``batched=True`` runs one model call on the concatenated batch: for the seed's UNetConditional
    the time embedding of the second half gets no label embedding (what ``labels=None`` does).
    """
    if labels is None:
        return model(x, t), None
    if cfg_scale <= 0:
        return model(x, t, labels), None
    if not batched:
        return model(x, t, labels), model(x, t, None)
    time_embedding: Any = getattr(model, "time_embedding", None)
    label_emb: Any = getattr(model, "label_emb", None)
    unet_forward: Any = getattr(model, "unet_forward", None)
    if time_embedding is None or label_emb is None or unet_forward is None:
        raise ValueError("cfg_batched=True needs the seed's UNetConditional (time_embedding, label_emb, unet_forward)")
    emb = time_embedding(t)
    out = unet_forward(torch.cat([x, x]), torch.cat([emb + label_emb(labels), emb]))
    cond, uncond = out.chunk(2)
    return cond, uncond


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write (n, C, H, W) uint8 images (C = 1 or 3) as one PNG grid with a 2-pixel border."""
    from PIL import Image

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 (n, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    pad = 2
    grid = torch.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[k]
    arr = grid.permute(1, 2, 0).cpu().numpy()
    out = Path(path)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(out)
    return out


class _Loop:
    """The state of one sampling run and the step that advances it (graph-capturable)."""

    def __init__(self, model: Callable[..., torch.Tensor], x: torch.Tensor, schedule: Schedule, method: str,
                 ts: list[int], prev: list[int], labels: torch.Tensor | None, cfg_scale: float, cfg_batched: bool,
                 eta: float, seed: int, first: int, total: int) -> None:
        """``first``: the global index of x[0]; ``total``: the whole run's batch (Philox counters per step)."""
        dev = x.device
        n = x.shape[0]
        self.model, self.x, self.schedule, self.method = model, x, schedule, method
        self.labels, self.cfg_scale, self.cfg_batched, self.eta = labels, cfg_scale, cfg_batched, eta
        self.ts = torch.tensor(ts, dtype=torch.int64, device=dev)[:, None].expand(len(ts), n).contiguous()
        self.prev = torch.tensor(prev, dtype=torch.int64, device=dev)[:, None].expand(len(ts), n).contiguous()
        self.k = torch.zeros(1, dtype=torch.int64, device=dev)
        per_sample = noise_counters(1, x[0].numel())
        self.rng = torch.tensor([seed, first * per_sample], dtype=torch.int64, device=dev)
        self.counters = per_sample * total

    def step(self, in_place: bool = False) -> None:
        """One step; ``in_place`` writes the result into the same x tensor (what a CUDA graph needs)."""
        t = self.ts.index_select(0, self.k)[0]
        prev_t = self.prev.index_select(0, self.k)[0]
        cond, uncond = cfg_model_output(self.model, self.x, t, self.labels, self.cfg_scale, self.cfg_batched)
        cond = cond.to(self.x.dtype)  # a model under autocast answers in bf16/fp16; the update runs in x's dtype
        uncond = None if uncond is None else uncond.to(self.x.dtype)
        guide: dict[str, Any] = {} if uncond is None else {"model_output_uncond": uncond,
                                                           "guidance_scale": self.cfg_scale}
        if self.method == "seed":
            x = ops.ddpm_seed_step(cond, t, self.x, self.schedule, rng_state=self.rng, **guide)
        elif self.method == "ddpm":
            x = ops.ddpm_step(cond, t, self.x, self.schedule, prev_t=prev_t, rng_state=self.rng, **guide)
        else:
            noise: dict[str, Any] = {"rng_state": self.rng} if self.eta > 0 else {}
            x = ops.ddim_step(cond, t, self.x, self.schedule, prev_t=prev_t, eta=self.eta, **noise, **guide)
        if in_place:
            self.x.copy_(x)
        else:
            self.x = x
        self.k += 1
        self.rng[1] += self.counters


def sample(
    model: Callable[..., torch.Tensor],
    n: int,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    labels: torch.Tensor | None = None,
    cfg_scale: float = 3.0,
    cfg_batched: bool = False,
    method: str = "seed",
    steps: int | None = None,
    eta: float = 0.0,
    schedule: Schedule | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cuda_graph: bool = False,
    autocast: torch.dtype | None = None,
    progress: bool = True,
    output: str = "uint8",
    save_path: str | Path | None = None,
    nrow: int = 8,
    shard: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Sample ``n`` images from a noise-predicting ``model(x, t)`` (or ``model(x, t, labels)``).

    image_size / channels: default to the model's ``image_size`` / ``c_in`` (the seed's UNet has both).
    labels: (n,) class labels for a conditional model; ``cfg_scale > 0`` mixes in the unconditional
    prediction (``model(x, t, None)``, or one batched call with ``cfg_batched``). method: "seed"
    (T - 1 steps), "ddpm" or "ddim" (``steps`` timesteps, ``eta`` for DDIM). schedule: default the
    seed's (linear 1e-4 .. 0.02, T = 1000). seed: initial noise (torch generator) and Philox key.
    output: "uint8" (the seed's ``(x.clamp(-1, 1) + 1) / 2 * 255``) or "float" (x itself).
    save_path: also write a PNG grid. ``cuda_graph``: capture one step and replay it (CUDA only).
    autocast: torch.float16 or torch.bfloat16 runs the model under ``torch.autocast`` in one region
    around the whole loop (warm-up, capture and replays), so autocast casts the weights once and
    reuses the casts (a region per call would recast every weight at every step, inside the graph
    too); the model's output is cast back to ``dtype`` for the update.
    shard: (start, stop) with 0 <= start <= stop <= n: only images start .. stop - 1 of the n-image
    run, bitwise what the whole run gives for them (labels stay the whole run's (n,)); an empty shard
    returns (0, C, H, W) without calling the model.
    """
    if output not in ("uint8", "float"):
        raise ValueError(f"output={output!r}: supported 'uint8', 'float'")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: must be a positive integer")
    first = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    dev = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    size = image_size if image_size is not None else getattr(model, "image_size", None)
    chans = channels if channels is not None else getattr(model, "c_in", None)
    if size is None or chans is None:
        raise ValueError("image_size and channels are needed (the model has no image_size / c_in attributes)")
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"labels.shape={tuple(labels.shape)}: expected ({n},)")
        labels = labels.to(dev)
    start, stop = _check_shard(shard, n)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if autocast not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"autocast={autocast}: supported None, torch.float16, torch.bfloat16")
    sched = (schedule if schedule is not None else make_schedule()).to(dev)
    ts, prev = sampling_timesteps(method, sched.num_train_timesteps, steps)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn((n, chans, size, size), generator=gen, device=dev, dtype=dtype)
    if (start, stop) != (0, n):
        x = x[start:stop].clone()
        labels = None if labels is None else labels[start:stop]
    if stop == start:
        return x.type(torch.uint8) if output == "uint8" else x
    loop = _Loop(model, x, sched, method, ts, prev, labels, float(cfg_scale), cfg_batched, eta, seed, start, n)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    bar = progress_bar(len(ts), "sampling", progress)
    try:
        region = contextlib.nullcontext() if autocast is None else torch.autocast(dev.type, dtype=autocast)
        with torch.no_grad(), region:
            if cuda_graph:
                _run_graph(loop, len(ts), bar)
            else:
                for _ in range(len(ts)):
                    loop.step()
                    bar.update(1)
    finally:
        bar.close()
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()
    out = loop.x
    if output == "uint8":
        out = ((out.clamp(-1, 1) + 1) / 2 * 255).type(torch.uint8)
        if save_path is not None:
            save_grid(out, save_path, nrow)
    elif save_path is not None:
        save_grid(((out.clamp(-1, 1) + 1) / 2 * 255).type(torch.uint8), save_path, nrow)
    return out


def _check_shard(shard: Any, n: int) -> tuple[int, int]:
    """(start, stop) of the images to sample: the whole run without ``shard``."""
    if shard is None:
        return 0, n
    ok = isinstance(shard, tuple) and len(shard) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in shard)
    if not ok or not 0 <= shard[0] <= shard[1] <= n:
        raise ValueError(f"shard={shard!r}: must be a tuple (start, stop) of ints with 0 <= start <= stop <= n={n}")
    return int(shard[0]), int(shard[1])


def _run_graph(loop: _Loop, steps: int, bar: Any) -> None:
    """Capture one step as a CUDA graph (after a warm-up on a side stream), then replay it."""
    x0, rng0 = loop.x.clone(), loop.rng.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            loop.step(in_place=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loop.step(in_place=True)
    loop.x.copy_(x0)
    loop.rng.copy_(rng0)
    loop.k.zero_()
    for _ in range(steps):
        graph.replay()
        bar.update(1)
