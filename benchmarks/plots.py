"""One PNG per suite: time per call over size (top) and ours' speedup over the others (bottom).

A column per series measured at two sizes or more; rows without a size, and series of one size,
go into a bar-chart column. Every implementation keeps its colour across the panels of a figure
(a speedup line takes the colour of the implementation it is measured against, its line style
says which of ours). Error bars: the quartiles of a timing, the 95% interval of a ratio; hollow
markers and hatched bars are unstable. The legend sits outside the axes, right of them.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.report import ROLE_ORDER, fmt_x, pairs_of, png_name, size_label, stable

STYLES = ["-", "--", ":", "-."]


def _compact(x: float) -> str:
    """Tick labels: 4096, 50k, 2M."""
    for unit, scale in (("M", 1e6), ("k", 1e4)):
        if abs(x) >= scale:
            return f"{x / (1e3 if unit == 'k' else scale):g}{unit}"
    return f"{x:g}"


def _tick_ms(ms: float) -> str:
    for unit, scale in (("s", 1e3), ("ms", 1.0), ("us", 1e-3), ("ns", 1e-6)):
        if ms >= scale * 0.999:
            return f"{ms / scale:.3g} {unit}"
    return f"{ms:.3g} ms"


def _time_axis(ax: Any, values: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    positive = [v for v in values if v > 0] or [1.0]
    lo, hi = min(positive), max(positive)
    if math.log10(hi / lo) < 1.5:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_ms(v)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(lo / 2, hi * 2)


def _ratio_axis(ax: Any, values: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = min([*values, 1.0]), max([*values, 1.0])
    span = math.log10(hi / lo)
    if span < 0.75:  # within ~5x of 1x: 1-2-5 ticks would label one or two values
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
    elif span < 1.5:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_x(v)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="k", lw=0.8)


def _size_axis(ax: Any, sizes: list[float], label: str) -> None:
    from matplotlib.ticker import FuncFormatter, NullLocator

    ax.set_xscale("log")
    ticks = sorted(set(sizes))
    ax.set_xticks(ticks if len(ticks) <= 6 else ticks[::2])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
    ax.set_xlabel(label)


def _err(mid: float, lo: float, hi: float) -> list[float]:
    return [max(mid - lo, 0.0), max(hi - mid, 0.0)]


def _lines(ax_t: Any, ax_s: Any | None, rows: list[dict[str, Any]], pairs: list[Any], colours: dict[str, Any],
           styles: dict[str, str]) -> None:
    for impl in sorted({r["impl"] for r in rows}, key=lambda i: list(colours).index(i)):
        pts = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["size"])
        role = pts[0]["role"]
        ax_t.plot([r["size"] for r in pts], [r["median_ms"] for r in pts], color=colours[impl],
                  ls="-" if role == "ours" else "--", label=f"{impl} ({role})")
        for r in pts:
            ax_t.errorbar([r["size"]], [r["median_ms"]], yerr=[[e] for e in _err(r["median_ms"], r["q1_ms"],
                                                                               r["q3_ms"])],
                          color=colours[impl], marker="o", capsize=3, mfc="none" if r["unstable"] else colours[impl])
    _time_axis(ax_t, [r["q1_ms"] for r in rows] + [r["q3_ms"] for r in rows])
    if ax_s is None:
        return
    by_pair: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for ours, other, ratio in pairs:
        by_pair[(ours["impl"], other["impl"])].append((ours, other, ratio))
    values = [1.0]
    for (a, b), items in sorted(by_pair.items(), key=lambda kv: (kv[0][0], list(colours).index(kv[0][1]))):
        items.sort(key=lambda it: it[0]["size"])
        ax_s.plot([o["size"] for o, _, _ in items], [x.median for _, _, x in items], color=colours[b], ls=styles[a],
                  label=f"{a} over {b}")
        for o, other, x in items:
            ax_s.errorbar([o["size"]], [x.median], yerr=[[e] for e in _err(x.median, x.lo, x.hi)], color=colours[b],
                          marker="o", capsize=3, mfc=colours[b] if stable(o, other, x) else "none")
            values += [x.lo, x.hi]
    _ratio_axis(ax_s, values)
    ax_s.set_ylabel("speedup of ours (x)")


def _bars(ax_t: Any, ax_s: Any | None, rows: list[dict[str, Any]], pairs: list[Any], colours: dict[str, Any],
          styles: dict[str, str]) -> None:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = [i for i in colours if any(r["impl"] == i for r in rows)]
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        for r in (r for r in rows if r["impl"] == impl):
            x = cases.index(r["case"]) + (k - (len(impls) - 1) / 2) * width
            ax_t.bar(x, r["median_ms"], width, color=colours[impl], hatch="//" if r["unstable"] else None,
                     label=f"{impl} ({r['role']})",
                     yerr=[[e] for e in _err(r["median_ms"], r["q1_ms"], r["q3_ms"])], capsize=3)
    _time_axis(ax_t, [r["q1_ms"] for r in rows] + [r["q3_ms"] for r in rows])
    labels = [textwrap.fill(c, 16) for c in cases]
    ax_t.set_xticks(range(len(cases)), labels if ax_s is None else [""] * len(cases), fontsize=7)
    if ax_s is None:
        return
    names = list(dict.fromkeys((o["impl"], x["impl"]) for o, x, _ in pairs))
    width = 0.8 / max(len(names), 1)
    values = [1.0]
    for k, (a, b) in enumerate(names):
        for o, other, ratio in (p for p in pairs if (p[0]["impl"], p[1]["impl"]) == (a, b)):
            x = cases.index(o["case"]) + (k - (len(names) - 1) / 2) * width
            ax_s.bar(x, ratio.median, width, color=colours[b], hatch=None if stable(o, other, ratio) else "//",
                     edgecolor="k", linestyle=styles[a], label=f"{a} over {b}",
                     yerr=[[e] for e in _err(ratio.median, ratio.lo, ratio.hi)], capsize=3)
            values += [ratio.lo, ratio.hi]
    _ratio_axis(ax_s, values)
    ax_s.set_xticks(range(len(cases)), labels, fontsize=7)
    ax_s.set_ylabel("speedup of ours (x)")


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write one PNG per suite into ``out``; return their paths (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return []
    written = []
    for suite in sorted({r["suite"] for r in rows}):
        srows = [r for r in rows if r["suite"] == suite]
        if all(r["series"] == r["impl"] for r in srows):  # a series per implementation: one panel shows them all
            srows = [dict(r, series="") for r in srows]
        pairs = pairs_of(srows)
        order = sorted({(ROLE_ORDER[r["role"]], r["impl"]) for r in srows})
        cmap = plt.get_cmap("tab10")
        colours = {impl: cmap(k % 10) for k, (_, impl) in enumerate(order)}
        styles = {impl: STYLES[k % len(STYLES)] for k, impl in enumerate(i for role, i in order if role == 0)}
        sizes: dict[str, set[float]] = defaultdict(set)
        for r in srows:
            if r["size"] is not None:
                sizes[r["series"]].add(r["size"])
        line_series = sorted(s for s, v in sizes.items() if len(v) >= 2)
        point_rows = [r for r in srows if r["series"] not in line_series]
        ncols = len(line_series) + bool(point_rows)
        nrows = 2 if pairs else 1
        n_cases = len({r["case"] for r in point_rows})
        width = [4.4] * len(line_series) + ([max(4.4, 1.1 * n_cases)] if point_rows else [])
        fig, axes = plt.subplots(nrows, ncols, figsize=(sum(width) + 0.6, 3.4 * nrows + 0.4), squeeze=False,
                                 sharex="col", gridspec_kw={"width_ratios": width})
        for j, ser in enumerate(line_series):
            group = [r for r in srows if r["series"] == ser]
            ax_s = axes[1][j] if pairs else None
            _lines(axes[0][j], ax_s, group, [p for p in pairs if p[0]["series"] == ser], colours, styles)
            axes[0][j].set_title(ser or suite, fontsize=10)
            axes[0][j].set_ylabel("median time per call")
            for ax in axes[:, j]:
                _size_axis(ax, list(sizes[ser]), size_label(group[0]) if ax is axes[-1][j] else "")
                ax.grid(True, which="major", alpha=0.3)
            if ax_s is not None and not ax_s.lines:
                ax_s.text(0.5, 0.5, "no reference or peer\nin this series", ha="center", va="center",
                          transform=ax_s.transAxes)
        if point_rows:
            ids = {id(r) for r in point_rows}
            ax_s = axes[1][-1] if pairs else None
            _bars(axes[0][-1], ax_s, point_rows, [p for p in pairs if id(p[0]) in ids], colours, styles)
            axes[0][-1].set_title("single measurements", fontsize=10)
            axes[0][-1].set_ylabel("median time per call")
            for ax in axes[:, -1]:
                ax.grid(True, axis="y", which="major", alpha=0.3)
        handles: dict[str, Any] = {f"{i} ({role})": Line2D([], [], color=colours[i], marker="o",
                                                            ls="-" if role == "ours" else "--")
                                   for i, role in ((i, r["role"]) for i in colours for r in srows if r["impl"] == i)}
        for a, b in dict.fromkeys((o["impl"], x["impl"]) for o, x, _ in pairs):
            handles[f"{a} over {b}"] = Line2D([], [], color=colours[b], ls=styles[a])
        handles["hollow / hatched: unstable"] = Line2D([], [], color="grey", marker="o", mfc="none", ls="")
        handles["error bars: quartiles (time), 95% interval (ratio)"] = Line2D([], [], color="grey", ls="")
        fig.suptitle(f"{suite} ({', '.join(sorted({r['device'] for r in srows}))})")
        fig.tight_layout()
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   frameon=False)
        path = out / png_name(suite)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
