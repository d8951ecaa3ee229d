"""The schedulers by diffusers' own idiom and tests: ``from_config`` / ``save_pretrained`` /
``from_pretrained`` both ways with diffusers' classes, every constructor argument, timestep
broadcasting, and the expectations of diffusers' DDPM / DDIM scheduler tests (their dummy model,
samples and expected sums; our test code), run on the reference and on the Triton step kernels
(CPU tensors under TRITON_INTERPRET=1)."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.diffusion.scheduler import DDIMScheduler, DDPMScheduler

diffusers = pytest.importorskip("diffusers")
BACKENDS = ["reference", "triton"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


def _dummy_sample(flip: bool = False) -> torch.Tensor:
    """diffusers' ``dummy_sample_deter`` (and ``dummy_noise_deter`` with ``flip``): (4, 3, 8, 8) ramps."""
    n = 4 * 3 * 8 * 8
    values = torch.arange(n)
    if flip:
        values = values.flip(-1)
    return (values.reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def _dummy_model(sample: torch.Tensor, t: Any) -> torch.Tensor:
    """diffusers' ``dummy_model``: sample * t / (t + 1)."""
    return sample * t / (t + 1)


def _backend(name: str) -> Any:
    return kernels.use_backend(ddpm_step=name, ddim_step=name, q_sample=name)


def _sum_mean(x: torch.Tensor) -> tuple[float, float]:
    return float(x.abs().sum()), float(x.abs().mean())


# ---- config: from_config, save_pretrained / from_pretrained, both ways ----

CONFIGS = [
    {},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
     "clip_sample": False, "set_alpha_to_one": False},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True},
    {"trained_betas": [0.01, 0.02, 0.05, 0.1, 0.2], "num_train_timesteps": 5, "timestep_spacing": "linspace"},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.5, "clip_sample_range": 1.5},
]


def _ddpm_only(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "set_alpha_to_one"}


def _pairs(config: dict[str, Any]) -> list[tuple[Any, type]]:
    return [(diffusers.DDPMScheduler(**_ddpm_only(config)), DDPMScheduler),
            (diffusers.DDIMScheduler(**config), DDIMScheduler)]


def _same_config(ours: Any, theirs: Any) -> None:
    want = {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    assert dict(ours.config) == want


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_from_config_takes_diffusers_config_and_back(config: dict[str, Any]) -> None:
    for theirs, cls in _pairs(config):
        ours = cls.from_config(theirs.config)
        _same_config(ours, theirs)
        back = type(theirs).from_config(ours.config)
        _same_config(ours, back)
        assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
        assert torch.equal(ours.timesteps, theirs.timesteps)


def test_from_config_overrides_and_our_options() -> None:
    theirs = diffusers.DDPMScheduler()
    ours = DDPMScheduler.from_config(theirs.config, prediction_type="v_prediction", seed=7)
    assert ours.config.prediction_type == "v_prediction" and ours.seed == 7
    assert "seed" not in ours.config
    # a DDIM config read by the DDPM class: set_alpha_to_one is not a DDPM argument, ignored as diffusers does
    ddpm = DDPMScheduler.from_config(diffusers.DDIMScheduler(set_alpha_to_one=False).config)
    assert "set_alpha_to_one" not in ddpm.config
    with pytest.raises(TypeError, match="unexpected argument"):
        DDPMScheduler.from_config(theirs.config, set_alpha_to_one=True)
    with pytest.raises(TypeError, match="config must be a mapping"):
        DDPMScheduler.from_config("path/to/model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="read-only"):
        ours.config["beta_end"] = 0.5
    with pytest.raises(AttributeError, match="no 'nothing'"):
        _ = ours.config.nothing
    for copied in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert copied.config == ours.config and type(copied.config) is type(ours.config)


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_save_pretrained_round_trips_with_diffusers(config: dict[str, Any], tmp_path: Any) -> None:
    for theirs, cls in _pairs(config):
        ours = cls(**(_ddpm_only(config) if cls is DDPMScheduler else config))
        ours.save_pretrained(tmp_path / "ours")
        written = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
        assert written["_class_name"] == cls.__name__ and "_diffusers_version" in written
        _same_config(ours, type(theirs).from_pretrained(tmp_path / "ours"))
        theirs.save_pretrained(tmp_path / "model" / "scheduler")
        loaded = cls.from_pretrained(tmp_path / "model", subfolder="scheduler")
        _same_config(loaded, theirs)
        assert cls.from_pretrained(tmp_path / "ours").to_json_string() == ours.to_json_string()


def test_from_pretrained_names_a_missing_folder(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"no scheduler_config\.json there"):
        DDIMScheduler.from_pretrained(tmp_path / "absent")
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        DDIMScheduler.from_pretrained(tmp_path)


def test_attributes_diffusers_loops_read() -> None:
    for ours, theirs in [(DDPMScheduler(num_train_timesteps=37), diffusers.DDPMScheduler(num_train_timesteps=37)),
                         (DDIMScheduler(), diffusers.DDIMScheduler())]:
        assert len(ours) == len(theirs)
        assert ours.order == theirs.order == 1 and ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
        x = torch.ones(2, 3)
        assert ours.scale_model_input(x, 5) is x


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timestep_spacings_equal_diffusers(spacing: str, offset: int) -> None:
    for n in (1, 3, 10, 50, 999, 1000):
        for ours, theirs in [(DDPMScheduler(timestep_spacing=spacing, steps_offset=offset),
                              diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)),
                             (DDIMScheduler(timestep_spacing=spacing, steps_offset=offset),
                              diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset))]:
            ours.set_timesteps(n)
            theirs.set_timesteps(n)
            assert torch.equal(ours.timesteps, theirs.timesteps), (spacing, n)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="timestep_spacing='middle'"):
        DDIMScheduler(timestep_spacing="middle")
    with pytest.raises(ValueError, match="variance_type='other'"):
        DDPMScheduler(variance_type="other")
    with pytest.raises(ValueError, match="prediction_type='eps'"):
        DDIMScheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="steps_offset=-1"):
        DDPMScheduler(steps_offset=-1)
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        DDPMScheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="num_inference_steps=1001"):
        DDPMScheduler().set_timesteps(1001)


# ---- schedules diffusers has that the seed did not ----

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"])
@pytest.mark.parametrize("rescale", [False, True])
def test_schedules_and_zero_snr_equal_diffusers(schedule: str, rescale: bool) -> None:
    theirs = diffusers.DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=rescale)
    ours = DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=rescale)
    assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    if rescale:
        assert float(ours.alphas_cumprod[-1]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_snr_trailing_v_prediction_loop_equals_diffusers(backend: str) -> None:
    """The zero-terminal-SNR recipe (Lin et al. 2023): trailing spacing, v-prediction, DDIM."""
    config = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
              "clip_sample": False}
    theirs, ours = diffusers.DDIMScheduler(**config), DDIMScheduler(**config)
    x = _dummy_sample()
    for s in (theirs, ours):
        s.set_timesteps(6)
    a = b = x
    with _backend(backend):
        for t in theirs.timesteps:
            a = theirs.step(_dummy_model(a, t), t, a).prev_sample
            b = ours.step(_dummy_model(b, t), t, b).prev_sample
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# ---- timestep broadcasting ----

@pytest.mark.parametrize("backend", BACKENDS)
def test_timesteps_broadcast_as_diffusers(backend: str) -> None:
    theirs, ours = diffusers.DDPMScheduler(), DDPMScheduler()
    x, z = _dummy_sample(), _dummy_sample(flip=True)
    with _backend(backend):
        for t in (torch.tensor([998]), torch.tensor(17), torch.tensor([[5]]), torch.tensor([0, 3, 500, 999]),
                  torch.tensor([[0], [3], [500], [999]])):
            torch.testing.assert_close(ours.add_noise(x, z, t), theirs.add_noise(x, z, t), atol=2e-6, rtol=2e-6)
            torch.testing.assert_close(ours.get_velocity(x, z, t), theirs.get_velocity(x, z, t), atol=2e-6,
                                       rtol=2e-6)
        t1 = torch.tensor([420])
        want = theirs.step(x * 0.1, t1, x, generator=torch.manual_seed(3)).prev_sample
        got = ours.step(x * 0.1, t1, x, generator=torch.manual_seed(3)).prev_sample
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    with pytest.raises(ValueError, match=r"t.shape=\(3,\)"):
        ours.add_noise(x, z, torch.tensor([1, 2, 3]))


# ---- diffusers' DDPMScheduler tests (tests/schedulers/test_scheduler_ddpm.py), expectations ported ----

DDPM_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
               "variance_type": "fixed_small", "clip_sample": True}


def _ddpm_full_loop(device: str = "cpu", **config: Any) -> torch.Tensor:
    scheduler = DDPMScheduler(**{**DDPM_CONFIG, **config})
    sample = _dummy_sample().to(device)
    generator = torch.manual_seed(0)
    for t in reversed(range(len(scheduler))):
        sample = scheduler.step(_dummy_model(sample, t), t, sample, generator=generator).prev_sample
    return sample


# 1000 Triton steps take minutes in the interpreter: the whole loop runs on the GPU, and on the CPU
# the Triton steps are held to the reference's at both ends of the loop (test_ddpm_loop_ends_on_triton).
LOOP_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DDPM_LOOPS = [({}, (258.9606, 0.3372)), ({"prediction_type": "v_prediction"}, (202.0296, 0.2631))]


@pytest.mark.parametrize("device", LOOP_DEVICES)
@pytest.mark.parametrize("config,want", DDPM_LOOPS, ids=["no_noise", "v_prediction"])
def test_ddpm_full_loops(device: str, config: dict[str, Any], want: tuple[float, float]) -> None:
    """diffusers' test_full_loop_no_noise / test_full_loop_with_v_prediction (noise from the generator)."""
    s, m = _sum_mean(_ddpm_full_loop(device, **config).cpu())
    assert abs(s - want[0]) < 1e-2 and abs(m - want[1]) < 1e-3


@pytest.mark.parametrize("config", [c for c, _ in DDPM_LOOPS], ids=["no_noise", "v_prediction"])
def test_ddpm_loop_ends_on_triton(config: dict[str, Any]) -> None:
    """The Triton steps of the full loop equal the reference's at t = 999..990 and 9..0, from the
    reference loop's own states and the same generator noise."""
    scheduler = DDPMScheduler(**{**DDPM_CONFIG, **config})
    sample = _dummy_sample()
    generator = torch.manual_seed(0)
    for t in reversed(range(len(scheduler))):
        state = generator.get_state()
        with _backend("reference"):
            want = scheduler.step(_dummy_model(sample, t), t, sample, generator=generator).prev_sample
        if t >= 990 or t < 10:
            generator.set_state(state)
            with _backend("triton"):
                got = scheduler.step(_dummy_model(sample, t), t, sample, generator=generator).prev_sample
            torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
        sample = want


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddpm_full_loop_with_noise(backend: str) -> None:
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    t_start = len(scheduler) - 2
    sample = _dummy_sample()
    generator = torch.manual_seed(0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    with _backend(backend):
        sample = scheduler.add_noise(sample, _dummy_sample(flip=True), timesteps[:1])
        for t in timesteps:
            sample = scheduler.step(_dummy_model(sample, t), t, sample, generator=generator).prev_sample
    s, m = _sum_mean(sample)
    assert abs(s - 387.9466) < 1e-2 and abs(m - 0.5051) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddpm_variance(backend: str) -> None:
    """diffusers' ``_get_variance`` values, read from the step: the noise enters scaled by the std."""
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    x, z = _dummy_sample(), torch.ones(4, 3, 8, 8)
    with _backend(backend):
        for t, variance in [(0, 0.0), (487, 0.00979), (999, 0.02)]:
            std = scheduler.step(x, t, x, noise=2 * z).prev_sample - scheduler.step(x, t, x, noise=z).prev_sample
            assert abs(float(std.mean()) ** 2 - variance) < 1e-5


def test_ddpm_custom_timesteps() -> None:
    scheduler = DDPMScheduler(**DDPM_CONFIG)
    timesteps = [100, 87, 50, 1, 0]
    scheduler.set_timesteps(timesteps=timesteps)
    for i, t in enumerate(scheduler.timesteps):
        want = -1 if i == len(timesteps) - 1 else timesteps[i + 1]
        assert int(scheduler.previous_timestep(t)) == want
    with pytest.raises(ValueError, match="descending order"):
        scheduler.set_timesteps(timesteps=[100, 87, 50, 51, 0])
    with pytest.raises(ValueError, match="either num_inference_steps or timesteps"):
        scheduler.set_timesteps(num_inference_steps=5, timesteps=timesteps)
    with pytest.raises(ValueError, match=r"must lie in 0\.\.999"):
        scheduler.set_timesteps(timesteps=[scheduler.config.num_train_timesteps])


def _check_over_configs(ours_cls: type, theirs_cls: type, step_kw: dict[str, Any], steps: int | None,
                        **config: Any) -> None:
    """diffusers' ``check_over_configs``: the config saved and loaded back gives the same step, ours
    (loaded from diffusers' saved config) equal to theirs."""
    g = torch.Generator().manual_seed(0)
    sample = torch.rand((4, 3, 8, 8), generator=g)
    residual = 0.1 * sample
    theirs = theirs_cls(**config)
    ours = ours_cls.from_config(theirs.config)
    for s in (theirs, ours):
        if steps is not None:
            s.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    t = int(ours.timesteps[min(1, len(ours.timesteps) - 1)])
    want = theirs.step(residual, t, sample, generator=torch.manual_seed(1), **step_kw).prev_sample
    got = ours.step(residual, t, sample, generator=torch.manual_seed(1), **step_kw).prev_sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)


DDPM_OVER_CONFIGS = (
    [{"num_train_timesteps": n} for n in (1, 5, 100, 1000)]
    + [{"beta_start": a, "beta_end": b} for a, b in zip([0.0001, 0.001, 0.01, 0.1], [0.002, 0.02, 0.2, 0.9])]
    + [{"beta_schedule": s} for s in ("linear", "squaredcos_cap_v2", "sigmoid", "laplace")]
    + [{"variance_type": v} for v in ("fixed_small", "fixed_large", "fixed_small_log")]
    + [{"clip_sample": c} for c in (True, False)]
    + [{"thresholding": True, "prediction_type": p, "sample_max_value": m}
       for m in (0.5, 1.0, 2.0) for p in ("epsilon", "sample", "v_prediction")]
    + [{"prediction_type": p} for p in ("epsilon", "sample", "v_prediction")]
    + [{"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}]
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddpm_over_configs(backend: str) -> None:
    with _backend(backend):
        for config in DDPM_OVER_CONFIGS:
            _check_over_configs(DDPMScheduler, diffusers.DDPMScheduler, {}, None, **{**DDPM_CONFIG, **config})
            steps = min(10, config.get("num_train_timesteps", 1000))
            _check_over_configs(DDPMScheduler, diffusers.DDPMScheduler, {}, steps, **{**DDPM_CONFIG, **config})


# ---- diffusers' DDIMScheduler tests (tests/schedulers/test_scheduler_ddim.py), expectations ported ----

DDIM_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
               "clip_sample": True}


def _ddim_full_loop(**config: Any) -> torch.Tensor:
    scheduler = DDIMScheduler(**{**DDIM_CONFIG, **config})
    sample = _dummy_sample()
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        sample = scheduler.step(_dummy_model(sample, t), t, sample, 0.0).prev_sample
    return sample


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config,want", [
    ({}, (172.0067, 0.223967)),
    ({"prediction_type": "v_prediction"}, (52.5302, 0.0684)),
    ({"set_alpha_to_one": True, "beta_start": 0.01}, (149.8295, 0.1951)),
    ({"set_alpha_to_one": False, "beta_start": 0.01}, (149.0784, 0.1941)),
], ids=["no_noise", "v_prediction", "set_alpha_to_one", "no_set_alpha_to_one"])
def test_ddim_full_loops(backend: str, config: dict[str, Any], want: tuple[float, float]) -> None:
    with _backend(backend):
        s, m = _sum_mean(_ddim_full_loop(**config))
    assert abs(s - want[0]) < 1e-2 and abs(m - want[1]) < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_full_loop_with_noise(backend: str) -> None:
    scheduler = DDIMScheduler(**DDIM_CONFIG)
    scheduler.set_timesteps(10)
    sample = _dummy_sample()
    timesteps = scheduler.timesteps[8 * scheduler.order:]
    with _backend(backend):
        sample = scheduler.add_noise(sample, _dummy_sample(flip=True), timesteps[:1])
        for t in timesteps:
            sample = scheduler.step(_dummy_model(sample, t), t, sample, 0.0).prev_sample
    s, m = _sum_mean(sample)
    assert abs(s - 354.5418) < 1e-2 and abs(m - 0.4616) < 1e-3


def test_ddim_steps_offset_and_zero_steps() -> None:
    scheduler = DDIMScheduler(**DDIM_CONFIG, steps_offset=1)
    scheduler.set_timesteps(5)
    assert torch.equal(scheduler.timesteps, torch.LongTensor([801, 601, 401, 201, 1]))
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        scheduler.set_timesteps(num_inference_steps=0)
    with pytest.raises(ValueError, match="call set_timesteps first"):
        DDIMScheduler().step(torch.zeros(1, 2), 5, torch.zeros(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_variance(backend: str) -> None:
    """diffusers' DDIM ``_get_variance(t, prev)`` values, read from an eta = 1 step's noise scale."""
    s = kernels.diffusion.make_schedule()
    x, z = _dummy_sample(), torch.ones(4, 3, 8, 8)
    for t, prev, variance in [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979),
                              (999, 998, 0.02)]:
        def step(noise: torch.Tensor, t: int = t, prev: int = prev) -> torch.Tensor:
            return kernels.ddim_step(x, t, x, s, noise, prev_t=prev, eta=1.0, backend=backend)
        std = step(2 * z) - step(z)
        assert abs(float(std.mean()) ** 2 - variance) < 1e-5


DDIM_OVER_CONFIGS = (
    [{"num_train_timesteps": n} for n in (100, 500, 1000)]
    + [{"steps_offset": o} for o in (0, 1)]
    + [{"beta_start": a, "beta_end": b} for a, b in zip([0.0001, 0.001, 0.01, 0.1], [0.002, 0.02, 0.2, 0.9])]
    + [{"beta_schedule": s} for s in ("linear", "squaredcos_cap_v2")]
    + [{"prediction_type": p} for p in ("epsilon", "v_prediction")]
    + [{"clip_sample": c} for c in (True, False)]
    + [{"timestep_spacing": s} for s in ("trailing", "leading", "linspace")]
    + [{"rescale_betas_zero_snr": r} for r in (True, False)]
    + [{"thresholding": True, "prediction_type": p, "sample_max_value": m}
       for m in (0.5, 1.0, 2.0) for p in ("epsilon", "v_prediction")]
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_over_configs_and_eta(backend: str) -> None:
    with _backend(backend):
        for config in DDIM_OVER_CONFIGS:
            _check_over_configs(DDIMScheduler, diffusers.DDIMScheduler, {"eta": 0.0}, 50, **{**DDIM_CONFIG, **config})
        for steps in (10, 50, 500):
            _check_over_configs(DDIMScheduler, diffusers.DDIMScheduler, {"eta": 0.0}, steps, **DDIM_CONFIG)
        for eta in (0.0, 0.5, 1.0):
            _check_over_configs(DDIMScheduler, diffusers.DDIMScheduler, {"eta": eta}, 50, **DDIM_CONFIG)
