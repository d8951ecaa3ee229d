"""What Triton makes of the diffusion step kernels for an NVIDIA GPU, compiled on a CPU (no GPU needed).

    PYTHONPATH=$PWD python benchmarks/step_kernel_report.py                      # sm_90, every kernel
    PYTHONPATH=$PWD python benchmarks/step_kernel_report.py --kernels ddpm --dtypes float16 bfloat16 --rng 0 2

Each kernel of ``kernels/diffusion/step_triton.py`` is compiled as a launch on a contiguous
(256, 3, 256, 256) batch with in-kernel Philox noise would specialise it (pointers and the integers that are
multiples of 16 marked divisible by 16, unit strides as constants), through Triton's own pipeline down to
the cubin, with the ``ptxas`` / ``cuobjdump`` that ship with Triton. Reported per (kernel, dtype, Box-Muller
flavour): registers per thread, local memory (spills), the SASS global loads and stores by width, and the
SASS instruction count. A bandwidth-bound kernel wants 16-byte accesses (``LDG.E.128``); a thread that holds
four half-precision elements issues 8-byte ones. Run without ``TRITON_INTERPRET`` (the kernels must be
compiled, not interpreted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from modelkernels.kernels.diffusion import step_triton as st
from modelkernels.pyimpl.diffusion import philox

KERNELS = {"q_sample": "_q_sample_kernel", "seed_step": "_seed_step_kernel", "ddpm": "_ddpm_kernel",
           "ddim": "_ddim_kernel"}
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
SHAPE = (256, 3, 256, 256)
TABLES = {"ac_ptr", "alpha_ptr", "beta_ptr", "s_ptr"}  # schedule tables and thresholds: float32
INDICES = {"t_ptr", "pt_ptr", "rng_ptr"}  # timesteps and the RNG state: int64
FLOATS = {"w", "clip_range", "final_alpha", "eta"}
SEEDS = {"seed", "offset"}  # do_not_specialize: int64 at launch (seeds are drawn below 2**62)


def _launch_values() -> dict[str, int]:
    """The integer arguments of a contiguous SHAPE launch: sizes, grid extent and every tensor's strides."""
    n, m = SHAPE[0], SHAPE[1] * SHAPE[2] * SHAPE[3]
    values = dict(n=n, M=m, d2=SHAPE[2], d3=SHAPE[3], T=1000, grid_y=min(n, 65535))
    for prefix in "xmuvz":
        values.update({f"{prefix}s0": m, f"{prefix}s1": SHAPE[2] * SHAPE[3], f"{prefix}s2": SHAPE[3],
                       f"{prefix}s3": 1})
    return values


def _constexprs(dtype: str, rng: int) -> dict[str, Any]:
    """The options of a plain epsilon-prediction step with Philox noise (every kernel takes a subset)."""
    return dict(NOISE=2, WRITE_NOISE=False, HAS_UNCOND=False, PRED=0, VAR=0, CLIP=0, USE_CLIPPED=False,
                X0_ONLY=False, WRITE_X0=False, FLAT=True, Q=philox.NOISE_QUARTER, ITERS=1, RNG=rng,
                ROUNDS=philox.PHILOX_ROUNDS, PRECISE=dtype == "float32")


def compile_kernel(name: str, dtype: str, rng: int, arch: int, num_warps: int = st.NUM_WARPS) -> Any:
    """Triton's compiled kernel (ptx and cubin in ``.asm``) for the SHAPE launch described above."""
    kernel = getattr(st, KERNELS[name])
    if not isinstance(kernel, triton.runtime.jit.JITFunction):
        raise SystemExit("the step kernels are interpreted (TRITON_INTERPRET is set): run without it")
    names = [p.name for p in kernel.params]
    values, options = _launch_values(), _constexprs(dtype, rng)
    signature: dict[str, str] = {}
    constexprs: dict[tuple[int, ...], Any] = {}
    divisible: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, p in enumerate(names):
        if p in options:
            signature[p], constexprs[(i,)] = "constexpr", options[p]
        elif p.endswith("_ptr"):
            signature[p] = "*fp32" if p in TABLES else "*i64" if p in INDICES else "*" + DTYPES[dtype]
            divisible[(i,)] = [["tt.divisibility", 16]]
        elif p in FLOATS:
            signature[p] = "fp32"
        elif p in SEEDS:
            signature[p] = "i64"
        elif values[p] == 1:  # Triton specialises integers equal to 1 as constants
            signature[p], constexprs[(i,)] = "constexpr", 1
        else:
            signature[p] = "i32"
            if values[p] % 16 == 0:
                divisible[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs, divisible)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def describe(compiled: Any) -> dict[str, Any]:
    """Registers, local memory, SASS global accesses by width and the SASS instruction count."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    accesses = Counter(re.findall(r"\b((?:LDG|STG)\.E(?:\.[0-9A-Z]+)*)\b", sass))
    return dict(registers=int(regs.group(1)) if regs else None, local_bytes=int(local.group(1)) if local else None,
                global_accesses=dict(sorted(accesses.items())),
                instructions=len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, re.M)))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=sorted(KERNELS))
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=list(DTYPES))
    p.add_argument("--rng", nargs="+", type=int, choices=(0, 1, 2), default=[st.RNG_MODE_GPU],
                   help="Box-Muller flavour: 0 precise libdevice, 1 fast sin/cos, 2 also fast log (the GPU default)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    print(f"{'kernel':10s} {'dtype':9s} rng {'regs':>4s} {'local':>5s} {'SASS':>5s}  global loads / stores")
    for name in args.kernels:
        for dtype in args.dtypes:
            for rng in args.rng:
                row = dict(kernel=name, dtype=dtype, rng=rng, arch=args.arch,
                           **describe(compile_kernel(name, dtype, rng, args.arch)))
                rows.append(row)
                acc = ", ".join(f"{k} x{v}" for k, v in row["global_accesses"].items())
                print(f"{name:10s} {dtype:9s} {rng:3d} {row['registers']:4d} {row['local_bytes']:5d} "
                      f"{row['instructions']:5d}  {acc}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
