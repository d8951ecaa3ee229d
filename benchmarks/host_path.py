"""Host time of the Triton backends' call path on a CPU, no GPU needed: a proxy for what a call costs the
GPU's host before the kernel runs.

    PYTHONPATH=$PWD python benchmarks/host_path.py            # µs per call, min over interleaved rounds
    PYTHONPATH=$PWD python benchmarks/host_path.py --quick    # few calls (checks the script)

Every public fused op's Triton implementation and the attention's are called on small CPU tensors at
the patched seed UNet's channel count with Triton's compiled launcher replaced by a no-op stand-in (the
device and stream getters too). What is timed is everything a CUDA call runs in Python (argument checks,
the autograd decision, output allocation, launch planning, the launch layer's cache key and lookup)
except the launcher's own C call and the GPU. The registry's dispatch is timed by
``test_bench_dispatch.py``. Absolute figures are this CPU's; the lent GPUs' hosts ran the same Python
4-7x slower (BENCHMARKS.md, host time per call on CUDA).
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


def calls() -> dict[str, Callable[[], Any]]:
    """``gpu_call_path``'s op calls on the Triton implementations (not the dispatcher, which sends CPU
    tensors to the references), at batch 2, 64 channels, 8x8 (small: allocation stays cheap)."""
    from benchmarks.gpu_call_path import _op_calls
    from modelkernels.kernels.attention.ops import attention_triton
    from modelkernels.kernels.fused import feed_forward_triton, group_norm_triton, layer_norm_triton, upsample_triton

    ops = SimpleNamespace(group_norm_act=group_norm_triton.group_norm_act,
                          tokens_layer_norm=layer_norm_triton.tokens_layer_norm,
                          add_layer_norm=layer_norm_triton.add_layer_norm,
                          upsample_concat=upsample_triton.upsample_concat,
                          feed_forward=feed_forward_triton.feed_forward, attention=attention_triton)
    return _op_calls("cpu", False, ops, size=(2, 64, 8))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few calls and rounds (checks the script)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("host_path.py times the compiled path: run it without TRITON_INTERPRET")
    stub_launcher()
    number, rounds = (20, 2) if args.quick else (2000, 7)
    table = calls()
    best = {name: float("inf") for name in table}
    with torch.no_grad():
        for fn in table.values():
            fn()  # the first call plans and "compiles"
        for _ in range(rounds):  # interleaved: a busy machine slows every op alike
            for name, fn in table.items():
                best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e6)
    for name, us in best.items():
        print(f"{name:40s} {us:7.1f} µs per call (min over {rounds} rounds)")
    return best


if __name__ == "__main__":
    main()
