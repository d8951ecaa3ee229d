"""Host time of the Triton backends' call path on a CPU, no GPU needed: a proxy for what a call costs the
GPU's host before the kernel runs.

    PYTHONPATH=$PWD python benchmarks/host_path.py            # µs per call, min over interleaved rounds
    PYTHONPATH=$PWD python benchmarks/host_path.py --quick    # few calls (checks the script)

Every public fused op and the attention are called on small CPU tensors at the patched seed UNet's
channel count with Triton's compiled launcher replaced by a no-op stand-in (the device and stream
getters too), twice: the public call (``kernels.group_norm_act`` ..., the Triton backends admitted on
the CPU so that dispatch picks them as it does on CUDA: the registry, the argument checks once per
signature, the backend) and the Triton implementation called directly (its checks every call). What is
timed is everything a CUDA call runs in Python (dispatch, argument checks, the autograd decision, output
allocation, launch planning, the launch layer's cache key and lookup) except the launcher's own C call
and the GPU. Absolute figures are this CPU's; the lent GPUs' hosts ran the same Python 4-7x slower
(BENCHMARKS.md, host time per call on CUDA).
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch


class _Compiled:
    """A compiled kernel whose launch does nothing."""

    function = packed_metadata = None

    def run(self, *args: Any) -> None:
        pass


def stub_launcher() -> None:
    """Route every Triton launch to ``_Compiled``: Triton's first-call path returns it (nothing compiles)
    and the launch layer keeps and reruns it as it keeps a real one."""
    import triton

    from modelkernels.kernels import triton_launch

    triton.runtime.jit.JITFunction.run = lambda self, *a, **k: _Compiled()
    triton_launch.device_and_stream = lambda: ((lambda: 0), (lambda device: 0))  # type: ignore[assignment]
    triton_launch.hooks_installed = lambda: False


def admit_triton_on_cpu() -> None:
    """Let dispatch pick every Triton backend for CPU tensors (as it does for CUDA ones): the launches
    are stubbed, so the public calls run their whole CUDA path up to the launcher."""
    from modelkernels import kernels

    for name in kernels.list_kernels():
        op = kernels.get_op(name)
        if "triton" in op.backends:
            op.backends["triton"].devices += ("cpu",)
            op.decisions.clear()
            op.runners.clear()


def calls(public: bool) -> dict[str, Callable[[], Any]]:
    """``gpu_call_path``'s op calls, public (``admit_triton_on_cpu`` first) or on the Triton
    implementations, at batch 2, 64 channels, 8x8 (small: allocation stays cheap)."""
    from benchmarks.gpu_call_path import _op_calls
    from modelkernels import kernels

    if public:
        return _op_calls("cpu", False, kernels, size=(2, 64, 8))
    from modelkernels.kernels.attention.ops import attention_triton
    from modelkernels.kernels.fused import feed_forward_triton, group_norm_triton, layer_norm_triton, upsample_triton

    ops = SimpleNamespace(group_norm_act=group_norm_triton.group_norm_act,
                          tokens_layer_norm=layer_norm_triton.tokens_layer_norm,
                          add_layer_norm=layer_norm_triton.add_layer_norm,
                          upsample_concat=upsample_triton.upsample_concat,
                          feed_forward=feed_forward_triton.feed_forward, attention=attention_triton)
    return _op_calls("cpu", False, ops, size=(2, 64, 8))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few calls and rounds (checks the script)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("host_path.py times the compiled path: run it without TRITON_INTERPRET")
    stub_launcher()
    admit_triton_on_cpu()
    number, rounds = (20, 2) if args.quick else (2000, 7)
    tables = {"public call": calls(True), "implementation": calls(False)}
    best = {kind: {name: float("inf") for name in table} for kind, table in tables.items()}
    with torch.no_grad():
        for table in tables.values():
            for fn in table.values():
                fn()  # the first call checks, plans and "compiles"
        for _ in range(rounds):  # interleaved: a busy machine slows every op alike
            for kind, table in tables.items():
                for name, fn in table.items():
                    best[kind][name] = min(best[kind][name], timeit.timeit(fn, number=number) / number * 1e6)
    print(f"{'µs per call, min over ' + str(rounds) + ' rounds':40s} {'public call':>12s} {'implementation':>15s}")
    for name in best["public call"]:
        print(f"{name:40s} {best['public call'][name]:12.1f} {best['implementation'][name]:15.1f}")
    return best


if __name__ == "__main__":
    main()
