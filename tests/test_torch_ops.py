"""The custom ops of kernels/torch_ops.py: schemas, fake implementations, autograd, and a patched
model under torch.compile as one graph (no graph break), matching eager forward and backward."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.torch_ops import memory_format
from modelkernels.pyimpl.unet import UNet

DEV = "cuda" if torch.cuda.is_available() else "cpu"
OPS = torch.ops.modelkernels


def _randn(*shape: int, seed: int, grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(DEV).requires_grad_(grad)


def _cases() -> list[tuple[str, Any, tuple[Any, ...]]]:
    q, k, v = (_randn(2, 3, 11, 16, seed=i) for i in range(3))
    kpm = torch.zeros(2, 11, dtype=torch.bool, device=DEV)
    kpm[1, 7:] = True
    x = _randn(2, 6, 5, 7, seed=4)
    x_cl = _randn(2, 6, 5, 7, seed=5).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = _randn(6, seed=6), _randn(6, seed=7)
    res, emb = _randn(2, 6, 5, 7, seed=8), _randn(2, 6, seed=9)
    tok = _randn(2, 35, 6, seed=10)
    small = _randn(2, 6, 3, 4, seed=11)
    return [
        ("attention", OPS.attention, (q, k, v, None, False, None, "bhnd", False, None)),
        ("attention causal+mask bnhd", OPS.attention,
         (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), kpm, True, 0.3, "bnhd", True, None)),
        ("group_norm_act gelu+residual", OPS.group_norm_act, (x, 3, w, b, 1e-5, res, None, "gelu", None)),
        ("group_norm_act emb, no affine, channels-last", OPS.group_norm_act,
         (x_cl, 1, None, None, 1e-5, None, emb, "none", None)),
        ("tokens_layer_norm", OPS.tokens_layer_norm, (x, w, b, 1e-5, None)),
        ("add_layer_norm", OPS.add_layer_norm, (tok, _randn(2, 35, 6, seed=12), w, b, 1e-5, None)),
        ("upsample_concat", OPS.upsample_concat, (small, _randn(2, 5, 6, 8, seed=13), None)),
        ("feed_forward", OPS.feed_forward, (_randn(2, 7, 6, seed=14), tok[:, :7], _randn(9, 6, seed=15),
                                            _randn(9, seed=16), _randn(6, 9, seed=17), None, None)),
    ]


CASES = _cases()


@pytest.mark.parametrize("name,op,args", CASES, ids=[c[0] for c in CASES])
def test_opcheck(name: str, op: Any, args: tuple[Any, ...]) -> None:
    """torch.library.opcheck: schema, fake vs real (shapes, dtypes, strides), autograd registration,
    and AOT dispatch (the path torch.compile takes)."""
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                                "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("name,op,args", CASES, ids=[c[0] for c in CASES])
def test_gradients_equal_the_eager_functions(name: str, op: Any, args: tuple[Any, ...]) -> None:
    public: dict[str, Callable[..., Any]] = {
        "attention": lambda q, k, v, m, c, s, lay, d, be: kernels.attention(
            q, k, v, key_padding_mask=m, causal=c, scale=s, layout=lay, deterministic=d, backend=be),
        "group_norm_act": lambda x, g, w, b, e, r, em, a, be: kernels.group_norm_act(
            x, g, w, b, e, residual=r, emb=em, activation=a, backend=be),
        "tokens_layer_norm": lambda x, w, b, e, be: kernels.tokens_layer_norm(x, w, b, e, backend=be),
        "add_layer_norm": lambda x, r, w, b, e, be: kernels.add_layer_norm(x, r, w, b, e, backend=be),
        "upsample_concat": lambda x, s, be: kernels.upsample_concat(x, s, backend=be),
        "feed_forward": lambda h, s, w1, b1, w2, b2, be: kernels.feed_forward(h, s, w1, b1, w2, b2, backend=be),
    }
    eager = public[name.split()[0]]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def run(fn: Callable[..., Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out = fn(*args)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum()
                   for o in outs)
        return [o.detach() for o in outs], list(torch.autograd.grad(loss, leaves))

    (want_out, want_grad), (got_out, got_grad) = run(eager), run(op)
    for w, g in zip(want_out + want_grad, got_out + got_grad):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for o in got_out:
        assert o.is_contiguous(memory_format=memory_format(args[0] if name != "upsample_concat" else args[1])) or \
            o.dim() != 4


def test_only_the_asked_gradients_are_computed() -> None:
    q, k, v = _randn(1, 2, 5, 16, seed=1), _randn(1, 2, 5, 16, seed=2, grad=False), _randn(1, 2, 5, 16, seed=3)
    out = OPS.attention(q, k, v, None, False, None, "bhnd", False, None)
    gq, gv = torch.autograd.grad(out.sum(), (q, v))
    assert gq.shape == q.shape and gv.shape == v.shape and k.grad is None


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(c_in=1, c_out=1, time_dim=32, image_size=8, base_channels=8).to(DEV)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_patched_unet_compiles_as_one_graph(compile_backend: str) -> None:
    """fullgraph=True fails on any graph break: every drop-in call is one node. Forward and the
    parameter gradients equal the eager patched model's."""
    torch._dynamo.reset()
    model = _tiny_unet()
    report = kernels.nn.patch(model)
    assert len(report.replaced) > 20
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=compile_backend, fullgraph=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 8, 8, generator=g).to(DEV)
    t = torch.tensor([5, 300, 999], device=DEV)

    def loss_and_grads(m: torch.nn.Module, fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = fn(x, t)
        loss = (out * out).mean()
        return out.detach(), list(torch.autograd.grad(loss, list(m.parameters())))

    want, want_grads = loss_and_grads(model, model)
    got, got_grads = loss_and_grads(compiled_model, compiled)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-4)


def _no_grad(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


NOGRAD_CASES = [(name, getattr(OPS, op._qualified_op_name.split("::")[1] + "_nograd"), _no_grad(args))
                for name, op, args in CASES]


@pytest.mark.parametrize("name,op,args", NOGRAD_CASES, ids=[c[0] for c in NOGRAD_CASES])
def test_opcheck_nograd_twins(name: str, op: Any, args: tuple[Any, ...]) -> None:
    """Each differentiable op's twin without an autograd kernel: schema, fake vs real, AOT dispatch, and the
    same result as the op."""
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    differentiable = getattr(OPS, op._qualified_op_name.split("::")[1].removesuffix("_nograd"))
    torch.testing.assert_close(op(*args), differentiable(*args), rtol=0, atol=0)


def test_compiled_graph_records_the_nograd_twin_only_when_nothing_needs_a_gradient() -> None:
    """Under torch.compile the public call records ``<op>_nograd`` in ``torch.no_grad`` and for inputs that
    do not require grad, the differentiable op where a gradient is needed (and the backward then runs)."""
    seen: list[str] = []

    def record(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        seen.extend(str(n.target) for n in gm.graph.nodes if "modelkernels" in str(n.target))
        return gm.forward

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return kernels.group_norm_act(x, 2, w, w, activation="silu")

    x, w = _randn(2, 4, 3, 3, seed=20), _randn(4, seed=21)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=record, fullgraph=True)
    with torch.no_grad():
        compiled(x, w)
    compiled(x.detach(), w.detach())
    assert seen and all(s.endswith("group_norm_act_nograd") for s in seen)
    seen.clear()
    out = compiled(x, w)
    assert seen and all(s.endswith("group_norm_act") for s in seen)
    out.sum().backward()
    assert x.grad is not None and w.grad is not None
