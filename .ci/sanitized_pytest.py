"""pytest with ``kernels._native`` taken from the sanitizer build given as the first argument
(``.ci/sanitize``), so every native call in the tests runs the instrumented code."""

import importlib.util
import sys

import pytest

spec = importlib.util.spec_from_file_location("modelkernels.kernels._native", sys.argv[1])
assert spec is not None and spec.loader is not None
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["modelkernels.kernels._native"] = module
from modelkernels.kernels import native  # noqa: E402

assert native.native() is module, "the sanitizer build was not picked up"
sys.exit(pytest.main(sys.argv[2:]))
