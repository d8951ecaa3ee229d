"""Fused norm / activation / upsample: ours (the dispatcher's choice: Triton on CUDA; on the CPU the
GroupNorm's ``torch`` backend and the other ops' references) against eager PyTorch and torch.compile of the
same pattern, on the seed UNet's activations (C=64 at 64x64, bf16 on CUDA; fp32 at 32x32 on the CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.registry import Tolerance

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEV == "cuda" else torch.float32
TOL = Tolerance(3e-2, 3e-2) if DTYPE == torch.bfloat16 else Tolerance(1e-4, 1e-4)
BATCHES = [16, 64, 128] if DEV == "cuda" else [4, 16]
SIZE = 64 if DEV == "cuda" else 32
C = 64


def _inputs(b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(b)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(DEV, DTYPE)

    s = SIZE
    return dict(x=rnd(b, C, s, s), r=rnd(b, C, s, s), e=rnd(b, C), w=(torch.rand(C, generator=g) + 0.5).to(DEV, DTYPE),
                bias=torch.randn(C, generator=g).to(DEV, DTYPE), tok=rnd(b, s * s, C), att=rnd(b, s * s, C),
                xu=rnd(b, C, s // 2, s // 2).contiguous(memory_format=torch.channels_last),
                sk=rnd(b, C, s, s).contiguous(memory_format=torch.channels_last))


def _pattern(name: str, t: dict[str, torch.Tensor]) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    """(eager, ours, bytes moved: inputs read once + outputs written once)."""
    x, r, e, w, b, tok, att, xu, sk = (t[k] for k in ("x", "r", "e", "w", "bias", "tok", "att", "xu", "sk"))
    n = x.numel() * x.element_size()
    bsz, s = x.shape[0], x.shape[-1]
    if name == "gn_gelu":
        return (lambda: F.gelu(F.group_norm(x, 1, w, b)),
                lambda: kernels.group_norm_act(x, 1, w, b, activation="gelu"), 2 * n)
    if name == "gn_residual_gelu":
        return (lambda: F.gelu(r + F.group_norm(x, 1, w, b)),
                lambda: kernels.group_norm_act(x, 1, w, b, residual=r, activation="gelu"), 3 * n)
    if name == "gn_emb":
        return (lambda: F.group_norm(x, 1, w, b) + e[:, :, None, None].repeat(1, 1, s, s),
                lambda: kernels.group_norm_act(x, 1, w, b, emb=e), 2 * n)
    if name == "tokens_layer_norm":
        def eager_tln() -> Any:
            tokens = x.view(bsz, C, s * s).swapaxes(1, 2)
            return tokens, F.layer_norm(tokens, (C,), w, b)

        return eager_tln, lambda: kernels.tokens_layer_norm(x, w, b), 3 * n

    if name == "add_layer_norm":
        def eager_aln() -> Any:
            total = att + tok
            return total, F.layer_norm(total, (C,), w, b)

        return eager_aln, lambda: kernels.add_layer_norm(att, tok, w, b), 4 * n
    if name == "upsample_concat":
        return (lambda: torch.cat([sk, F.interpolate(xu, scale_factor=2, mode="bilinear", align_corners=True)], 1),
                lambda: kernels.upsample_concat(xu, sk), (xu.numel() + 3 * sk.numel()) * x.element_size())
    raise ValueError(f"pattern={name!r}: unknown")


PATTERNS = ["gn_gelu", "gn_residual_gelu", "gn_emb", "tokens_layer_norm", "add_layer_norm", "upsample_concat"]
IMPLS = [("ours", "ours"), ("eager", "peer")] + ([("torch.compile", "peer")] if DEV == "cuda" else [])
CASES = [(p, b, impl, role) for p in PATTERNS for b in BATCHES for impl, role in IMPLS]


@pytest.mark.parametrize("pattern,batch,impl,role", CASES, ids=[f"{p}-B{b}-{i}" for p, b, i, _ in CASES])
def test_fused(bench, quick, pattern: str, batch: int, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if quick and batch != BATCHES[0]:
        pytest.skip(f"--quick: batch {BATCHES[0]} only")
    eager, ours, nbytes = _pattern(pattern, _inputs(batch))
    fn = {"ours": ours, "eager": eager}.get(impl) or torch.compile(eager)
    out, want = fn(), eager()
    verify(out, want, TOL, what=f"{pattern} B={batch} {impl}")
    bench(fn, suite="fused", case=f"{pattern} B={batch}", series=pattern, size=batch, impl=impl, role=role,
          device=DEV, work={"bytes": nbytes})
