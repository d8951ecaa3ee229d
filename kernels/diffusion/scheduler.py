"""Schedulers with diffusers' call shape, running the library's fused steps.

``DDPMScheduler`` and ``DDIMScheduler`` take every argument of diffusers' classes (0.42) with its
default (beta_schedule, trained_betas, prediction_type, variance_type, clip_sample, thresholding,
timestep_spacing, steps_offset, set_alpha_to_one, rescale_betas_zero_snr) and offer ``set_timesteps``,
``step``, ``add_noise``, ``get_velocity``, ``scale_model_input``, ``previous_timestep``, ``timesteps``,
``order``, ``init_noise_sigma``, ``len()``, and diffusers' config idiom (``config``, ``from_config``,
``save_pretrained`` / ``from_pretrained`` of a local folder: ``scheduler_config.py``), so a diffusers
loop or pipeline runs unchanged:

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(50)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=g).prev_sample

Timesteps broadcast as diffusers': an int, a one-element tensor (any shape) or one per sample.

``step`` also takes per-sample timestep tensors and ``noise=`` (diffusers' DDIM calls it
``variance_noise``). With a ``generator`` the noise is drawn exactly as diffusers draws it
(``torch.randn`` on the generator's device, in the model output's dtype); with neither noise nor
generator it is Philox noise from the scheduler's own seed and offset, drawn inside the kernel.
The previous timestep is looked up on the device (``prev_table``), so a GPU timestep tensor never
needs a host synchronization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelkernels.kernels.diffusion import ops
from modelkernels.kernels.diffusion.scheduler_config import ConfigMixin
from modelkernels.pyimpl.diffusion.philox import counters_used
from modelkernels.pyimpl.diffusion.schedule import make_schedule
from modelkernels.pyimpl.diffusion.steps import PREDICTION_TYPES, VARIANCE_TYPES, velocity

__all__ = ["DDIMScheduler", "DDPMScheduler", "SchedulerOutput"]

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


@dataclass
class SchedulerOutput:
    """What ``step`` returns: diffusers' ``prev_sample`` and ``pred_original_sample`` (the clipped x0)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _Scheduler(ConfigMixin):
    order = 1
    init_noise_sigma = 1.0

    def _setup(self, args: dict[str, Any]) -> None:
        """Check the arguments, build the schedule and the initial state; ``args``: the constructor's locals."""
        self._register_config(args)
        c = self.config
        if c.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing={c.timestep_spacing!r}: supported {', '.join(TIMESTEP_SPACINGS)}")
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={c.prediction_type!r}: supported {', '.join(PREDICTION_TYPES)}")
        if isinstance(c.steps_offset, bool) or not isinstance(c.steps_offset, int) or c.steps_offset < 0:
            raise ValueError(f"steps_offset={c.steps_offset!r}: must be an integer >= 0")
        self.schedule = make_schedule(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule,
                                      c.trained_betas, device=args["device"],
                                      rescale_betas_zero_snr=c.rescale_betas_zero_snr)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.betas = self.schedule.betas
        self.alphas = self.schedule.alphas
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(self.schedule.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.prev_table: torch.Tensor | None = None
        self.seed = args["seed"]
        self.offset = 0
        self.return_pred_original = args["return_pred_original"]

    def __len__(self) -> int:
        return self.schedule.num_train_timesteps

    def _spaced(self, num_inference_steps: int) -> np.ndarray:
        T = self.schedule.num_train_timesteps
        if isinstance(num_inference_steps, np.integer):
            num_inference_steps = int(num_inference_steps)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or not (
                1 <= num_inference_steps <= T):
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer in 1..{T} "
                             f"(num_train_timesteps={T})")
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            return np.linspace(0, T - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = T // num_inference_steps
            ts = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
            return ts + self.config.steps_offset
        ratio_f = T / num_inference_steps
        return np.round(np.arange(T, 0, -ratio_f)).astype(np.int64) - 1

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """diffusers' add_noise: the fused ``q_sample`` with the given noise; ``timesteps`` one per sample
        or one for all (an int or a one-element tensor)."""
        sched = self._schedule_on(original_samples.device)
        return ops.q_sample(original_samples, self._timestep(timesteps, original_samples), sched, noise)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """diffusers' get_velocity, the v-prediction target sqrt(alpha_hat_t) noise - sqrt(1 - alpha_hat_t) sample."""
        sched = self._schedule_on(sample.device)
        return velocity(sample, self._timestep(timesteps, sample), sched, noise)

    def _schedule_on(self, device: torch.device) -> Any:
        if self.schedule.device != device:
            self.schedule = self.schedule.to(device)
            if self.prev_table is not None:
                self.prev_table = self.prev_table.to(device)
        return self.schedule

    def _timestep(self, timestep: Any, sample: torch.Tensor) -> Any:
        """diffusers' broadcasting: a one-element tensor of any shape is one timestep for every sample, a
        tensor of one per sample is flattened to (n,); on the sample's device."""
        if isinstance(timestep, torch.Tensor):
            if timestep.device != sample.device:
                timestep = timestep.to(sample.device)
            if timestep.numel() == 1:
                return timestep.reshape(())
            if sample.dim() and timestep.numel() == sample.shape[0]:
                return timestep.reshape(-1)
            return timestep
        if isinstance(timestep, (np.integer,)):
            return int(timestep)
        return timestep

    def _noise(self, model_output: torch.Tensor, sample: torch.Tensor, generator: torch.Generator | None,
               noise: torch.Tensor | None, needed: bool) -> dict[str, Any]:
        """The noise arguments of the step: given, drawn as diffusers draws it, or Philox."""
        if noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or noise, not both")
            return {"noise": noise}
        if generator is not None:
            if not needed:
                return {"noise": None, "seed": 0}
            z = torch.randn(sample.shape, generator=generator, device=generator.device, dtype=model_output.dtype)
            return {"noise": z.to(sample.device)}
        kw = {"noise": None, "seed": self.seed, "offset": self.offset}
        self.offset += counters_used(sample)
        return kw

    def _x0_buffer(self, sample: torch.Tensor) -> torch.Tensor | None:
        return torch.empty_like(sample) if self.return_pred_original else None


def _host_int(t: Any) -> int | None:
    if isinstance(t, int):
        return t
    if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel() == 1:
        return int(t)
    return None


class DDPMScheduler(_Scheduler):
    """diffusers' DDPMScheduler (same arguments and defaults), stepping with the fused DDPM kernel."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, seed: int = 0, return_pred_original: bool = True,
                 device: str | torch.device | None = None) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type={variance_type!r}: supported {', '.join(VARIANCE_TYPES)}")
        self._setup(locals())

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None) -> None:
        """The inference timesteps (diffusers' spacing rules) and the device table of their predecessors."""
        T = self.schedule.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        if timesteps is not None:
            ts = np.array(timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)
            if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
                raise ValueError(f"timesteps={timesteps!r}: expected a non-empty list of integers")
            ts = ts.astype(np.int64)
            if (np.diff(ts) >= 0).any():
                raise ValueError(f"timesteps={ts.tolist()}: custom timesteps must be in descending order")
            if ts[0] >= T or ts[-1] < 0:
                raise ValueError(f"timesteps must lie in 0..{T - 1} (num_train_timesteps={T}), "
                                 f"got {ts[0]}..{ts[-1]}")
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or timesteps")
            ts = self._spaced(num_inference_steps)
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
        prev = np.full(max(T, int(ts.max()) + 1), -1, dtype=np.int64)  # leading + steps_offset can reach T
        prev[ts[:-1]] = ts[1:]
        dev = device if device is not None else self.schedule.device
        self.timesteps = torch.from_numpy(ts).to(dev)
        self.prev_table = torch.from_numpy(prev).to(self.schedule.device)

    def previous_timestep(self, timestep: Any) -> Any:
        """The timestep after ``timestep`` in ``timesteps`` (-1 after the last); t - 1 before set_timesteps."""
        if self.prev_table is None:
            return timestep - 1
        table = self.prev_table
        if isinstance(timestep, torch.Tensor):
            return table.to(timestep.device)[timestep.long()]
        return int(table[int(timestep)])

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             noise: torch.Tensor | None = None) -> Any:
        """x_{t-1} from the model output at ``timestep`` (int, or a tensor per sample); as diffusers' step."""
        sched = self._schedule_on(sample.device)
        t = self._timestep(timestep, sample)
        prev_t = self.previous_timestep(t)
        host_t = _host_int(t)
        x0 = self._x0_buffer(sample)
        kw = self._noise(model_output, sample, generator, noise, needed=host_t is None or host_t > 0)
        out = ops.ddpm_step(model_output, t, sample, sched, prev_t=prev_t, prediction_type=self.config.prediction_type,
                            variance_type=self.config.variance_type, clip_sample=self.config.clip_sample,
                            clip_sample_range=self.config.clip_sample_range, thresholding=self.config.thresholding,
                            dynamic_thresholding_ratio=self.config.dynamic_thresholding_ratio,
                            sample_max_value=self.config.sample_max_value, pred_original_out=x0, **kw)
        return SchedulerOutput(out, x0) if return_dict else (out, x0)


class DDIMScheduler(_Scheduler):
    """diffusers' DDIMScheduler (same arguments and defaults), stepping with the fused DDIM kernel."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False, seed: int = 0, return_pred_original: bool = True,
                 device: str | torch.device | None = None) -> None:
        self._setup(locals())
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.schedule.alphas_cumprod[0])

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """The inference timesteps by diffusers' spacing rules; each step goes back T // num_inference_steps."""
        ts = self._spaced(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(ts).to(device if device is not None else self.schedule.device)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True,
             noise: torch.Tensor | None = None) -> Any:
        """x_prev for ``timestep`` with prev = timestep - T // num_inference_steps, as diffusers' DDIM step.

        ``noise`` is another name for diffusers' ``variance_noise`` (the DDPM scheduler's spelling)."""
        if noise is not None:
            if variance_noise is not None:
                raise ValueError("pass either noise or variance_noise, not both")
            variance_noise = noise
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps first")
        sched = self._schedule_on(sample.device)
        t = self._timestep(timestep, sample)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        x0 = self._x0_buffer(sample)
        kw = self._noise(model_output, sample, generator, variance_noise, needed=eta > 0)
        if eta == 0:
            kw = {"noise": None}
        out = ops.ddim_step(model_output, t, sample, sched, prev_t=prev_t, eta=eta,
                            use_clipped_model_output=use_clipped_model_output,
                            final_alpha_cumprod=self.final_alpha_cumprod, prediction_type=self.config.prediction_type,
                            clip_sample=self.config.clip_sample, clip_sample_range=self.config.clip_sample_range,
                            thresholding=self.config.thresholding,
                            dynamic_thresholding_ratio=self.config.dynamic_thresholding_ratio,
                            sample_max_value=self.config.sample_max_value, pred_original_out=x0, **kw)
        return SchedulerOutput(out, x0) if return_dict else (out, x0)
