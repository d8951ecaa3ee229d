"""Fused norm / activation / upsample ops and the seed UNet's drop-in blocks (behaviour the registry's
parity samples cannot express: the references against the seed's own modules, the statistics'
numerics, the drop-ins' wiring, and a whole patched UNet forward and backward)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelkernels import kernels
from modelkernels.kernels.fused import group_norm_triton
from modelkernels.kernels.fused.modules import (
    FusedDoubleConv,
    FusedDown,
    FusedSelfAttention,
    FusedUp,
    double_conv_reasons,
)
from modelkernels.kernels.registry import triton_interpret
from modelkernels.pyimpl import fused as ref
from modelkernels.pyimpl.unet import DoubleConv, SelfAttention, UNet, Up

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or triton_interpret()),
                                  reason="Triton needs CUDA or TRITON_INTERPRET=1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
OURS_ON_TRITON = dict.fromkeys(["group_norm_act", "tokens_layer_norm", "add_layer_norm", "upsample_concat",
                                "feed_forward"], "triton")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_group_norm_act_reference_is_the_seed_composition() -> None:
    g = _gen(0)
    x = torch.randn(3, 6, 5, 7, generator=g, dtype=torch.float64)
    r = torch.randn(3, 6, 5, 7, generator=g, dtype=torch.float64)
    e = torch.randn(3, 6, generator=g, dtype=torch.float64)
    gn = nn.GroupNorm(3, 6).double()
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-1, 1)
    seed = nn.GELU()(r + gn(x)) + e[:, :, None, None].repeat(1, 1, 5, 7)
    ours = ref.group_norm_act(x, 3, gn.weight, gn.bias, gn.eps, residual=r, emb=e, activation="gelu")
    torch.testing.assert_close(ours, seed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.group_norm_act(x, 3, gn.weight, gn.bias), gn(x), rtol=1e-12, atol=1e-12)


def test_layer_norm_and_upsample_references_are_the_seed_composition() -> None:
    g = _gen(1)
    x = torch.randn(2, 8, 4, 4, generator=g, dtype=torch.float64)
    ln = nn.LayerNorm([8]).double()
    tokens = x.view(-1, 8, 16).swapaxes(1, 2)
    t, y = ref.tokens_layer_norm(x, ln.weight, ln.bias, ln.eps)
    assert t.is_contiguous() and torch.equal(t, tokens)
    torch.testing.assert_close(y, ln(tokens), rtol=1e-12, atol=1e-12)
    skip = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(ref.upsample_concat(x, skip), torch.cat([skip, up(x)], dim=1), rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_group_norm_statistics_over_many_chunks(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """Many chunks per row (Chan's merge) and a mean far from zero (the per-chunk shift): fp32
    statistics within float32 rounding of float64 ones (the two-pass path; the persistent one has its
    own test in test_fused_group_norm.py)."""
    monkeypatch.setattr(group_norm_triton, "_target_programs", lambda device: 64)
    monkeypatch.setattr(group_norm_triton, "FORWARD_CONFIG",
                        dataclasses.replace(group_norm_triton.FORWARD_CONFIG, path="two_pass"))
    x = (torch.randn(2, 3, 37, 41, generator=_gen(2), dtype=torch.float64) + offset).to(DEV)
    out = kernels.group_norm_act(x.float(), 1, backend="triton")
    want = ref.group_norm_act(x, 1)
    # fp32 input rounding alone moves a value near 1e4 by ~5e-4, i.e. ~5e-4 normalized units
    tol = 2e-5 if offset == 0 else 2e-3
    torch.testing.assert_close(out.double(), want, rtol=0, atol=tol)


@needs_triton
def test_group_norm_triton_writes_every_output_and_keeps_the_layout() -> None:
    x = torch.randn(2, 8, 5, 3, generator=_gen(3)).to(DEV).contiguous(memory_format=torch.channels_last)
    out = kernels.group_norm_act(x, 1, activation="gelu", backend="triton")
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, ref.group_norm_act(x, 1, activation="gelu"), rtol=1e-5, atol=1e-5)


def test_cpu_dispatch_runs_torchs_kernels_and_says_why() -> None:
    """CPU tensors go to the 'torch' backend (PyTorch's own GroupNorm), not the written-out reference; the
    Triton backend says why it does not take them."""
    x = torch.randn(2, 4, 3, 3)
    text = kernels.explain("group_norm_act", x, 1)
    assert "-> runs 'torch'" in text and "device=cpu: supported cuda" in text


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(c_in=1, c_out=1, time_dim=32, image_size=8, base_channels=8)


def _patch(model: nn.Module, **options: object) -> kernels.nn.PatchReport:
    return kernels.nn.patch(model, **options)


def test_patch_swaps_every_block_and_unpatch_restores_them() -> None:
    model = _tiny_unet()
    keys, names = list(model.state_dict()), [n for n, _ in model.named_modules()]
    originals = {n: type(m) for n, m in model.named_modules()}
    report = _patch(model)
    fused = {path for path, _, new in report.replaced if new.startswith("modelkernels.kernels.fused.")}
    blocks = {"inc", "down1", "down2", "down3", "sa1", "sa2", "sa3", "sa4", "sa5", "sa6", "bot1", "bot2", "bot3",
              "up1", "up2", "up3"}
    inner = {f"down{i}.maxpool_conv.{j}" for i in (1, 2, 3) for j in (1, 2)} | {
        f"up{i}.conv.{j}" for i in (1, 2, 3) for j in (0, 1)}
    assert fused == blocks | inner
    mha = "modelkernels.kernels.attention.modules.MultiheadAttention"
    assert {path for path, _, new in report.replaced if new == mha} == {f"sa{i}.mha" for i in range(1, 7)}
    assert list(model.state_dict()) == keys
    assert isinstance(model.up1, FusedUp) and isinstance(model.up1.conv[0], FusedDoubleConv)
    assert isinstance(model.down2, FusedDown) and isinstance(model.down2.maxpool_conv[2], FusedDoubleConv)
    assert isinstance(model.sa3, FusedSelfAttention) and isinstance(model.sa3.mha, kernels.nn.MultiheadAttention)
    kernels.nn.unpatch(model)
    assert [n for n, _ in model.named_modules()] == names
    assert {n: type(m) for n, m in model.named_modules()} == originals


def test_unsupported_blocks_are_left_with_their_reason() -> None:
    model = _tiny_unet()
    model.bot2.double_conv[2] = nn.GELU(approximate="tanh")
    report = {path: why for path, _, why in _patch(model).kept}
    assert isinstance(model.bot2, DoubleConv)
    assert "approximate='none'" in report["bot2"]
    assert double_conv_reasons(nn.Linear(2, 2)) == [
        "expected .double_conv = Sequential(conv, GroupNorm, GELU, conv, GroupNorm)"]
    with pytest.raises(ValueError, match="cannot be fused"):
        FusedDoubleConv.from_module(model.bot2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_patched_unet_matches_unpatched(dtype: torch.dtype, tol: float) -> None:
    """Patched vs unpatched outputs, relative L2 error (CPU: the references run; bf16 by autocast)."""
    model = _tiny_unet()
    patched = copy.deepcopy(model)
    _patch(patched)
    x = torch.randn(3, 1, 8, 8, generator=_gen(4))
    t = torch.tensor([1, 500, 999])
    with torch.no_grad():
        want = model(x, t).double()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            got = patched(x, t).double()
    err = float((got - want).norm() / want.norm())
    assert err < tol, f"relative error {err:.2e} > {tol}"


@needs_triton
def test_patched_unet_forward_and_gradients_on_triton() -> None:
    """The whole tiny UNet with every fused block on the Triton kernels (interpreter on CPU):
    output and every parameter's gradient against the unpatched model (fp32)."""
    model = _tiny_unet().to(DEV)
    patched = copy.deepcopy(model)
    _patch(patched)
    x = torch.randn(2, 1, 8, 8, generator=_gen(5)).to(DEV)
    t = torch.tensor([3, 700], device=DEV)
    want = model(x, t)
    want.square().mean().backward()
    with kernels.use_backend(**OURS_ON_TRITON):
        got = patched(x, t)
        got.square().mean().backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads = dict(model.named_parameters())
    for name, p in patched.named_parameters():
        g, w = p.grad, grads[name].grad
        assert g is not None and w is not None, name
        scale = float(w.abs().max()) + 1e-12
        assert float((g - w).abs().max()) / scale < 1e-4, f"gradient of {name}"


def _digits(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32) / 8.0 - 1.0
    return images[:, None]


def _train(model: nn.Module, images: torch.Tensor, steps: int, seed: int, batch: int = 16) -> list[float]:
    from modelkernels.pyimpl.unet import train_step

    alpha_hat = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        x0 = images[(i * batch) % images.shape[0]:][:batch]
        losses.append(train_step(model, opt, x0, alpha_hat, generator=gen))
    return losses


def test_patched_training_follows_the_unpatched_loss_curve() -> None:
    """20 AdamW steps on scikit-learn's 8x8 digits: the patched model (references on the CPU) tracks
    the unpatched loss curve far closer than a different data/noise seed does."""
    images = _digits(256)
    base = _train(_tiny_unet(), images, 20, seed=0)
    patched = _tiny_unet()
    _patch(patched)
    fused = _train(patched, images, 20, seed=0)
    other = _train(_tiny_unet(), images, 20, seed=1)
    gap = max(abs(a - b) for a, b in zip(base, fused))
    noise = max(abs(a - b) for a, b in zip(base, other))
    assert sum(base[-5:]) < sum(base[:5]), "the unpatched model did not learn"
    assert gap < 1e-3 and gap < noise / 20, f"patched curve off by {gap:.2e} (seed-to-seed noise {noise:.2e})"


@needs_triton
def test_patched_training_steps_on_triton() -> None:
    """Two training steps with the Triton backward kernels (interpreter on CPU) stay on the curve."""
    images = _digits(4).to(DEV)
    base = _tiny_unet().to(DEV)
    patched = copy.deepcopy(base)
    _patch(patched)
    want = _train(base, images, 2, seed=0, batch=2)
    with kernels.use_backend(**OURS_ON_TRITON):
        got = _train(patched, images, 2, seed=0, batch=2)
    assert max(abs(a - b) for a, b in zip(want, got)) < 1e-4


def test_register_seed_blocks_fuses_a_users_own_copy_of_the_seed() -> None:
    """A user's own seed classes (here: subclasses, which patch otherwise leaves alone) are fused
    after ``register_seed_blocks`` on their module."""
    from modelkernels.kernels.fused.drop_ins import register_seed_blocks
    from modelkernels.pyimpl import unet

    class UserModules:
        class DoubleConv(unet.DoubleConv):
            pass

        class Up(unet.Up):
            pass

    torch.manual_seed(8)
    blocks = nn.ModuleDict({"dc": UserModules.DoubleConv(4, 6, residual=False), "up": UserModules.Up(12, 4, 8)})
    before = {k: str(why) for k, _, why in _patch(copy.deepcopy(blocks)).kept}
    assert "subclass" in before["dc"] and "subclass" in before["up"]
    assert register_seed_blocks(UserModules) == ["DoubleConv", "Up"]
    patched = copy.deepcopy(blocks)
    replaced = {path for path, _, _ in _patch(patched).replaced}
    assert {"dc", "up", "up.conv.0", "up.conv.1"} <= replaced
    x, low, skip, t = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5), torch.randn(2, 6, 10, 10), torch.randn(2, 8)
    torch.testing.assert_close(patched["dc"](x), blocks["dc"](x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patched["up"](low, skip, t), blocks["up"](low, skip, t), rtol=1e-5, atol=1e-5)


def test_fused_self_attention_ignores_need_weights_and_matches() -> None:
    torch.manual_seed(6)
    block = SelfAttention(8, 4).double()
    fused = FusedSelfAttention.from_module(block)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)


def test_fused_up_matches_with_channels_last_inputs() -> None:
    torch.manual_seed(7)
    block = Up(16, 4, emb_dim=12).double()
    fused = FusedUp.from_module(block)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(2, 8, 6, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    t = torch.randn(2, 12, dtype=torch.float64)
    torch.testing.assert_close(fused(x, skip, t), block(x, skip, t), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
# fp32: the Triton attention multiplies with TF32 dots (about 2.4e-3 relative error per block, see
# docs/attention.md); measured 8.8e-4 on the whole seed UNet on an H100.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 3e-3), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_patched_seed_unet_on_cuda(dtype: torch.dtype, tol: float) -> None:
    """The seed-sized UNet (64x64, width 64) patched on CUDA, under autocast for low precision."""
    torch.manual_seed(0)
    model = UNet().cuda().eval()
    patched = copy.deepcopy(model)
    _patch(patched)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    t = torch.tensor([1, 250, 500, 999], device="cuda")
    with torch.no_grad():
        want = model(x, t).double()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            got = patched(x, t).double()
    err = float((got - want).norm() / want.norm())
    assert err < tol


def test_gelu_reference_is_torch_exact_gelu() -> None:
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(ref.gelu(z), F.gelu(z), rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------ feed_forward


def test_feed_forward_reference_is_the_seed_composition() -> None:
    """``ff_self[1:](h) + s`` of the seed's block (Linear, exact GELU, Linear), biases or none."""
    torch.manual_seed(9)
    block = SelfAttention(8, 4).double()
    _, lin1, _, lin2 = block.ff_self
    g = _gen(9)
    h, s = (torch.randn(2, 7, 8, generator=g, dtype=torch.float64) for _ in range(2))
    want = block.ff_self[1:](h) + s
    got = ref.feed_forward(h, s, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    no_bias = F.linear(F.gelu(F.linear(h, lin1.weight)), lin2.weight) + s
    torch.testing.assert_close(ref.feed_forward(h, s, lin1.weight, None, lin2.weight, None), no_bias,
                               rtol=1e-12, atol=1e-12)


def test_feed_forward_reference_rounds_weights_and_promotes_like_autocast() -> None:
    """bf16 h with fp32 weights and an fp32 residual: weights rounded to bf16, output fp32 (eager's
    ``lin2(gelu(lin1(h))) + s`` under autocast), within bf16 rounding of the autocast module."""
    g = _gen(10)
    h = torch.randn(3, 16, generator=g).bfloat16()
    s = torch.randn(3, 16, generator=g)
    lin1, lin2 = nn.Linear(16, 24), nn.Linear(24, 16)
    out = ref.feed_forward(h, s, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lin2(F.gelu(lin1(h))) + s
    assert want.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)


def test_fused_self_attention_runs_feed_forward_only_for_plain_linears(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ``nn.Linear`` layers go through ``feed_forward``; a subclass (its own forward) keeps the
    modules; both match the seed's block."""
    from modelkernels.kernels.fused import modules

    calls = []
    real = modules.feed_forward

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(modules, "feed_forward", counting)
    torch.manual_seed(11)
    block = SelfAttention(8, 4).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(FusedSelfAttention.from_module(block)(x), block(x), rtol=1e-10, atol=1e-10)
    assert len(calls) == 1

    class ScaledLinear(nn.Linear):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(z)

    custom = ScaledLinear(8, 8).double()
    block.ff_self[3] = custom
    torch.testing.assert_close(FusedSelfAttention.from_module(block)(x), block(x), rtol=1e-10, atol=1e-10)
    assert len(calls) == 1


def test_fused_self_attention_under_autocast_keeps_the_blocks_dtype() -> None:
    torch.manual_seed(12)
    block = SelfAttention(16, 4)
    fused = FusedSelfAttention.from_module(block)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = block(x), fused(x)
    assert got.dtype == want.dtype
    err = float((got.double() - want.double()).norm() / want.double().norm())
    assert err < 3e-2, err


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_triton_gradients_of_the_inputs_asked_for(dtype: torch.dtype) -> None:
    """Weights only (h, s frozen), then h only: each asked gradient equals the reference's, the
    others are not computed."""
    g = _gen(13)
    h = torch.randn(2, 19, 24, generator=g).to(DEV, dtype)
    s = torch.randn(2, 19, 24, generator=g).to(DEV, dtype)
    w1, w2 = (torch.randn(40, 24, generator=g) / 5).to(DEV), (torch.randn(24, 40, generator=g) / 6).to(DEV)
    b1, b2 = torch.randn(40, generator=g).to(DEV), torch.randn(24, generator=g).to(DEV)
    cot = torch.randn(2, 19, 24, generator=g).to(DEV)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=6e-2, atol=2e-1)

    def grads(backend: str, wrt: list[int]) -> list[torch.Tensor]:
        args = [t.detach().requires_grad_(i in wrt) for i, t in enumerate((h, s, w1, b1, w2, b2))]
        out = kernels.feed_forward(*args, backend=backend)
        assert out.dtype == dtype  # fp32 weights do not change the dtype: h's and s's promoted
        return list(torch.autograd.grad(out, [args[i] for i in wrt], cot.to(out.dtype)))

    for wrt in ([2, 3, 4, 5], [0]):
        for got, want in zip(grads("triton", wrt), grads("reference", wrt)):
            torch.testing.assert_close(got.float(), want.float(), **tol)


@needs_triton
def test_feed_forward_triton_tile_configurations_agree() -> None:
    """Several tile shapes (rows per program, hidden units per step) give the reference's output,
    and the fallback ladder for a GPU that lacks the resources steps down to 16 x 16 tiles."""
    from modelkernels.kernels.fused import feed_forward_triton as fft

    g = _gen(14)
    h, s = torch.randn(45, 40, generator=g).to(DEV), torch.randn(45, 40, generator=g).to(DEV)
    w1, w2 = (torch.randn(72, 40, generator=g) / 6).to(DEV), (torch.randn(40, 72, generator=g) / 8).to(DEV)
    want = ref.feed_forward(h.double(), s.double(), w1.double(), None, w2.double(), None)
    for cfg in (fft.Config(16, 16, 4, 1), fft.Config(32, 64, 4, 1), fft.Config(64, 32, 4, 2)):
        torch.testing.assert_close(fft.forward(h, s, w1, None, w2, None, config=cfg).double(), want,
                                   rtol=5e-3, atol=5e-3)
    ladder, cfg = [], fft.Config(64, 64, 8, 2)
    while (nxt := fft._smaller(cfg)) is not None:
        ladder.append(nxt)
        cfg = nxt
    assert ladder[0] == fft.Config(64, 64, 8, 1) and ladder[-1] == fft.Config(16, 16, 8, 1)


@needs_triton
def test_feed_forward_declines_wide_channels_and_says_why() -> None:
    h, w = torch.zeros(2, 300, device=DEV), torch.zeros(300, 300, device=DEV)
    why = kernels.get_op("feed_forward").backends["triton"].reasons((h, h, w, None, w, None), {}, forced=True)
    assert why == ["C=300: supported up to 256 (the [rows x C] accumulator is held in registers)"]
    assert kernels.get_op("feed_forward").backends["triton"].reasons((h[:, :256], h[:, :256], w[:, :256], None,
                                                                       w[:256], None), {}, forced=True) == []
