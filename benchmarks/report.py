"""The benchmark report: a summary, the rows per suite, crossovers, a JSON record and PNG plots.

Reads the samples ``--bench-json`` writes (``benchmarks/conftest.py``): the implementations of one
row were timed in the same rounds, so each comparison is a paired ratio (``benchmarks.stats``):
``vs X`` = X's time / this time, the median over rounds with a 95% bootstrap interval (above 1:
faster than X). A timing whose IQR exceeds half its median, or a ratio whose interval spans more
than a factor 2, is marked unstable and left out of the headlines and the crossovers.

Order: suites alphabetically; within a suite by series, then size, then case; within a row ours
first, then the reference, then the peers, each alphabetically.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness import dump
from benchmarks.stats import Ratio, geomean_ratio, paired_ratio, spread

ROLE_ORDER = {"ours": 0, "reference": 1, "peer": 2}

# What ``size`` counts in each suite (a bench call's ``size_label`` wins); (suite, series) first.
SIZE_LABELS = {
    "insertion_sort": "n (elements sorted)",
    "forest_sort": "n (values sorted)",
    ("forest_fit", "rows"): "training rows",
    ("forest_fit", "features"): "features",
    ("forest_fit", "depth"): "max depth (levels)",
    "diffusion": "elements per step (B·C·H·W)",
    "attention": "sequence length N (tokens)",
    "attention fwd+bwd": "sequence length N (tokens)",
    "fused": "batch size B (images)",
    "amcl_motion": "particles",
    "amcl_sensor": "particles (60 beams each)",
    "amcl_beams": "beams per scan (10 000 particles)",
    "amcl_resample": "particles",
    "amcl_update": "particles",
    "amcl_bins": "particles",
    "spark_fit": "training rows",
    "spark_transform": "rows predicted",
}


def load_rows(raw: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The machine record and one row per measurement, with its median and quartiles (ms)."""
    data = json.loads(Path(raw).read_text())
    rows = []
    for r in data.get("rows", []):
        s = spread(r["samples_ms"])
        rows.append(dict(r, median_ms=s.median, q1_ms=s.q1, q3_ms=s.q3, iqr_ms=s.iqr, rounds=s.n,
                         unstable=s.unstable))
    return data.get("machine", {}), sorted(rows, key=row_order)


def row_order(r: dict[str, Any]) -> tuple[Any, ...]:
    size = r["size"] if r["size"] is not None else -math.inf
    return (r["suite"], r["series"], size, r["case"], ROLE_ORDER[r["role"]], r["impl"])


def size_label(r: dict[str, Any]) -> str:
    return r.get("size_label") or SIZE_LABELS.get((r["suite"], r["series"])) or SIZE_LABELS.get(r["suite"], "size")


def _ratio(ours: dict[str, Any], other: dict[str, Any]) -> Ratio:
    return paired_ratio(ours["samples_ms"], other["samples_ms"])


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Attach ``vs_reference`` and ``vs_peers`` (name -> Ratio) to each row, paired within its group."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for group in groups.values():
        ref = next((r for r in group if r["role"] == "reference"), None)
        peers = [r for r in group if r["role"] == "peer"]
        for r in group:
            r["vs_reference"] = _ratio(r, ref) if ref is not None and r is not ref else None
            r["vs_peers"] = {p["impl"]: _ratio(r, p) for p in peers if p is not r}


def stable(ours: dict[str, Any], other: dict[str, Any], ratio: Ratio) -> bool:
    return not (ours["unstable"] or other["unstable"] or ratio.unstable)


def pairs_of(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], Ratio]]:
    """(ours row, other row, ratio) for every ours row against the reference and each peer of its group."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    out = []
    for r in rows:
        if r["role"] != "ours":
            continue
        for o in groups[r["group"]]:
            if o["role"] == "reference" and r["vs_reference"] is not None:
                out.append((r, o, r["vs_reference"]))
            elif o["role"] == "peer":
                out.append((r, o, r["vs_peers"][o["impl"]]))
    return out


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per suite and (ours, other) pair: the geometric mean over the stable rows of the paired ratio."""
    cells: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, Any], Ratio]]] = defaultdict(list)
    devices: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        devices[r["suite"]].add(r["device"])
    for ours, other, ratio in pairs_of(rows):
        cells[(ours["suite"], ours["impl"], other["impl"])].append((ours, other, ratio))
    out = []
    for (suite, a, b), items in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                     ROLE_ORDER[kv[1][0][1]["role"]], kv[0][2])):
        kept = [(o["samples_ms"], x["samples_ms"]) for o, x, ratio in items if stable(o, x, ratio)]
        meds = [ratio.median for o, x, ratio in items if stable(o, x, ratio)]
        out.append(dict(suite=suite, device=", ".join(sorted(devices[suite])), ours=a, other=b,
                        role=items[0][1]["role"], rows=len(items), stable=len(kept),
                        ratio=geomean_ratio(kept) if kept else None,
                        low=min(meds) if meds else None, high=max(meds) if meds else None))
    return out


def crossovers(rows: list[dict[str, Any]]) -> list[str]:
    """Per suite/series with sizes and (ours, other) pair: where ours is faster, the same (interval
    includes 1) or slower, as runs of sizes; unstable sizes left out and counted."""
    series: dict[tuple[str, str, str, str], list[tuple[float, str]]] = defaultdict(list)
    dropped: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for ours, other, ratio in pairs_of(rows):
        if ours["size"] is None:
            continue
        key = (ours["suite"], ours["series"], ours["impl"], other["impl"])
        if stable(ours, other, ratio):
            series[key].append((ours["size"], ratio.verdict))
        else:
            dropped[key] += 1
    out = []
    for key in sorted(set(series) | set(dropped)):
        suite, ser, a, b = key
        points = sorted(series.get(key, []))
        if len({s for s, _ in points}) < 2:
            continue
        runs: list[list[Any]] = []
        for size, verdict in points:
            if runs and runs[-1][0] == verdict:
                runs[-1][2] = size
            else:
                runs.append([verdict, size, size])
        text = ", ".join(f"{v} at {_fmt_size(lo)}" if lo == hi else f"{v} {_fmt_size(lo)}..{_fmt_size(hi)}"
                         for v, lo, hi in runs)
        verdicts = {v for v, _, _ in runs}
        mark = "crossover: " if {"faster", "slower"} <= verdicts else ""
        note = f" ({dropped[key]} unstable sizes left out)" if dropped.get(key) else ""
        label = size_label(next(r for r in rows if r["suite"] == suite and r["series"] == ser))
        out.append(f"{suite} [{ser or '-'}] {a} vs {b}, by {label}: {mark}{text}{note}")
    return out


def _fmt_size(x: float) -> str:
    return f"{x:g}"


def _fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    if ms >= 1e-3:
        return f"{ms * 1e3:.2f} us"
    return f"{ms * 1e6:.0f} ns"


def fmt_x(x: float) -> str:
    return f"{x:.3g}x" if x < 100 else f"{x:.0f}x"


def fmt_ratio(r: Ratio | None) -> str:
    if r is None:
        return ""
    return f"{fmt_x(r.median)} [{fmt_x(r.lo)}-{fmt_x(r.hi)}]"


def summary_table(cells: list[dict[str, Any]]) -> str:
    lines = ["| suite | device | ours | vs | ratio | 95% interval | stable rows | range over rows |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        ratio, span = "unstable: not called", ""
        if c["ratio"] is not None:
            ratio = fmt_x(c["ratio"].median)
            span = f"{fmt_x(c['ratio'].lo)}-{fmt_x(c['ratio'].hi)}"
        rng = "" if c["low"] is None else f"{fmt_x(c['low'])}-{fmt_x(c['high'])}"
        lines.append(f"| {c['suite']} | {c['device']} | {c['ours']} | {c['other']} ({c['role']}) | {ratio} | {span} "
                     f"| {c['stable']}/{c['rows']} | {rng} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown sections, one per suite: a line per measurement in the stated order."""
    out = []
    for suite in sorted({r["suite"] for r in rows}):
        out += [f"### {suite}", "", "| case | impl | role | median | IQR | rounds | vs reference | vs peers | note |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["suite"] == suite):
            peers = ", ".join(f"{k} {fmt_ratio(v)}" for k, v in sorted(r["vs_peers"].items())) \
                if r["role"] == "ours" else ""
            notes = (["unstable timing"] if r["unstable"] else []) + \
                [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(r["extra"].items())]
            ratios = [r["vs_reference"], *r["vs_peers"].values()] if r["role"] == "ours" else []
            if any(x is not None and x.unstable for x in ratios):
                notes.append("unstable ratio")
            out.append(f"| {r['case']} | {r['impl']} | {r['role']} | {_fmt_ms(r['median_ms'])} | "
                       f"{_fmt_ms(r['iqr_ms'])} | {r['rounds']} | {fmt_ratio(r['vs_reference'])} | {peers} | "
                       f"{'; '.join(notes)} |")
        out.append("")
    return "\n".join(out)


def machine_line(info: dict[str, Any]) -> str:
    device = info.get("gpu") or f"CPU: {info.get('cpu')} ({info.get('cores')} cores)"
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "triton", "numba", "numpy", "sklearn",
                                                    "diffusers") if info.get(k))
    return "; ".join(p for p in (f"device: {device}", f"commit {info.get('commit')}", versions) if p)


HOW_TO_READ = (
    "Each ratio is the other implementation's time over ours, measured in the same rounds (round-robin, "
    "paired): above 1 ours is faster. [lo-hi] is the 95% bootstrap interval of the median ratio. "
    "Unstable: IQR above half the median, or an interval wider than a factor 2; those rows are left out of "
    "the summary and the crossovers. The summary is the geometric mean over a suite's stable rows; its "
    "interval resamples the rows as well as their rounds, so it spans the spread over sizes too.")


def write_report(raw: Path, out: Path) -> str:
    """Write report.md, report.json and the plots into ``out``; return the console summary."""
    info, rows = load_rows(raw)
    add_ratios(rows)
    cells = summary(rows)
    cross = crossovers(rows)
    from benchmarks.plots import plot

    pngs = plot(rows, out)
    unstable = sum(r["unstable"] for r in rows)
    head = ["# Benchmark report", "", machine_line(info), "", HOW_TO_READ, "", "## Summary", "",
            summary_table(cells), "", f"{len(rows)} measurements, {unstable} with an unstable timing."]
    text = "\n".join([*head, "", "## Crossovers", "", *[f"- {c}" for c in cross], "", "## Rows", "", table(rows),
                      "Plots: " + ", ".join(p.name for p in pngs)])
    (out / "report.md").write_text(text + "\n")
    dump(out / "report.json", {"machine": info, "summary": [_jsonable(c) for c in cells],
                               "rows": [_jsonable(r) for r in rows], "crossovers": cross})
    return "\n".join(head)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Ratio):
            return dict(median=v.median, lo=v.lo, hi=v.hi, rounds=v.n, unstable=v.unstable)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in d.items()}


def png_name(suite: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", suite) + ".png"
