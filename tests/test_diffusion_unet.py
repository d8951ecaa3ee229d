"""The seed's UNet as a reference module: sizes from image_size, the seed's names and parameter
count, the conditional variant, EMA as the seed, and a training step that learns."""

from __future__ import annotations

import pytest
import torch

from modelkernels.pyimpl.unet import EMA, UNet, UNetConditional, pos_encoding, train_step


def test_seed_size_has_the_seeds_parameters_and_attention_sizes() -> None:
    model = UNet()  # the seed: 64x64, width 64
    assert sum(p.numel() for p in model.parameters()) == 23_332_739  # the seed's UNet, counted
    assert [getattr(model, f"sa{i}").size for i in range(1, 7)] == [32, 16, 8, 16, 32, 64]
    names = {n for n, _ in model.named_modules()}
    for part in ("inc", "down1", "down3", "bot1", "bot3", "up1", "up3", "outc", "sa1.mha", "sa6.ln", "sa4.ff_self"):
        assert part in names
    assert isinstance(model.sa1.mha, torch.nn.MultiheadAttention) and model.sa1.mha.num_heads == 4


@pytest.mark.parametrize("image_size,base", [(8, 4), (24, 8)])
def test_image_size_sets_the_attention_sizes(image_size: int, base: int) -> None:
    torch.manual_seed(0)
    model = UNet(c_in=1, c_out=2, time_dim=16, image_size=image_size, base_channels=base).eval()
    assert [getattr(model, f"sa{i}").size for i in range(1, 7)] == [
        image_size // 2, image_size // 4, image_size // 8, image_size // 4, image_size // 2, image_size]
    x = torch.randn(3, 1, image_size, image_size)
    with torch.no_grad():
        out = model(x, torch.tensor([1, 500, 999]))
    assert out.shape == (3, 2, image_size, image_size) and torch.isfinite(out).all()


def test_pos_encoding_formula() -> None:
    t = torch.tensor([[0.0], [3.0]])
    enc = pos_encoding(t, 4)
    f = torch.tensor([1.0, 0.01])
    expect = torch.cat([torch.sin(t * f), torch.cos(t * f)], dim=-1)
    torch.testing.assert_close(enc, expect)


def test_conditional_adds_the_label_embedding_and_none_is_unconditional() -> None:
    torch.manual_seed(1)
    model = UNetConditional(c_in=1, c_out=1, time_dim=16, num_classes=3, image_size=8, base_channels=4).eval()
    plain = UNet(c_in=1, c_out=1, time_dim=16, image_size=8, base_channels=4).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("label_emb")})
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([4, 9]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, None), plain(x, t))
        emb = plain.time_embedding(t) + model.label_emb(y)
        torch.testing.assert_close(model(x, t, y), plain.unet_forward(x, emb))
        assert not torch.allclose(model(x, t, y), model(x, t, None))


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 12}, "image_size=12"), ({"base_channels": 6}, "base_channels=6"), ({"time_dim": 7}, "time_dim=7")])
def test_bad_sizes_are_refused(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_ema_copies_then_averages() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    ema_model = EMA.copy_of(model)
    ema = EMA(beta=0.5)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.step_ema(ema_model, model, step_start_ema=1)  # step 0 < 1: copy
    assert torch.equal(ema_model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.step_ema(ema_model, model, step_start_ema=1)  # average: 0.5 * 2 + 0.5 * 4
    assert torch.allclose(ema_model.weight, torch.full((1, 2), 3.0)) and ema.step == 2
    assert not ema_model.weight.requires_grad


def test_train_step_lowers_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = UNet(c_in=1, c_out=1, time_dim=16, image_size=8, base_channels=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    alpha_hat = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    losses = [train_step(model, opt, images, alpha_hat, generator=torch.Generator().manual_seed(i % 2))
              for i in range(30)]
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])
