"""Medians, ratios, targets, the markdown report and the two charts.

Ratios: "sruns-stream ×" is how many times faster sruns-stream (auto, local, defaults)
is than a row: the row's median seconds ÷ the reference's median seconds on the same
data set. ≥ 1 means sruns-stream is faster. The targets (`evaluate_targets` below) are stated in
the same terms, and each is reported as met, NOT met, or not measured (with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .competitors import BEFORE, BEFORE_REV, REFERENCE, Competitor
from .data import MB, Dataset
from .measure import median, sruns_json
from .resume import ResumeResult
from .scenario import Row

__all__ = [
    "CPU_HEADERS",
    "Report",
    "Target",
    "cpu_cells",
    "evaluate_targets",
    "markdown_table",
    "fixed_cpu",
    "net_share",
    "ratio",
    "render_markdown",
    "scaling_by_threads",
    "slug",
    "write_charts",
]

CEILING = "tar | isal igzip_threaded -1 (ceiling)"
PIGZ = "tar | pigz -1"
MONITOR = "sruns-monitor's way (tarfile w:gz 9)"
RSS_LIMIT_MIB = 300
RSS_GROWTH_LIMIT = 1.10  # issue 21: peak RSS at defaults within 10 % of before it
# Issue 21: the main thread's share of the process's CPU, per data set label (at most).
SERIAL_SHARE_LIMITS = {"NovaSeq": 0.15, "many small files": 0.25}


def slug(text: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "run"


def ratio(row_seconds: float | None, reference_seconds: float | None) -> float | None:
    """How many times faster the reference is than the row (row time ÷ reference time)."""
    if not row_seconds or not reference_seconds:
        return None
    return row_seconds / reference_seconds


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column (l or r), default l then r."""
    align = align or "l" + "r" * (len(headers) - 1)
    # A "|" inside a cell ends it in GitHub's tables (even between backticks): escape it.
    cells = [[str(c).replace("|", "\\|") for c in headers]] + [
        ["" if c is None else str(c).replace("|", "\\|") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _mib(kib: int | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.0f}"


CPU_HEADERS = ["CPU s", "serial thread CPU s", "serial share", "cap 1/share"]


def cpu_cells(row: Row[Any]) -> list[str]:
    """Medians of the row's process CPU, its serial thread's CPU (sruns-stream: its main
    thread from ``--json``; a pipeline: its busiest thread, named, from the /proc poll),
    the serial share and the cap 1/share (`measure.cpu_measures`)."""
    proc, main, share = row.median_of("proc_cpu_s"), row.median_of("main_cpu_s"), row.median_of("main_share")
    if proc is None or main is None or share is None:
        return ["–"] * len(CPU_HEADERS)
    from_json = [s.measures.get("cpu_from_json") for s in row.ok_samples]
    if from_json and all(x == 1.0 for x in from_json):
        who = "main"
    else:
        names = [s.busiest_thread for s in row.ok_samples if s.busiest_thread]
        who = max(set(names), key=names.count) if names else "?"
    return [f"{proc:.2f}", f"{main:.2f} ({who})", f"{share:.0%}", _f(1 / share if share > 0 else None, ".1f") + "×"]


@dataclass
class Target:
    text: str
    value: float | None
    limit: float
    shown: str  # the measured value in words
    reason: str | None = None  # why it was not measured
    at_most: bool = False  # limit is an upper bound (RSS)

    @property
    def status(self) -> str:
        if self.value is None:
            return f"not measured: {self.reason}"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return "met" if ok else "**NOT met**"


@dataclass
class Report:
    label: str
    date: str
    command: str
    machine: dict[str, str]
    rss_method: str
    quick: bool
    reps: int
    datasets: list[Dataset]
    main: dict[str, list[Row[Competitor]]]  # data set label -> rows
    left_out: dict[str, list[str]]
    scaling: dict[str, list[Row[Competitor]]] = field(default_factory=dict)
    fixed: list[Row[Competitor]] = field(default_factory=list)  # sruns-stream on a tiny run (plan.TINY)
    blocks: list[Row[Competitor]] = field(default_factory=list)
    chunks: list[Row[Competitor]] = field(default_factory=list)
    resume: list[ResumeResult] = field(default_factory=list)
    resume_on: str = ""  # data set label
    notes: list[str] = field(default_factory=list)  # skips and problems, shown at the top
    charts: dict[str, str] = field(default_factory=dict)  # kind -> file name beside the report
    wall_seconds: float = 0.0


def _find(rows: Sequence[Row[Competitor]], name: str) -> Row[Competitor] | None:
    return next((r for r in rows if r.case.name == name), None)


def _ratio_target(report: Report, dataset: str, other: str, limit: float, text: str) -> Target:
    rows = report.main.get(dataset, [])
    ref, row = _find(rows, REFERENCE), _find(rows, other)
    for r, who in ((ref, REFERENCE), (row, other)):
        if r is None:
            quick = who in report.left_out.get(dataset, [])
            return Target(text, None, limit, "", f"{who} is not run in --quick (full mode only)" if quick
                          else f"{who} was not run on {dataset}")
        if not r.complete:
            return Target(text, None, limit, "", f"{who}: {r.skipped or 'no samples'}")
    assert ref is not None and row is not None
    value = ratio(row.seconds, ref.seconds)
    return Target(text, value, limit, f"{_f(value, '.2f')}× ({ref.seconds:.2f} s vs {row.seconds:.2f} s)")


def _serial_share_target(report: Report, label: str, limit: float) -> Target:
    text = (f"#21 page cache, {label}: sruns-stream's main thread ≤ {limit:.0%} of its process's CPU "
            f"(cap 1/share ≥ {1 / limit:.1f}×)")
    ref = _find(report.main.get(label, []), REFERENCE)
    if ref is None or not ref.complete:
        return Target(text, None, limit * 100, "", f"{REFERENCE} has no samples on {label}", at_most=True)
    share = ref.median_of("main_share")
    if share is None or not ref.measured("cpu_from_json"):
        return Target(text, None, limit * 100, "", "sruns-stream's --json has no \"cpu\"", at_most=True)
    before = _find(report.main.get(label, []), BEFORE)
    was = before.median_of("main_share") if before is not None and before.complete else None
    shown = (f"{share:.1%} (cap {1 / share:.1f}×; main {ref.median_of('main_cpu_s'):.2f} of "
             f"{ref.median_of('proc_cpu_s'):.2f} CPU s)" + (f"; before #21 {was:.0%} (busiest thread, polled)"
                                                              if was else ""))
    return Target(text, share * 100, limit * 100, shown, at_most=True)


def _rss_growth_target(report: Report) -> Target:
    """Peak RSS of the reference against the BEFORE row, on every data set; the worst ratio."""
    text = f"#21 peak RSS at defaults within {RSS_GROWTH_LIMIT - 1:.0%} of before #21 ({BEFORE_REV})"
    pairs = []
    for label, rows in report.main.items():
        ref, before = _find(rows, REFERENCE), _find(rows, BEFORE)
        if ref and before and ref.peak_rss_kib and before.peak_rss_kib:
            pairs.append((ref.peak_rss_kib / before.peak_rss_kib, label, ref.peak_rss_kib, before.peak_rss_kib))
    if not pairs:
        return Target(text, None, RSS_GROWTH_LIMIT, "", f"no data set has both {REFERENCE} and {BEFORE} "
                      "with an RSS sample", at_most=True)
    worst = max(pairs)
    shown = "; ".join(f"{lbl}: {now / 1024:.0f} vs {was / 1024:.0f} MiB ({r:.2f}×)" for r, lbl, now, was in pairs)
    return Target(text, worst[0], RSS_GROWTH_LIMIT, shown, at_most=True)


def evaluate_targets(report: Report, miseq: str = "MiSeq", novaseq: str = "NovaSeq",
                     many: str = "many small files") -> list[Target]:
    """The page-cache table's targets: issue 21's (the serial share, the ceiling ratios,
    RSS against the code before it), issue 11's (the many-files run ≥ 1.0× the ceiling, no
    regression on large files) and issue 5's, which the suite has always reported."""
    targets = [
        _serial_share_target(report, novaseq, SERIAL_SHARE_LIMITS["NovaSeq"]),
        _serial_share_target(report, many, SERIAL_SHARE_LIMITS["many small files"]),
        _ratio_target(report, many, CEILING, 1.0,
                      f"#21 page cache, {many}: sruns-stream (auto, local) ≥ 1.0× tar | isal igzip_threaded"),
        _ratio_target(report, novaseq, CEILING, 1.5,
                      f"#21 (and #5) page cache, {novaseq}: sruns-stream (auto, local) ≥ 1.5× the isal ceiling"),
        _ratio_target(report, miseq, CEILING, 0.95,
                      f"#21 page cache, {miseq}: sruns-stream (auto, local) ≥ 0.95× the isal ceiling"),
        _rss_growth_target(report),
        _ratio_target(report, miseq, CEILING, 1.0,
                      f"#11 page cache, {miseq}: sruns-stream (auto, local) ≥ 1.0× tar | isal igzip_threaded"),
        _ratio_target(report, novaseq, CEILING, 1.0,
                      f"#11 page cache, {novaseq} (large files): no regression, ≥ 1.0× the isal ceiling"),
        _ratio_target(report, miseq, PIGZ, 4.0, f"#5 {miseq}: sruns-stream (auto, local) ≥ 4× tar | pigz -1"),
        _ratio_target(report, miseq, MONITOR, 8.0, f"#5 {miseq}: sruns-stream (auto, local) ≥ 8× sruns-monitor's way"),
    ]
    # Peak RSS at defaults: every "sruns-stream auto → …" row of the main table.
    peaks = [(r.peak_rss_kib, f"{r.case.name}, {label}") for label, rows in report.main.items()
             for r in rows if r.case.tool == "sruns-stream" and r.case.setting == "auto"
             and r.peak_rss_kib is not None]
    text = f"#11 peak RSS ≤ {RSS_LIMIT_MIB} MiB at defaults (page-cache rows)"
    if peaks:
        kib, where = max(peaks)
        targets.append(Target(text, kib / 1024, RSS_LIMIT_MIB, f"{kib / 1024:.0f} MiB max ({where})", at_most=True))
    else:
        targets.append(Target(text, None, RSS_LIMIT_MIB, "", "no sruns-stream auto row has an RSS sample"))
    for ds in report.datasets:
        label = ds.spec.label
        rows = report.main.get(label, [])
        gs, null = _find(rows, "sruns-stream auto → loopback-gs"), _find(rows, "sruns-stream auto → null")
        text = f"#5 {label}: sruns-stream auto → loopback-gs ≥ 0.8× → null"
        if gs is None or null is None:
            quick = "sruns-stream auto → loopback-gs" in report.left_out.get(label, [])
            targets.append(Target(text, None, 0.8, "", "not run in --quick" if quick else "not run on this data set"))
        elif not (gs.complete and null.complete):
            why = gs.skipped if not gs.complete else null.skipped
            targets.append(Target(text, None, 0.8, "", why or "no samples"))
        else:
            value = ratio(null.seconds, gs.seconds)
            targets.append(Target(text, value, 0.8,
                                  f"{_f(value, '.2f')}× ({gs.seconds:.2f} s vs {null.seconds:.2f} s)"))
    return targets


def _data_set(rows: Sequence[Row[Competitor]]) -> str:
    ds = rows[0].dataset
    return ds.spec.label if ds is not None else "?"


def _short(reason: str | None, width: int = 70) -> str:
    reason = reason or "no samples"
    return reason if len(reason) <= width else reason[: width - 1] + "…"


def _own_mb_per_s(row: Row[Competitor]) -> float | None:
    """sruns-stream's own figure from --json (tar bytes ÷ its seconds, no interpreter start-up)."""
    values = [j["mb_per_s"] for j in (sruns_json(s.stdout) for s in row.ok_samples) if j and "mb_per_s" in j]
    return median(values) if values else None


def _main_table(report: Report, ds: Dataset) -> str:
    rows = report.main.get(ds.spec.label, [])
    ref = _find(rows, REFERENCE)
    ref_s = ref.seconds if ref and ref.complete else None
    body = []
    for r in rows:
        c = r.case
        if not r.ok_samples:
            body.append([c.name, c.dest, f"skipped: {_short(r.skipped)}", *[""] * (8 + len(CPU_HEADERS))])
            continue
        lo, hi = r.spread or (0.0, 0.0)
        name = c.name + (f" ⚠ {_short(r.skipped, 50)}" if r.skipped else "")
        arch = r.archive_bytes
        body.append([
            name, c.dest, f"{r.seconds:.2f} ({lo:.2f}–{hi:.2f})", f"{r.mb_per_s:.0f}",
            _f(_own_mb_per_s(r), ".0f"),
            (f"{r.first_byte_s:.2f} ({r.first_byte_s / r.seconds:.0%})" if r.first_byte_s and r.seconds else "–"),
            _f(arch / MB if arch else None, ",.1f"), _f(ds.raw_bytes / arch if arch else None, ".2f"),
            _mib(r.peak_rss_kib), _f(ratio(r.seconds, ref_s), ".2f"), *cpu_cells(r), str(len(r.ok_samples)),
        ])
    table = markdown_table(
        ["competitor", "dest", "median s (min–max)", "MB/s", "own MB/s", "first byte s (share)", "archive MB",
         "ratio", "peak RSS MiB", "sruns-stream ×", *CPU_HEADERS, "n"],
        body, "llrrrrrrrr" + "r" * len(CPU_HEADERS) + "r",
    )
    left_out = report.left_out.get(ds.spec.label, [])
    if left_out:
        where = ("Not run in --quick (full mode only): " if report.quick else
                 "Not run on this data set (minutes per run at this size; they run on the MiSeq run): ")
        table += "\n\n" + where + "; ".join(left_out) + "."
    return table


def _sweep_table(rows: Sequence[Row[Competitor]], first: str) -> str:
    body = []
    for r in rows:
        if not r.ok_samples:
            body.append([r.case.setting, f"skipped: {_short(r.skipped)}", *[""] * (4 + len(CPU_HEADERS))])
            continue
        lo, hi = r.spread or (0.0, 0.0)
        arch = r.archive_bytes
        body.append([r.case.setting, f"{r.seconds:.2f} ({lo:.2f}–{hi:.2f})", f"{r.mb_per_s:.0f}",
                     _f(arch / MB if arch else None, ",.1f"), _mib(r.peak_rss_kib), *cpu_cells(r),
                     str(len(r.ok_samples))])
    return markdown_table([first, "median s (min–max)", "MB/s", "archive MB", "peak RSS MiB", *CPU_HEADERS, "n"],
                          body)


def scaling_by_threads(rows: Sequence[Row[Competitor]]) -> dict[int, dict[str, Row[Competitor]]]:
    """threads -> tool ("sruns-stream", "tar | igzip_threaded") -> row, from the sweep's settings."""
    by_threads: dict[int, dict[str, Row[Competitor]]] = {}
    for r in rows:
        t = int("".join(ch for ch in r.case.setting if ch.isdigit()) or 0)
        by_threads.setdefault(t, {})[r.case.tool] = r
    return by_threads


def _per_cpu_s(r: Row[Competitor] | None) -> float | None:
    """MB of raw input per CPU second of the whole process (all its threads)."""
    cpu = r.median_of("proc_cpu_s") if r else None
    return r.dataset.raw_bytes / MB / cpu if r and r.dataset and cpu else None


def fixed_cpu(fixed: Sequence[Row[Competitor]]) -> tuple[float, float] | None:
    """Median (process, main thread) CPU seconds of sruns-stream's run on the tiny run."""
    row = fixed[0] if fixed else None
    proc, main = (row.median_of("proc_cpu_s"), row.median_of("main_cpu_s")) if row else (None, None)
    return (proc, main) if proc is not None and main is not None else None


def net_share(row: Row[Competitor] | None, fixed: tuple[float, float] | None) -> float | None:
    """The main thread's share of the CPU that grows with the run: (main − fixed main) ÷
    (process − fixed process); what 1/share converges to on a run many times larger."""
    if row is None or fixed is None:
        return None
    proc, main = row.median_of("proc_cpu_s"), row.median_of("main_cpu_s")
    if proc is None or main is None or proc - fixed[0] <= 0:
        return None
    return max(main - fixed[1], 0.0) / (proc - fixed[0])


def _scaling_table(rows: Sequence[Row[Competitor]], fixed: tuple[float, float] | None = None) -> str:
    by_threads = scaling_by_threads(rows)
    body = []
    first = by_threads.get(min(by_threads), {}) if by_threads else {}
    for t in sorted(by_threads):
        for tool, who in (("sruns-stream", "sruns-stream auto → null"), ("tar | igzip_threaded", "ceiling")):
            r, one = by_threads[t].get(tool), first.get(tool)
            if r is None or not r.ok_samples:
                body.append([str(t), who, f"skipped: {_short(r.skipped if r else 'not run')}",
                             *[""] * (5 + len(CPU_HEADERS))])
                continue
            speedup = (one.seconds / r.seconds) if (one and one.seconds and r.seconds) else None
            net = net_share(r, fixed) if tool == "sruns-stream" else None
            body.append([str(t), who, f"{r.seconds:.2f}", _f(r.mb_per_s, ".0f"), _f(speedup, ".2f") + "×",
                         _f(_per_cpu_s(r), ".0f"), *cpu_cells(r),
                         f"{net:.0%} ({1 / net:.1f}×)" if net else "–",
                         _mib(r.peak_rss_kib), str(len(r.ok_samples))])
    return markdown_table(["threads", "row", "median s", "MB/s", "speed-up vs fewest threads", "MB per CPU s",
                           *CPU_HEADERS, "share net of the fixed cost (cap)", "peak RSS MiB", "n"], body,
                          "ll" + "r" * (7 + len(CPU_HEADERS)))


def _resume_table(results: Sequence[ResumeResult]) -> str:
    body = []
    for r in results:
        a = r.typical
        if a is None:
            body.append([r.label, "", f"not measured: {_short(r.error)}", "", "", "", "", "", "", ""])
            continue
        s = a.summary
        raw = int(s.get("raw_bytes", 0)) or 1
        resumed_raw = int(s.get("resumed_from_raw", 0))
        full, again = r.full_median, r.resume_median
        share = again / full if again and full else None
        body.append([
            r.label + (f" ⚠ {_short(r.error, 50)}" if r.error else ""),
            _f(full, ".2f"),
            (f"{a.killed_after:.2f} s, {a.killed_at_archive / MB:,.1f} MB "
             f"({a.killed_at_archive / (r.full_archive_bytes or 1):.0%})"),
            (f"{resumed_raw / MB:,.1f} MB raw ({resumed_raw / raw:.0%}), "
             f"{int(s.get('resumed_from_archive', 0)) / MB:,.1f} MB archive"),
            f"{int(s.get('raw_processed', 0)) / MB:,.1f} MB of {raw / MB:,.1f}",
            f"{a.written_twice / MB:,.1f}",
            _f(int(s.get("archive_discarded", 0)) / MB, ",.1f"),
            f"{_f(again, '.2f')} ({_f(share, '.0%')} of full)",
            {True: "yes", False: "**NO**", None: "?"}[r.identical],
            str(len(r.attempts)),
        ])
    return markdown_table(
        ["setting", "full run s", "killed -9 at", "resumed from", "raw re-encoded", "archive MB written twice",
         "archive MB re-encoded, not re-sent", "resumed run s", "crc32c = full run", "n"],
        body, "lrllrrrrlr",
    )


def render_markdown(report: Report, targets: Sequence[Target], scenarios: str = "",
                    startup: Sequence[str] = ()) -> str:
    """The page: targets first, then the page-cache table, the scenarios (already rendered
    by `scenario_report`), start-up, the sweeps, resume, and how it was measured."""
    out: list[str] = []
    mode = "quick" if report.quick else "full"
    out.append(f"# sruns-stream benchmark: {report.label}\n")
    out.append(f"{report.date}, {mode} mode, medians of {report.reps} interleaved repetitions, "
               f"{report.wall_seconds / 60:.1f} min in all, one run of the suite.\n")
    out.append(f"Command: `{report.command}`\n")
    met = sum(1 for t in targets if t.status == "met")
    missed = sum(1 for t in targets if "NOT" in t.status)
    out.append(f"**{met} targets met, {missed} not met, {len(targets) - met - missed} not measured** "
               "(numbers: #5 archive speed, #11 the share, #12 upload streams, #13 random access and verify, "
               "#15 this suite).\n")
    if "headline" in report.charts:
        out.append(f"![throughput per scenario]({report.charts['headline']})\n")
    out.append("## Targets\n")
    out.append(markdown_table(["target", "measured", "status"],
                              [[t.text, t.shown or "–", t.status] for t in targets], "lll") + "\n")
    if report.notes:
        out.append("## Skipped or failed\n")
        out.extend(f"- {n}" for n in report.notes)
        out.append("")
    out.append("## Machine\n")
    out.append(markdown_table(["", ""], [[k, v] for k, v in report.machine.items()], "ll") + "\n")
    out.append("## Throughput from the page cache\n")
    out.append(
        "MB/s = the data set's file bytes (10^6) ÷ median wall seconds, start-up included. "
        "ratio = file bytes ÷ archive bytes. peak RSS = the largest over repetitions; for a pipeline "
        "the sum of its processes' peaks. sruns-stream × = this row's median time ÷ sruns-stream "
        "(auto, local)'s: how many times faster sruns-stream is. own MB/s = sruns-stream's own figure "
        "from `--json` (tar bytes ÷ its seconds from manifest to verified archive, without the ~0.3 s "
        "of interpreter start-up that the wall clock includes). first byte s (share): median seconds until "
        "the local output held its first byte (start-up and the scan), and its share of the median time. "
        "n = successful repetitions. CPU s = the process's (a pipeline's: all its processes') CPU seconds; "
        "serial thread = sruns-stream's main thread (exact, from its `--json` \"cpu\": getrusage and "
        "`thread_time`), or for any other command the busiest single thread of the pipeline (tar, a "
        "gzip writer's main loop; /proc/PID/task/*/stat of every process polled every 20 ms); serial "
        "share = its CPU ÷ the process's; cap 1/share = the most any number of cores could speed that "
        "command up over one core (Amdahl). Before #21: the same sruns-stream command from the commit "
        "before issue 21's code, interleaved with today's (its serial thread is polled: it has no "
        "\"cpu\" in its `--json`).\n"
    )
    for ds in report.datasets:
        out.append(f"### {ds.describe()}\n")
        out.append(_main_table(report, ds) + "\n")
    if "throughput" in report.charts:
        out.append(f"![throughput per competitor and data set]({report.charts['throughput']})\n")
    if scenarios:
        out.append(scenarios)
    if startup:
        out.append("## Start-up\n")
        out.extend(startup)
        out.append("")
    if report.scaling:
        out.append("## Thread scaling (sruns-stream auto → null; ceiling = tar | igzip_threaded -T N)\n")
        out.append(
            "`archive --threads N --dest null` and `tar | igzip_threaded -T N`, interleaved. MB per CPU s = the "
            "data set's MB ÷ the process's CPU seconds (all threads): the throughput one core buys. serial "
            "share = the main thread's CPU ÷ the process's (sruns-stream, from its `--json`), or the busiest "
            "thread's ÷ the pipeline's (the ceiling: /proc poll); whatever the core count, the speed-up over "
            "one core is at most cap = 1/share (Amdahl). See docs/scaling.md for what it implies on larger VMs.\n")
        fixed = fixed_cpu(report.fixed)
        if fixed is not None and report.fixed[0].dataset is not None:
            out.append(
                f"The fixed cost, `archive --dest null` at defaults on {report.fixed[0].dataset.describe()}: "
                f"median {fixed[0]:.2f} CPU s, {fixed[1]:.2f} of them on the main thread (start-up, imports, "
                "journal, pool), paid once per run whatever its size. share net of the fixed cost = (main − "
                f"{fixed[1]:.2f}) ÷ (process − {fixed[0]:.2f}): the share on a run many times larger, and its "
                "cap.\n")
        for label, rows in report.scaling.items():
            out.append(f"### {label}\n")
            out.append(_scaling_table(rows, fixed) + "\n")
        if "scaling" in report.charts:
            out.append(f"![thread scaling]({report.charts['scaling']})\n")
    if report.blocks:
        out.append(f"## Block size (sruns-stream auto → null, {_data_set(report.blocks)})\n")
        out.append(_sweep_table(report.blocks, "setting") + "\n")
    if report.chunks:
        out.append(f"## Upload chunk size (sruns-stream auto → loopback-gs, {_data_set(report.chunks)})\n")
        out.append(_sweep_table(report.chunks, "setting") + "\n")
    if report.resume:
        out.append(f"## Resume cost ({report.resume_on}: kill -9 at half the archive, "
                   "then the same command again)\n")
        out.append(_resume_table(report.resume) + "\n")
        out.append(
            "killed -9 at: when the destination held half the archive (local: the `.part` file's size; "
            "loopback-gs: bytes the server received, which grow a whole chunk at a time). resumed from: "
            "`resumed_from_raw` / `resumed_from_archive` of the second run's `--json`. raw re-encoded: its "
            "`raw_processed`. written twice: archive bytes the first attempt had written beyond where the "
            "second resumed. re-encoded, not re-sent: `archive_discarded` (compressed again from the last "
            "checkpoint, only to reach the destination's durable offset). full run s and resumed run s are "
            "medians over the repetitions; each repetition runs the full run from zero and the "
            "kill-and-resume back to back with the same options; the byte columns show the repetition "
            "whose resumed run took the median time.\n"
        )
    out.append("## How this was measured\n")
    out.extend([
        ("- Every competitor runs as its own child process (pipelines under `bash -o pipefail`), on the same "
         "cached run folder, read once beforehand so that every one of them reads from the page cache."),
        "- Repetitions are interleaved (A B C … A B C …) and medians reported, because the machine is shared.",
        ("- Local outputs all go to one temporary directory on one filesystem and are fsync'ed inside the "
         "timed region (sruns-stream also syncs its own); the directory is deleted at the end."),
        f"- Peak RSS: {report.rss_method}.",
        ("- loopback-gs: a GCS JSON-API resumable-upload server on 127.0.0.1 in the benchmark's own process "
         "(`loopback/gcs.py`), which discards the bytes after a crc32c. It measures the client "
         "side of an upload, not a network; the server's own work (HTTP, crc32c of every byte, in Python) "
         "runs on the same cores, so these rows overstate what an upload to GCS costs the client."),
        ("- sruns-stream runs as `python -m sruns_stream archive RUN --dest … --journal <fresh> --json`, "
         "at its defaults unless the row says otherwise (threads = all cores, auto, level 1, block 1M, "
         "chunk 16M)."),
    ])
    return "\n".join(out) + "\n"


def write_charts(report: Report, directory: Path, stem: str) -> list[str]:
    """Draw the throughput bar chart and the scaling line chart; returns notes on failure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["charts not drawn: matplotlib is not installed (pip install -e '.[bench]')"]

    datasets = [d for d in report.datasets if any(r.ok_samples for r in report.main.get(d.spec.label, []))]
    if datasets:
        counts = [len([r for r in report.main[d.spec.label] if r.ok_samples]) for d in datasets]
        fig, axes = plt.subplots(len(datasets), 1, figsize=(9, 1.2 + 0.42 * sum(counts) + 0.6 * len(datasets)),
                                 squeeze=False, gridspec_kw={"height_ratios": [c + 1.5 for c in counts]})
        for ax, ds in zip(axes[:, 0], datasets, strict=True):
            rows = [r for r in report.main[ds.spec.label] if r.ok_samples]
            names = [r.case.name for r in rows][::-1]
            speeds = [r.mb_per_s or 0.0 for r in rows][::-1]
            colors = ["#d62728" if n == REFERENCE else ("#1f77b4" if n.startswith("sruns-stream") else "#7f7f7f")
                      for n in names]
            bars = ax.barh(names, speeds, color=colors)
            ax.bar_label(bars, labels=[f"{s:.0f}" for s in speeds], padding=3, fontsize=8)
            ax.set_title(ds.describe(), fontsize=9)
            ax.set_xlabel("MB/s of raw input (median)", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.set_xlim(0, max(speeds) * 1.15 if speeds else 1)
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color="#d62728", label="sruns-stream auto → local (reference)"),
                            Patch(color="#1f77b4", label="sruns-stream, other settings"),
                            Patch(color="#7f7f7f", label="other tools")],
                   loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.suptitle(f"sruns-stream benchmark: {report.label}", fontsize=10)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        name = f"{stem}-throughput.png"
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        report.charts["throughput"] = name
    if report.scaling:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, rows in report.scaling.items():
            for tool, style in (("sruns-stream", "-o"), ("tar | igzip_threaded", "--s")):
                pts = sorted(
                    (int("".join(ch for ch in r.case.setting if ch.isdigit())), r.mb_per_s)
                    for r in rows if r.case.tool == tool and r.mb_per_s
                )
                if pts:
                    who = "sruns-stream auto → null" if tool == "sruns-stream" else "ceiling (tar | igzip_threaded)"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{who}, {label}")
        ax.set_xlabel("threads")
        ax.set_ylabel("MB/s of raw input (median)")
        ax.set_title(f"Thread scaling: {report.label}", fontsize=10)
        ax.set_ylim(bottom=0)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"{stem}-scaling.png"
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        report.charts["scaling"] = name
    return []
