"""kernels.nn: the MultiheadAttention drop-in (checkpoints, outputs, weights, fallbacks, gradients) and
the patch / unpatch mechanism (report, shared parameters, nesting, registry, the seed's UNet, torch.compile)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import modelkernels.kernels.nn as knn
from modelkernels import kernels
from modelkernels.kernels.attention import modules as attention_modules
from modelkernels.kernels.registry import triton_interpret
from modelkernels.pyimpl.unet import UNet


def _pair(**kw: object) -> tuple[nn.MultiheadAttention, knn.MultiheadAttention]:
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(**kw).eval()  # type: ignore[arg-type]
    ours = knn.MultiheadAttention(**kw).eval()  # type: ignore[arg-type]
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("kw", [dict(embed_dim=48, num_heads=3, batch_first=True),
                                dict(embed_dim=48, num_heads=3, batch_first=False),
                                dict(embed_dim=32, num_heads=2, kdim=20, vdim=28, batch_first=True),
                                dict(embed_dim=32, num_heads=2, bias=False)])
def test_checkpoint_keys_and_outputs_match_torch(kw: dict[str, object]) -> None:
    theirs, ours = _pair(**kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    e, bf = int(kw["embed_dim"]), bool(kw.get("batch_first", False))
    kdim, vdim = int(kw.get("kdim") or e), int(kw.get("vdim") or e)  # type: ignore[call-overload]
    g = torch.Generator().manual_seed(1)
    b, lq, s = 3, 7, 11
    shape = (lambda n, c: (b, n, c)) if bf else (lambda n, c: (n, b, c))
    x = torch.randn(shape(lq, e), generator=g)
    key, value = torch.randn(shape(s, kdim), generator=g), torch.randn(shape(s, vdim), generator=g)
    kpm = torch.rand(b, s, generator=g) < 0.3
    kpm[:, 0] = False
    want, _ = theirs(x, key, value, key_padding_mask=kpm, need_weights=False)
    got, w = ours(x, key, value, key_padding_mask=kpm, need_weights=False)
    assert w is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if kdim == e == vdim:  # self-attention: one fused in-projection sliced by strides
        torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], theirs(x, x, x, need_weights=False)[0],
                                   atol=1e-5, rtol=1e-5)


def test_unbatched_input() -> None:
    theirs, ours = _pair(embed_dim=32, num_heads=2)
    x = torch.randn(5, 32)
    torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], theirs(x, x, x, need_weights=False)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("average", [True, False])
def test_need_weights_returns_the_weights_and_warns_once(average: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention_modules, "_WARNED_WEIGHTS", False)
    theirs, ours = _pair(embed_dim=32, num_heads=4, batch_first=True)
    x = torch.randn(2, 9, 32)
    want, want_w = theirs(x, x, x, average_attn_weights=average)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, got_w = ours(x, x, x, average_attn_weights=average)
        ours(x, x, x)
    assert sum("need_weights=True" in str(c.message) for c in caught) == 1
    assert got_w is not None and got_w.shape == want_w.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)


def test_attn_mask_and_training_dropout_run_torchs_implementation() -> None:
    theirs, ours = _pair(embed_dim=32, num_heads=2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 6, 32)
    mask = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    torch.testing.assert_close(ours(x, x, x, attn_mask=mask)[0], theirs(x, x, x, attn_mask=mask)[0])
    theirs.train()
    ours.train()
    torch.manual_seed(3)
    want = theirs(x, x, x)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(ours(x, x, x)[0], want)


def test_add_bias_kv_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="add_bias_kv=True: not supported"):
        knn.MultiheadAttention(16, 2, add_bias_kv=True)
    model = nn.Sequential(nn.MultiheadAttention(16, 2, add_bias_kv=True))
    report = knn.patch(model)
    assert not report.replaced and "add_bias_kv=True" in report.kept[0][2]


@pytest.mark.parametrize("backend", ["sdpa", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_interpret(), reason="Triton on the CPU needs TRITON_INTERPRET=1"))])
def test_gradients_through_the_drop_in_match_torch(backend: str) -> None:
    theirs, ours = _pair(embed_dim=32, num_heads=2, batch_first=True)
    theirs.train()
    ours.train()
    x = torch.randn(2, 13, 32, requires_grad=True)
    with kernels.use_backend(attention=backend):
        got = ours(x, x, x, need_weights=False)[0]
    want = theirs(x, x, x, need_weights=False)[0]
    cot = torch.randn_like(want)
    gx, *gp = torch.autograd.grad(got, [x, *ours.parameters()], cot)
    wx, *wp = torch.autograd.grad(want, [x, *theirs.parameters()], cot)
    torch.testing.assert_close(gx, wx, atol=1e-4, rtol=1e-4)
    for a, b in zip(gp, wp):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)
        self.proj = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attn(x, x, x, need_weights=False)[0]) + x


class MySubclass(nn.MultiheadAttention):
    pass


def test_patch_reports_shares_parameters_and_unpatch_restores() -> None:
    shared = nn.MultiheadAttention(32, 2, batch_first=True)
    model = nn.Sequential(Block(), Block(), nn.ModuleDict({"a": shared, "b": shared}), MySubclass(32, 2))
    originals = {name: m for name, m in model.named_modules() if type(m) is nn.MultiheadAttention}
    x = torch.randn(2, 5, 32)
    want = model[1](model[0](x))
    report = knn.patch(model, skip=["1.*"])
    assert [r[0] for r in report.replaced] == ["0.attn", "2.a", "2.b"]
    kept = {path: why for path, _, why in report.kept}
    assert kept["1.attn"] == "skipped by pattern" and "subclass" in kept["3"]
    assert isinstance(model[0].attn, knn.MultiheadAttention) and model[2]["a"] is model[2]["b"]
    assert model[0].attn.in_proj_weight is originals["0.attn"].in_proj_weight
    torch.testing.assert_close(model[1](model[0](x)), want, atol=1e-5, rtol=1e-5)
    assert "replaced 0.attn" in str(report)
    assert knn.patch(model, skip=["1.*"]).replaced == []  # patching twice changes nothing
    assert knn.unpatch(model) == 3
    assert {name: m for name, m in model.named_modules() if type(m) is nn.MultiheadAttention} == originals


def test_registry_of_drop_ins_accepts_new_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn, "_DROP_INS", dict(knn._DROP_INS))

    class Scale(nn.Module):
        def __init__(self, s: float) -> None:
            super().__init__()
            self.s = s

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.s

    class FastScale(Scale):
        pass

    @knn.register_drop_in(Scale, name="scale", reasons=lambda m: ["s=0: nothing to speed up"] if m.s == 0 else [],
                          replacement=FastScale)
    def make(module: nn.Module, **_: object) -> nn.Module:
        return FastScale(module.s)  # type: ignore[arg-type]

    model = nn.Sequential(Scale(2.0), Scale(0.0), FastScale(3.0))
    report = knn.patch(model)
    assert [r[0] for r in report.replaced] == ["0"] and report.kept == [("1", "Scale", "s=0: nothing to speed up")]
    assert any(line.startswith("scale:") for line in knn.list_drop_ins())
    with pytest.warns(UserWarning, match="registered again"):
        knn.register_drop_in(Scale)(make)
    assert knn.patch(model, drop_ins=["attention"]).replaced == []


def test_patched_seed_unet_gives_the_same_output() -> None:
    torch.manual_seed(0)
    model = UNet(image_size=16, base_channels=16).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        want = model(x, t)
        report = knn.patch(model, drop_ins=["attention"], need_weights=False)
        assert sorted(p for p, _, _ in report.replaced) == [f"sa{i}.mha" for i in range(1, 7)]
        torch.testing.assert_close(model(x, t), want, atol=1e-5, rtol=1e-4)
        knn.unpatch(model)
        knn.patch(model, drop_ins=["attention"])  # weights asked for and computed by the reference
        with pytest.warns(UserWarning, match="need_weights=True"):
            attention_modules._WARNED_WEIGHTS = False
            torch.testing.assert_close(model(x, t), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_interpret(), reason="Triton on the CPU needs TRITON_INTERPRET=1"))])
def test_patched_model_composes_with_torch_compile(backend: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Block()).eval()
    x = torch.randn(2, 9, 32)
    want = model(x)
    grad_want = torch.autograd.grad(model(x.requires_grad_()).sum(), x)[0]
    knn.patch(model)
    compiled = torch.compile(model, backend="aot_eager")
    with kernels.use_backend(attention=backend):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), want, atol=1e-5, rtol=1e-5)
        grad = torch.autograd.grad(compiled(x).sum(), x)[0]
    torch.testing.assert_close(grad, grad_want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_patched_unet_runs_triton_and_compiles() -> None:
    torch.manual_seed(0)
    model = UNet(image_size=32, base_channels=32).cuda().eval()
    x, t = torch.randn(4, 3, 32, 32, device="cuda"), torch.tensor([1, 10, 100, 900], device="cuda")
    with torch.no_grad():
        want = model(x, t)
        knn.patch(model, drop_ins=["attention"], need_weights=False)
        got = model(x, t)
        got_compiled = torch.compile(model)(x, t)
    for out in (got, got_compiled):  # TF32 dots in the fp32 kernel
        assert float((out - want).norm() / want.norm()) < 5e-3
