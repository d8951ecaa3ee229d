"""Forward noising and reverse steps of DDPM / DDIM, with per-sample timesteps.

Every function takes ``t`` as an int or an integer tensor of shape () or (n,), gathers its
coefficients from the fp32 (or fp64) schedule per sample and computes in float32 (float64 when
the image tensor is float64), returning the image dtype. Noise: passed in (``noise``), or drawn
with Philox for ``seed``/``offset`` (``pyimpl.diffusion.philox``: the numbers the Triton kernels
draw), or ``torch.randn`` when neither is given.

- ``q_sample``: x_t = sqrt(alpha_hat_t) x_0 + sqrt(1 - alpha_hat_t) eps (the seed's noise_images;
  Ho et al. 2020, eq. 4).
- ``velocity``: the v-prediction target v = sqrt(alpha_hat_t) eps - sqrt(1 - alpha_hat_t) x_0
  (Salimans & Ho 2022, "Progressive Distillation", sec. 4; diffusers' ``get_velocity``).
- ``ddpm_seed_step``: the seed's update, verbatim:
  x = 1 / sqrt(alpha_t) (x - (1 - alpha_t) / sqrt(1 - alpha_hat_t) eps) + sqrt(beta_t) z, z = 0 when t <= 1.
- ``ddpm_step``: diffusers' ``DDPMScheduler.step`` (Ho et al. 2020 eqs. 6, 7, 15) with
  prediction_type, variance_type, clip_sample, thresholding; noise only when t > 0.
- ``ddim_step``: diffusers' ``DDIMScheduler.step`` (Song et al. 2021 eqs. 12, 16) with eta.
- ``guided``: classifier-free guidance, ``torch.lerp(uncond, cond, scale)`` (the seed's
  ddpm_condition.py); torch's lerp switches form at weight 0.5:
  w < 0.5: a + w (b - a); else b - (b - a)(1 - w).

Timesteps outside [0, T) raise when they can be checked without a device synchronization (ints
and CPU tensors); on a GPU the affected samples come out NaN instead (the kernels do the same).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from modelkernels.pyimpl.diffusion.philox import philox_normal
from modelkernels.pyimpl.diffusion.schedule import SCHEDULE_DTYPES, Schedule

__all__ = [
    "PREDICTION_TYPES",
    "VARIANCE_TYPES",
    "StepArgs",
    "check_step_args",
    "ddim_step",
    "ddpm_seed_step",
    "ddpm_step",
    "guided",
    "q_sample",
    "threshold_scale",
    "velocity",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class StepArgs:
    """Checked arguments of a step: per-sample timesteps and the noise source."""

    def __init__(self, n: int, t: torch.Tensor, prev_t: torch.Tensor | None, seed: int | None, offset: int,
                 rng_state: torch.Tensor | None) -> None:
        self.n = n
        self.t = t
        self.prev_t = prev_t
        self.seed = seed
        self.offset = offset
        self.rng_state = rng_state


def _timesteps(name: str, t: Any, n: int, num_train: int, device: torch.device, allow_negative: bool) -> torch.Tensor:
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(t).__name__}")
    low = -(2**62) if allow_negative else 0  # a negative prev_t means "before step 0"
    allowed = (f"an integer <= {num_train - 1}, negative meaning before step 0 (down to -2**62)" if allow_negative
               else f"0..{num_train - 1}")
    if isinstance(t, int):
        if not low <= t < num_train:
            raise ValueError(f"{name}={t} is out of range: allowed {allowed} (num_train_timesteps={num_train})")
        return torch.full((n,), t, dtype=torch.int64, device=device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}.dtype={t.dtype}: timesteps must be an integer tensor")
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != n):
        raise ValueError(f"{name}.shape={tuple(t.shape)}: expected () or ({n},), one timestep per sample")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the sample on {device}: move them to one device")
    if t.device.type == "cpu" and t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < low or hi >= num_train:
            bad = lo if lo < low else hi
            raise ValueError(f"{name} holds {bad}, out of range: allowed {allowed} (num_train_timesteps={num_train})")
    return t.to(torch.int64).expand(n) if t.dim() == 0 else t.to(torch.int64)


def check_step_args(
    model_output: Any,
    t: Any,
    sample: Any,
    schedule: Any,
    noise: Any = None,
    *,
    prev_t: Any = None,
    model_output_uncond: Any = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: Any = None,
    output_channels: int | None = None,
) -> StepArgs:
    """Validate what every step shares; errors name the argument, the value and what is allowed.

    output_channels: the channel count model_output may have besides sample's (2 C for learned variances).
    """
    for name, v in (("model_output", model_output), ("sample", sample)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if v.dtype not in IMAGE_DTYPES:
            raise TypeError(f"{name}.dtype={v.dtype}: supported float32, float16, bfloat16, float64")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a pyimpl.diffusion.Schedule, got {type(schedule).__name__}")
    if schedule.dtype not in SCHEDULE_DTYPES:
        raise ValueError(f"schedule dtype={schedule.dtype}: schedules are kept in float32 or float64 "
                         "(float16 rounds alpha_hat near t=0 to 1); rebuild it with dtype=torch.float32")
    if sample.dim() < 1:
        raise ValueError("sample must have a leading batch dimension, got a 0-d tensor")
    if model_output.device != sample.device:
        raise ValueError(f"model_output is on {model_output.device}, sample on {sample.device}: "
                         "move them to one device")
    if schedule.device != sample.device:
        raise ValueError(f"schedule is on {schedule.device}, sample on {sample.device}: use schedule.to(device)")
    shape_ok = model_output.shape == sample.shape
    if not shape_ok and output_channels is not None and model_output.dim() >= 2:
        shape_ok = (model_output.shape[1] == output_channels and model_output.shape[0] == sample.shape[0]
                    and model_output.shape[2:] == sample.shape[2:])
    if not shape_ok:
        extra = f" (or {output_channels} channels)" if output_channels is not None else ""
        raise ValueError(f"model_output.shape={tuple(model_output.shape)} does not match "
                         f"sample.shape={tuple(sample.shape)}{extra}")
    if model_output_uncond is not None:
        if not isinstance(model_output_uncond, torch.Tensor):
            raise TypeError(f"model_output_uncond must be a torch.Tensor, got {type(model_output_uncond).__name__}")
        if model_output_uncond.shape != sample.shape:
            raise ValueError(f"model_output_uncond.shape={tuple(model_output_uncond.shape)} does not match "
                             f"sample.shape={tuple(sample.shape)}")
        if model_output_uncond.device != sample.device:
            raise ValueError(f"model_output_uncond is on {model_output_uncond.device}, sample on {sample.device}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(
            guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number")
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if noise.shape != sample.shape:
            raise ValueError(f"noise.shape={tuple(noise.shape)} does not match sample.shape={tuple(sample.shape)}")
        if noise.device != sample.device:
            raise ValueError(f"noise is on {noise.device}, sample on {sample.device}: move them to one device")
        if seed is not None or rng_state is not None:
            raise ValueError("pass either noise or seed/rng_state, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r}: must be an integer in [0, 2**63)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**62:
        raise ValueError(f"offset={offset!r}: must be an integer in [0, 2**62)")
    if rng_state is not None:
        if not isinstance(rng_state, torch.Tensor) or rng_state.dtype != torch.int64 or rng_state.shape != (2,):
            raise ValueError("rng_state must be an int64 tensor of shape (2,): [seed, offset]")
        if rng_state.device != sample.device:
            raise ValueError(f"rng_state is on {rng_state.device}, sample on {sample.device}")
        if seed is not None:
            raise ValueError("pass either seed or rng_state, not both")
        if rng_state.device.type == "cpu":  # a device tensor is not read back (no sync; CUDA graphs)
            s0, o0 = (int(v) for v in rng_state.tolist())
            if not (0 <= s0 < 2**63 and 0 <= o0 < 2**62):
                raise ValueError(f"rng_state=[{s0}, {o0}]: the seed must lie in [0, 2**63) and the offset in "
                                 "[0, 2**62)")
    n = sample.shape[0]
    num_train = schedule.num_train_timesteps
    tt = _timesteps("t", t, n, num_train, sample.device, allow_negative=False)
    pt = None if prev_t is None else _timesteps("prev_t", prev_t, n, num_train, sample.device, allow_negative=True)
    return StepArgs(n, tt, pt, seed, offset, rng_state)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(_compute_dtype(like)).reshape((-1,) + (1,) * (like.dim() - 1))


def _gather(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """table[t] in the schedule dtype; NaN where t is outside [0, T) (only reachable on GPU tensors)."""
    valid = (t >= 0) & (t < table.shape[0])
    return torch.where(valid, table[t.clamp(0, table.shape[0] - 1)], torch.full_like(table[:1], math.nan))


def _gather_prev(table: torch.Tensor, prev_t: torch.Tensor, final: float) -> torch.Tensor:
    """table[prev_t] where prev_t >= 0, else ``final`` (1.0: diffusers' ``one`` / ``final_alpha_cumprod``)."""
    got = _gather(table, prev_t)
    return torch.where(prev_t < 0, torch.full_like(got, final), got)


def _noise(sample: torch.Tensor, noise: torch.Tensor | None, a: StepArgs) -> torch.Tensor:
    if noise is not None:
        return noise
    per = sample[0].numel() if sample.shape[0] else 0
    if a.rng_state is not None:
        seed, offset = (int(v) for v in a.rng_state.tolist())
        return philox_normal(a.n, per, seed, offset, sample.device).reshape(sample.shape)
    if a.seed is not None:
        return philox_normal(a.n, per, a.seed, a.offset, sample.device).reshape(sample.shape)
    return torch.randn(sample.shape, device=sample.device, dtype=sample.dtype)


def guided(model_output: torch.Tensor, model_output_uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance as the seed: ``torch.lerp(uncond, cond, scale)``, in float32 or wider.

    torch's formula: w < 0.5: uncond + w (cond - uncond); w >= 0.5: cond - (cond - uncond)(1 - w).
    """
    cd = _compute_dtype(model_output)
    if model_output_uncond is None:
        return model_output.to(cd)
    return torch.lerp(model_output_uncond.to(cd), model_output.to(cd), float(guidance_scale))


def q_sample(
    x0: torch.Tensor,
    t: Any,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    return_noise: bool = False,
) -> Any:
    """x_t = sqrt(alpha_hat_t) x_0 + sqrt(1 - alpha_hat_t) eps (the seed's ``noise_images``).

    Returns x_t, or (x_t, eps) with ``return_noise`` (eps in x0's dtype: the training target).
    """
    a = check_step_args(x0, t, x0, schedule, noise, seed=seed, offset=offset, rng_state=rng_state)
    eps = _noise(x0, noise, a)
    ah = _per_sample(_gather(schedule.alphas_cumprod, a.t), x0)
    out = (torch.sqrt(ah) * x0.to(ah.dtype) + torch.sqrt(1 - ah) * eps.to(ah.dtype)).to(x0.dtype)
    return (out, eps.to(x0.dtype)) if return_noise else out


def velocity(x0: torch.Tensor, t: Any, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_hat_t) noise - sqrt(1 - alpha_hat_t) x0, in x0's dtype (diffusers' ``get_velocity``)."""
    if noise is None:
        raise ValueError("noise is required: the velocity is defined for a given noise")
    a = check_step_args(x0, t, x0, schedule, noise)
    ah = _per_sample(_gather(schedule.alphas_cumprod, a.t), x0)
    return (torch.sqrt(ah) * noise.to(ah.dtype) - torch.sqrt(1 - ah) * x0.to(ah.dtype)).to(x0.dtype)


def ddpm_seed_step(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's reverse update: 1/sqrt(a) (x - (1 - a)/sqrt(1 - a_hat) eps) + sqrt(beta) z; z = 0 for t <= 1."""
    a = check_step_args(model_output, t, sample, schedule, noise, model_output_uncond=model_output_uncond,
                        guidance_scale=guidance_scale, seed=seed, offset=offset, rng_state=rng_state)
    eps = guided(model_output, model_output_uncond, guidance_scale)
    x = sample.to(eps.dtype)
    alpha = _per_sample(_gather(schedule.alphas, a.t), x)
    alpha_hat = _per_sample(_gather(schedule.alphas_cumprod, a.t), x)
    beta = _per_sample(_gather(schedule.betas, a.t), x)
    out = 1 / torch.sqrt(alpha) * (x - ((1 - alpha) / (torch.sqrt(1 - alpha_hat))) * eps)
    z = _noise(sample, noise, a).to(x.dtype)
    out = out + torch.where(_per_sample(a.t, x) > 1, torch.sqrt(beta) * z, torch.zeros((), dtype=x.dtype))
    return out.to(sample.dtype)


def threshold_scale(pred_original: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding's s per sample (Saharia et al. 2022, diffusers' ``_threshold_sample``):
    s = clamp(quantile(|x0|, ratio), 1, max_value) over each sample's flattened values, float32 or wider.
    With max_value < 1, s = max_value for every sample (torch.clamp's upper bound wins, as in diffusers)."""
    n = pred_original.shape[0]
    flat = pred_original.reshape(n, pred_original[0].numel() if n else 0)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    if flat.numel() == 0:  # no values to take a quantile of: s = 1 (no rescaling) per sample
        return torch.ones(n, dtype=flat.dtype, device=flat.device)
    s = torch.quantile(flat.abs(), ratio, dim=1)
    return torch.clamp(s, min=1, max=max_value)


def _check_options(prediction_type: str, variance_type: str | None, clip_sample_range: float,
                   dynamic_thresholding_ratio: float, sample_max_value: float) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}: supported {', '.join(PREDICTION_TYPES)}")
    if variance_type is not None and variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type={variance_type!r}: supported {', '.join(VARIANCE_TYPES)}")
    if not clip_sample_range > 0:
        raise ValueError(f"clip_sample_range={clip_sample_range!r}: must be positive")
    if not 0 <= dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r}: must lie in [0, 1]")
    if not sample_max_value > 0:
        raise ValueError(f"sample_max_value={sample_max_value!r}: must be positive")


def _pred_original(prediction_type: str, mo: torch.Tensor, x: torch.Tensor, ap: torch.Tensor) -> torch.Tensor:
    bp = 1 - ap
    if prediction_type == "epsilon":
        return (x - bp ** (0.5) * mo) / ap ** (0.5)
    if prediction_type == "sample":
        return mo
    return (ap**0.5) * x - (bp**0.5) * mo


def _clip_or_threshold(x0: torch.Tensor, clip_sample: bool, clip_sample_range: float, thresholding: bool,
                       ratio: float, max_value: float) -> torch.Tensor:
    if thresholding:
        s = _per_sample(threshold_scale(x0, ratio, max_value), x0).to(x0.dtype)
        return torch.clamp(x0, -s, s) / s
    if clip_sample:
        return x0.clamp(-clip_sample_range, clip_sample_range)
    return x0


def ddpm_step(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    prev_t: Any = None,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    pred_original_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' ``DDPMScheduler.step`` for per-sample t (prev_t defaults to t - 1).

    a = alpha_hat_t, a' = alpha_hat_prev (1 when prev_t < 0), alpha = a / a', beta = 1 - alpha;
    x0 from the prediction type; clip or threshold x0;
    mean = sqrt(a') beta / (1 - a) x0 + sqrt(alpha) (1 - a') / (1 - a) x_t;
    var = max((1 - a') / (1 - a) beta, 1e-20); std by variance_type: fixed_small sqrt(var),
    fixed_small_log exp(log(var) / 2), fixed_large sqrt(beta), fixed_large_log exp(log(beta) / 2)
    (diffusers takes the square root of log(beta) here and returns NaN: a bug we do not copy),
    learned sqrt(v), learned_range exp(((v + 1) / 2 log beta + (1 - v) / 2 log var) / 2) with v the
    model's second half of channels. Noise is added only where t > 0.
    ``pred_original_out``: a tensor shaped like sample that receives the (clipped) x0.
    """
    _check_options(prediction_type, variance_type, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
    learned = variance_type in ("learned", "learned_range")
    channels = 2 * sample.shape[1] if learned and sample.dim() >= 2 else None
    a = check_step_args(model_output, t, sample, schedule, noise, prev_t=prev_t,
                        model_output_uncond=model_output_uncond, guidance_scale=guidance_scale, seed=seed,
                        offset=offset, rng_state=rng_state, output_channels=channels)
    if learned and model_output.shape == sample.shape:
        raise ValueError(f"variance_type={variance_type!r} needs the predicted variance: model_output must have "
                         f"{channels} channels (sample has {sample.shape[1]}), got {model_output.shape[1]}")
    predicted_variance = None
    if learned:
        if model_output_uncond is not None:
            raise ValueError(f"model_output_uncond with variance_type={variance_type!r}: guidance of a learned "
                             "variance is not defined here; guide the first half of the channels yourself")
        model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
    mo = guided(model_output, model_output_uncond, guidance_scale)
    x = sample.to(mo.dtype)
    pt = a.prev_t if a.prev_t is not None else a.t - 1
    ap = _gather(schedule.alphas_cumprod, a.t)
    app = _gather_prev(schedule.alphas_cumprod, pt, 1.0)
    beta_prod_t = 1 - ap
    beta_prod_t_prev = 1 - app
    current_alpha_t = ap / app
    current_beta_t = 1 - current_alpha_t
    x0 = _pred_original(prediction_type, mo, x, _per_sample(ap, x))
    x0 = _clip_or_threshold(x0, clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
                            sample_max_value)
    if pred_original_out is not None:
        pred_original_out.copy_(x0)
    c0 = (app ** (0.5) * current_beta_t) / beta_prod_t
    ct = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    out = _per_sample(c0, x) * x0 + _per_sample(ct, x) * x
    variance = torch.clamp((1 - app) / (1 - ap) * current_beta_t, min=1e-20)
    std: torch.Tensor
    if variance_type == "fixed_small":
        std = _per_sample(variance ** 0.5, x)
    elif variance_type == "fixed_small_log":
        std = _per_sample(torch.exp(0.5 * torch.log(variance)), x)
    elif variance_type == "fixed_large":
        std = _per_sample(current_beta_t ** 0.5, x)
    elif variance_type == "fixed_large_log":
        std = _per_sample(torch.exp(0.5 * torch.log(current_beta_t)), x)
    else:
        assert predicted_variance is not None
        v = predicted_variance.to(x.dtype)
        if variance_type == "learned":
            std = v ** 0.5
        else:
            frac = (v + 1) / 2
            max_log, min_log = _per_sample(torch.log(current_beta_t), x), _per_sample(torch.log(variance), x)
            log_var = frac * max_log + (1 - frac) * min_log
            std = torch.exp(0.5 * log_var)
    z = _noise(sample, noise, a).to(x.dtype)
    out = out + torch.where(_per_sample(a.t, x) > 0, std * z, torch.zeros((), dtype=x.dtype))
    return out.to(sample.dtype)


def check_eta(eta: Any) -> None:
    """DDIM's eta: a finite number >= 0 (0 = deterministic, 1 = DDPM's variance)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0 or not math.isfinite(eta):
        raise ValueError(f"eta={eta!r}: must be a finite number >= 0")


def ddim_step(
    model_output: torch.Tensor,
    t: Any,
    sample: torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    prev_t: Any = None,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    final_alpha_cumprod: float = 1.0,
    prediction_type: str = "epsilon",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    model_output_uncond: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    offset: int = 0,
    rng_state: torch.Tensor | None = None,
    pred_original_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' ``DDIMScheduler.step`` for per-sample t; prev_t defaults to t - 1 (the scheduler
    passes t - T // num_inference_steps); alpha_hat_prev = ``final_alpha_cumprod`` where prev_t < 0.

    x0 and eps from the prediction type, x0 clipped or thresholded (eps re-derived from it with
    ``use_clipped_model_output``); sigma = eta sqrt((1 - a') / (1 - a) (1 - a / a'));
    x_prev = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z (z only when eta > 0).
    """
    _check_options(prediction_type, None, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
    check_eta(eta)
    if not 0 < final_alpha_cumprod <= 1:
        raise ValueError(f"final_alpha_cumprod={final_alpha_cumprod!r}: must lie in (0, 1]")
    a = check_step_args(model_output, t, sample, schedule, noise, prev_t=prev_t,
                        model_output_uncond=model_output_uncond, guidance_scale=guidance_scale, seed=seed,
                        offset=offset, rng_state=rng_state)
    mo = guided(model_output, model_output_uncond, guidance_scale)
    x = sample.to(mo.dtype)
    pt = a.prev_t if a.prev_t is not None else a.t - 1
    ap1 = _gather(schedule.alphas_cumprod, a.t)
    app1 = _gather_prev(schedule.alphas_cumprod, pt, final_alpha_cumprod)
    bp1 = 1 - ap1
    ap, bp = _per_sample(ap1, x), _per_sample(bp1, x)
    if prediction_type == "epsilon":
        x0 = (x - bp ** (0.5) * mo) / ap ** (0.5)
        eps = mo
    elif prediction_type == "sample":
        x0 = mo
        eps = (x - ap ** (0.5) * x0) / bp ** (0.5)
    else:
        x0 = (ap**0.5) * x - (bp**0.5) * mo
        eps = (ap**0.5) * mo + (bp**0.5) * x
    x0 = _clip_or_threshold(x0, clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio,
                            sample_max_value)
    if pred_original_out is not None:
        pred_original_out.copy_(x0)
    variance = ((1 - app1) / bp1) * (1 - ap1 / app1)
    std_dev_t = eta * variance ** (0.5)
    if use_clipped_model_output:
        eps = (x - ap ** (0.5) * x0) / bp ** (0.5)
    direction = _per_sample((1 - app1 - std_dev_t**2) ** (0.5), x) * eps
    out = _per_sample(app1 ** (0.5), x) * x0 + direction
    if eta > 0:
        z = _noise(sample, noise, a).to(x.dtype)
        out = out + _per_sample(std_dev_t, x) * z
    return out.to(sample.dtype)
