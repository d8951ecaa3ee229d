"""The unpatched seed UNet's SDPA path, the peer the GPU scripts time the patched model against."""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn


class NoWeights(nn.Module):
    """The seed's attention call with ``need_weights=False`` (the anchor's ``sdpa=True``): SDPA's path."""

    def __init__(self, mha: nn.Module) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        return self.mha(q, k, v, need_weights=False)


def sdpa_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``SelfAttention`` blocks call their attention through ``NoWeights``."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if type(mod).__name__ == "SelfAttention":
            mod.mha = NoWeights(cast(nn.Module, mod.mha))
    return m
