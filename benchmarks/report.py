"""The benchmark report: a table of medians and ratios, a JSON record, and PNG plots.

Reads pytest-benchmark's JSON. Within each (suite, case) the reference and the peers are the
yardsticks: ``vs reference`` = reference time / this time, ``vs <peer>`` = peer time / this time
(above 1: faster). Crossovers (the size where one implementation overtakes another) are listed
per suite and series.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness import dump, machine_info


def load_rows(raw: Path) -> list[dict[str, Any]]:
    """One row per measurement: suite, case, series, size, impl, role, median_ms, work."""
    data = json.loads(Path(raw).read_text())
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "suite" not in info:
            continue
        median_ms = info.get("median_ms", b["stats"]["median"] * 1e3)
        rows.append(dict(suite=info["suite"], case=info["case"], series=info.get("series", ""),
                         size=info.get("size"), impl=info["impl"], role=info["role"],
                         device=info.get("device", "cpu"), median_ms=median_ms, work=info.get("work", {}),
                         iqr_ms=b["stats"].get("iqr", 0.0) * 1e3))
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Attach ``vs_reference`` and ``vs_peers`` (name -> ratio) to each row, within its case."""
    by_case: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_case[(r["suite"], r["case"])].append(r)
    for group in by_case.values():
        ref = next((r for r in group if r["role"] == "reference"), None)
        peers = [r for r in group if r["role"] == "peer"]
        for r in group:
            r["vs_reference"] = ref["median_ms"] / r["median_ms"] if ref and r is not ref else None
            r["vs_peers"] = {p["impl"]: p["median_ms"] / r["median_ms"] for p in peers if p is not r}


def crossovers(rows: list[dict[str, Any]]) -> list[str]:
    """For each suite/series and each (ours, peer-or-reference) pair: where the faster one changes."""
    out = []
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["size"] is not None:
            series[(r["suite"], r["series"])].append(r)
    for (suite, ser), group in sorted(series.items()):
        impls = {r["impl"]: r["role"] for r in group}
        ours = [i for i, role in impls.items() if role == "ours"]
        others = [i for i, role in impls.items() if role != "ours"]
        for a in ours:
            for b in others:
                ta = {r["size"]: r["median_ms"] for r in group if r["impl"] == a}
                tb = {r["size"]: r["median_ms"] for r in group if r["impl"] == b}
                sizes = sorted(set(ta) & set(tb))
                if len(sizes) < 2:
                    continue
                faster = [ta[s] < tb[s] for s in sizes]
                changes = [sizes[i] for i in range(1, len(sizes)) if faster[i] != faster[i - 1]]
                if changes:
                    out.append(f"{suite} [{ser}]: {a} vs {b}: " + ", ".join(
                        f"{'faster' if faster[sizes.index(s)] else 'slower'} from size {s:g}" for s in changes)
                        + f" (at size {sizes[0]:g}: {'faster' if faster[0] else 'slower'})")
                else:
                    out.append(f"{suite} [{ser}]: {a} is {'faster' if faster[0] else 'slower'} than {b} "
                               f"at every size measured ({sizes[0]:g}..{sizes[-1]:g})")
    return out


def _fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    if ms >= 1e-3:
        return f"{ms * 1e3:.2f} us"
    return f"{ms * 1e6:.0f} ns"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, one line per measurement, grouped by suite and case."""
    lines = ["| suite | case | impl | role | median | vs reference | vs peers |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["suite"], r["series"], r["size"] or 0, r["case"], r["role"] != "ours",
                                         r["impl"])):
        peers = ", ".join(f"{k} {_fmt_ratio(v)}" for k, v in sorted(r["vs_peers"].items())) if r["role"] == "ours" \
            else ""
        lines.append(f"| {r['suite']} | {r['case']} | {r['impl']} | {r['role']} | {_fmt_ms(r['median_ms'])} | "
                     f"{_fmt_ratio(r['vs_reference'])} | {peers} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per suite: median time over size (top) and speedup of ours over the others (bottom), one
    column per series. Returns the PNG paths written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    suites = sorted({r["suite"] for r in rows if r["size"] is not None})
    for suite in suites:
        srows = [r for r in rows if r["suite"] == suite and r["size"] is not None]
        series = sorted({r["series"] for r in srows})
        fig, axes = plt.subplots(2, len(series), figsize=(4.2 * len(series), 7.5), squeeze=False)
        for j, ser in enumerate(series):
            group = [r for r in srows if r["series"] == ser]
            impls = sorted({r["impl"] for r in group})
            ax = axes[0][j]
            for impl in impls:
                pts = sorted((r["size"], r["median_ms"]) for r in group if r["impl"] == impl)
                role = next(r["role"] for r in group if r["impl"] == impl)
                ax.plot(*zip(*pts), marker="o", ls="-" if role == "ours" else "--", label=f"{impl} ({role})")
            ax.set(xscale="log", yscale="log", title=f"{suite}: {ser}" if ser else suite, xlabel="size",
                   ylabel="median time [ms]")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            ax = axes[1][j]
            ours = [i for i in impls if any(r["impl"] == i and r["role"] == "ours" for r in group)]
            others = [i for i in impls if i not in ours]
            for a in ours:
                ta = {r["size"]: r["median_ms"] for r in group if r["impl"] == a}
                for b in others:
                    tb = {r["size"]: r["median_ms"] for r in group if r["impl"] == b}
                    sizes = sorted(set(ta) & set(tb))
                    if sizes:
                        ax.plot(sizes, [tb[s] / ta[s] for s in sizes], marker="o", label=f"{a} over {b}")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set(xscale="log", yscale="log", xlabel="size", ylabel="speedup (x)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / (re.sub(r"[^A-Za-z0-9_.-]+", "_", suite) + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(raw: Path, out: Path) -> str:
    """Write report.md, report.json and one PNG per suite into ``out``; return the text."""
    rows = load_rows(raw)
    add_ratios(rows)
    info = machine_info()
    cross = crossovers(rows)
    pngs = plot(rows, out)
    header = ", ".join(f"{k}={v}" for k, v in info.items() if v is not None)
    text = "\n".join(["# Benchmark report", "", header, "", table(rows), "", "## Crossovers", ""]
                     + [f"- {c}" for c in cross] + ["", "Plots: " + ", ".join(p.name for p in pngs)])
    (out / "report.md").write_text(text + "\n")
    dump(out / "report.json", {"machine": info, "rows": rows, "crossovers": cross})
    return text
