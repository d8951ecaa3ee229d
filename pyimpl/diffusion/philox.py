"""The library's in-kernel Gaussian noise, reproduced in PyTorch: Philox4x32-10 + Box-Muller.

The Triton kernels draw noise with ``tl.randn4x(seed, counter)`` (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3"; Triton's ``triton.language.random``): one Philox call per
counter yields four uint32, mapped to uniforms u = max(x', 0) * 4.6566127342e-10 with x' the
int32 reading folded to non-negative, then two Box-Muller pairs
(r = sqrt(-2 log max(u1, 1e-7)), r cos(2 pi u2), r sin(2 pi u2)).

Layout (``NOISE_BLOCK`` = 4 * ``NOISE_QUARTER`` elements per program): for a tensor seen as
(n, M) in its logical (row-major) order, element j of sample b lies in block k = j // NOISE_BLOCK,
lane i = (j % NOISE_BLOCK) // 4, component c = j % 4; it takes normal c of the Philox output for
counter ``offset + (b * ceil(M / NOISE_BLOCK) + k) * NOISE_QUARTER + i`` under key ``seed`` (low
and high 32 bits): four neighbouring elements share one Philox call. ``noise_counters(n, M)``
counters are used per call: the next call's offset.
"""

from __future__ import annotations

import torch

__all__ = ["NOISE_BLOCK", "NOISE_QUARTER", "PHILOX_ROUNDS", "counters_used", "noise_counters", "philox_normal",
           "set_philox_rounds"]

NOISE_QUARTER = 512
PHILOX_ROUNDS = 10  # Random123's default; 7 is the fewest that pass BigCrush (Salmon et al. 2011)
ROUNDS_RANGE = (7, 16)


def set_philox_rounds(rounds: int) -> int:
    """Set the Philox rounds used by the kernels and by ``philox_normal`` (default 10); returns the
    previous value. 7 (the fewest that pass BigCrush) makes in-kernel noise ~30 % cheaper, which is
    what lets fp16/bf16 steps run at the memory bound; it changes the numbers drawn for a seed."""
    global PHILOX_ROUNDS
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not ROUNDS_RANGE[0] <= rounds <= ROUNDS_RANGE[1]:
        raise ValueError(f"rounds={rounds!r}: supported {ROUNDS_RANGE[0]}..{ROUNDS_RANGE[1]}")
    previous, PHILOX_ROUNDS = PHILOX_ROUNDS, rounds
    return previous
NOISE_BLOCK = 4 * NOISE_QUARTER
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def noise_counters(n: int, per_sample: int) -> int:
    """Philox counters one call consumes for ``n`` samples of ``per_sample`` elements."""
    return n * (-(-per_sample // NOISE_BLOCK)) * NOISE_QUARTER


def counters_used(sample: torch.Tensor) -> int:
    """Philox counters one step over ``sample`` (batch first) consumes: the next step's offset advance."""
    n = sample.shape[0]
    return noise_counters(n, sample[0].numel() if n else 0)


def _mul_hi_lo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a * x) >> 32 and (a * x) mod 2**32 for a uint32 constant and uint32 values held in int64."""
    ah, al = a >> 16, a & 0xFFFF
    xh, xl = x >> 16, x & 0xFFFF
    mid = ah * xl + al * xh
    low = (mid << 16) + al * xl  # < 2**50: exact in int64
    hi = ah * xh + (low >> 32)
    return hi & _M32, low & _M32


def _philox4x32(c0: torch.Tensor, c1: torch.Tensor, seed: int, rounds: int) -> list[torch.Tensor]:
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return [c0, c1, c2, c3]


def _uniform(x: torch.Tensor) -> torch.Tensor:
    signed = torch.where(x >= 2**31, x - 2**32, x)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u1 = torch.clamp(u1, min=1.0e-7)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def philox_normal(n: int, per_sample: int, seed: int, offset: int = 0,
                  device: str | torch.device | None = None, rounds: int | None = None) -> torch.Tensor:
    """(n, per_sample) float32 standard normals, the same numbers the kernels draw for (seed, offset);
    ``rounds`` defaults to the current ``PHILOX_ROUNDS``."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed}: must lie in [0, 2**63)")
    if not 0 <= offset < 2**62:
        raise ValueError(f"offset={offset}: must lie in [0, 2**62)")
    blocks = -(-per_sample // NOISE_BLOCK)
    j = torch.arange(per_sample, dtype=torch.int64)
    b = torch.arange(n, dtype=torch.int64)[:, None]
    counter = offset + (b * blocks + j // NOISE_BLOCK) * NOISE_QUARTER + (j % NOISE_BLOCK) // 4
    quarter = j % 4
    r = _philox4x32(counter & _M32, counter >> 32, seed, PHILOX_ROUNDS if rounds is None else rounds)
    n1, n2 = _box_muller(_uniform(r[0]), _uniform(r[1]))
    n3, n4 = _box_muller(_uniform(r[2]), _uniform(r[3]))
    out = torch.where(quarter == 0, n1, torch.where(quarter == 1, n2, torch.where(quarter == 2, n3, n4)))
    return out.to(device)
