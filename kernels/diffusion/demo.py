"""CPU demo: train the seed's (small) conditional UNet on scikit-learn's digits, then sample a grid.

    python -m modelkernels.kernels.diffusion.demo --minutes 3 --out digits.png

The 8x8 digits (0..16) are scaled to [-1, 1] (``--image-size 16`` resizes them); the model is the
seed's UNet_conditional at width 16 (``pyimpl.unet.UNetConditional``), trained as the seed trains
it (t ~ U[1, T), q_sample noising, MSE on the noise, labels dropped 10% of the time, AdamW, EMA
0.995 after ``--ema-start`` steps) on one CPU thread by default (more threads only help on an idle
machine). Sampling runs the seed's loop (999 steps, classifier-free
guidance 3) through ``kernels.diffusion.sample``; row k of the grid holds digit k.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modelkernels import kernels
from modelkernels.kernels.diffusion.sampler import sample, save_grid
from modelkernels.kernels.progress import progress_bar
from modelkernels.pyimpl.diffusion import make_schedule
from modelkernels.pyimpl.unet import EMA, UNetConditional, train_step


def load_digits_tensor(image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (n, 1, S, S) floats in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, torch.tensor(digits.target, dtype=torch.int64)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time")
    ap.add_argument("--max-steps", type=int, default=None, help="stop training after this many steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16, help="base_channels of the UNet (the seed: 64)")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the seed: 3e-4)")
    ap.add_argument("--ema-start", type=int, default=2000, help="steps before the EMA starts averaging (seed: 2000)")
    ap.add_argument("--per-digit", type=int, default=8, help="samples per digit in the grid")
    ap.add_argument("--method", default="seed", choices=["seed", "ddim"], help="seed: 999 steps; ddim: --steps")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default="digits.png")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (tqdm) for training and sampling")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_digits_tensor(args.image_size)
    model = UNetConditional(c_in=1, c_out=1, time_dim=64, num_classes=10, image_size=args.image_size,
                            base_channels=args.width)
    ema_model = EMA.copy_of(model)
    ema = EMA(0.995)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = make_schedule()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    step = 0
    loss = float("nan")
    bar = progress_bar(args.max_steps, f"training ({args.minutes:g} min at most)", not args.no_progress)
    while time.time() - start < 60 * args.minutes and (args.max_steps is None or step < args.max_steps):
        idx = torch.randint(0, images.shape[0], (args.batch,), generator=gen)
        loss = train_step(model, opt, images[idx], sched.alphas_cumprod, labels=labels[idx], generator=gen,
                          ema=ema, ema_model=ema_model, step_start_ema=args.ema_start,
                          q_sample=lambda x0, t, z, ah: kernels.q_sample(x0, t, sched, z))
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix_str(f"loss {loss:.4f}")
    bar.close()
    print(f"trained {step} steps in {time.time() - start:.0f}s, last loss {loss:.4f}", flush=True)
    final = ema_model if ema.step > args.ema_start else model
    grid_labels = torch.arange(10).repeat_interleave(args.per_digit)
    imgs = sample(final, grid_labels.shape[0], labels=grid_labels, cfg_scale=args.cfg_scale, method=args.method,
                  steps=args.steps if args.method == "ddim" else None, seed=args.seed, progress=not args.no_progress)
    big = imgs.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    out = save_grid(big, args.out, nrow=args.per_digit)
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
