"""The deployment's scenarios on the results page: their tables and their targets.

One function per scenario renders its section (markdown), and `scenario_targets` states
every target of issues 11, 12, 13 and 15 in the same terms as `report.Target`: measured
value, limit, met / NOT met / not measured (with the reason). Ratios are always between
rows of the same run, measured minutes apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .competitors import Competitor
from .data import MB
from .measure import median
from .random_access import ACCESS_COST_LIMIT, RandomAccessResult
from .report import CPU_HEADERS, Target, cpu_cells, markdown_table
from .scenario import Row
from .share import ROWS as SHARE_ROWS
from .share import ShareResult
from .streams import StreamsCase, baseline, seconds, speedup
from .verify_bench import VERIFY_TARGET, VerifyResult

__all__ = ["Scenarios", "render_scenarios", "scenario_targets", "startup_share_target", "timed_rows"]

SRUNS, SERIAL, PIGZ, ISAL = (r.name for r in SHARE_ROWS)
SHARE_TARGET = 4.0  # issue 11: many files at 0.5 ms ≥ 4× both serial pipelines
STARTUP_LIMIT = 0.10  # issue 15: start-up under 10 % of every timed row
VERSION_LIMIT_S = 0.15  # issue 21: `sruns-stream --version` at most this
VERSION_TEXT = f"#21 `sruns-stream --version` ≤ {VERSION_LIMIT_S} s (median, `python -m sruns_stream --version`)"
QUICK_LIMIT_S = 5.5 * 60  # "about 5 minutes"
FULL_LIMIT_S = 60 * 60


@dataclass
class Scenarios:
    """What the scenario sections measured (None / empty: not run, and why in ``skipped``)."""

    share: list[ShareResult] = field(default_factory=list)
    streams: list[Row[StreamsCase]] = field(default_factory=list)
    streams_cap: float = 20.0
    streams_data: str = ""
    streams_options: tuple[str, ...] = ()
    verify: VerifyResult | None = None
    random: RandomAccessResult | None = None
    access_cost: dict[str, tuple[int, int] | str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # section -> why it has no results


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _not(text: str, limit: float, why: str, at_most: bool = False) -> Target:
    return Target(text, None, limit, "", why, at_most)


# -- targets -------------------------------------------------------------------------------------


def _share_targets(sc: Scenarios) -> list[Target]:
    out = []
    many = [r for r in sc.share if r.dataset.startswith("many files") and r.latency_ms == 0.5]
    for other in (PIGZ, ISAL):
        text = f"#11 share, many files, 0.5 ms/op: sruns-stream ≥ {SHARE_TARGET:g}× {other}"
        if not many:
            out.append(_not(text, SHARE_TARGET, sc.skipped.get("share", "the share section was not run")))
            continue
        r = many[0]
        value = r.speedup(other)
        med = r.median_s
        out.append(Target(text, value, SHARE_TARGET,
                          f"{_f(value, '.2f')}× ({med.get(SRUNS, 0):.2f} s vs {med.get(other, 0):.2f} s, "
                          f"{r.files:,} files)") if value is not None else
                   _not(text, SHARE_TARGET, f"{other} has no samples"))
    return out


def _streams_targets(sc: Scenarios) -> list[Target]:
    out = []
    cap = sc.streams_cap
    one = baseline(sc.streams, cap)
    for n, limit in ((4, 3.0), (8, 5.0)):
        text = f"#12 upload streams, cap {cap:g} MB/s per connection: {n} streams ≥ {limit:g}× one"
        row = next((s for s in sc.streams if s.case == StreamsCase(n, cap)), None)
        if row is None or one is None:
            out.append(_not(text, limit, sc.skipped.get("streams", "the streams section was not run")))
            continue
        value = speedup(row, one)[0]
        out.append(Target(text, value, limit, f"{_f(value, '.2f')}× ({seconds(one):.1f} s → {seconds(row):.1f} s)"))
    text = "#12 upload streams, no cap: 4 streams no slower than one (≥ 1×)"
    free, free1 = (next((s for s in sc.streams if s.case == StreamsCase(n, None)), None) for n in (4, 1))
    if free is None or free1 is None:
        out.append(_not(text, 1.0, sc.skipped.get("streams", "the streams section was not run")))
    else:
        value = speedup(free, free1)[0]
        out.append(Target(text, value, 1.0, f"{_f(value, '.2f')}× ({seconds(free1):.2f} s → {seconds(free):.2f} s)"))
    return out


def _random_targets(sc: Scenarios) -> list[Target]:
    out = []
    r = sc.random
    picks = (("RunInfo.xml", "sruns-stream cat (RunInfo.xml)"), ("middle member", "sruns-stream cat (middle member)"),
             ("InterOp/", "sruns-stream restore --include (InterOp/)"))
    for label, row_name in picks:
        text = f"#13 random access, {label}: bytes on the wire ≤ compressed span + 16 MiB"
        if r is None or r.error:
            out.append(_not(text, 0, (r.error if r else None) or sc.skipped.get("random", "not run"), True))
            continue
        span = r.spans.get(label)
        row = next((x for x in r.rows if x.name == row_name), None)
        if span is None:
            out.append(_not(text, 0, f"the archive has no {label}", True))
        elif row is None or (wire := row.median_of("bytes_sent")) is None:
            out.append(_not(text, span.limit, (row.skipped if row else None) or "no samples", True))
        else:
            out.append(Target(text, wire / MB, span.limit / MB,
                              f"{wire / MB:,.2f} MB (`{row_name}`) vs limit {span.limit / MB:,.2f} MB",
                              at_most=True))
    return out


def _verify_targets(sc: Scenarios) -> list[Target]:
    v = sc.verify
    text = f"#13, #21 verify of a local MiSeq-style archive: N threads ≥ {VERIFY_TARGET:g}× one thread"
    text_gzip = "#21 verify of a local MiSeq-style archive: one thread ≥ `gzip -t`'s speed"
    if v is None or v.error:
        why = (v.error if v else None) or sc.skipped.get("verify", "not run")
        return [_not(text, VERIFY_TARGET, why), _not(text_gzip, 1.0, why)]
    if not v.has_threads_option:
        why = "this sruns-stream's verify has no --threads option (issue 13 not landed)"
        return [_not(text, VERIFY_TARGET, why), _not(text_gzip, 1.0, why)]
    value = v.speedup()
    med = v.median_s
    many = next((r for r in v.rows if r.name == v.many), None)
    share = many.median_of("main_share") if many else None
    out = [Target(text, value, VERIFY_TARGET,
                  f"{_f(value, '.2f')}× with {v.threads} threads ({med.get(v.one, 0):.2f} s → "
                  f"{med.get(v.many, 0):.2f} s; main thread {_f(share, '.0%')} of the CPU at {v.threads})")]
    over = v.over_gzip()
    gz = med.get("gzip -t")
    if over is None:
        out.append(_not(text_gzip, 1.0, "gzip -t was not run (not installed?)"))
    else:
        both = f"; {v.threads} threads {gz / med[v.many]:.2f}×" if v.many in med and gz else ""
        out.append(Target(text_gzip, over, 1.0, f"{over:.2f}× ({med[v.one]:.2f} s vs gzip -t {gz:.2f} s{both})"))
    return out


def _access_cost_targets(sc: Scenarios) -> list[Target]:
    out = []
    for label, got in sc.access_cost.items():
        text = f"#13 access points grow the {label} archive by ≤ {ACCESS_COST_LIMIT:.1%}"
        if isinstance(got, str):
            out.append(_not(text, ACCESS_COST_LIMIT * 100, got, True))
            continue
        with_points, without = got
        cost = (with_points - without) / without
        out.append(Target(text, cost * 100, ACCESS_COST_LIMIT * 100,
                          f"{cost:+.3%} ({with_points:,} vs {without:,} bytes)", at_most=True))
    if not out:
        out.append(_not("#13 access points grow the archive by ≤ 0.5 %", 0.5,
                        sc.skipped.get("random", "not run"), True))
    return out


def timed_rows(sc: Scenarios, main: dict[str, list[Row[Competitor]]]) -> list[tuple[str, float]]:
    """(name, median seconds) of every throughput row on the page: the page cache, the
    share, the upload streams, verify. Random access and resume are left out: a one-file
    fetch or a resumed tail is short by nature, and its start-up is part of what it costs."""
    rows = [(f"{r.case.name}, {label}", r.seconds) for label, rows in main.items() for r in rows
            if r.seconds]
    rows += [(f"share {r.latency_ms:g} ms {name}, {r.dataset.split(' (')[0]}", s)
             for r in sc.share for name, s in r.median_s.items()]
    rows += [(f"streams {s.name}", seconds(s)) for s in sc.streams if s.ok_samples]
    if sc.verify is not None:
        rows += [(f"verify: {name}", s) for name, s in sc.verify.median_s.items()]
    return rows


def startup_share_target(sc: Scenarios, main: dict[str, list[Row[Competitor]]], startup_s: float | None) -> Target:
    """The interpreter's start-up (``sruns-stream --version``: the largest any compared tool
    pays; tar and pigz start in milliseconds) over each timed row's median: issue 15 asks
    that it stay under 10 % of every one."""
    text = ("#15 start-up (`sruns-stream --version`) < 10 % of every timed row "
            "(page cache, share, streams, verify)")
    rows = timed_rows(sc, main)
    if startup_s is None or not rows:
        return _not(text, STARTUP_LIMIT * 100, "no start-up or no timed rows measured", True)
    shares = sorted(((startup_s / s, name) for name, s in rows if s), reverse=True)
    over = [x for x in shares if x[0] >= STARTUP_LIMIT]
    worst, where = shares[0]
    shown = (f"{startup_s:.2f} s; worst {worst:.0%} ({where}); {len(over)} of {len(shares)} rows at ≥ 10 %"
             if over else f"{startup_s:.2f} s; worst {worst:.0%} ({where}); every row under 10 %")
    return Target(text, worst * 100, STARTUP_LIMIT * 100, shown, at_most=True)


def scenario_targets(sc: Scenarios, main: dict[str, list[Row[Competitor]]], wall_s: float, quick: bool,
                     startup_s: float | None = None) -> list[Target]:
    limit = QUICK_LIMIT_S if quick else FULL_LIMIT_S
    mode = "quick mode ≤ ~5 min" if quick else "full mode ≤ 1 h"
    return [
        *_share_targets(sc),
        *_streams_targets(sc),
        *_random_targets(sc),
        *_verify_targets(sc),
        *_access_cost_targets(sc),
        startup_share_target(sc, main, startup_s),
        (Target(VERSION_TEXT, startup_s, VERSION_LIMIT_S, f"{startup_s:.3f} s", at_most=True)
         if startup_s is not None else _not(VERSION_TEXT, VERSION_LIMIT_S, "start-up not measured", True)),
        Target(f"#15 the suite's own run time: {mode}", wall_s / 60, limit / 60, f"{wall_s / 60:.1f} min",
               at_most=True),
    ]


# -- sections ---------------------------------------------------------------------------------


def _share_section(results: Sequence[ShareResult]) -> list[str]:
    out = ["## The share: sruns-stream vs serial readers at 0-2 ms per operation\n",
           ("Each run folder served by `benchmarks/sharesim` (FUSE passthrough, every lookup, getattr, open, "
           "read and readdir waits the latency; 128 requests served at once; attributes and names cached 1 s, "
           "file pages not), each archive written to local disk. Speed-up = the competitor's median seconds ÷ "
           "sruns-stream's. First byte: sruns-stream's median time to the first byte of its archive (start-up "
           "and the scan through the share). Serial share: sruns-stream's main thread's CPU ÷ its process's "
           "(its `--json`), and the cap 1/share that puts on any speed-up.\n")]
    for ds in dict.fromkeys(r.dataset for r in results):
        rows = [r for r in results if r.dataset == ds]
        out.append(f"### {ds}: {rows[0].files:,} files, {rows[0].raw_bytes / MB:,.0f} MB\n")
        names = [row.name for row in rows[0].rows]
        body = []
        for r in rows:
            med = r.median_s
            ours = r.row(SRUNS)
            body.append([f"{r.latency_ms:g} ms", *[_f(med.get(n), ".2f") for n in names],
                         _f(r.speedup(PIGZ), ".2f") + "×", _f(r.speedup(ISAL), ".2f") + "×",
                         _f(ours.first_byte_s if ours else None, ".2f"),
                         f"{((ours.peak_rss_kib if ours else None) or 0) / 1024:.0f}",
                         *(cpu_cells(ours)[2:] if ours else ["–", "–"])])
        head = ["latency/op", *[f"{n} s" for n in names], "× pigz", "× isal", "first byte s", "peak RSS MiB",
                "sruns-stream serial share", "cap 1/share"]
        out.append(markdown_table(head, body) + "\n")
    return out


def _streams_section(sc: Scenarios) -> list[str]:
    out = ["## Upload streams: `archive --streams N` to a loopback GCS server capped per connection\n",
           (f"{sc.streams_data}; options `{' '.join(sc.streams_options) or '(defaults)'}`. The loopback server "
           "(`loopback/gcs.py`) reads each connection's bodies at most the cap (a scaled-down stand-in "
           "for GCS's ~200 MiB/s per upload stream) and serves connections in parallel; `compose` joins the "
           "segments. Every run is checked: the object has the archive's size and crc32c, no part is left, no "
           "byte was sent twice. Speed-up = one stream's median seconds ÷ the row's at the same cap; paired = "
           "median of the per-repetition ratios. MB/s = archive MB ÷ seconds, start-up, compose and clean-up "
           "included.\n")]
    body = []
    for s in sc.streams:
        by_median, paired = speedup(s, baseline(sc.streams, s.case.cap))
        body.append([s.name, f"{seconds(s):.2f}", f"{(s.archive_bytes or 0) / MB / seconds(s):.0f}",
                     _f(by_median, ".2f") + "×", _f(paired, ".2f") + "×", f"{max(s.measured('streams_used')):.0f}",
                     f"{median(s.measured('cpu_s')):.1f}", *cpu_cells(s)[2:], f"{(s.peak_rss_kib or 0) / 1024:.0f}",
                     ", ".join(f"{x:.1f}" for x in s.all_seconds)])
    out.append(markdown_table(["row", "median s", "MB/s", "speed-up", "paired", "streams used", "CPU s",
                               *CPU_HEADERS[2:], "peak RSS MiB", "runs (s)"], body, "lrrrrrrrrrl") + "\n")
    out.append("Serial share: the main thread's CPU ÷ the process's (sruns-stream's `--json`): whether more "
               "streams multiply the main thread's work.\n")
    return out


def _verify_section(v: VerifyResult) -> list[str]:
    out = ["## Verify on all cores\n",
           (f"One local archive of {v.dataset} ({v.archive_bytes / MB:,.0f} MB, {v.raw_bytes / MB:,.0f} MB of tar), "
           "read from the page cache. `sruns-stream verify` checks the gzip CRC and length and every member "
           "against the manifest's crc32c; `gzip -t` only inflates and checks the CRC; `tar tzf` inflates and "
           "walks the headers. MB/s = tar MB ÷ seconds.\n")]
    if not v.has_threads_option:
        out.append("**This sruns-stream's `verify` has no `--threads` option yet**: only its default is "
                   "measured, and the N-thread target is not measured.\n")
    med = v.median_s
    one = med.get(v.one)
    body = [[row.name, f"{s:.2f}", f"{v.raw_bytes / MB / s:.0f}", _f(one / s if one else None, ".2f") + "×",
             f"{(row.peak_rss_kib or 0) / 1024:.0f}", *cpu_cells(row), ", ".join(f"{x:.2f}" for x in row.all_seconds)]
            for row in v.rows if (s := row.seconds) is not None]
    out.append(markdown_table(["command", "median s", "MB/s", f"× `{v.one}`", "peak RSS MiB", *CPU_HEADERS,
                               "runs (s)"], body, "lrrrr" + "r" * len(CPU_HEADERS) + "l") + "\n")
    out.append("CPU: sruns-stream's from its `--json` (serial thread = its main thread); gzip and tar's from a "
               "/proc poll (serial thread = the busiest one).\n")
    return out


def _random_section(r: RandomAccessResult) -> list[str]:
    out = ["## Random access: one file or folder from an archive in GCS\n",
           (f"{r.dataset}: archive {r.archive_bytes / MB:,.1f} MB "
           f"({'with' if r.indexed else 'without'} an index of access points), served by the loopback GCS "
           "server with ranged GETs; bytes on the wire = download bodies the server sent during the command "
           "(manifest and index included). Compressed span: the archive bytes holding the member's tar range, "
           "interpolated between access points; the target allows that + 16 MiB.\n")]
    out.append(markdown_table(
        ["what", "tar member", "files", "data MB", "compressed span MB", "limit MB"],
        [[s.label, f"`{s.member}`", str(s.files), f"{s.data_bytes / MB:,.3f}", f"{s.compressed / MB:,.3f}",
          f"{s.limit / MB:,.2f}"] for s in r.spans.values()], "llrrrr") + "\n")
    body = []
    for row in r.rows:
        if row.seconds is None:
            body.append([row.name, f"skipped: {row.skipped}", "", "", "", *[""] * len(CPU_HEADERS)])
            continue
        span = r.spans.get(row.case.label)
        wire = row.median_of("bytes_sent")
        ok = "–" if span is None or wire is None else ("yes" if wire <= span.limit else "**no**")
        body.append([row.name, f"{row.seconds:.2f}", f"{(wire or 0) / MB:,.2f}",
                     str(int(row.median_of("requests") or 0)), ok, *cpu_cells(row)])
    out.append(markdown_table(["command", "median s", "MB on the wire", "requests", "≤ span + 16 MiB", *CPU_HEADERS],
                              body, "lrrrl" + "r" * len(CPU_HEADERS)) + "\n")
    out.extend(f"- {n}" for n in r.notes)
    if r.notes:
        out.append("")
    return out


def _access_cost_section(costs: dict[str, tuple[int, int] | str]) -> list[str]:
    body = []
    for label, got in costs.items():
        if isinstance(got, str):
            body.append([label, got, "", ""])
        else:
            body.append([label, f"{got[0]:,}", f"{got[1]:,}", f"{(got[0] - got[1]) / got[1]:+.3%}"])
    return ["## What access points cost in archive size\n",
            ("`archive --dest null` at defaults (an access point every 8 MiB of tar) and with "
            "`--access-interval 0` (none); the bytes are deterministic, so one run each.\n"),
            markdown_table(["data set", "archive bytes, defaults", "no access points", "cost"], body) + "\n"]


def render_scenarios(sc: Scenarios, charts: dict[str, str]) -> str:
    out: list[str] = []
    if sc.share:
        out += _share_section(sc.share)
        if "latency" in charts:
            out.append(f"![speed-up vs latency]({charts['latency']})\n")
    if sc.streams:
        out += _streams_section(sc)
        if "streams" in charts:
            out.append(f"![speed-up vs upload streams]({charts['streams']})\n")
    if sc.verify is not None and sc.verify.median_s:
        out += _verify_section(sc.verify)
    if sc.random is not None and sc.random.rows:
        out += _random_section(sc.random)
    if sc.access_cost:
        out += _access_cost_section(sc.access_cost)
    for section, why in sc.skipped.items():
        out.append(f"**{section}: not measured.** {why}\n")
    return "\n".join(out)

