"""diffusers' DDPMPipeline / DDIMPipeline on the CPU with a tiny random UNet2DModel built from a
config dict: our schedulers against diffusers', the UNet patched and unpatched, same images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.diffusion.scheduler import DDIMScheduler, DDPMScheduler

diffusers = pytest.importorskip("diffusers")

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": (8, 16),
    "norm_num_groups": 4,
    "attention_head_dim": 8,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


def _unet() -> Any:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**TINY_UNET).eval()


def _images(pipe: Any, steps: int, **kw: Any) -> np.ndarray:
    out: np.ndarray = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                           output_type="np", **kw).images
    return out


@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_ddpm_pipeline_with_our_scheduler(patched: bool) -> None:
    unet = _unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))
    want = _images(pipe, 5)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if patched:
        kernels.nn.patch(unet)
    got = _images(pipe, 5)
    kernels.nn.unpatch(unet)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_ddim_pipeline_with_our_scheduler(patched: bool) -> None:
    unet = _unet()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=100))
    want = _images(pipe, 4, eta=0.5)
    # DDIMPipeline converts its scheduler with diffusers' DDIMScheduler.from_config: ours goes in after
    converted = diffusers.DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100))
    assert dict(converted.scheduler.config) == {k: v for k, v in pipe.scheduler.config.items()
                                                if not k.startswith("_")}
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if patched:
        kernels.nn.patch(unet)
    got = _images(pipe, 4, eta=0.5)
    kernels.nn.unpatch(unet)
    np.testing.assert_allclose(got, want, atol=1e-5)
