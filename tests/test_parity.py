"""Parity tests generated from the registry: every (op, backend, device, dtype, sample) against
the reference, and every error sample on every backend. Registering a backend adds its tests."""

from __future__ import annotations

import re

import pytest

import kernels
from kernels import parity

CASES = parity.parity_cases()
ERROR_CASES = parity.error_cases()


def _marks(case: parity.Case) -> list[pytest.MarkDecorator]:
    return [pytest.mark.gpu] if case.device == "cuda" else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CASES])
def test_parity(case: parity.Case) -> None:
    result = parity.run_case(case)
    if result.status == "skip":
        pytest.skip(result.detail)
    assert result.status == "ok", result.detail


@pytest.mark.parametrize(
    "op,backend,error_sample",
    [pytest.param(*c, id=f"{c[0].name}-{c[1].name}-{c[2].name}") for c in ERROR_CASES],
)
def test_error_inputs(op, backend, error_sample) -> None:  # type: ignore[no-untyped-def]
    why = backend.unavailable()
    if why:
        pytest.skip(why)
    args, kwargs = error_sample.make()
    with pytest.raises(error_sample.error, match=re.escape(error_sample.match)):
        backend.fn(*args, **kwargs)


def test_every_op_has_samples_and_a_fast_backend() -> None:
    for name in kernels.list_kernels():
        op = kernels.get_op(name)
        assert op.samples, f"{name} declares no sample inputs"
        assert set(op.backends) - {"reference"}, f"{name} has only its reference"
