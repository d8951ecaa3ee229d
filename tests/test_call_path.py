"""The call path from a public op or drop-in to the kernel: no autograd Function without gradients,
drop-in constants resolved once and re-resolved when the parameters change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from modelkernels import kernels
from modelkernels.kernels.registry import triton_interpret

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or triton_interpret()),
                                  reason="Triton needs CUDA or TRITON_INTERPRET=1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _calls() -> list[tuple[str, str, Callable[[bool], Any]]]:
    """(module, Function class, call with every input requiring grad or none)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, grad: bool) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(DEV).requires_grad_(grad)

    return [
        ("modelkernels.kernels.fused.group_norm_triton", "GroupNormActFunction",
         lambda grad: kernels.group_norm_act(rnd(2, 4, 3, 3, grad=grad), 2, rnd(4, grad=grad), rnd(4, grad=grad),
                                             residual=rnd(2, 4, 3, 3, grad=grad), activation="gelu",
                                             backend="triton")),
        ("modelkernels.kernels.fused.layer_norm_triton", "TokensLayerNormFunction",
         lambda grad: kernels.tokens_layer_norm(rnd(2, 4, 3, 3, grad=grad), rnd(4, grad=grad), None,
                                                backend="triton")),
        ("modelkernels.kernels.fused.layer_norm_triton", "AddLayerNormFunction",
         lambda grad: kernels.add_layer_norm(rnd(2, 5, 4, grad=grad), rnd(2, 5, 4, grad=grad), None, None,
                                             backend="triton")),
        ("modelkernels.kernels.fused.upsample_triton", "UpsampleConcatFunction",
         lambda grad: kernels.upsample_concat(rnd(1, 2, 2, 3, grad=grad), rnd(1, 3, 4, 6, grad=grad),
                                              backend="triton")),
        ("modelkernels.kernels.fused.feed_forward_triton", "FeedForwardFunction",
         lambda grad: kernels.feed_forward(rnd(2, 3, 8, grad=grad), rnd(2, 3, 8, grad=grad), rnd(8, 8, grad=grad),
                                           None, rnd(8, 8, grad=grad), None, backend="triton")),
        ("modelkernels.kernels.attention.flash", "FlashAttention",
         lambda grad: kernels.attention(rnd(1, 2, 5, 16, grad=grad), rnd(1, 2, 5, 16, grad=grad),
                                        rnd(1, 2, 5, 16, grad=grad), backend="triton")),
    ]


@needs_triton
@pytest.mark.parametrize("index", range(6), ids=[c[1] for c in _calls()])
def test_no_autograd_function_without_gradients(monkeypatch, index: int) -> None:
    """Inference (inputs without grad, ``no_grad``, ``inference_mode``) launches the forward directly and
    gives the same values; an input that requires grad goes through the Function."""
    import importlib

    pytest.importorskip("triton")
    module, cls, _ = _calls()[index]

    def run(grad: bool) -> Any:  # fresh inputs from the same seed each time
        return _calls()[index][2](grad)

    function = getattr(importlib.import_module(module), cls)
    applied = []
    original = function.apply

    def counting(*args: Any) -> Any:
        applied.append(1)
        return original(*args)

    monkeypatch.setattr(function, "apply", counting)
    want = run(True)
    assert applied == [1]
    first = want[0] if isinstance(want, tuple) else want
    assert first.requires_grad
    outputs = [run(False)]
    with torch.no_grad():
        outputs.append(run(True))
    with torch.inference_mode():
        outputs.append(run(True))
    assert applied == [1]
    for out in outputs:
        for got, ref in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
            assert not got.requires_grad
            torch.testing.assert_close(got, ref.detach(), rtol=0, atol=0)


def _counting_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from modelkernels.kernels.fused import modules

    builds: list[int] = []
    get = modules._Resolved.get

    def counting(self: Any, key: Callable[[], Any], build: Callable[[], Any]) -> Any:
        return get(self, key, lambda: builds.append(1) or build())

    monkeypatch.setattr(modules._Resolved, "get", counting)
    return builds


def test_fused_double_conv_resolves_once_and_again_when_parameters_change(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkernels.kernels.fused.modules import FusedDoubleConv
    from modelkernels.pyimpl.unet import DoubleConv

    builds = _counting_builds(monkeypatch)
    torch.manual_seed(1)
    block = DoubleConv(4, 4, residual=True).double()
    fused = FusedDoubleConv.from_module(block)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for _ in range(3):
        torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)
    assert builds == [1]
    gn = block.double_conv[4]
    with torch.no_grad():
        gn.weight.mul_(2.0)  # in place: the version counter moves
    torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)
    gn.eps = 1e-2
    torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)
    block.double_conv[1] = torch.nn.GroupNorm(2, 4).double()  # a swapped submodule
    torch.testing.assert_close(fused(x), block(x), rtol=1e-10, atol=1e-10)
    block.float()  # dtype: new storage
    torch.testing.assert_close(fused(x.float()), block(x.float()), rtol=1e-5, atol=1e-5)
    assert len(builds) == 5


def test_fused_self_attention_keeps_cast_weights_until_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast the feed-forward's weights are cast once (inference) and recast after an update;
    with gradients the parameters themselves are passed, so the weights get gradients."""
    from modelkernels.kernels.fused import modules
    from modelkernels.kernels.fused.modules import FusedSelfAttention
    from modelkernels.pyimpl.unet import SelfAttention

    builds = _counting_builds(monkeypatch)
    seen: list[torch.dtype] = []
    real = modules.feed_forward
    monkeypatch.setattr(modules, "feed_forward", lambda h, s, w1, *rest: seen.append(w1.dtype) or real(h, s, w1, *rest))
    torch.manual_seed(2)
    block = SelfAttention(8, 4)
    fused = FusedSelfAttention.from_module(block)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(2):
                torch.testing.assert_close(fused(x), block(x), rtol=3e-2, atol=3e-2)
        assert seen == [torch.float32, torch.bfloat16, torch.bfloat16] and len(builds) == 2
        block.ff_self[1].weight.add_(0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(fused(x), block(x), rtol=3e-2, atol=3e-2)
        assert len(builds) == 3
    out = fused(x)
    out.sum().backward()
    assert block.ff_self[1].weight.grad is not None and len(builds) == 4


def test_gpu_call_path_script_runs_its_cpu_parts(tmp_path: Any) -> None:
    """benchmarks/gpu_call_path.py in its CPU smoke mode: every public op's host figures and the attention
    comparison are measured and written (the CUDA-only pieces, graphs and events, are None there)."""
    import json

    from benchmarks import gpu_call_path

    out = tmp_path / "call_path.json"
    res = gpu_call_path.main(["--device", "cpu", "--quick", "--parts", "host,attention", "--out", str(out)])
    assert json.loads(out.read_text())["host"].keys() == res["host"].keys()
    assert len(res["host"]) == 7 and all(r["wall_us"] > 0 and r["gpu_us"] is None for r in res["host"].values())
    assert res["attention"][0]["rel_err"] < 1e-5 and res["attention"][0]["sdpa"]["events_us"] is None


def test_patched_unet_compiles_for_inference_under_autocast() -> None:
    """The drop-ins' resolved arguments under torch.compile (no_grad, bf16 autocast): one graph and the
    eager patched model's output; after an in-place weight update (a recompile) too, in fp32 (under
    autocast torch.compile keeps its own weight casts across the update, patched or not)."""
    from modelkernels.pyimpl.unet import UNet

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = UNet(c_in=1, c_out=1, time_dim=32, image_size=8, base_channels=8)
    kernels.nn.patch(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(2):
                torch.testing.assert_close(compiled(x, t), model(x, t), rtol=2e-2, atol=2e-2)
        for p in model.parameters():  # a recompile, whose trace must not compare the remembered storages
            p.mul_(0.9)
        torch.testing.assert_close(compiled(x, t), model(x, t), rtol=1e-4, atol=1e-4)


def test_host_path_script_times_every_fused_op() -> None:
    """benchmarks/host_path.py in its quick mode: a positive host time for each fused op and the attention,
    public call and implementation, launches stubbed (run in a subprocess: the stand-in launcher must not
    leak into other tests)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from benchmarks import host_path; "
            "print(json.dumps(host_path.main(['--quick'])))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiled path, stubbed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         env=env)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(times) == {"public call", "implementation"}
    assert all(len(t) == 7 and all(0 < us < 1e5 for us in t.values()) for t in times.values())


def test_step_kernel_report_compiles_for_the_gpu_on_the_cpu() -> None:
    """benchmarks/step_kernel_report.py compiles a step kernel for sm_90 without a GPU: the float32 q_sample of
    a contiguous batch loads and stores 16 bytes at a time and spills nothing (run without the interpreter,
    in a subprocess)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from benchmarks import step_kernel_report as r; "
            "print(json.dumps(r.main(['--kernels', 'q_sample', '--dtypes', 'float32'])))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         env=env)
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["local_bytes"] == 0 and row["registers"] > 0 and row["instructions"] > 100
    assert row["global_accesses"].get("LDG.E.128", 0) >= 2 and row["global_accesses"].get("STG.E.128", 0) >= 1
