"""ModelKernels: fast kernels next to their pure-Python references, picked by a dispatcher.

``kernels.<op>(...)`` runs the best backend for the device the inputs live on;
``kernels.explain(op, *args)`` says why; ``python -m modelkernels.kernels info`` lists what runs here.
"""

from modelkernels.kernels import amcl, forest, nn, torch_ops
from modelkernels.kernels.attention import attention
from modelkernels.kernels.diffusion import ddim_step, ddpm_seed_step, ddpm_step, q_sample
from modelkernels.kernels.fused import add_layer_norm, feed_forward, group_norm_act, tokens_layer_norm, upsample_concat
from modelkernels.kernels.registry import (
    Backend,
    Op,
    backends_for,
    call,
    explain,
    get_op,
    is_kernel,
    list_kernels,
    register_kernel,
    use_backend,
)
from modelkernels.kernels.resnet import conv_epilogue
from modelkernels.kernels.sort import hybrid_sort, insertion_sort

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Op",
    "__version__",
    "add_layer_norm",
    "amcl",
    "attention",
    "backends_for",
    "call",
    "conv_epilogue",
    "ddim_step",
    "ddpm_seed_step",
    "ddpm_step",
    "explain",
    "feed_forward",
    "forest",
    "get_op",
    "group_norm_act",
    "hybrid_sort",
    "insertion_sort",
    "is_kernel",
    "list_kernels",
    "nn",
    "q_sample",
    "register_kernel",
    "tokens_layer_norm",
    "torch_ops",
    "upsample_concat",
    "use_backend",
]
