"""pytest plugin: parity and error-input tests for every op and backend in the registry.

Installed with the package (entry point ``pytest11``), so any test suite can write::

    import my_package.ops  # registers ops with define_op / register_kernel
    from modelkernels.kernels.testing import parity_tests

    test_parity, test_error_inputs = parity_tests("my_*")

and gets one test per (op, backend, device, dtype, sample), each comparing the backend with the
op's reference under the backend's tolerances (``kernels.parity.run_case``), and one per (op,
backend, error sample). Test ids read ``op-backend-device-dtype-sample`` and
``op-backend-error sample``, so ``-k "my_scale and cuda"`` picks cases. Options narrow the
generated cases in every module: ``--kernels-op`` (wildcards), ``--kernels-backend``,
``--kernels-device`` (a device asked for and absent here is a usage error), ``--kernels-dtype``;
each takes comma-separated values. CUDA cases carry the ``gpu`` marker and skip without CUDA.

Disable it with ``-p no:modelkernels.kernels.testing``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import pytest

CASE_FIXTURE = "kernels_case"
ERROR_FIXTURE = "kernels_error_case"
_OPTIONS = ("op", "backend", "device", "dtype")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kernels", "ModelKernels parity tests")
    group.addoption("--kernels-op", help="only ops matching these wildcards (comma-separated)")
    group.addoption("--kernels-backend", help="only these backends (comma-separated)")
    group.addoption("--kernels-device",
                    help="only these devices, e.g. cuda (comma-separated); an absent one is an error")
    group.addoption("--kernels-dtype", help="only these dtypes (comma-separated)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    devices = _option(config, "device")
    if devices:
        from modelkernels.kernels import parity

        try:
            parity.check_devices(devices)
        except parity.SelectionError as e:
            raise pytest.UsageError(f"--kernels-device: {e}") from None


def _option(config: pytest.Config, name: str) -> list[str] | None:
    value = config.getoption(f"--kernels-{name}", None)
    return None if value is None else [v.strip() for v in str(value).split(",") if v.strip()]


def _ops(pattern: str, config: pytest.Config) -> list[str]:
    from modelkernels.kernels import registry

    names = registry.list_kernels(pattern)
    wanted = _option(config, "op")
    if wanted is not None:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, w) for w in wanted)]
    return names


def _marks(device: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.gpu] if device == "cuda" else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_FIXTURE not in metafunc.fixturenames and ERROR_FIXTURE not in metafunc.fixturenames:
        return
    from modelkernels.kernels import parity

    config = metafunc.config
    ops = _ops(getattr(metafunc.function, "kernels_ops", "*"), config)
    backends, devices, dtypes = (_option(config, n) for n in ("backend", "device", "dtype"))
    if CASE_FIXTURE in metafunc.fixturenames:
        cases = [c for c in parity.parity_cases(ops, backends, devices) if dtypes is None or c.dtype in dtypes]
        metafunc.parametrize(CASE_FIXTURE, [pytest.param(c, id=c.id, marks=_marks(c.device)) for c in cases])
    if ERROR_FIXTURE in metafunc.fixturenames:
        errors = [c for c in parity.error_cases(ops) if backends is None or c[1].name in backends]
        metafunc.parametrize(ERROR_FIXTURE, [pytest.param(c, id=f"{c[0].name}-{c[1].name}-{c[2].name}")
                                             for c in errors])


def check_case(case: Any) -> None:
    """Run one parity case: skip when it cannot run here, fail with the comparison's detail."""
    from modelkernels.kernels import parity

    result = parity.run_case(case)
    if result.status == "skip":
        pytest.skip(result.detail)
    if result.status != "ok":
        pytest.fail(f"{case.op.name} backend={case.backend.name} device={case.device} dtype={case.dtype} "
                    f"sample={case.sample.name!r}: {result.detail}", pytrace=False)


def check_error_case(error_case: Any) -> None:
    """Call the backend on an error sample's inputs: it must raise the declared error and message."""
    _, backend, error_sample = error_case
    why = backend.unavailable()
    if why:
        pytest.skip(why)
    args, kwargs = error_sample.make()
    with pytest.raises(error_sample.error, match=re.escape(error_sample.match)):
        backend.fn(*args, **kwargs)


def parity_tests(ops: str = "*") -> tuple[Callable[[Any], None], Callable[[Any], None]]:
    """``(test_parity, test_error_inputs)`` for the ops matching the wildcard ``ops``: assign them
    to names starting with ``test`` in a test module and pytest collects them."""

    def test_parity(kernels_case: Any) -> None:
        check_case(kernels_case)

    def test_error_inputs(kernels_error_case: Any) -> None:
        check_error_case(kernels_error_case)

    test_parity.kernels_ops = ops  # type: ignore[attr-defined]
    test_error_inputs.kernels_ops = ops  # type: ignore[attr-defined]
    return test_parity, test_error_inputs
