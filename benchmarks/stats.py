"""Spread and paired ratios for the benchmark report.

Every implementation of one benchmark row is timed in the same rounds (round-robin, see
``benchmarks.harness.time_interleaved``), so round ``r`` of ours and round ``r`` of a peer saw the
same state of the machine. The ratio of a pair is the median over rounds of ``other[r] / ours[r]``;
its spread is a percentile-bootstrap 95% interval over rounds (Efron & Tibshirani, *An Introduction
to the Bootstrap*, ch. 13), resampled with a fixed seed so a report is reproducible from its samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 2000
UNSTABLE_IQR = 0.5  # a timing whose IQR exceeds half its median is too noisy to call
UNSTABLE_INTERVAL = 2.0  # a ratio whose 95% interval spans more than a factor 2 is too noisy to call
MIN_ROUNDS = 3


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and number of samples of one timing (milliseconds per call)."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def unstable(self) -> bool:
        return self.n < MIN_ROUNDS or self.iqr > UNSTABLE_IQR * self.median


@dataclass(frozen=True)
class Ratio:
    """``other / ours`` over paired rounds: its median and 95% bootstrap interval (above 1: ours faster)."""

    median: float
    lo: float
    hi: float
    n: int

    @property
    def unstable(self) -> bool:
        return self.n < MIN_ROUNDS or not self.lo > 0 or self.hi / self.lo > UNSTABLE_INTERVAL

    @property
    def verdict(self) -> str:
        """``faster`` / ``slower`` (ours, when the interval excludes 1) or ``same``."""
        if self.lo > 1:
            return "faster"
        if self.hi < 1:
            return "slower"
        return "same"


def spread(samples: Sequence[float]) -> Spread:
    a = np.asarray(samples, dtype=float)
    if a.size == 0:
        raise ValueError("samples is empty: a timing needs at least one round")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Spread(float(med), float(q1), float(q3), int(a.size))


def _resampled_medians(ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, ratios.size, size=(BOOTSTRAP, ratios.size))
    return np.median(ratios[idx], axis=1)


def paired_ratio(ours: Sequence[float], other: Sequence[float], seed: int = 0) -> Ratio:
    """The ratio ``other / ours`` from rounds measured together (same length, same order)."""
    a, b = np.asarray(ours, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired samples must have the same non-zero length: got {a.size} and {b.size}")
    r = b / a
    med = float(np.median(r))
    if r.size < 2:
        return Ratio(med, med, med, int(r.size))
    lo, hi = np.percentile(_resampled_medians(r, np.random.default_rng(seed)), [2.5, 97.5])
    return Ratio(med, float(lo), float(hi), int(r.size))


def geomean_ratio(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], seed: int = 0) -> Ratio:
    """The geometric mean over rows of each row's paired ratio, with a two-level bootstrap interval:
    rows resampled, and each row's rounds within it. It covers the spread over sizes as well as the
    noise of the rounds, so a second run, whose noisy rows may differ, lands inside it."""
    if not pairs:
        raise ValueError("pairs is empty: a headline needs at least one row")
    rng = np.random.default_rng(seed)
    logs = []
    boot_rows = []
    for ours, other in pairs:
        r = np.asarray(other, dtype=float) / np.asarray(ours, dtype=float)
        logs.append(np.log(np.median(r)))
        boot_rows.append(np.log(_resampled_medians(r, rng)))
    m = np.stack(boot_rows)  # (rows, BOOTSTRAP)
    pick = rng.integers(0, m.shape[0], size=(BOOTSTRAP, m.shape[0]))
    boot = m[pick, np.arange(BOOTSTRAP)[:, None]].mean(axis=1)
    lo, hi = np.exp(np.percentile(boot, [2.5, 97.5]))
    return Ratio(float(np.exp(np.mean(logs))), float(lo), float(hi), min(len(a) for a, _ in pairs))
