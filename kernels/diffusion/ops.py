"""The diffusion ops: ``q_sample``, ``ddpm_seed_step``, ``ddpm_step``, ``ddim_step``.

References: ``pyimpl.diffusion.steps``. Fast path: ``kernels.diffusion.step_triton`` (one fused
Triton kernel per step kind) on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` when
forced. Samples cover every prediction / variance / clip option, CFG on both sides of torch.lerp's
switch at 0.5, passed-in and Philox noise (seed/offset and a device ``rng_state``), per-sample and
scalar timesteps, odd and empty shapes, non-contiguous and 5-D operands, NaN in the model output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modelkernels.kernels.availability import triton_unavailable
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance, call, define_op, register_kernel
from modelkernels.pyimpl.diffusion import schedule as sched
from modelkernels.pyimpl.diffusion import steps as ref

DTYPES = ("float32", "float16", "bfloat16", "float64")
TRITON_DTYPES = ("float32", "float16", "bfloat16")
TOLERANCES = {
    "float32": Tolerance(atol=2e-5, rtol=2e-5),
    "float16": Tolerance(atol=2e-3, rtol=2e-3),
    "bfloat16": Tolerance(atol=1.6e-2, rtol=1.6e-2),
}
MakeArgs = Callable[[str, str], tuple[tuple[Any, ...], dict[str, Any]]]


def _reference_dtype(dtype: str) -> str:
    return "float32" if dtype == "float32" else "float64"


def _randn(shape: tuple[int, ...], seed: int, device: str, dtype: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=getattr(torch, dtype))


def _strided(x: torch.Tensor, how: str) -> torch.Tensor:
    """A non-contiguous tensor with x's values: ``t`` transposes the last two dims in memory,
    ``s`` takes every other element of a tensor twice as wide."""
    if how == "t":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "s":
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


def _timesteps(n: int, kind: str, device: str, seed: int) -> Any:
    if kind == "int":
        return 421
    if kind == "ends":
        return torch.tensor([999, 1, 0, 2, 500][:n] + [7] * max(0, n - 5), device=device)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (n,), generator=g).to(device)


def _step_sample(name: str, fn_kind: str, shape: tuple[int, ...], *, t: str = "random", noise: str = "tensor",
                 layout: str = "", uncond: float | None = None, nan: bool = False, seed: int = 0,
                 channels2: bool = False, schedule: str = "linear", **options: Any) -> Sample:
    """A sample for a step op; noise 'tensor' | 'seed' | 'state' | 'none'."""

    def make(device: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        s = sched.make_schedule(beta_schedule=schedule, device=device)
        x = _strided(_randn(shape, seed, device, dtype), layout)
        mo_shape = (shape[0], 2 * shape[1], *shape[2:]) if channels2 else shape
        mo = _randn(mo_shape, seed + 1, "cpu", "float32")
        if channels2:  # the variance half computed in fp32 on the CPU: half-precision rounding differs by device
            mo[:, shape[1]:] = mo[:, shape[1]:].abs() * 0.05 - (0.0 if options.get("variance_type") == "learned"
                                                                 else 0.02)
        mo = mo.to(device=device, dtype=getattr(torch, dtype))
        if nan and mo.numel():
            mo.view(-1)[:: max(1, mo.numel() // 5)] = float("nan")
        mo = _strided(mo, layout)
        kw: dict[str, Any] = dict(options)
        if uncond is not None:
            kw["model_output_uncond"] = _strided(_randn(shape, seed + 2, device, dtype), layout)
            kw["guidance_scale"] = uncond
        z = None
        if noise == "tensor":
            z = _strided(_randn(shape, seed + 3, device, dtype), layout)
        elif noise == "seed":
            kw["seed"], kw["offset"] = 1234 + seed, 98765
        elif noise == "state":
            kw["rng_state"] = torch.tensor([2**35 + seed, 2**32 + 3], dtype=torch.int64, device=device)
        tt = _timesteps(shape[0], t, device, seed)
        if fn_kind == "q":
            if z is not None:
                return (x, tt, s, z), kw
            return (x, tt, s), kw
        return (mo, tt, x, s, z), kw

    opts = " ".join(f"{k}={v}" for k, v in options.items())
    parts = [name, "x".join(map(str, shape)), f"t={t}", f"noise={noise}", layout, opts,
             "" if uncond is None else f"cfg={uncond}", "nan" if nan else "", schedule if schedule != "linear" else ""]
    return Sample(" ".join(p for p in parts if p), make)


Q_SAMPLES = [
    _step_sample("q", "q", (3, 4, 5, 7)),
    _step_sample("q", "q", (2, 3, 6, 5), t="int", layout="t"),
    _step_sample("q", "q", (5, 2, 3, 3), noise="seed", return_noise=True),
    _step_sample("q", "q", (4, 33), noise="state", return_noise=True, layout="s"),
    _step_sample("q", "q", (3, 1, 4, 5), return_noise=True, schedule="squaredcos_cap_v2"),
    _step_sample("q", "q", (0, 3, 4, 4)),
    _step_sample("q", "q", (2, 2, 3, 4, 5), layout="t"),
]

SEED_SAMPLES = [
    _step_sample("seed", "step", (3, 3, 5, 7), t="ends"),
    _step_sample("seed", "step", (5, 2, 4, 3), t="ends", uncond=3.0),
    _step_sample("seed", "step", (4, 3, 3, 5), uncond=0.3, layout="t"),
    _step_sample("seed", "step", (3, 2, 9, 5), t="ends", noise="seed"),
    _step_sample("seed", "step", (2, 3, 4, 4), t="int", noise="state"),
    _step_sample("seed", "step", (3, 2, 3, 5), nan=True, layout="s"),
    _step_sample("seed", "step", (0, 3, 4, 4)),
]

DDPM_SAMPLES = [
    *[_step_sample("ddpm", "step", (3, 3, 5, 7), t="ends", prediction_type=p, variance_type=v, seed=i)
      for i, (p, v) in enumerate([("epsilon", "fixed_small"), ("sample", "fixed_small_log"),
                                  ("v_prediction", "fixed_large"), ("epsilon", "fixed_large_log")])],
    _step_sample("ddpm", "step", (3, 2, 5, 3), t="ends", variance_type="learned", channels2=True),
    _step_sample("ddpm", "step", (3, 2, 5, 3), t="ends", variance_type="learned_range", channels2=True,
                 prediction_type="v_prediction"),
    _step_sample("ddpm", "step", (4, 3, 6, 5), clip_sample=True, clip_sample_range=0.5, layout="t"),
    _step_sample("ddpm", "step", (3, 3, 7, 4), t="ends", thresholding=True, sample_max_value=1.7,
                 schedule="scaled_linear"),
    _step_sample("ddpm", "step", (2, 3, 5, 5), prediction_type="sample", thresholding=True,
                 dynamic_thresholding_ratio=0.9, sample_max_value=3.0, clip_sample=True),
    _step_sample("ddpm", "step", (3, 2, 4, 6), t="ends", noise="seed", schedule="sigmoid"),
    _step_sample("ddpm", "step", (3, 2, 4, 6), noise="state", uncond=0.7),
    _step_sample("ddpm", "step", (4, 2, 3, 5), uncond=0.2, nan=True, prev_t=-1),
    _step_sample("ddpm", "step", (0, 2, 3, 5)),
    _step_sample("ddpm", "step", (0, 2, 3, 5), thresholding=True),
]

DDIM_SAMPLES = [
    _step_sample("ddim", "step", (3, 3, 5, 7), t="ends", noise="none"),
    _step_sample("ddim", "step", (3, 3, 5, 7), t="ends", eta=0.5, prediction_type="sample",
                 use_clipped_model_output=True, clip_sample=True),
    _step_sample("ddim", "step", (4, 2, 6, 3), eta=1.0, prediction_type="v_prediction", layout="t",
                 final_alpha_cumprod=0.9991),
    _step_sample("ddim", "step", (3, 3, 4, 5), noise="none", thresholding=True, sample_max_value=1.5,
                 use_clipped_model_output=True),
    _step_sample("ddim", "step", (3, 2, 5, 5), t="ends", eta=0.3, noise="seed", uncond=4.0),
    _step_sample("ddim", "step", (2, 2, 5, 5), eta=0.8, noise="state", layout="s"),
    _step_sample("ddim", "step", (4, 3, 3, 3), noise="none", nan=True, uncond=0.5),
    _step_sample("ddim", "step", (0, 3, 3, 3), noise="none"),
    _step_sample("ddim", "step", (0, 3, 3, 3), noise="none", thresholding=True),
]


def _x(*shape: int) -> torch.Tensor:
    return torch.zeros(shape)


def _s() -> sched.Schedule:
    return sched.make_schedule()


def _half_schedule() -> sched.Schedule:
    s = _s()
    return sched.Schedule(s.betas.half(), s.alphas.half(), s.alphas_cumprod.half())


def _step_errors(kind: str) -> list[ErrorSample]:
    """Bad inputs every step op refuses the same way on every backend."""
    def args(mo: Any = None, t: Any = 5, x: Any = None, s: Any = None, z: Any = None) -> tuple[Any, ...]:
        x = _x(2, 3, 4, 4) if x is None else x
        return (x if mo is None else mo, t, x, _s() if s is None else s, z)

    out = [
        ErrorSample("shape mismatch", lambda: (args(mo=_x(2, 3, 4, 5)), {}), ValueError,
                    "model_output.shape=(2, 3, 4, 5)"),
        ErrorSample("t past T", lambda: (args(t=1000), {}), ValueError, "t=1000 is out of range"),
        ErrorSample("t tensor past T", lambda: (args(t=torch.tensor([3, 1000])), {}), ValueError, "t holds 1000"),
        ErrorSample("negative t", lambda: (args(t=-1), {}), ValueError, "t=-1 is out of range"),
        ErrorSample("float t", lambda: (args(t=torch.tensor([1.0, 2.0])), {}), TypeError, "t.dtype=torch.float32"),
        ErrorSample("t length", lambda: (args(t=torch.tensor([1, 2, 3])), {}), ValueError, "t.shape=(3,)"),
        ErrorSample("fp16 schedule", lambda: (args(s=_half_schedule()), {}), ValueError,
                    "schedule dtype=torch.float16"),
        ErrorSample("noise shape", lambda: (args(z=_x(2, 3, 4)), {}), ValueError, "noise.shape=(2, 3, 4)"),
        ErrorSample("devices", lambda: (args(mo=torch.zeros(2, 3, 4, 4, device="meta")), {}), ValueError,
                    "model_output is on meta"),
        ErrorSample("noise and seed", lambda: (args(z=_x(2, 3, 4, 4)), {"seed": 3}), ValueError,
                    "either noise or seed"),
        ErrorSample("uncond shape", lambda: (args(), {"model_output_uncond": _x(2, 3, 4, 3)}), ValueError,
                    "model_output_uncond.shape=(2, 3, 4, 3)"),
        ErrorSample("nan guidance", lambda: (args(), {"model_output_uncond": _x(2, 3, 4, 4),
                                                       "guidance_scale": float("nan")}), ValueError,
                    "guidance_scale=nan"),
        ErrorSample("int sample", lambda: (args(x=torch.zeros(2, 3, dtype=torch.int32)), {}), TypeError,
                    "model_output.dtype=torch.int32"),
        ErrorSample("negative rng_state", lambda: (args(), {"rng_state": torch.tensor([-1, -1])}), ValueError,
                    "rng_state=[-1, -1]"),
    ]
    if kind in ("ddpm", "ddim"):
        out += [
            ErrorSample("prediction type", lambda: (args(), {"prediction_type": "eps"}), ValueError,
                        "prediction_type='eps'"),
            ErrorSample("clip range", lambda: (args(), {"clip_sample": True, "clip_sample_range": 0.0}), ValueError,
                        "clip_sample_range=0.0"),
            ErrorSample("threshold ratio", lambda: (args(), {"thresholding": True, "dynamic_thresholding_ratio": 1.5}),
                        ValueError, "dynamic_thresholding_ratio=1.5"),
        ]
    if kind == "ddpm":
        out += [
            ErrorSample("variance type", lambda: (args(), {"variance_type": "small"}), ValueError,
                        "variance_type='small'"),
            ErrorSample("learned without channels", lambda: (args(), {"variance_type": "learned"}), ValueError,
                        "needs the predicted variance"),
        ]
    if kind in ("ddpm", "ddim"):
        out += [ErrorSample("prev_t past T", lambda: (args(), {"prev_t": 1000}), ValueError,
                            "prev_t=1000 is out of range: allowed an integer <= 999, negative meaning before step 0")]
    if kind == "ddim":
        out += [ErrorSample("negative eta", lambda: (args(), {"eta": -0.5}), ValueError, "eta=-0.5")]
    return out


Q_ERRORS = [
    ErrorSample("t past T", lambda: ((_x(2, 3), 1000, _s(), _x(2, 3)), {}), ValueError, "t=1000 is out of range"),
    ErrorSample("noise shape", lambda: ((_x(2, 3), 4, _s(), _x(3, 3)), {}), ValueError, "noise.shape=(3, 3)"),
    ErrorSample("fp16 schedule", lambda: ((_x(2, 3), 4, _half_schedule(), _x(2, 3)), {}), ValueError,
                "schedule dtype=torch.float16"),
    ErrorSample("seed range", lambda: ((_x(2, 3), 4, _s()), {"seed": -1}), ValueError, "seed=-1"),
    ErrorSample("rng_state", lambda: ((_x(2, 3), 4, _s()), {"rng_state": torch.zeros(3, dtype=torch.int64)}),
                ValueError, "rng_state must be an int64 tensor of shape (2,)"),
    ErrorSample("negative rng_state", lambda: ((_x(2, 3), 4, _s()), {"rng_state": torch.tensor([5, -3])}),
                ValueError, "rng_state=[5, -3]"),
]


def _define(name: str, reference: Callable[..., Any], samples: list[Sample], errors: list[ErrorSample],
            doc: str) -> None:
    define_op(name, reference=reference, dtypes=DTYPES, samples=samples, error_samples=errors,
              reference_dtype=_reference_dtype, doc=doc)


_define("q_sample", ref.q_sample, Q_SAMPLES, Q_ERRORS,
        "x_t = sqrt(alpha_hat_t) x0 + sqrt(1 - alpha_hat_t) eps, per-sample t; eps passed in or Philox")
_define("ddpm_seed_step", ref.ddpm_seed_step, SEED_SAMPLES, _step_errors("seed"),
        "the seed's DDPM reverse update (with classifier-free guidance), per-sample t")
_define("ddpm_step", ref.ddpm_step, DDPM_SAMPLES, _step_errors("ddpm"),
        "diffusers' DDPMScheduler.step: prediction/variance types, clip, thresholding, CFG; per-sample t")
_define("ddim_step", ref.ddim_step, DDIM_SAMPLES, _step_errors("ddim"),
        "diffusers' DDIMScheduler.step with eta, clip, thresholding, CFG; per-sample t")


def _register() -> None:
    if triton_unavailable() is not None:
        for name in ("q_sample", "ddpm_seed_step", "ddpm_step", "ddim_step"):
            register_kernel(name, "triton", devices=("cuda",), dtypes=TRITON_DTYPES, priority=10,
                            available=triton_unavailable, interpret_devices=("cpu",))(_missing_triton)
        return
    for name in ("q_sample", "ddpm_seed_step", "ddpm_step", "ddim_step"):
        register_kernel(name, "triton", devices=("cuda",), dtypes=TRITON_DTYPES, priority=10,
                        available=triton_unavailable, tolerances=TOLERANCES,
                        interpret_devices=("cpu",))(_on_first_call(f"{name}_triton"))


def _on_first_call(name: str) -> Callable[..., Any]:
    """``step_triton.<name>``, imported when first called: ``import modelkernels.kernels`` imports no Triton, so
    a TRITON_INTERPRET=1 set after it (a test's conftest, after the pytest plugin has imported
    kernels) still selects Triton's interpreter."""
    fn: Callable[..., Any] | None = None

    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal fn
        if fn is None:
            from modelkernels.kernels.diffusion import step_triton

            fn = getattr(step_triton, name)
        return fn(*args, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Triton {name.removesuffix('_triton')} (kernels.diffusion.step_triton)."
    return run


def _missing_triton(*args: Any, **kwargs: Any) -> Any:
    """Triton is not installed: never selected (``available`` says why)."""
    raise NotImplementedError(triton_unavailable())


_register()


def q_sample(x0: torch.Tensor, t: Any, schedule: sched.Schedule, noise: torch.Tensor | None = None, *,
             seed: int | None = None, offset: int = 0, rng_state: torch.Tensor | None = None,
             return_noise: bool = False, backend: str | None = None) -> Any:
    """Forward noising x_t = sqrt(alpha_hat_t) x0 + sqrt(1 - alpha_hat_t) eps for per-sample ``t``.

    eps is ``noise``, or Philox noise for ``seed``/``offset`` (or a device ``rng_state`` [seed, offset]);
    ``return_noise=True`` returns (x_t, eps), the training target. See ``pyimpl.diffusion.q_sample``.
    """
    return call("q_sample", x0, t, schedule, noise, seed=seed, offset=offset, rng_state=rng_state,
                return_noise=return_noise, backend=backend)


def ddpm_seed_step(model_output: torch.Tensor, t: Any, sample: torch.Tensor, schedule: sched.Schedule,
                   noise: torch.Tensor | None = None, *, model_output_uncond: torch.Tensor | None = None,
                   guidance_scale: float = 1.0, seed: int | None = None, offset: int = 0,
                   rng_state: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """The seed's reverse update 1/sqrt(a)(x - (1-a)/sqrt(1-a_hat) eps) + sqrt(beta) z (z = 0 at t <= 1),
    with eps = torch.lerp(uncond, eps, guidance_scale) when ``model_output_uncond`` is given."""
    return call("ddpm_seed_step", model_output, t, sample, schedule, noise, model_output_uncond=model_output_uncond,
                guidance_scale=guidance_scale, seed=seed, offset=offset, rng_state=rng_state, backend=backend)


def ddpm_step(model_output: torch.Tensor, t: Any, sample: torch.Tensor, schedule: sched.Schedule,
              noise: torch.Tensor | None = None, *, backend: str | None = None, **options: Any) -> torch.Tensor:
    """diffusers' DDPMScheduler.step for per-sample ``t`` (options: prev_t, prediction_type, variance_type,
    clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value,
    model_output_uncond, guidance_scale, seed, offset, rng_state). See ``pyimpl.diffusion.ddpm_step``."""
    return call("ddpm_step", model_output, t, sample, schedule, noise, backend=backend, **options)


def ddim_step(model_output: torch.Tensor, t: Any, sample: torch.Tensor, schedule: sched.Schedule,
              noise: torch.Tensor | None = None, *, backend: str | None = None, **options: Any) -> torch.Tensor:
    """diffusers' DDIMScheduler.step for per-sample ``t`` (options: prev_t, eta, use_clipped_model_output,
    final_alpha_cumprod, prediction_type, clip_sample, clip_sample_range, thresholding,
    dynamic_thresholding_ratio, sample_max_value, model_output_uncond, guidance_scale, seed, offset,
    rng_state). See ``pyimpl.diffusion.ddim_step``."""
    return call("ddim_step", model_output, t, sample, schedule, noise, backend=backend, **options)
