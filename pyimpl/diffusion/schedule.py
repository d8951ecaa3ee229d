"""Noise schedules: beta_t for t = 0 .. T-1, alpha_t = 1 - beta_t, alpha_hat_t = prod_{s<=t} alpha_s.

Formulas as diffusers' DDPMScheduler builds them (``beta_schedule``):
- ``linear``: linspace(beta_start, beta_end, T), the seed's schedule (1e-4 .. 0.02, T = 1000);
- ``scaled_linear``: linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2 (latent diffusion);
- ``squaredcos_cap_v2``: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999) with
  abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2 (Nichol & Dhariwal 2021, "improved DDPM");
- ``sigmoid``: sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start (GeoDiff);
- ``laplace``: as squaredcos_cap_v2 with abar(s) = sqrt(snr / (1 + snr)),
  snr = exp(-sign(1/2 - s) / 2 log(1 - 2 |1/2 - s| + 1e-6)) (diffusers' Laplace schedule);
- or given betas (``trained_betas``).
``rescale_betas_zero_snr`` then rescales the betas to zero terminal SNR (Lin et al. 2023, "Common
Diffusion Noise Schedules and Sample Steps are Flawed", algorithm 1): sqrt(alpha_hat) is shifted so
its last value is 0 and scaled so its first value is unchanged; the last beta becomes 1.
The schedule is kept in float32 (diffusers' choice) or float64, never float16: in float16
alpha_hat near t = 0 rounds to 1 and 1 - alpha_hat to 0, a division by zero in every step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BETA_SCHEDULES", "Schedule", "make_betas", "make_schedule", "rescale_zero_terminal_snr", "sample_timesteps"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
SCHEDULE_DTYPES = (torch.float32, torch.float64)


def _alpha_bar_betas(n: int, abar: Callable[[float], float]) -> torch.Tensor:
    """beta_i = min(1 - abar((i + 1) / n) / abar(i / n), 0.999): a continuous alpha_hat discretized."""
    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)


def _laplace_abar(s: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - s) * math.log(1 - 2 * math.fabs(0.5 - s) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose alpha_hat ends at 0 (zero terminal SNR; Lin et al. 2023, algorithm 1), in float32."""
    sqrt_abar = torch.cumprod(1.0 - betas.to(torch.float32), dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | torch.Tensor | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """beta_t (float32, length T) for the named schedule, or the given ``trained_betas``; rescaled to
    zero terminal SNR with ``rescale_betas_zero_snr``."""
    betas = _checked_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
    if rescale_betas_zero_snr:
        if betas.numel() < 2:
            raise ValueError("rescale_betas_zero_snr=True needs at least 2 timesteps")
        return rescale_zero_terminal_snr(betas)
    return betas


def _checked_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                   trained_betas: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).flatten().cpu()
        if betas.numel() == 0:
            raise ValueError("trained_betas is empty: give at least one beta")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("trained_betas: every beta must lie in (0, 1)")
        return betas
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r}: must be a positive integer")
    betas = _named_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"beta_start={beta_start!r}, beta_end={beta_end!r}: the {beta_schedule} schedule's betas "
                         f"span {float(betas.min()):g}..{float(betas.max()):g}; every beta must lie in (0, 1)")
    return betas


def _named_betas(n: int, beta_start: float, beta_end: float, beta_schedule: str) -> torch.Tensor:
    if beta_schedule not in ("squaredcos_cap_v2", "laplace"):  # these two ignore beta_start / beta_end
        for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name}={v!r}: must be a finite number in (0, 1)")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        if beta_start < 0 or beta_end < 0:
            raise ValueError(f"beta_start={beta_start!r}, beta_end={beta_end!r}: the scaled_linear schedule takes "
                             "square roots; both must be in (0, 1)")
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return _alpha_bar_betas(n, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    if beta_schedule == "laplace":
        return _alpha_bar_betas(n, _laplace_abar)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule={beta_schedule!r}: supported {', '.join(BETA_SCHEDULES)} (or trained_betas)")


@dataclass(frozen=True)
class Schedule:
    """betas, alphas = 1 - betas and alphas_cumprod (alpha_hat), one dtype (float32/float64) and device."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    @staticmethod
    def from_betas(betas: torch.Tensor, dtype: torch.dtype = torch.float32,
                   device: str | torch.device | None = None) -> Schedule:
        """alpha and alpha_hat from betas, computed in float32 as the seed and diffusers do, then cast."""
        if dtype not in SCHEDULE_DTYPES:
            raise ValueError(f"dtype={dtype}: schedules are kept in float32 or float64 (float16 rounds "
                             "alpha_hat near t=0 to 1, dividing by zero)")
        betas32 = betas.to(torch.float32)
        alphas = 1.0 - betas32
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        return Schedule(*(v.to(dtype=dtype, device=device) for v in (betas32, alphas, alphas_cumprod)))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Schedule:
        if dtype is not None and dtype not in SCHEDULE_DTYPES:
            raise ValueError(f"dtype={dtype}: schedules are kept in float32 or float64 (float16 rounds "
                             "alpha_hat near t=0 to 1, dividing by zero)")
        return Schedule(*(v.to(device=device, dtype=dtype) for v in (self.betas, self.alphas, self.alphas_cumprod)))


def make_schedule(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    rescale_betas_zero_snr: bool = False,
) -> Schedule:
    """The schedule; the defaults are the seed's (linear, 1e-4 .. 0.02, T = 1000)."""
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
    return Schedule.from_betas(betas, dtype=dtype, device=device)


def sample_timesteps(n: int, num_train_timesteps: int = 1000, generator: torch.Generator | None = None,
                     device: str | torch.device | None = None) -> torch.Tensor:
    """The seed's training timesteps: uniform integers in [1, T)."""
    dev = generator.device if generator is not None else device
    return torch.randint(1, num_train_timesteps, (n,), generator=generator, device=dev).to(device)
