"""DDPM / DDIM references: schedules, forward noising, the seed's and diffusers' reverse steps,
classifier-free guidance, and the Philox noise the kernels draw. The seed's UNet is ``pyimpl.unet``."""

from modelkernels.pyimpl.diffusion.philox import (
    NOISE_BLOCK,
    NOISE_QUARTER,
    noise_counters,
    philox_normal,
    set_philox_rounds,
)
from modelkernels.pyimpl.diffusion.schedule import (
    BETA_SCHEDULES,
    Schedule,
    make_betas,
    make_schedule,
    rescale_zero_terminal_snr,
    sample_timesteps,
)
from modelkernels.pyimpl.diffusion.steps import (
    PREDICTION_TYPES,
    VARIANCE_TYPES,
    check_step_args,
    ddim_step,
    ddpm_seed_step,
    ddpm_step,
    guided,
    q_sample,
    threshold_scale,
    velocity,
)

__all__ = [
    "BETA_SCHEDULES",
    "NOISE_BLOCK",
    "NOISE_QUARTER",
    "PREDICTION_TYPES",
    "VARIANCE_TYPES",
    "Schedule",
    "check_step_args",
    "ddim_step",
    "ddpm_seed_step",
    "ddpm_step",
    "guided",
    "make_betas",
    "make_schedule",
    "noise_counters",
    "philox_normal",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sample_timesteps",
    "set_philox_rounds",
    "threshold_scale",
    "velocity",
]
