"""``kernels.nn.patch`` on diffusers' UNets (tiny ones from config dicts, random weights): what is
swapped, outputs equal the unpatched model's on the reference backends and on the Triton kernels
(CPU, TRITON_INTERPRET=1), the attention processor for Stable Diffusion's head dims, and unpatch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modelkernels import kernels

diffusers = pytest.importorskip("diffusers")
dp = pytest.importorskip("modelkernels.kernels.diffusion.diffusers_patch")
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

TINY_UNET = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
             "block_out_channels": (16, 32), "norm_num_groups": 4, "attention_head_dim": 16,
             "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D")}
# Stable Diffusion's layout at toy size: cross-attention transformer blocks, head dim 16
TINY_CONDITION_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                       "block_out_channels": (32, 64), "norm_num_groups": 8, "attention_head_dim": 2,
                       "cross_attention_dim": 24, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                       "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
TRITON = {"group_norm_act": "triton", "attention": "triton"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _models() -> list[tuple[str, Any, tuple[Any, ...]]]:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY_UNET).eval()
    cond = diffusers.UNet2DConditionModel(**TINY_CONDITION_UNET).eval()
    return [("UNet2DModel", unet, (_rand(2, 3, 8, 8), torch.tensor([10, 500]))),
            ("UNet2DConditionModel", cond, (_rand(2, 4, 8, 8), torch.tensor([3, 999]), _rand(2, 7, 24, seed=1)))]


@pytest.mark.parametrize("backends", [None, TRITON], ids=["reference", "triton"])
def test_patched_unets_equal_unpatched(backends: dict[str, str] | None) -> None:
    for name, model, args in _models():
        keys = list(model.state_dict())
        with torch.no_grad():
            want = model(*args).sample
            report = kernels.nn.patch(model)
            replaced = {old for _, old, _ in report.replaced}
            assert replaced == {"ResnetBlock2D", "Attention"}, (name, str(report))
            assert list(model.state_dict()) == keys
            with kernels.use_backend(**(backends or {})):
                got = model(*args).sample
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, msg=name)
        assert kernels.nn.unpatch(model) == len(report.replaced)
        assert not any(isinstance(m, (dp.FusedResnetBlock2D, dp.KernelsAttention)) for m in model.modules())


def test_patched_unet_is_differentiable() -> None:
    _, model, args = _models()[0]
    x = args[0].clone().requires_grad_(True)
    model(x, args[1]).sample.square().sum().backward()
    want = x.grad.clone()
    x.grad = None
    kernels.nn.patch(model)
    model(x, args[1]).sample.square().sum().backward()
    torch.testing.assert_close(x.grad, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_attention_processor_for_stable_diffusion_head_dims(head_dim: int, cross: bool) -> None:
    heads = 2
    attn = Attention(query_dim=heads * head_dim, heads=heads, dim_head=head_dim,
                     cross_attention_dim=48 if cross else None).eval()
    x, ctx = _rand(2, 9, heads * head_dim), (_rand(2, 5, 48, seed=1) if cross else None)
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=ctx)
        attn.set_processor(dp.KernelsAttnProcessor())
        got = attn(x, encoder_hidden_states=ctx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_attention_processor_image_tokens_with_group_norm_and_residual(backend: str) -> None:
    """UNet2DModel's attention: a (B, C, H, W) input, group_norm, residual connection, output rescale."""
    attn = Attention(query_dim=32, heads=2, dim_head=16, norm_num_groups=4, residual_connection=True,
                     rescale_output_factor=2.0, bias=True, upcast_softmax=True).eval()
    x = _rand(2, 32, 3, 5)
    with torch.no_grad():
        want = attn(x)
        attn.set_processor(dp.KernelsAttnProcessor())
        with kernels.use_backend(attention=backend):
            got = attn(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_mask_runs_diffusers_processor() -> None:
    attn = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=8).eval()
    x, ctx = _rand(2, 6, 32), _rand(2, 4, 8, seed=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        want = attn(x, encoder_hidden_states=ctx, attention_mask=mask)
        attn.set_processor(dp.KernelsAttnProcessor())
        got = attn(x, encoder_hidden_states=ctx, attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_blocks_that_do_not_fit_are_kept_with_the_reason() -> None:
    model = torch.nn.ModuleDict({
        "shift": ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=4, groups=2,
                               time_embedding_norm="scale_shift"),
        "mish": ResnetBlock2D(in_channels=8, temb_channels=4, groups=2, non_linearity="mish"),
        "down": ResnetBlock2D(in_channels=8, temb_channels=4, groups=2, down=True),
        "custom": Attention(query_dim=8, heads=1, dim_head=8, processor=AttnProcessor2_0()),
    })
    model["custom"].set_processor(dp.KernelsAttnProcessor())
    report = kernels.nn.patch(model)
    why = {path: reason for path, _, reason in report.kept}
    assert not report.replaced
    assert "time_embedding_norm='scale_shift'" in why["shift"]
    assert "the fused pass applies SiLU" in why["mish"]
    assert "resampling inside the block" in why["down"]
    assert "processor KernelsAttnProcessor" in why["custom"]


def test_fused_resnet_block_time_embedding_and_shortcut() -> None:
    """A block with a 1x1 conv shortcut, skip_time_act and output_scale_factor, grad on and off."""
    block = ResnetBlock2D(in_channels=8, out_channels=12, temb_channels=6, groups=4, groups_out=3,
                          skip_time_act=True, output_scale_factor=1.5, eps=1e-6).eval()
    x, temb = _rand(2, 8, 5, 3), _rand(2, 6, seed=1)
    want = block(x, temb)
    fused = dp.FusedResnetBlock2D.from_module(block)
    torch.testing.assert_close(fused(x, temb), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), kernels.use_backend(group_norm_act="triton"):
        torch.testing.assert_close(fused(x, temb), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be fused: nonlinearity"):
        dp.FusedResnetBlock2D.from_module(ResnetBlock2D(in_channels=8, groups=2, temb_channels=None,
                                                        non_linearity="gelu"))


def test_stable_diffusion_unet_patch_report() -> None:
    """The GPU benchmark's SD 1.5 config, built without memory: every resnet block and attention swapped."""
    from benchmarks.gpu_diffusers import SD15_UNET

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**SD15_UNET)
    report = kernels.nn.patch(unet)
    kinds = [old for _, old, _ in report.replaced]
    assert kinds.count("ResnetBlock2D") == 22 and kinds.count("Attention") == 32, str(report)
    assert not report.kept
    heads = {m.heads for m in unet.modules() if isinstance(m, dp.KernelsAttention)}
    dims = {m.inner_dim // m.heads for m in unet.modules() if isinstance(m, dp.KernelsAttention)}
    assert heads == {8} and dims == {40, 80, 160}


def test_kernels_attention_forward_filters_kwargs_as_diffusers_and_inspects_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The drop-in's forward is diffusers': unexpected cross_attention_kwargs are dropped with diffusers'
    warning, the rest reach the processor, the output equals the original module's; the processor's
    signature is looked up once per processor class, not per call."""
    import inspect

    torch.manual_seed(0)
    original = Attention(query_dim=16, heads=2, dim_head=8).eval()
    drop_in = dp.KernelsAttention.from_attention(original)
    x = _rand(2, 5, 16, seed=3)
    asked: list[object] = []
    signature = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda obj, *a, **k: asked.append(obj) or signature(obj, *a, **k))
    dp._PARAMETERS.clear()
    with torch.no_grad(), caplog.at_level("WARNING", logger="diffusers.models.attention_processor"):
        got = [drop_in(x) for _ in range(3)]
        warned = drop_in(x, unknown_option=1.0)
    assert len(asked) == 1  # the first call's lookup, kept for the class
    assert "['unknown_option'] are not expected by KernelsAttnProcessor" in caplog.text
    with torch.no_grad():
        want = original(x)
    for out in (*got, warned):
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
