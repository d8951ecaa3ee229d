"""The reference ResNet (torchvision's names and sizes), BatchNorm folding, and ``kernels.nn.patch`` on
ResNets: patched against unpatched, unpatch, changed BatchNorm buffers, train mode and gradients, blocks
of other libraries' structure, the post-import registration, and the epilogue op under torch.compile.
The epilogue's parity with its reference comes from the registry (``tests/test_parity.py``)."""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from torch import nn

import modelkernels.kernels.nn as knn
from modelkernels import kernels
from modelkernels.kernels.resnet import drop_ins
from modelkernels.kernels.resnet.folding import FoldedConv
from modelkernels.kernels.resnet.modules import FusedBasicBlock, FusedBottleneck
from modelkernels.pyimpl import resnet as ref


def _randomise_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Statistics and affine parameters away from their initial 0 / 1, so folding is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def _model(name: str = "resnet18", seed: int = 0, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_batch_norms(ref.MODELS[name](num_classes), seed)


def _image(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,params,keys", [("resnet18", 11_689_512, 122), ("resnet34", 21_797_672, 218),
                                              ("resnet50", 25_557_032, 320), ("resnet101", 44_549_160, 626)])
def test_reference_resnet_has_torchvisions_parameters_and_names(name: str, params: int, keys: int) -> None:
    model = ref.MODELS[name](1000)
    assert sum(p.numel() for p in model.parameters()) == params
    state = model.state_dict()
    assert len(state) == keys
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
            "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias"} <= set(state)


def test_bottleneck_strides_the_3x3_convolution() -> None:
    block = ref.resnet50().layer2[0]
    assert isinstance(block, ref.Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.conv3.stride == (1, 1)
    assert block.downsample[0].stride == (2, 2)


def test_fold_batch_norm_is_exact_in_float64() -> None:
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True).double()
    bn = _randomise_batch_norms(nn.BatchNorm2d(6).double(), 4)
    x = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    w, b = ref.fold_batch_norm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    assert w.dtype == b.dtype == torch.float64
    torch.testing.assert_close(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_folded_weights_round_once_and_keep_the_bias_in_float32() -> None:
    conv = nn.Conv2d(8, 16, 1, bias=False).to(torch.bfloat16)
    bn = _randomise_batch_norms(nn.BatchNorm2d(16), 5).to(torch.bfloat16)
    w, b = FoldedConv({"c": conv, "b": bn}, "c", "b").weight_and_bias()
    assert w.dtype == torch.bfloat16 and b.dtype == torch.float32
    exact, exact_b = ref.fold_batch_norm(conv.weight.double(), None, bn.running_mean.double(),
                                         bn.running_var.double(), bn.weight.double(), bn.bias.double(), bn.eps)
    assert torch.equal(w, exact.to(torch.bfloat16))  # one rounding of the fp32 fold
    torch.testing.assert_close(b.double(), exact_b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_patched_reference_resnet_matches_unpatched(name: str) -> None:
    model = _model(name)
    x = _image()
    with torch.no_grad():
        want = model(x)
        report = knn.patch(model)
        got = model(x)
    blocks = 8 if name == "resnet18" else 16
    fused = FusedBasicBlock if name == "resnet18" else FusedBottleneck
    assert len(report.replaced) == blocks, str(report)
    assert sum(isinstance(m, fused) for m in model.modules()) == blocks
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_patched_resnet_on_the_triton_epilogue_channels_last() -> None:
    model = _model("resnet18", seed=2).to(memory_format=torch.channels_last)
    x = _image(n=1, size=24, seed=3).contiguous(memory_format=torch.channels_last)
    patched = copy.deepcopy(model)
    knn.patch(patched)
    with torch.no_grad(), kernels.use_backend(conv_epilogue="triton"):
        got = patched(x)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_unpatch_restores_the_blocks_and_the_state_dict() -> None:
    model = _model("resnet18", seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    x = _image(seed=5)
    with torch.no_grad():
        want = model(x)
        knn.patch(model)
        assert model.state_dict().keys() == before.keys()
        model(x)
        assert knn.unpatch(model) == 8
        got = model(x)
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(got, want)


def test_changed_batch_norm_buffers_and_weights_are_noticed() -> None:
    model = _model("resnet18", seed=6)
    patched = copy.deepcopy(model)
    knn.patch(patched)
    x = _image(seed=7)

    def check() -> None:
        with torch.no_grad():
            torch.testing.assert_close(patched(x), model(x), rtol=1e-4, atol=1e-4)

    check()
    for m in (model, patched):  # in place
        m.layer1[0].bn1.running_var.mul_(3.0)
        m.layer3[0].downsample[1].running_mean.add_(0.5)
    check()
    for m in (model, patched):  # a buffer replaced by another tensor, eps changed
        m.layer2[1].bn2.running_mean = torch.full((128,), 0.3)
        m.layer4[1].bn2.eps = 0.1
    check()
    patched.load_state_dict(_model("resnet18", seed=8).state_dict())  # the weights of another model
    model.load_state_dict(patched.state_dict())
    check()


def test_train_mode_is_left_alone_with_the_reason() -> None:
    model = _model("resnet18").train()
    report = knn.patch(model)
    assert report.replaced == []
    assert len(report.kept) == 8 and all("train mode" in why for _, _, why in report.kept), str(report)


def test_patched_model_set_to_train_mode_runs_the_blocks_own_forward() -> None:
    model = _model("resnet18", seed=9)
    patched = copy.deepcopy(model)
    knn.patch(patched)
    model.train()
    patched.train()
    x = _image(n=4, seed=10)
    torch.testing.assert_close(patched(x), model(x))
    torch.testing.assert_close(patched.layer1[0].bn1.running_mean, model.layer1[0].bn1.running_mean)


def test_eval_mode_with_gradients_runs_the_unfused_blocks() -> None:
    model = _model("resnet18", seed=11)
    patched = copy.deepcopy(model)
    knn.patch(patched)
    x = _image(size=16, seed=12)
    patched(x).square().sum().backward()
    model(x).square().sum().backward()
    torch.testing.assert_close(patched.layer2[0].conv1.weight.grad, model.layer2[0].conv1.weight.grad)


class _TimmLikeNamespace:
    """Blocks of timm's structure (act1..act3, drop_block, aa, se, drop_path) under timm's class names."""

    class BasicBlock(nn.Module):
        def __init__(self, c: int, out: int, stride: int = 1, se: nn.Module | None = None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out)
            self.drop_block = nn.Identity()
            self.act1 = nn.ReLU(inplace=True)
            self.aa = nn.Identity()
            self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
            self.se = se
            self.act2 = nn.ReLU(inplace=True)
            self.downsample = nn.Sequential(nn.Conv2d(c, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            self.drop_path = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shortcut = x
            x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
            x = self.bn2(self.conv2(x))
            if self.se is not None:
                x = self.se(x)
            x = x + self.downsample(shortcut)
            return self.act2(x)


def test_blocks_of_timms_structure_are_fused_and_others_kept_with_the_reason() -> None:
    assert drop_ins.register_resnet_blocks(_TimmLikeNamespace) == ["BasicBlock"]
    torch.manual_seed(13)
    model = _randomise_batch_norms(nn.Sequential(_TimmLikeNamespace.BasicBlock(3, 6, 2),
                                                 _TimmLikeNamespace.BasicBlock(6, 6, se=nn.Sigmoid())), 13)
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        want = model(x)
        report = knn.patch(model)
        got = model(x)
    assert [path for path, _, _ in report.replaced] == ["0"]
    assert report.kept == [("1", "BasicBlock", "se=Sigmoid(): expected nn.Identity or None")]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_blocks_are_registered_when_their_module_is_imported_later(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    source = ("from modelkernels.pyimpl.resnet import ResNet\n\n"
              "class BasicBlock(__import__('modelkernels.pyimpl.resnet').pyimpl.resnet.BasicBlock):\n    pass\n\n"
              "class Bottleneck(__import__('modelkernels.pyimpl.resnet').pyimpl.resnet.Bottleneck):\n    pass\n")
    (tmp_path / "late_resnet_for_test.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    drop_ins._register_when_imported(["late_resnet_for_test"])
    import late_resnet_for_test as late

    assert isinstance(late, types.ModuleType)
    assert not isinstance(late.__loader__, drop_ins._Loader) and not isinstance(late.__spec__.loader, drop_ins._Loader)
    model = _randomise_batch_norms(late.ResNet(late.BasicBlock, [1, 1, 1, 1], 5), 15)
    report = knn.patch(model)
    assert len(report.replaced) == 4, str(report)


def test_conv_epilogue_custom_op_passes_opcheck() -> None:
    g = torch.Generator().manual_seed(16)
    x = torch.randn(2, 6, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 6, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    b, rb = torch.randn(6, generator=g), torch.randn(6, generator=g)
    for args in ((x, b, r, rb, True, None), (x.contiguous(), b, None, None, False, None)):
        torch.library.opcheck(torch.ops.modelkernels.conv_epilogue, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_patched_resnet_compiles_as_one_graph() -> None:
    model = _model("resnet18", seed=17)
    x = _image(n=1, size=16, seed=18)
    with torch.no_grad():
        want = model(x)
        knn.patch(model)
        torch._dynamo.reset()
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
def test_patched_resnet50_on_cuda_channels_last(dtype: torch.dtype, tol: float) -> None:
    model = _model("resnet50", seed=19).cuda().to(dtype=dtype, memory_format=torch.channels_last)
    patched = copy.deepcopy(model)
    knn.patch(patched)
    x = _image(n=4, size=64, seed=20).cuda().to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = model(x).double(), patched(x).double()
    assert float((got - want).norm() / want.norm()) < tol
