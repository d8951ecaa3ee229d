"""Diffusion: fused Triton DDPM / DDIM steps and q_sample, the sampler and a diffusers-shaped scheduler.

References: ``pyimpl.diffusion`` (schedules, steps) and ``pyimpl.unet`` (the seed's UNet).
"""

from modelkernels.kernels.diffusion.ops import ddim_step, ddpm_seed_step, ddpm_step, q_sample
from modelkernels.pyimpl.diffusion import Schedule, make_schedule, set_philox_rounds

__all__ = ["Schedule", "ddim_step", "ddpm_seed_step", "ddpm_step", "make_schedule", "q_sample", "set_philox_rounds"]
