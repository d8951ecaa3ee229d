"""When an op needs its autograd Function: only when grad mode is on and an input requires a gradient.

Outside that (``torch.no_grad``, ``torch.inference_mode``, inputs without ``requires_grad``) the Triton
backends call their forward launchers directly: ``Function.apply`` costs ~10 µs of host time a call
(the graph node, saved tensors, the context object) for a result no one differentiates.
"""

from __future__ import annotations

import torch


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a result computed from ``tensors`` must be recorded for the backward pass."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False
