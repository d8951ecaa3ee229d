"""The seed's DDPM UNet (``modules.py`` of the seed's ``ddpm.py`` / ``ddpm_condition.py``), as a reference.

Architecture, as the seed builds it for a 64x64 input with ``base_channels=c`` (the seed: c = 64):

    inc   DoubleConv(c_in, c)                                     S
    down1 Down(c, 2c)   + sa1 SelfAttention(2c, S/2)              S/2
    down2 Down(2c, 4c)  + sa2 SelfAttention(4c, S/4)              S/4
    down3 Down(4c, 4c)  + sa3 SelfAttention(4c, S/8)              S/8
    bot1..3 DoubleConv(4c, 8c), DoubleConv(8c, 8c), DoubleConv(8c, 4c)
    up1   Up(8c, 2c)    + sa4 SelfAttention(2c, S/4)              S/4
    up2   Up(4c, c)     + sa5 SelfAttention(c, S/2)               S/2
    up3   Up(2c, c)     + sa6 SelfAttention(c, S)                 S
    outc  Conv2d(c, c_out, 1)

The seed hard-codes the attention sizes 32, 16, 8, 16, 32, 64; here they follow from ``image_size``
(a multiple of 8). Module attribute names are the seed's (``sa1.mha``, ``sa1.ln``, ``sa1.ff_self``,
``inc``, ``down1``, ``up1``, ``bot1``, ``outc``) so that code which patches the seed's modules, or
loads its checkpoints, works unchanged. ``SelfAttention`` calls ``nn.MultiheadAttention`` with its
default ``need_weights=True`` as the seed does (the math path; the attention weights are discarded).

Also here: the seed's ``EMA`` (beta 0.995, plain copy for the first 2000 steps) and one training
step (``train_step``: timesteps in [1, T), ``q_sample`` noising, MSE between the noise and the
prediction; for the conditional model labels are dropped with probability 0.1, as the seed does).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EMA",
    "DoubleConv",
    "Down",
    "SelfAttention",
    "UNet",
    "UNetConditional",
    "Up",
    "pos_encoding",
    "train_step",
]


def pos_encoding(t: torch.Tensor, channels: int) -> torch.Tensor:
    """The seed's sinusoidal timestep encoding: ``[sin(t * f), cos(t * f)]``, ``f_k = 10000^(-2k / channels)``.

    t: (n, 1) float tensor of timesteps; returns (n, channels).
    """
    if channels % 2:
        raise ValueError(f"channels={channels}: the encoding needs an even number of channels")
    inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2, device=t.device).float() / channels))
    half = t.repeat(1, channels // 2) * inv_freq
    return torch.cat([torch.sin(half), torch.cos(half)], dim=-1)


class SelfAttention(nn.Module):
    """LayerNorm, 4-head ``nn.MultiheadAttention`` and a residual feed-forward over the ``size * size`` pixels."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.mha = nn.MultiheadAttention(channels, 4, batch_first=True)
        self.ln = nn.LayerNorm([channels])
        self.ff_self = nn.Sequential(
            nn.LayerNorm([channels]),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.channels, self.size * self.size).swapaxes(1, 2)
        x_ln = self.ln(x)
        attention_value, _ = self.mha(x_ln, x_ln, x_ln)
        attention_value = attention_value + x
        attention_value = self.ff_self(attention_value) + attention_value
        return attention_value.swapaxes(2, 1).view(-1, self.channels, self.size, self.size)


class DoubleConv(nn.Module):
    """conv3x3, GroupNorm(1), GELU, conv3x3, GroupNorm(1); with ``residual`` the output is ``gelu(x + f(x))``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, residual: bool = False):
        super().__init__()
        self.residual = residual
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool 2x2, two DoubleConvs, plus the projected time embedding broadcast over the pixels."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_conv(x)
        emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
        return x + emb


class Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip, two DoubleConvs, plus the time embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels, in_channels // 2),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

    def forward(self, x: torch.Tensor, skip_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        x = torch.cat([skip_x, x], dim=1)
        x = self.conv(x)
        emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
        return x + emb


def _is_positive_multiple(value: object, k: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value % k == 0


class UNet(nn.Module):
    """The seed's UNet: ``forward(x, t)`` predicts the noise in ``x`` (n, c_in, S, S) at integer timesteps ``t`` (n,).

    image_size: S, a positive multiple of 8 (the seed: 64). base_channels: the width c of the first
    level (the seed: 64; a multiple of 4 because of the 4 attention heads); small values such as 16
    give a model that trains on a CPU in minutes.
    """

    def __init__(
        self,
        c_in: int = 3,
        c_out: int = 3,
        time_dim: int = 256,
        image_size: int = 64,
        base_channels: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if not _is_positive_multiple(image_size, 8):
            raise ValueError(f"image_size={image_size!r}: must be a positive multiple of 8 (three 2x downsamplings)")
        if not _is_positive_multiple(base_channels, 4):
            raise ValueError(f"base_channels={base_channels!r}: must be a positive multiple of 4 (4 attention heads)")
        if not _is_positive_multiple(time_dim, 2):
            raise ValueError(f"time_dim={time_dim!r}: must be a positive even integer")
        c, s = base_channels, image_size
        self.time_dim = time_dim
        self.image_size = image_size
        self.base_channels = base_channels
        self.c_in = c_in
        self.inc = DoubleConv(c_in, c)
        self.down1 = Down(c, 2 * c, time_dim)
        self.sa1 = SelfAttention(2 * c, s // 2)
        self.down2 = Down(2 * c, 4 * c, time_dim)
        self.sa2 = SelfAttention(4 * c, s // 4)
        self.down3 = Down(4 * c, 4 * c, time_dim)
        self.sa3 = SelfAttention(4 * c, s // 8)

        self.bot1 = DoubleConv(4 * c, 8 * c)
        self.bot2 = DoubleConv(8 * c, 8 * c)
        self.bot3 = DoubleConv(8 * c, 4 * c)

        self.up1 = Up(8 * c, 2 * c, time_dim)
        self.sa4 = SelfAttention(2 * c, s // 4)
        self.up2 = Up(4 * c, c, time_dim)
        self.sa5 = SelfAttention(c, s // 2)
        self.up3 = Up(2 * c, c, time_dim)
        self.sa6 = SelfAttention(c, s)
        self.outc = nn.Conv2d(c, c_out, kernel_size=1)
        if device is not None:
            self.to(device)

    def pos_encoding(self, t: torch.Tensor, channels: int) -> torch.Tensor:
        """The seed's method name for :func:`pos_encoding`."""
        return pos_encoding(t, channels)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Encode integer timesteps ``t`` (n,) into (n, time_dim)."""
        return self.pos_encoding(t.unsqueeze(-1).float(), self.time_dim)

    def unet_forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet body given the (n, time_dim) embedding ``t``."""
        x1 = self.inc(x)
        x2 = self.down1(x1, t)
        x2 = self.sa1(x2)
        x3 = self.down2(x2, t)
        x3 = self.sa2(x3)
        x4 = self.down3(x3, t)
        x4 = self.sa3(x4)

        x4 = self.bot1(x4)
        x4 = self.bot2(x4)
        x4 = self.bot3(x4)

        x = self.up1(x4, x3, t)
        x = self.sa4(x)
        x = self.up2(x, x2, t)
        x = self.sa5(x)
        x = self.up3(x, x1, t)
        x = self.sa6(x)
        return self.outc(x)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet_forward(x, self.time_embedding(t))


class UNetConditional(UNet):
    """The seed's ``UNet_conditional``: ``forward(x, t, y)`` adds ``label_emb(y)`` to the time embedding.

    ``y=None`` gives the unconditional prediction (what classifier-free guidance mixes with).
    """

    def __init__(
        self,
        c_in: int = 3,
        c_out: int = 3,
        time_dim: int = 256,
        num_classes: int | None = None,
        image_size: int = 64,
        base_channels: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(c_in, c_out, time_dim, image_size, base_channels)
        self.num_classes = num_classes
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes={num_classes!r}: must be a positive integer or None")
            self.label_emb = nn.Embedding(num_classes, time_dim)
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embedding(t)
        if y is not None:
            if self.num_classes is None:
                raise ValueError("y was given but the model was built with num_classes=None")
            emb = emb + self.label_emb(y)
        return self.unet_forward(x, emb)


class EMA:
    """The seed's exponential moving average of the weights: ``ema = beta * ema + (1 - beta) * model``.

    ``step_ema`` copies the model into the EMA model for the first ``step_start_ema`` calls (2000 in
    the seed), then averages; the step counter advances on every call.
    """

    def __init__(self, beta: float = 0.995) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta}: must lie in [0, 1]")
        self.beta = beta
        self.step = 0

    def update_model_average(self, ma_model: nn.Module, current_model: nn.Module) -> None:
        with torch.no_grad():
            for current_params, ma_params in zip(current_model.parameters(), ma_model.parameters(), strict=True):
                ma_params.data = self.update_average(ma_params.data, current_params.data)

    def update_average(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        if old is None:
            return new
        return old * self.beta + (1 - self.beta) * new

    def step_ema(self, ema_model: nn.Module, model: nn.Module, step_start_ema: int = 2000) -> None:
        if self.step < step_start_ema:
            self.reset_parameters(ema_model, model)
        else:
            self.update_model_average(ema_model, model)
        self.step += 1

    def reset_parameters(self, ema_model: nn.Module, model: nn.Module) -> None:
        ema_model.load_state_dict(model.state_dict())

    @staticmethod
    def copy_of(model: nn.Module) -> nn.Module:
        """A frozen copy of ``model`` to hold the average, as the seed makes it."""
        return copy.deepcopy(model).eval().requires_grad_(False)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    alpha_hat: torch.Tensor,
    labels: torch.Tensor | None = None,
    label_drop: float = 0.1,
    generator: torch.Generator | None = None,
    ema: EMA | None = None,
    ema_model: nn.Module | None = None,
    q_sample: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step_start_ema: int = 2000,
) -> float:
    """One step of the seed's training loop; returns the loss.

    t ~ U{1, ..., T-1} (the seed's ``sample_timesteps``), eps ~ N(0, I),
    x_t = sqrt(alpha_hat[t]) x0 + sqrt(1 - alpha_hat[t]) eps (``noise_images``), loss = MSE(eps, model(x_t, t)).
    With ``labels`` (conditional model) the labels are dropped with probability ``label_drop`` as the
    seed does for classifier-free guidance. ``q_sample(x0, t, noise, alpha_hat)`` replaces the noising
    (e.g. a fused kernel); default is the formula above in PyTorch. With ``ema`` and ``ema_model``
    the EMA steps after the update (averaging from step ``step_start_ema`` on).
    """
    n = images.shape[0]
    dev = images.device
    t = torch.randint(1, alpha_hat.shape[0], (n,), generator=generator, device="cpu").to(dev)
    noise = torch.randn(images.shape, generator=generator, device="cpu", dtype=images.dtype).to(dev)
    if q_sample is None:
        ah = alpha_hat.to(dev)[t].to(images.dtype)[:, None, None, None]
        x_t = torch.sqrt(ah) * images + torch.sqrt(1 - ah) * noise
    else:
        x_t = q_sample(images, t, noise, alpha_hat)
    if labels is not None:
        drop = torch.rand((), generator=generator).item() < label_drop
        predicted_noise = model(x_t, t, None if drop else labels)
    else:
        predicted_noise = model(x_t, t)
    loss = F.mse_loss(noise, predicted_noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if ema is not None and ema_model is not None:
        ema.step_ema(ema_model, model, step_start_ema)
    return float(loss.item())
