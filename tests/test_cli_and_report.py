"""`python -m modelkernels.kernels info/parity` and the benchmark report, end to end on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkernels.kernels.__main__ import format_table, main


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
    from modelkernels.kernels import registry

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


def _row(group: int, suite: str, series: str, size: int | None, impl: str, role: str, samples: list[float]) -> dict:
    return dict(suite=suite, case=f"n={size} {series}", series=series, size=size, size_label=None, impl=impl,
                role=role, device="cpu", work={}, extra={}, group=group, iterations=1, samples_ms=samples)


def _drift(base: float, rounds: int = 12) -> list[float]:
    """A busy machine: every round slower or faster by the same factor for everyone in it."""
    return [base * (1 + 0.3 * (r % 4)) for r in range(rounds)]


def test_report_summary_paired_ratios_crossovers_and_plot(tmp_path: Path) -> None:
    from benchmarks.report import write_report

    rows = []
    for g, (n, ours, peer, ref) in enumerate([(8, 1e-3, 2e-3, 4e-3), (64, 2e-3, 3e-3, 4e-2), (512, 9e-2, 2e-2, 3.0)]):
        rows += [_row(g, "toy", "random", n, "fast", "ours", _drift(ours)),
                 _row(g, "toy", "random", n, "numpy", "peer", _drift(peer)),
                 _row(g, "toy", "random", n, "python", "reference", _drift(ref))]
    noisy = [1.0, 9.0, 0.2, 5.0, 0.1, 7.0]
    rows += [_row(9, "toy", "random", 4096, "fast", "ours", noisy), _row(9, "toy", "random", 4096, "numpy", "peer",
                                                                        noisy[::-1])]
    rows += [_row(10, "toy", "one", None, "fast", "ours", [1.0] * 5), _row(10, "toy", "one", None, "python",
                                                                         "reference", [3.0] * 5)]
    raw = tmp_path / "samples.json"
    raw.write_text(json.dumps({"machine": {"commit": "abc1234", "cpu": "toy CPU", "cores": 2}, "rows": rows}))
    text = write_report(raw, tmp_path)
    assert "device: CPU: toy CPU (2 cores); commit abc1234" in text
    # the drift cancels in the paired ratios (exact per row); the headline's interval spans the rows
    assert "| toy | cpu | fast | numpy (peer) | 0.874x | 0.222x-2x | 3/4 | 0.222x-2x |" in text
    report = (tmp_path / "report.md").read_text()
    assert "| n=8 random | fast | ours | 1.45 us | 450 ns | 12 | 4x [4x-4x] | numpy 2x [2x-2x] |  |" in report
    assert ("toy [random] fast vs numpy, by size: crossover: faster 8..64, slower at 512 (1 unstable sizes left out)"
            in report)
    assert "unstable timing" in report
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["machine"]["commit"] == "abc1234" and len(data["rows"]) == 13
    png = tmp_path / "toy.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_time_interleaved_rotates_the_order_every_round() -> None:
    from benchmarks.harness import Contender, time_interleaved

    calls: list[str] = []
    contenders = [Contender(lambda name=name: calls.append(name), setup=lambda: ((), {}), rounds=6)
                  for name in "abc"]
    samples, iterations = time_interleaved(contenders)
    assert [len(s) for s in samples] == [6, 6, 6] and iterations == [1, 1, 1]
    timed = calls[6:]  # after two warm-up calls each
    assert timed[:9] == list("abcbcacab") and len(timed) == 18


def test_bench_fixture_times_a_row_together(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "test_toy.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('n', [3, 4])\n"
        "@pytest.mark.parametrize('impl,role', [('a', 'ours'), ('b', 'reference')])\n"
        "def test_toy(bench, n, impl, role):\n"
        "    bench(lambda: sum(range(n)), suite='toy', case=f'n={n}', size=n, impl=impl, role=role, rounds=4,\n"
        "          extra={'n': n})\n")
    out = tmp_path / "samples.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.conftest", "-p", "no:cacheprovider",
                           f"--bench-json={out}", str(tmp_path / "test_toy.py")], cwd=tmp_path, capture_output=True,
                          text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[bench] toy: 4 measurements" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["impl"], r["group"]) for r in rows] == [("n=3", "a", 1), ("n=3", "b", 1), ("n=4", "a", 2),
                                                                  ("n=4", "b", 2)]
    assert all(len(r["samples_ms"]) == 5 and r["extra"] == {"n": r["size"]} for r in rows)


@pytest.mark.gpu
def test_time_interleaved_on_cuda_gives_positive_event_times() -> None:
    import torch

    from benchmarks.harness import Contender, time_interleaved

    x = torch.randn(1 << 20, device="cuda")
    small, big = Contender(lambda: x.mul_(1.0), rounds=12), Contender(lambda: torch.sort(x), rounds=12)
    samples, iterations = time_interleaved([small, big], device="cuda")
    assert [len(s) for s in samples] == [12, 12] and iterations == [1, 1]
    assert all(t > 0 for s in samples for t in s)
    assert sorted(samples[1])[6] > sorted(samples[0])[6]  # a sort of 1M floats outlasts a scale
