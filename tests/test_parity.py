"""Parity tests generated from the registry by the ``kernels.testing`` plugin: every (op,
backend, device, dtype, sample) against the reference, and every error sample on every backend.
Registering a backend adds its tests; ``--kernels-op``, ``--kernels-device`` etc. narrow them."""

from __future__ import annotations

from modelkernels import kernels
from modelkernels.kernels.testing import parity_tests

test_parity, test_error_inputs = parity_tests("*")


def test_every_op_has_samples_and_a_fast_backend() -> None:
    for name in kernels.list_kernels():
        op = kernels.get_op(name)
        assert op.samples, f"{name} declares no sample inputs"
        assert set(op.backends) - {"reference"}, f"{name} has only its reference"
