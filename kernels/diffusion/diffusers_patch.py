"""``kernels.nn.patch`` for diffusers' UNets (``UNet2DModel``, ``UNet2DConditionModel``): drop-ins for
the blocks they are built from. Importing this module registers them (it needs diffusers)::

    from modelkernels import kernels
    import modelkernels.kernels.diffusion.diffusers_patch
    report = kernels.nn.patch(pipe.unet)      # ResnetBlock2D and Attention swapped; the report says which
    kernels.nn.unpatch(pipe.unet)

- ``FusedResnetBlock2D`` for ``ResnetBlock2D``: each GroupNorm and the SiLU after it in one pass
  (``kernels.fused.group_norm_act(..., activation="silu")``, reference ``pyimpl.fused.group_norm_act``):
  norm1 + SiLU, and norm2 + SiLU after the time embedding is added; the shortcut is added to the
  second conv's output in place. diffusers runs GroupNorm and SiLU as two passes over the
  activation (read, write, read, write); fused it is one read and one write. The time-embedding add
  before norm2 stays a separate add (it shifts the statistics, which the kernel computes from its
  input), and so does the residual add after conv2 (cuDNN owns the conv's epilogue).
- ``KernelsAttnProcessor`` for ``Attention`` (self- and cross-attention): diffusers' SDPA processor
  with the attention computed by ``kernels.attention`` on (B, N, H, D) views of the projections
  (no transposes in, and the output is already (B, N, H * D) for ``to_out``). The dispatcher picks
  the Triton flash kernel for head dims 16/32/64/128 and PyTorch's SDPA for the rest (Stable
  Diffusion 1.5's 40/80/160); ``kernels.explain("attention", q, k, v, layout="bnhd")`` says which.
  A call with an ``attention_mask`` runs diffusers' own ``AttnProcessor2_0``.
- Not swapped: ``Upsample2D`` (nearest 2x then a 3x3 conv). Fusing the upsample into the conv's
  input means a conv kernel of our own that reads each input pixel for four outputs; the upsample
  alone is one read and a 4x write next to a conv that reads that 4x tensor once, so the saving is
  at most the upsample's own pass and a hand-written conv loses more than that to cuDNN.

Each drop-in shares the original's parameters and submodules (state_dict keys and weights unchanged);
a module whose configuration the fused forward does not reproduce is kept, with the reason, in the
``PatchReport``. Set the processor on a model without ``patch``:
``unet.set_attn_processor(KernelsAttnProcessor())``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, cast

import torch
from torch import nn

from modelkernels.kernels import nn as knn
from modelkernels.kernels.attention.ops import attention
from modelkernels.kernels.fused.modules import _BlockView
from modelkernels.kernels.fused.ops import group_norm_act

try:
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
    from diffusers.models.resnet import ResnetBlock2D
except ImportError as e:  # pragma: no cover - the module is only imported by diffusers users
    raise ImportError("kernels.diffusion.diffusers_patch needs diffusers (pip install modelkernels[peers])") from e

_DIFFUSERS_LOG = logging.getLogger("diffusers.models.attention_processor")  # where diffusers says it

__all__ = [
    "FusedResnetBlock2D",
    "KernelsAttention",
    "KernelsAttnProcessor",
    "attention_reasons",
    "resnet_block_reasons",
]


def _group_norm(m: nn.Module) -> tuple[int, torch.Tensor | None, torch.Tensor | None, float]:
    gn = cast(nn.GroupNorm, m)
    return gn.num_groups, gn.weight, gn.bias, gn.eps


def resnet_block_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` is not a ResnetBlock2D the fused forward reproduces (empty: it is)."""
    out = []
    for name in ("norm1", "norm2"):
        if type(getattr(m, name, None)) is not nn.GroupNorm:
            out.append(f"{name} is not a torch.nn.GroupNorm")
    if type(getattr(m, "nonlinearity", None)) is not nn.SiLU:
        out.append(f"nonlinearity={getattr(m, 'nonlinearity', None)!r}: the fused pass applies SiLU ('swish', 'silu')")
    if getattr(m, "time_embedding_norm", None) != "default":
        out.append(f"time_embedding_norm={getattr(m, 'time_embedding_norm', None)!r}: only 'default' is fused")
    if getattr(m, "upsample", None) is not None or getattr(m, "downsample", None) is not None:
        out.append("up=True or down=True: resampling inside the block is not fused")
    return out


class FusedResnetBlock2D(_BlockView):
    """diffusers' ``ResnetBlock2D`` with GroupNorm + SiLU fused (norm1 and norm2); same forward signature."""

    ATTRIBUTES = ("in_channels", "out_channels", "output_scale_factor", "skip_time_act", "time_embedding_norm",
                  "up", "down", "use_in_shortcut", "pre_norm")
    output_scale_factor: float
    skip_time_act: bool

    reasons = staticmethod(resnet_block_reasons)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args: Any, **kwargs: Any) -> torch.Tensor:
        m = self._modules
        h = group_norm_act(input_tensor, *_group_norm(cast(nn.Module, m["norm1"])), activation="silu")
        h = cast(nn.Module, m["conv1"])(h)
        proj = m.get("time_emb_proj")
        if proj is not None:
            if temb is None:
                raise ValueError("temb=None: this ResnetBlock2D has a time_emb_proj and needs the time embedding")
            if not self.skip_time_act:
                temb = torch.nn.functional.silu(temb)
            temb = proj(temb)[:, :, None, None]
        training = torch.is_grad_enabled() and (h.requires_grad or input_tensor.requires_grad)
        if temb is not None:
            h = h + temb if training else h.add_(temb)  # inference: in place into conv1's fresh output
        h = group_norm_act(h, *_group_norm(cast(nn.Module, m["norm2"])), activation="silu")
        h = cast(nn.Module, m["conv2"])(cast(nn.Module, m["dropout"])(h))
        shortcut = m.get("conv_shortcut")
        x = shortcut(input_tensor) if shortcut is not None else input_tensor
        if training or x.requires_grad:
            return (x + h) / self.output_scale_factor
        h += x  # inference: the residual add in place, no new tensor
        if self.output_scale_factor != 1.0:
            h /= self.output_scale_factor
        return h


class KernelsAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with the attention from ``kernels.attention`` (layout (B, N, H, D))."""

    def __init__(self) -> None:
        self._masked = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None:  # diffusers' additive / boolean masks: its own processor
            out: torch.Tensor = self._masked(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            return out
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, head_dim)
        k = key.view(batch, -1, attn.heads, head_dim)
        v = value.view(batch, -1, attn.heads, head_dim)
        if attn.norm_q is not None:  # diffusers normalizes (B, H, N, D) over D: the same values
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        hidden_states = attention(q, k, v, layout="bnhd", scale=attn.scale)
        hidden_states = hidden_states.reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attention_reasons(m: nn.Module) -> list[str]:
    """Why ``m`` (a diffusers ``Attention``) keeps its processor: only the default ones are replaced."""
    processor = getattr(m, "processor", None)
    if type(processor) not in (AttnProcessor2_0, AttnProcessor):
        return [f"processor {type(processor).__name__}: only diffusers' default AttnProcessor2_0 / AttnProcessor "
                "is replaced (a custom processor may change the computation)"]
    if getattr(m, "added_kv_proj_dim", None) is not None:
        return ["added_kv_proj_dim is set: the added key/value projections need diffusers' added-KV processor"]
    return []


# diffusers' Attention.forward takes these from cross_attention_kwargs without a warning when the processor does not
_QUIET_KWARGS = frozenset({"ip_adapter_masks", "ip_hidden_states"})
_PARAMETERS: dict[type, frozenset[str]] = {}  # processor class -> its __call__'s parameter names


def _parameters(processor: Any) -> frozenset[str]:
    """The parameter names of ``processor.__call__``, looked up once per processor class."""
    names = _PARAMETERS.get(type(processor))
    if names is None:
        names = _PARAMETERS[type(processor)] = frozenset(inspect.signature(processor.__call__).parameters)
    return names


class KernelsAttention(Attention):
    """A diffusers ``Attention`` sharing a live one's parameters and submodules, with ``KernelsAttnProcessor``.

    Its forward is diffusers' ``Attention.forward`` (cross_attention_kwargs filtered to what the processor
    takes, a warning naming the rest) with the processor's parameter names looked up once per processor
    class: diffusers asks ``inspect.signature`` on every call, 18 µs on the CI CPU, 32 calls a Stable
    Diffusion 1.5 UNet step."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs: Any) -> torch.Tensor:
        names = _parameters(self.processor)
        unused = [k for k in cross_attention_kwargs if k not in names and k not in _QUIET_KWARGS]
        if unused:
            _DIFFUSERS_LOG.warning(f"cross_attention_kwargs {unused} are not expected by "
                                   f"{self.processor.__class__.__name__} and will be ignored.")
        kwargs = {k: w for k, w in cross_attention_kwargs.items() if k in names}
        out: torch.Tensor = self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                           attention_mask=attention_mask, **kwargs)
        return out

    @classmethod
    def from_attention(cls, module: nn.Module) -> KernelsAttention:
        why = attention_reasons(module)
        if why:
            raise ValueError("cannot replace this Attention: " + "; ".join(why))
        new = cls.__new__(cls)
        for key, value in module.__dict__.items():
            new.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
        new.__dict__["processor"] = KernelsAttnProcessor()
        return new


def _resnet_drop_in(module: nn.Module, **_: Any) -> nn.Module:
    return FusedResnetBlock2D.from_module(module)


def _attention_drop_in(module: nn.Module, **_: Any) -> nn.Module:
    return KernelsAttention.from_attention(module)


_resnet_drop_in.__qualname__ = "FusedResnetBlock2D.from_module"
_attention_drop_in.__qualname__ = "KernelsAttention.from_attention"
knn.register_drop_in(ResnetBlock2D, name="diffusers_resnet_block", reasons=resnet_block_reasons,
                     replacement=FusedResnetBlock2D)(_resnet_drop_in)
knn.register_drop_in(Attention, name="diffusers_attention", reasons=attention_reasons,
                     replacement=KernelsAttention)(_attention_drop_in)
