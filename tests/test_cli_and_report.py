"""`python -m kernels info/parity` and the benchmark report, end to end on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernels.__main__ import format_table, main


def test_info_lists_every_op_and_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "insertion_sort" in out and "reference" in out and "native" in out


def test_parity_command_passes_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "parity.json"
    assert main(["parity", "--op", "insertion_sort", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert {r["backend"] for r in rows} >= {"native"} or all(r["status"] == "skip" for r in rows)
    assert "cases run, 0 failed" in capsys.readouterr().out


def test_parity_command_fails_on_a_wrong_backend(capsys: pytest.CaptureFixture[str]) -> None:
    from kernels import registry

    registry.register_kernel("insertion_sort", "broken", devices=("cpu",), dtypes=("float64",))(
        lambda values, first=0, last=None, **kw: values)  # forgets to sort
    try:
        assert main(["parity", "--op", "insertion_sort", "--backend", "broken"]) == 1
        assert "FAIL" in capsys.readouterr().out
    finally:
        op = registry.get_op("insertion_sort")
        del op.backends["broken"]
        op.ordered = [b for b in op.ordered if b.name != "broken"]


def test_format_table_aligns_columns() -> None:
    text = format_table([{"a": "x", "bb": 1}, {"a": "longer", "bb": 22}], ["a", "bb"])
    lines = text.splitlines()
    assert lines[0].index("bb") == lines[2].index("1") == lines[3].index("22")


def _fake_benchmark(suite: str, series: str, size: int, impl: str, role: str, median_s: float) -> dict:
    return {"name": f"{impl}-{size}", "stats": {"median": median_s, "iqr": 0.0},
            "extra_info": {"suite": suite, "case": f"n={size} {series}", "series": series, "size": size,
                           "impl": impl, "role": role, "device": "cpu", "work": {}}}


def test_report_table_ratios_crossovers_and_plot(tmp_path: Path) -> None:
    from benchmarks.report import write_report

    benches = []
    for n, ours, peer, ref in [(8, 1e-6, 2e-6, 4e-6), (64, 2e-6, 3e-6, 4e-5), (512, 9e-5, 2e-5, 3e-3)]:
        benches += [_fake_benchmark("toy", "random", n, "fast", "ours", ours),
                    _fake_benchmark("toy", "random", n, "numpy", "peer", peer),
                    _fake_benchmark("toy", "random", n, "python", "reference", ref)]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"benchmarks": benches}))
    text = write_report(raw, tmp_path)
    assert "| toy | n=8 random | fast | ours | 1.00 us | 4.00x | numpy 2.00x |" in text
    assert "fast vs numpy: slower from size 512 (at size 8: faster)" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["machine"]["commit"] and len(data["rows"]) == 9
    png = tmp_path / "toy.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
