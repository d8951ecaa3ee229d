"""torchvision's ResNet in eval mode through ``kernels.nn.patch(model)``: BatchNorm folded into the
convolutions, each block's bias + shortcut + ReLU in one ``conv_epilogue`` pass.

Op (``kernels.resnet.ops``): ``conv_epilogue``, reference in ``pyimpl.resnet``, Triton backend in
``epilogue_triton.py``, the ``torch.library`` op in ``library.py``. Drop-ins (``kernels.resnet.modules``)
for the ``BasicBlock`` / ``Bottleneck`` of ``pyimpl.resnet``, torchvision and timm are registered with
``kernels.nn.patch`` (``drop_ins.py``).
"""

from modelkernels.kernels.resnet import library
from modelkernels.kernels.resnet.drop_ins import register_resnet_blocks
from modelkernels.kernels.resnet.ops import conv_epilogue

__all__ = ["conv_epilogue", "library", "register_resnet_blocks"]
