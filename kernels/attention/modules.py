"""``kernels.nn.MultiheadAttention``: ``torch.nn.MultiheadAttention`` on the fused attention kernel, and its
registration as the drop-in ``kernels.nn.patch`` applies to ``nn.MultiheadAttention`` modules."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelkernels.kernels.attention.ops import attention
from modelkernels.kernels.nn import register_drop_in
from modelkernels.pyimpl import attention as ref

__all__ = ["MultiheadAttention", "multihead_attention_drop_in"]

_WARNED_WEIGHTS = False


def _warn_weights_once() -> None:
    global _WARNED_WEIGHTS
    if not _WARNED_WEIGHTS:
        _WARNED_WEIGHTS = True
        warnings.warn("kernels.nn.MultiheadAttention: need_weights=True computes the (L, S) attention weights through "
                      "the reference path (O(N^2) memory, slow); pass need_weights=False for the fused kernel",
                      stacklevel=3)


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` on the fused attention kernel (``kernels.attention``).

    Same constructor, parameters and ``state_dict`` keys, so checkpoints load unchanged; it is a
    subclass, so ``isinstance`` checks hold. ``add_bias_kv`` and ``add_zero_attn`` are refused.
    With ``need_weights=False`` the projections feed the kernel as (B, N, H, D) views (for
    self-attention one fused in-projection, sliced by strides) and no (L, S) matrix exists.
    ``need_weights=True`` returns the weights computed by the reference (warns once).
    Float or 3-D ``attn_mask``, float ``key_padding_mask``, and dropout while training run
    torch's own implementation. A query that sees no key returns 0 (torch gives NaN).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        if add_bias_kv:
            raise ValueError("add_bias_kv=True: not supported by kernels.nn.MultiheadAttention (the fused path has "
                             "no learned bias key/value); use torch.nn.MultiheadAttention")
        if add_zero_attn:
            raise ValueError("add_zero_attn=True: not supported by kernels.nn.MultiheadAttention; "
                             "use torch.nn.MultiheadAttention")
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim,
                         batch_first=batch_first, device=device, dtype=dtype)
        self.ignore_need_weights = False

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, need_weights: bool | None = None) -> MultiheadAttention:
        """A drop-in sharing ``module``'s parameters, buffers, hooks and training mode.

        need_weights=False: never compute the weights; return None for them even when asked.
        """
        why = _mha_reasons(module)
        if why:
            raise ValueError("cannot replace this nn.MultiheadAttention: " + "; ".join(why))
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key, value in module.__dict__.items():
            new.__dict__[key] = type(value)(value) if isinstance(value, dict) else value
        new.ignore_need_weights = need_weights is False
        return new

    def _fallback_reason(self, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                         query: torch.Tensor) -> str:
        if attn_mask is not None:
            return "attn_mask"
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            return "float key_padding_mask"
        if self.training and self.dropout > 0.0:
            return "dropout while training"
        if query.dim() not in (2, 3):
            return "query shape"
        return ""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal or self._fallback_reason(key_padding_mask, attn_mask, query):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        weights = need_weights and not self.ignore_need_weights
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._project(query, key, value)
        if weights:
            _warn_weights_once()
            qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            p = ref.attention_probabilities(qh, kh, key_padding_mask=key_padding_mask)
            out = torch.matmul(p, vh).transpose(1, 2)
            attn: torch.Tensor | None = p.mean(dim=1) if average_attn_weights else p
        else:
            out = attention(q, k, v, key_padding_mask=key_padding_mask, layout="bnhd")
            attn = None
        out = F.linear(out.flatten(2), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            return out.squeeze(0), (attn.squeeze(0) if attn is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, attn

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, N, H, D) views of the in-projections (one matmul for self-attention)."""
        h, d = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim and query is key and key is value:
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, h, d))
            q, k, v = qkv.unbind(dim=2)
            return q, k, v
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        return (F.linear(query, w_q, b_q).unflatten(-1, (h, d)), F.linear(key, w_k, b_k).unflatten(-1, (h, d)),
                F.linear(value, w_v, b_v).unflatten(-1, (h, d)))


def _mha_reasons(module: nn.Module) -> list[str]:
    out = []
    if getattr(module, "bias_k", None) is not None:
        out.append("add_bias_kv=True: the fused path has no learned bias key/value")
    if getattr(module, "add_zero_attn", False):
        out.append("add_zero_attn=True: not supported")
    return out


@register_drop_in(nn.MultiheadAttention, name="attention", reasons=_mha_reasons, replacement=MultiheadAttention)
def multihead_attention_drop_in(module: nn.Module, *, need_weights: bool | None = None,
                                **_: Any) -> MultiheadAttention:
    """nn.MultiheadAttention -> kernels.nn.MultiheadAttention (shared parameters)."""
    assert isinstance(module, nn.MultiheadAttention)
    return MultiheadAttention.from_torch(module, need_weights=need_weights)
