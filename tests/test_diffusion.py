"""Diffusion: the references and the fused kernels against diffusers' DDPM/DDIM schedulers, the
seed's formulas, Philox noise reproducibility, the scheduler API, the sampler and bad inputs.
Triton runs on CPU tensors through the interpreter (forced backend); shapes are tiny."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.diffusion.sampler import cfg_model_output, sample, sampling_timesteps, save_grid
from modelkernels.kernels.diffusion.scheduler import DDIMScheduler, DDPMScheduler
from modelkernels.pyimpl import diffusion as ref
from modelkernels.pyimpl.unet import UNet, UNetConditional

diffusers = pytest.importorskip("diffusers")
BACKENDS = ["reference", "triton"]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 2e-6) -> None:
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol, equal_nan=True)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_schedules_equal_diffusers(schedule: str) -> None:
    theirs = diffusers.DDPMScheduler(beta_schedule=schedule)
    ours = ref.make_schedule(beta_schedule=schedule)
    assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)


@pytest.mark.parametrize("kw,match", [
    (dict(beta_end=1.5), "betas span 0.0001..1.5; every beta must lie in \\(0, 1\\)"),
    (dict(beta_start=-0.1), "betas span -0.1..0.02"),
    (dict(beta_end=float("nan")), "beta_end=nan: must be a finite number"),
    (dict(beta_schedule="scaled_linear", beta_start=-0.01), "takes square roots"),
    (dict(beta_schedule="sigmoid", beta_end=2.0), "sigmoid schedule's betas span"),
])
def test_schedules_with_betas_outside_the_unit_interval_raise(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ref.make_schedule(**kw)


def test_seed_schedule_and_timesteps() -> None:
    s = ref.make_schedule()
    assert torch.equal(s.betas, torch.linspace(1e-4, 0.02, 1000))  # the seed's prepare_noise_schedule
    assert torch.equal(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    t = ref.sample_timesteps(500, 1000, torch.Generator().manual_seed(0))
    assert int(t.min()) >= 1 and int(t.max()) <= 999
    given = ref.make_schedule(trained_betas=[0.1, 0.2, 0.3])
    assert given.num_train_timesteps == 3
    assert math.isclose(float(given.alphas_cumprod[-1]), 0.9 * 0.8 * 0.7, rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pred,var", list(itertools.product(["epsilon", "sample", "v_prediction"], VARIANCES)))
def test_ddpm_step_equals_diffusers(backend: str, pred: str, var: str) -> None:
    s = ref.make_schedule()
    x = _rand(2, 3, 4, 5)
    mo = _rand(2, 6 if var.startswith("learned") else 3, 4, 5, seed=1)
    if var == "learned":
        mo[:, 3:] = mo[:, 3:].abs() * 1e-3
    for clip, thr in [(False, False), (True, False), (False, True)]:
        theirs = diffusers.DDPMScheduler(prediction_type=pred, variance_type=var, clip_sample=clip,
                                         clip_sample_range=1.5, thresholding=thr, sample_max_value=2.0)
        for t in (999, 420, 1, 0):
            want = theirs.step(mo, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
            got = kernels.ddpm_step(mo, t, x, s, z, prediction_type=pred, variance_type=var, clip_sample=clip,
                                    clip_sample_range=1.5, thresholding=thr, sample_max_value=2.0, backend=backend)
            if var == "fixed_large_log" and t > 0:
                # diffusers takes sqrt(log(beta)) here: NaN. We use exp(log(beta) / 2) = sqrt(beta), GLIDE's intent.
                assert torch.isnan(want).all()
                alt = kernels.ddpm_step(mo, t, x, s, z, prediction_type=pred, variance_type="fixed_large",
                                        clip_sample=clip, clip_sample_range=1.5, thresholding=thr,
                                        sample_max_value=2.0, backend=backend)
                _assert_close(got, alt, 1e-6)
                continue
            _assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_ddim_step_equals_diffusers(backend: str, pred: str) -> None:
    s = ref.make_schedule()
    x, mo = _rand(2, 3, 4, 5), _rand(2, 3, 4, 5, seed=1)
    for clip, thr, eta, clipped, one in itertools.product([False, True], [False, True], [0.0, 0.6], [False, True],
                                                         [True, False]):
        if clip and thr:
            continue
        theirs = diffusers.DDIMScheduler(prediction_type=pred, clip_sample=clip, thresholding=thr,
                                         set_alpha_to_one=one)
        theirs.set_timesteps(40)
        final = 1.0 if one else float(s.alphas_cumprod[0])
        for t in theirs.timesteps[[0, 20, -1]].tolist():
            z = _rand(2, 3, 4, 5, seed=t)
            want = theirs.step(mo, t, x, eta=eta, use_clipped_model_output=clipped, variance_noise=z).prev_sample
            got = kernels.ddim_step(mo, t, x, s, z, prev_t=t - 25, eta=eta, use_clipped_model_output=clipped,
                                    final_alpha_cumprod=final, prediction_type=pred, clip_sample=clip,
                                    thresholding=thr, backend=backend)
            _assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduler_swaps_in_for_diffusers(backend: str) -> None:
    """The same loop with diffusers' scheduler and ours: same generator, same images."""
    for theirs, ours in [(diffusers.DDPMScheduler(), DDPMScheduler()),
                         (diffusers.DDPMScheduler(variance_type="fixed_large", prediction_type="v_prediction",
                                                  timestep_spacing="trailing"),
                          DDPMScheduler(variance_type="fixed_large", prediction_type="v_prediction",
                                        timestep_spacing="trailing")),
                         (diffusers.DDIMScheduler(), DDIMScheduler())]:
        x_t = x_o = _rand(2, 1, 3, 5, seed=3)
        theirs.set_timesteps(12)
        ours.set_timesteps(12)
        assert torch.equal(theirs.timesteps, ours.timesteps)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        with kernels.use_backend(ddpm_step=backend, ddim_step=backend):
            for t in theirs.timesteps:
                mo = torch.tanh(x_t) * 0.5
                kw = {"eta": 0.4} if isinstance(ours, DDIMScheduler) else {}
                a = theirs.step(mo, t, x_t, generator=g1, **kw)
                b = ours.step(torch.tanh(x_o) * 0.5, t, x_o, generator=g2, **kw)
                _assert_close(b.pred_original_sample, a.pred_original_sample, 1e-5)
                x_t, x_o = a.prev_sample, b.prev_sample
        _assert_close(x_o, x_t, 1e-5)


def test_scheduler_add_noise_and_custom_timesteps() -> None:
    theirs, ours = diffusers.DDPMScheduler(), DDPMScheduler()
    x, z, t = _rand(3, 2, 4), _rand(3, 2, 4, seed=1), torch.tensor([0, 500, 999])
    _assert_close(ours.add_noise(x, z, t), theirs.add_noise(x, z, t))
    theirs.set_timesteps(timesteps=[900, 500, 37, 0])
    ours.set_timesteps(timesteps=[900, 500, 37, 0])
    assert [ours.previous_timestep(t) for t in (900, 500, 37, 0)] == [500, 37, 0, -1]
    mo = _rand(3, 2, 4, seed=2)
    for t in (900, 37):
        want = theirs.step(mo, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        got = ours.step(mo, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        _assert_close(got, want)
    with pytest.raises(ValueError, match="descending"):
        ours.set_timesteps(timesteps=[5, 9])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_step_is_the_seeds_formula(backend: str) -> None:
    s = ref.make_schedule()
    x, eps, z = _rand(4, 3, 5, 5), _rand(4, 3, 5, 5, seed=1), _rand(4, 3, 5, 5, seed=2)
    t = torch.tensor([999, 500, 2, 1])
    a, ah, b = (v[t][:, None, None, None] for v in (s.alphas, s.alphas_cumprod, s.betas))
    want = 1 / torch.sqrt(a) * (x - ((1 - a) / (torch.sqrt(1 - ah))) * eps) + torch.sqrt(b) * z
    want[3] = (1 / torch.sqrt(a) * (x - ((1 - a) / (torch.sqrt(1 - ah))) * eps))[3]  # i == 1: no noise
    got = kernels.ddpm_seed_step(eps, t, x, s, z, backend=backend)
    _assert_close(got, want, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 3.0])
def test_cfg_is_torch_lerp(backend: str, w: float) -> None:
    s = ref.make_schedule()
    x, cond, unc, z = (_rand(2, 3, 4, 5, seed=k) for k in range(4))
    got = kernels.ddpm_seed_step(cond, 300, x, s, z, model_output_uncond=unc, guidance_scale=w, backend=backend)
    want = kernels.ddpm_seed_step(torch.lerp(unc, cond, w), 300, x, s, z, backend="reference")
    _assert_close(got, want, 2e-6)


@pytest.mark.parametrize("op", ["q_sample", "ddpm_seed_step", "ddpm_step"])
def test_philox_noise_is_reproducible_and_matches_the_reference(op: str) -> None:
    s = ref.make_schedule()
    x, mo = _rand(3, 2, 5, 7), _rand(3, 2, 5, 7, seed=1)
    args = (x, 400, s) if op == "q_sample" else (mo, 400, x, s)
    fn = getattr(kernels, op)
    a = fn(*args, seed=11, offset=2**33, backend="triton")
    b = fn(*args, seed=11, offset=2**33, backend="triton")
    c = fn(*args, seed=11, offset=2**33 + 1000, backend="triton")
    r = fn(*args, seed=11, offset=2**33, backend="reference")
    assert torch.equal(a, b) and not torch.allclose(a, c)
    _assert_close(a, r, 1e-5)


def test_q_sample_returns_the_noise_it_drew() -> None:
    s = ref.make_schedule()
    x = _rand(4, 3, 6, 7)
    t = torch.tensor([1, 10, 500, 999])
    xt, eps = kernels.q_sample(x, t, s, seed=3, return_noise=True, backend="triton")
    _assert_close(xt, kernels.q_sample(x, t, s, eps, backend="reference"), 1e-6)
    big = kernels.q_sample(torch.zeros(2, 5000), 999, s, seed=5, return_noise=True, backend="triton")[1]
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1) < 0.05
    _assert_close(big, ref.philox_normal(2, 5000, 5, 0), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_the_model_output_propagates_to_its_elements_only(backend: str) -> None:
    s = ref.make_schedule()
    x, mo, z = _rand(2, 3, 4, 4), _rand(2, 3, 4, 4, seed=1), _rand(2, 3, 4, 4, seed=2)
    mo[0, 1, 2, 3] = float("nan")
    for fn in (kernels.ddpm_seed_step, kernels.ddpm_step):
        out = fn(mo, 700, x, s, z, backend=backend)
        assert torch.isnan(out[0, 1, 2, 3]) and int(torch.isnan(out).sum()) == 1
    out = kernels.ddim_step(mo, 700, x, s, prev_t=600, backend=backend)
    assert int(torch.isnan(out).sum()) == 1


def test_strided_learned_variance_and_big_batch_layout() -> None:
    s = ref.make_schedule()
    x = _rand(3, 4, 6, 5).transpose(2, 3)
    mo = _rand(3, 8, 5, 6, seed=1)
    z = _rand(3, 4, 5, 6, seed=2)
    mo[:, 4:] = torch.sigmoid(mo[:, 4:]) * 2 - 1
    for var in ("learned_range",):
        got = kernels.ddpm_step(mo, 50, x, s, z, variance_type=var, backend="triton")
        want = kernels.ddpm_step(mo, 50, x, s, z, variance_type=var, backend="reference")
        _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"t": 1000}, ValueError, "t=1000 is out of range"),
    ({"prediction_type": "noise"}, ValueError, "prediction_type='noise'"),
    ({"variance_type": "fixed"}, ValueError, "variance_type='fixed'"),
    ({"noise_shape": (2, 3, 4, 3)}, ValueError, "noise.shape=(2, 3, 4, 3)"),
])
def test_bad_inputs_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    s = ref.make_schedule()
    x = torch.zeros(2, 3, 4, 4)
    z = torch.zeros(kwargs.pop("noise_shape", (2, 3, 4, 4)))
    t = kwargs.pop("t", 5)
    for backend in BACKENDS:
        with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)")):
            kernels.ddpm_step(x, t, x, s, z, backend=backend, **kwargs)


def test_fp16_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        ref.make_schedule(dtype=torch.float16)
    with pytest.raises(ValueError, match="float16"):
        ref.make_schedule().to(dtype=torch.float16)
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        ref.make_schedule(beta_schedule="cosine")


def test_sampling_timesteps() -> None:
    ts, prev = sampling_timesteps("seed", 1000, None)
    assert ts[0] == 999 and ts[-1] == 1 and len(ts) == 999 and prev[-1] == 0
    ts, prev = sampling_timesteps("ddim", 1000, 50)
    assert ts[:2] == [980, 960] and prev[-1] == -20
    ts, prev = sampling_timesteps("ddpm", 1000, 4)
    assert ts == [750, 500, 250, 0] and prev == [500, 250, 0, -1]
    with pytest.raises(ValueError, match="method='euler'"):
        sampling_timesteps("euler", 1000, 10)


def _tiny(conditional: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    if conditional:
        return UNetConditional(c_in=1, c_out=1, time_dim=16, num_classes=3, image_size=8, base_channels=4)
    return UNet(c_in=1, c_out=1, time_dim=16, image_size=8, base_channels=4)


def test_sampler_seed_loop_equals_the_seeds_loop() -> None:
    """sample(method='seed') runs the seed's loop: same model calls, same update (noise from the reference's Philox)."""
    model = _tiny().eval()
    s = ref.make_schedule(num_train_timesteps=6, beta_end=0.2)
    got = sample(model, 2, schedule=s, seed=4, progress=False, output="float")
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    offset = 0
    with torch.no_grad():
        for i in range(5, 0, -1):
            t = torch.full((2,), i)
            eps = model(x, t)
            z = ref.philox_normal(2, 64, 4, offset).reshape(x.shape)
            offset += ref.noise_counters(2, 64)
            a, ah, b = s.alphas[i], s.alphas_cumprod[i], s.betas[i]
            x = 1 / torch.sqrt(a) * (x - ((1 - a) / torch.sqrt(1 - ah)) * eps) + (torch.sqrt(b) * z if i > 1 else 0)
    _assert_close(got, x, 1e-5)


def test_sampler_cfg_ddim_uint8_and_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _tiny(conditional=True)
    labels = torch.tensor([0, 2, 1])
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([5, 5, 5])
    with torch.no_grad():
        c1, u1 = cfg_model_output(model.eval(), x, t, labels, 3.0, batched=False)
        c2, u2 = cfg_model_output(model, x, t, labels, 3.0, batched=True)
    assert u1 is not None and u2 is not None
    _assert_close(c2, c1, 1e-5)
    _assert_close(u2, u1, 1e-5)
    path = tmp_path / "grid.png"
    img = sample(model, 3, labels=labels, method="ddim", steps=4, eta=0.5, progress=False, save_path=path, nrow=2)
    assert img.dtype == torch.uint8 and img.shape == (3, 1, 8, 8) and path.stat().st_size > 0
    from PIL import Image

    assert Image.open(path).size == (2 * 10 + 2, 2 * 10 + 2)
    ddpm = sample(model, 2, labels=labels[:2], method="ddpm", steps=3, progress=False, output="float")
    assert ddpm.dtype == torch.float32 and torch.isfinite(ddpm).all()
    with pytest.raises(ValueError, match=r"labels\.shape"):
        sample(model, 2, labels=labels, progress=False)
    with pytest.raises(ValueError, match="cuda_graph"):
        sample(model, 1, cuda_graph=True, progress=False)
    with pytest.raises(ValueError, match="uint8"):
        save_grid(torch.zeros(1, 1, 2, 2), path)


def test_sampler_autocast_region() -> None:
    model = _tiny()
    kw: dict[str, Any] = dict(method="ddim", steps=4, seed=3, progress=False, output="float")
    want = sample(model, 3, **kw)
    got = sample(model, 3, autocast=torch.bfloat16, **kw)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert not torch.equal(got, want)  # the model really ran in bf16
    assert float((got - want).norm() / want.norm()) < 5e-2
    with pytest.raises(ValueError, match=r"autocast=torch.int32: supported None, torch.float16, torch.bfloat16"):
        sample(model, 1, autocast=torch.int32, progress=False)


@pytest.mark.gpu
def test_sampler_autocast_graph_equals_the_plain_loop_on_gpu() -> None:
    model = _tiny().cuda()
    s = ref.make_schedule(num_train_timesteps=20)
    kw: dict[str, Any] = dict(schedule=s, seed=2, progress=False, output="float", autocast=torch.bfloat16)
    torch.testing.assert_close(sample(model, 3, cuda_graph=True, **kw), sample(model, 3, **kw), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True])
def test_sampler_graph_replay_equals_the_plain_loop_on_gpu(graph: bool) -> None:
    model = _tiny().cuda()
    s = ref.make_schedule(num_train_timesteps=20)
    got = sample(model, 3, schedule=s, seed=2, progress=False, output="float", cuda_graph=graph)
    again = sample(model, 3, schedule=s, seed=2, progress=False, output="float", cuda_graph=not graph)
    torch.testing.assert_close(got, again, atol=1e-4, rtol=1e-4)


def test_cpu_demo_runs_tiny(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from modelkernels.kernels.diffusion.demo import load_digits_tensor, main

    x, y = load_digits_tensor()
    assert x.shape == (1797, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0 and int(y.max()) == 9
    out = main(["--max-steps", "2", "--method", "ddim", "--steps", "2", "--per-digit", "1", "--width", "4",
                "--out", str(tmp_path / "digits.png")])
    assert out.stat().st_size > 0


def test_philox_rounds_knob_changes_kernel_and_reference_together() -> None:
    s = ref.make_schedule()
    x = _rand(2, 3, 4, 5)
    ten = kernels.q_sample(x, 999, s, seed=4, backend="triton")
    previous = kernels.diffusion.set_philox_rounds(7)
    try:
        seven = kernels.q_sample(x, 999, s, seed=4, backend="triton")
        _assert_close(seven, kernels.q_sample(x, 999, s, seed=4, backend="reference"), 1e-5)
        assert not torch.allclose(seven, ten)
    finally:
        kernels.diffusion.set_philox_rounds(previous)
    assert torch.equal(kernels.q_sample(x, 999, s, seed=4, backend="triton"), ten)
    with pytest.raises(ValueError, match="rounds=6"):
        kernels.diffusion.set_philox_rounds(6)


def test_ddim_scheduler_takes_noise_by_either_name() -> None:
    ours = DDIMScheduler()
    ours.set_timesteps(10)
    x, mo, z = _rand(2, 3, 4), _rand(2, 3, 4, seed=1), _rand(2, 3, 4, seed=2)
    a = ours.step(mo, 900, x, eta=1.0, noise=z).prev_sample
    b = ours.step(mo, 900, x, eta=1.0, variance_noise=z).prev_sample
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="either noise or variance_noise"):
        ours.step(mo, 900, x, eta=1.0, noise=z, variance_noise=z)


@pytest.mark.gpu
def test_out_of_range_gpu_timesteps_give_nan_for_that_sample_only() -> None:
    s = ref.make_schedule(device="cuda")
    x = torch.randn(2, 3, 4, 4, device="cuda")
    t = torch.tensor([5, 1000], device="cuda")  # not checked on the host: that would synchronize
    for backend in BACKENDS:
        out = kernels.ddpm_seed_step(x, t, x, s, torch.zeros_like(x), backend=backend)
        assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
