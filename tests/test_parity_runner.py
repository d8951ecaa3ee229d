"""`python -m modelkernels.kernels parity` as a CI step: exit codes, the failure table and JUnit XML with a
deliberately broken backend, and the record / against round trip through an npz file."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from modelkernels.kernels import goldens, parity, registry
from modelkernels.kernels.__main__ import main
from modelkernels.kernels.registry import ErrorSample, Sample, Tolerance


def _x(device: str, dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(5, 7, generator=gen, dtype=torch.float64).to(device, getattr(torch, dtype))


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An op 'probe_double' (2x) with a right backend 'good', one that raises ('broken') and one
    that is off by 1e-3 ('wrong'); the registry is restored afterwards."""
    monkeypatch.setattr(registry, "_OPS", dict(registry._OPS))
    registry.define_op("probe_double", reference=lambda x: x * 2, dtypes=("float32", "float64"),
                       reference_dtype=lambda dt: "float64", samples=[
                           Sample("odd (5,7)", lambda d, t: ((_x(d, t),), {}), grad=True),
                           Sample("transposed", lambda d, t: ((_x(d, t).t(),), {}))],
                       error_samples=[ErrorSample("int", lambda: ((torch.arange(3),), {}), TypeError, "floating")])
    tol = {"*": Tolerance(1e-6, 1e-6)}
    registry.register_kernel("probe_double", "good", devices=("cpu",), dtypes=("float32", "float64"),
                             tolerances=tol)(lambda x: x + x)
    yield "probe_double"


def _register_broken() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kernel exploded")

    registry.register_kernel("probe_double", "broken", devices=("cpu",), dtypes=("float32",))(broken)


def test_passing_backend_exits_0(probe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parity", "--op", probe, "--junit", str(tmp_path / "j.xml")]) == 0
    assert "4 cases run, 0 failed, 0 skipped" in capsys.readouterr().out
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "0"


def test_a_raising_backend_is_a_failed_case_in_table_json_and_junit(
        probe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _register_broken()
    junit, js = tmp_path / "parity.xml", tmp_path / "parity.json"
    assert main(["parity", "--op", probe, "--json", str(js), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert ("FAIL probe_double backend=broken device=cpu dtype=float32 sample='odd (5,7)': "
            "the backend raised RuntimeError: kernel exploded") in out
    assert "6 cases run, 2 failed" in out  # the run went on: the good backend's cases ran too
    rows = {(r["backend"], r["dtype"]): r["status"] for r in json.loads(js.read_text())}
    assert rows == {("good", "float32"): "ok", ("good", "float64"): "ok", ("broken", "float32"): "FAIL"}
    cases = ET.parse(junit).getroot().iter("testcase")
    failed = {(c.get("classname"), c.get("name")): c.find("failure") for c in cases}
    failure = failed[("probe_double.broken", "cpu-float32-odd (5,7)")]
    assert failure is not None and "RuntimeError: kernel exploded" in (failure.get("message") or "")
    assert failed[("probe_double.good", "cpu-float32-odd (5,7)")] is None


def test_a_wrong_gradient_fails_with_its_stage(probe: str) -> None:
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            return x * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            raise ValueError("no backward here")

    registry.register_kernel("probe_double", "nobwd", devices=("cpu",), dtypes=("float64",))(Wrong.apply)
    results = parity.run_parity([probe], backends=["nobwd"])
    assert [r.status for r in results] == ["FAIL", "ok"]
    assert results[0].detail == "the backend's backward raised ValueError: no backward here"


@pytest.mark.parametrize("argv, message", [
    (["--op", "probe_dobule"], "op 'probe_dobule' matches no registered op; did you mean 'probe_double'?"),
    (["--backend", "bogus"], "backend 'bogus' is not a backend of the selected ops"),
    (["--device", "tpu"], "device 'tpu' is unknown; allowed: cpu, cuda"),
    (["--dtype", "int8"], "dtype 'int8' has no case in the selection"),
    (["--backend", "reference"], "backend 'reference' is not a backend of the selected ops"),
    (["--json", "{tmp}/missing/x.json"], "the folder '{tmp}/missing' does not exist"),
    (["--junit", "{tmp}"], "is a directory, not a file"),
    (["--against", "{tmp}/none.npz"], "recording '{tmp}/none.npz' does not exist"),
    (["--against", "{tmp}/bad.npz"], "is not an .npz file written by --record"),
    (["--record", "{tmp}/a.npz", "--against", "{tmp}/a.npz"], "exclude each other"),
    (["--record", "{tmp}/a.npz", "--backend", "good"], "--record runs only the references"),
    (["--record", "{tmp}/no/a.npz"], "the folder '{tmp}/no' does not exist"),
])
def test_selection_and_path_errors_exit_2(probe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    (tmp_path / "bad.npz").write_text("not an npz")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["parity", "--op", probe, *argv] if argv[0] != "--op" else ["parity", *argv]) == 2
    captured = capsys.readouterr()
    assert message.replace("{tmp}", str(tmp_path)) in captured.err
    assert "cases run" not in captured.out  # checked before any case ran


def test_absent_device_asked_for_exits_2(probe: str, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert main(["parity", "--op", probe, "--device", "cuda"]) == 2
    assert "device 'cuda' was asked for but cannot be used here: no CUDA device" in capsys.readouterr().err


def test_nothing_able_to_run_exits_2(probe: str, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register_kernel("probe_double", "unbuilt", devices=("cpu",), dtypes=("float32",),
                             available=lambda: "probe extension not built")(lambda x: x * 2)
    assert main(["parity", "--op", probe, "--backend", "unbuilt"]) == 2
    assert "no selected case could run here; the first reason: probe extension not built" in capsys.readouterr().err


def test_record_then_against_round_trip(probe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "goldens")  # no .npz suffix: written as named
    ops = f"{probe},insertion_sort"
    assert main(["parity", "--record", path, "--op", ops]) == 0
    assert Path(path).exists()
    rec = goldens.load(path)
    assert rec.ops() == ["insertion_sort", "probe_double"]
    assert main(["parity", "--against", path, "--op", ops]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "checking against" in out
    with np.load(path, allow_pickle=False) as data:  # the file is plain arrays and a JSON manifest
        assert json.loads(str(data["__manifest__"]))["format"] == goldens.FORMAT


def test_against_a_tampered_recording_fails(probe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.npz"
    assert main(["parity", "--record", str(path), "--op", probe, "--dtype", "float64"]) == 0
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    manifest = json.loads(str(arrays["__manifest__"]))
    first = manifest["entries"]["probe_double/odd (5,7)/float64"]["outputs"][0]["array"]
    arrays[first] = arrays[first] + 1e-3
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert main(["parity", "--against", str(path), "--op", probe, "--dtype", "float64"]) == 1
    assert "sample='odd (5,7)': output 0: 35/35 elements out of tolerance" in capsys.readouterr().out
    # a dtype that was not recorded fails instead of passing unchecked
    assert main(["parity", "--against", str(path), "--op", probe]) == 1
    assert "no recorded reference for this sample and dtype" in capsys.readouterr().out


def test_against_detects_inputs_that_differ_from_the_recording(probe: str, tmp_path: Path) -> None:
    path = str(tmp_path / "g.npz")
    goldens.record(path, [probe])
    op = registry.get_op(probe)
    op.samples[1] = Sample("transposed", lambda d, t: ((_x(d, t).t() + 1,), {}))
    results = parity.run_parity([probe], ["good"])
    rec = goldens.load(path)
    checked = [parity.run_case(r.case, rec.lookup) for r in results]
    assert [r.status for r in checked] == ["ok", "FAIL", "ok", "FAIL"]
    assert "inputs differ from the recorded ones" in checked[1].detail


def test_recording_keeps_scalar_and_nonfinite_leaves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_OPS", dict(registry._OPS))
    registry.define_op("probe_stats", reference=lambda x: (x.sum(), float("nan"), 3, "ok", np.float32(1.5)),
                       dtypes=("float64",), samples=[Sample("n=4", lambda d, t: ((torch.ones(4, dtype=torch.float64),),
                                                                                   {}))])
    path = str(tmp_path / "s.npz")
    assert [r.error for r in goldens.record(path, ["probe_stats"])] == [""]
    leaves = goldens.load(path).entries["probe_stats/n=4/float64"].outputs
    assert leaves[0].shape == () and leaves[1] != leaves[1] and leaves[2:] == [3, "ok", 1.5]
