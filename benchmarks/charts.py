"""The scenario charts: what a person looks at before reading the tables.

- ``headline``: throughput per scenario, sruns-stream beside the competitors that scenario
  compares it with (page cache, the share at 0.5 ms, capped upload streams, verify), and
  the bytes a one-file fetch costs on the wire (log scale);
- ``latency``: sruns-stream's speed-up over each serial pipeline against the share's
  latency per operation, for the many-files and the large-files runs;
- ``streams``: speed-up against the number of upload streams, under the cap and without.

`report.write_charts` draws the main table's throughput and the thread scaling; this
module draws the rest. Every chart is optional: without data it is not drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .competitors import Competitor
from .data import MB
from .scenario import Row
from .scenario_report import ISAL, PIGZ, SHARE_TARGET, SRUNS, Scenarios
from .streams import baseline, seconds, speedup

__all__ = ["write_scenario_charts"]

OURS, OTHERS = "#d62728", "#7f7f7f"


def _bars(ax: Any, title: str, labels: Sequence[str], values: Sequence[float], unit: str, log: bool = False) -> None:
    colors = [OURS if label.startswith("sruns-stream") else OTHERS for label in labels]
    bars = ax.barh(list(labels)[::-1], list(values)[::-1], color=colors[::-1])
    ax.bar_label(bars, labels=[f"{v:,.3g}" for v in list(values)[::-1]], padding=3, fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(unit, fontsize=7)
    ax.tick_params(labelsize=7)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, max(values) * 8)
    else:
        ax.set_xlim(0, max(values) * 1.25)


_Panel = tuple[str, list[str], list[float], str, bool]  # title, names, values, axis label, log scale


def _panels(sc: Scenarios, main: dict[str, list[Row[Competitor]]]) -> list[_Panel]:
    panels = []
    for label, rows in main.items():
        picked = [r for r in rows if r.mb_per_s and (r.case.dest == "local")]
        if picked:
            panels.append((f"page cache: {label}", [r.case.name for r in picked],
                           [r.mb_per_s or 0.0 for r in picked], "MB/s (median)", False))
    for r in sc.share:
        if r.latency_ms == 0.5:
            med = r.median_s
            names = [n for n in (SRUNS, PIGZ, ISAL) if n in med]
            panels.append((f"share 0.5 ms/op: {r.dataset}", names, [r.raw_bytes / MB / med[n] for n in names],
                           "MB/s (median)", False))
    capped = [s for s in sc.streams if s.case.cap == sc.streams_cap]
    if capped:
        panels.append((f"upload streams, cap {sc.streams_cap:g} MB/s each",
                       [f"sruns-stream --streams {s.case.streams}" for s in capped],
                       [(s.archive_bytes or 0) / MB / seconds(s) for s in capped], "archive MB/s (median)", False))
    v = sc.verify
    if v is not None and v.median_s:
        panels.append((f"verify: {v.dataset}", list(v.median_s),
                       [v.raw_bytes / MB / s for s in v.median_s.values()], "MB/s of tar (median)", False))
    ra = sc.random
    if ra is not None:
        fetched = [x for x in ra.rows if x.median_of("bytes_sent") and x.case.label in ("RunInfo.xml", "")]
        if fetched:
            panels.append((f"RunInfo.xml from a {ra.archive_bytes / MB:,.0f} MB archive in GCS",
                           [x.name.replace(" (RunInfo.xml)", "") for x in fetched],
                           [(x.median_of("bytes_sent") or 1) / MB for x in fetched], "MB on the wire (log)", True))
    return panels


def _headline(sc: Scenarios, main: dict[str, list[Row[Competitor]]], path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt

    panels = _panels(sc, main)
    if not panels:
        return False
    cols = 2
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 2.3 * nrows + 0.6), squeeze=False)
    # strict=False: the grid has a spare cell when the panel count is odd (turned off below).
    for ax, (name, labels, values, unit, log) in zip(axes.flat, panels, strict=False):
        _bars(ax, name, labels, values, unit, log)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title}: sruns-stream (red) against the alternatives (grey)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _finish_line_chart(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a zero-based y axis, grid and legend, then the file: what both speed-up charts share."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(sc: Scenarios, path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt

    if not sc.share:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for ds in dict.fromkeys(r.dataset for r in sc.share):
        rows = sorted((r for r in sc.share if r.dataset == ds), key=lambda r: r.latency_ms)
        for other, style in ((PIGZ, "-o"), (ISAL, "--s")):
            pts = [(r.latency_ms, x) for r in rows if (x := r.speedup(other)) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{ds.split(' (')[0]}: × {other}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(SHARE_TARGET, color=OURS, linewidth=0.8, linestyle=":", label=f"target at 0.5 ms: {SHARE_TARGET:g}×")
    _finish_line_chart(fig, ax, path, "share latency per operation (ms)", "sruns-stream's speed-up (their s ÷ its s)",
                       f"Speed-up vs share latency: {title}")
    return True


def _streams(sc: Scenarios, path: Path, title: str) -> bool:
    import matplotlib.pyplot as plt

    if not sc.streams:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for cap in dict.fromkeys(s.case.cap for s in sc.streams):
        rows = sorted((s for s in sc.streams if s.case.cap == cap), key=lambda s: s.case.streams)
        base = baseline(sc.streams, cap)
        pts = [(s.case.streams, x) for s in rows if (x := speedup(s, base)[0]) is not None]
        label = f"cap {cap:g} MB/s per connection" if cap else "no cap (the machine is the limit)"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=label)
    most = max(s.case.streams for s in sc.streams)
    ax.plot([1, most], [1, most], ":", color="grey", label="ideal (N×)")
    ax.scatter([4, 8], [3, 5], marker="_", s=400, color=OURS, label="targets (4: 3×, 8: 5×)")
    _finish_line_chart(fig, ax, path, "upload streams", "speed-up over one stream",
                       f"Speed-up vs upload streams: {title}")
    return True


def write_scenario_charts(sc: Scenarios, main: dict[str, list[Row[Competitor]]], directory: Path, stem: str,
                          title: str) -> tuple[dict[str, str], list[str]]:
    """The charts drawn (kind -> file name beside the page) and notes on what failed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return {}, ["scenario charts not drawn: matplotlib is not installed (pip install -e '.[bench]')"]
    drawn = {}
    for kind in ("headline", "latency", "streams"):
        name = f"{stem}-{kind}.png"
        path = directory / name
        done = (_headline(sc, main, path, title) if kind == "headline" else
                _latency(sc, path, title) if kind == "latency" else _streams(sc, path, title))
        if done:
            drawn[kind] = name
    return drawn, []
