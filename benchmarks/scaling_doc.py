"""``python -m benchmarks.scaling_doc PAGE.json > docs/scaling.md``: the scaling page from a
results page's JSON.

docs/scaling.md is arithmetic on measured numbers: CPU per byte and the main thread's
share (net of the fixed cost) of the page-cache table's reference rows, put through
Amdahl's law for larger VMs, several runs at once and upload streams. This module does
that arithmetic so that the page can be redone from any run of ``python -m benchmarks``
(the quick mode suffices: it has the page-cache rows, the fixed cost, the thread scaling and
the streams); the prose and the assumptions are in ``scaling_template.md`` beside it, with
``@NAME@`` where a number goes. Every placeholder must be filled, or it fails.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .competitors import BEFORE, REFERENCE
from .data import MB
from .report import CEILING

__all__ = ["amdahl", "main", "render"]

TEMPLATE = Path(__file__).with_name("scaling_template.md")
STREAM_MB_S = 210  # one GCS upload stream, ~200 MiB/s [A]
SHARE_MB_S = 1100  # NFS over 10 GbE [A]
NAMES = {
    "NovaSeq": "NovaSeq-style",
    "many small files": "many small files",
    "MiSeq (many files)": "MiSeq-style",
}
# (cores, runs at once, streams per run) of the VM table.
VMS = [(2, 1, 1), (16, 1, 4), (16, 4, 4), (32, 4, 4), (32, 8, 4), (64, 8, 4), (64, 16, 4)]
FACILITIES = [("2 NovaSeq X + 4 MiSeq", 2, 4), ("6 NovaSeq X (25B) + 6 MiSeq", 6, 6),
              ("12 NovaSeq X + 10 MiSeq", 12, 10)]
NOVASEQ_X_MB_S, MISEQ_MB_S = 64, 0.2  # sustained rate at full use (section 1 of the page)


def amdahl(share: float, cores: float) -> float:
    """The most ``cores`` speed a run up over one core when ``share`` of its work is serial."""
    return 1 / (share + (1 - share) / cores)


def _median(row: dict[str, Any], key: str) -> float:
    values = [v for v, e in zip(row["measures"].get(key, []), row["errors"], strict=False)
              if v is not None and e is None]
    if not values:
        raise ValueError(f"{row['name']} has no {key}")
    return float(statistics.median(values))


def _row(page: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for row in page["rows"].get(section, []):
        if row["name"] == name:
            return dict(row)
    raise ValueError(f"the page has no row {name!r} in {section!r}")


def _cells(md: str, name: str) -> list[str]:
    """The cells of the markdown table row that starts with ``name``."""
    for line in md.splitlines():
        if line.startswith(f"| {name} "):
            return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
    raise ValueError(f"the page has no table row {name!r}")


def render(page: dict[str, Any], md: str, stem: str, template: str) -> str:
    raw = {d["label"]: d["raw_bytes"] for d in page["datasets"]}
    files = {d["label"]: d["files"] for d in page["datasets"]}
    fixed = page["rows"]["fixed cost"][0]
    fixed_proc, fixed_main = _median(fixed, "proc_cpu_s"), _median(fixed, "main_cpu_s")
    v: dict[str, str] = {"PAGE": stem, "FIXED_PROC": f"{fixed_proc:.2f}", "FIXED_MAIN": f"{fixed_main:.2f}"}
    net: dict[str, tuple[float, float, float, float]] = {}  # share, MB per CPU s, µs main, µs all
    table2, table3, ceilings, ceiling_shares = [], [], [], []
    for label, name in NAMES.items():
        ref = _row(page, f"main/{label}", REFERENCE)
        proc, main, share = (_median(ref, k) for k in ("proc_cpu_s", "main_cpu_s", "main_share"))
        s = max(main - fixed_main, 0.0) / (proc - fixed_proc)
        rate = raw[label] / MB / (proc - fixed_proc)
        net[label] = (s, rate, (main - fixed_main) / files[label] * 1e6, (proc - fixed_proc) / files[label] * 1e6)
        before = _row(page, f"main/{label}", BEFORE)
        described = f"{name} ({files[label]:,} files, {raw[label] / MB:,.0f} MB)"
        table2.append(f"| {described} | {rate:.0f} | {net[label][2]:.0f} | {s:.0%} ({share:.0%}) | {1 / s:.1f}× | "
                      f"{_median(before, 'main_share'):.0%} busiest thread, "
                      f"{raw[label] / MB / _median(before, 'proc_cpu_s'):.0f} MB per CPU s (with start-up) |")
        speeds = " | ".join(f"{rate * amdahl(s, n):,.0f} MB/s ({amdahl(s, n):.{2 if n == 2 else 1}f}×)"
                            for n in (2, 16, 32, 64))
        table3.append(f"| {name} | {s:.0%} | {rate:.0f} MB/s | {speeds} | {rate / s:,.0f} MB/s ({1 / s:.1f}×) |")
        ceiling = _row(page, f"main/{label}", CEILING)
        ceilings.append(f"{name} {raw[label] / MB / _median(ceiling, 'proc_cpu_s'):.0f} MB per CPU s")
        ceiling_shares.append(_median(ceiling, "main_share"))
    v["TABLE2"], v["TABLE3"] = "\n".join(table2), "\n".join(table3)
    v["CEILING2"] = ", ".join(ceilings)
    v["CEILING_SHARE"] = f"{min(ceiling_shares):.0%}–{max(ceiling_shares):.0%}"
    machine = page["machine"]
    v["LOAD"] = (f"{machine['load average at start'].split()[0]} at its start and "
                 f"{machine['load average at end'].split()[0]} at its end")
    s_nova, rate_nova, _, _ = net["NovaSeq"]
    s_small, rate_small, us_main_small, us_small = net["many small files"]
    ref, ceil = _row(page, "main/NovaSeq", REFERENCE), _row(page, "main/NovaSeq", CEILING)
    v["BUSY"] = (f"{_median(ref, 'proc_cpu_s'):.2f} CPU s in {ref['median_seconds']:.2f} s of wall clock "
                 f"({_median(ref, 'proc_cpu_s') / ref['median_seconds']:.1f} cores busy on average out of 2; the "
                 f"ceiling, C code without a GIL, {_median(ceil, 'proc_cpu_s') / ceil['median_seconds']:.1f})")
    scaled = []
    for label in ("NovaSeq", "many small files"):
        one = _row(page, f"scaling/{label}", "sruns-stream auto, 1 threads → null")
        two = _row(page, f"scaling/{label}", "sruns-stream auto, 2 threads → null")
        scaled.append(f"{one['median_seconds'] / two['median_seconds']:.2f}× on {NAMES[label]}")
    v["SCALE12"] = " and ".join(scaled)
    ceiling_nova = raw["NovaSeq"] / MB / _median(ceil, "proc_cpu_s")
    how = ("about as much CPU per byte as" if abs(rate_nova / ceiling_nova - 1) < 0.05 else
           "less CPU per byte than" if rate_nova > ceiling_nova else "more CPU per byte than")
    v["NOVA_VS_CEIL"] = f"{how} the ceiling ({rate_nova:.0f} MB per CPU s net, against {ceiling_nova:.0f})"
    v["NOVA_BEFORE"] = (f"{_median(_row(page, 'main/NovaSeq', BEFORE), 'main_share'):.0%} of it, start-up included, "
                        f"against {_median(ref, 'main_share'):.0%} now")
    v["NOVA_NET"] = f"{s_nova:.0%}"
    null = _row(page, "scaling/NovaSeq", "sruns-stream auto, 2 threads → null")
    null_share = (max(_median(null, "main_cpu_s") - fixed_main, 0.0) / (_median(null, "proc_cpu_s") - fixed_proc))
    v["NOVA_NULL"] = f"{null_share:.0%} at 2 threads"
    ceiling_small = raw["many small files"] / MB / _median(_row(page, "main/many small files", CEILING), "proc_cpu_s")
    v["SMALL_VS_CEIL"] = f"{ceiling_small / rate_small:.1f}"
    v["SMALL_US"], v["SMALL_MAIN_US"] = f"{us_small:.0f}", f"{us_main_small:.0f}"
    v["SMALL_NET"], v["SMALL_CAP"] = f"{s_small:.0%}", f"{1 / s_small:.1f}"
    v["RATIO32"] = f"{amdahl(s_nova, 32) / amdahl(s_nova, 2):.1f}×"
    v["RATIO32_SMALL"] = f"{amdahl(s_small, 32) / amdahl(s_small, 2):.1f}×"
    v["FOUR_BY_8"], v["ONE_BY_32"] = f"{4 * amdahl(s_nova, 8):.1f}", f"{amdahl(s_nova, 32):.1f}"
    v["R4"] = f"{4 * amdahl(s_nova, 8) / amdahl(s_nova, 2):.1f}"
    v["R8"] = f"{8 * amdahl(s_nova, 4) / amdahl(s_nova, 2):.1f}"
    v["HISEQ_CPU"], v["HISEQ_MAIN"] = f"{720_000 * us_small / 1e6:,.0f}", f"{720_000 * us_main_small / 1e6:,.0f}"
    streams = {r["name"]: float(statistics.median(r["seconds"])) for r in page["streams"]["rows"]}
    one, four, eight = (streams[f"cap 20 MB/s, {n} stream{'s' if n > 1 else ''}"] for n in (1, 4, 8))
    v["STREAMS"] = (f"4 streams {one / four:.2f}× and 8 streams {one / eight:.2f}× one stream on the page's "
                    "256 MiB run (start-up, planning and compose are a large part of a ~5 s row; the full mode's "
                    "1 GiB run measured 3.66× and 6.48× on 2026-11-27, `benchmarks/results/2026-11-27-2-core-vm.md`)")
    shares = [_cells(md, name)[7] for name in ("cap 20 MB/s, 1 stream ", "cap 20 MB/s, 4 streams",
                                              "cap 20 MB/s, 8 streams")]
    v["STREAMS_SHARE"] = f"s = {shares[0]} with one stream, {shares[1]} with 4, {shares[2]} with 8, start-up included"

    def cpu(label: str, cores: int, runs: int) -> float:
        s, rate, _, _ = net[label]
        return runs * rate * amdahl(s, cores / runs)

    table5 = ["| VM | runs at once | streams per run | CBCL (NovaSeq-style): CPU, Amdahl | upload | raw BCL "
              "(MiSeq-style): CPU, Amdahl | small files: CPU, Amdahl |", "|---|---:|---:|---:|---:|---:|---:|"]
    for cores, runs, per_run in VMS:
        table5.append(f"| {cores} cores | {runs} | {per_run} | {cpu('NovaSeq', cores, runs):,.0f} MB/s | "
                      f"{runs * per_run * STREAM_MB_S:,} MB/s | {cpu('MiSeq (many files)', cores, runs):,.0f} MB/s | "
                      f"{cpu('many small files', cores, runs):,.0f} MB/s |")
    v["TABLE5"] = "\n".join(table5)
    bound_at = []
    kinds = (("NovaSeq", "CBCL data"), ("MiSeq (many files)", "raw BCL"), ("many small files", "small files"))
    for label, what in kinds:
        first = next(((c, r) for c, r, k in VMS if min(cpu(label, c, r), r * k * STREAM_MB_S) > SHARE_MB_S), None)
        bound_at.append(f"{what} from {first[0]} cores with {first[1]} run{'s' if first[1] > 1 else ''} at once"
                        if first else f"{what} never in this table (the cores stay the limit)")
    v["SHAREBOUND"] = "**the share, not the cores, is the limit** for " + "; for ".join(bound_at)
    alone16 = min(rate_nova * amdahl(s_nova, 16), 4 * STREAM_MB_S)
    v["NOVA16"], v["NOVA16_H"] = f"{alone16:,.0f}", f"{11.1e6 / alone16 / 3600:.1f}"
    vm16 = min(cpu("NovaSeq", 16, 4), 4 * 4 * STREAM_MB_S, SHARE_MB_S)
    bound = " (share-bound at ~1.1 GB/s **[A]**)" if vm16 == SHARE_MB_S else ""
    table6 = []
    for facility, novaseqs, miseqs in FACILITIES:
        demand = 2 * (novaseqs * NOVASEQ_X_MB_S + miseqs * MISEQ_MB_S)
        more = (" and a faster share or a second one: one 10 GbE share gives ~1.1 GB/s **[A]**"
                if demand > SHARE_MB_S else "")
        table6.append(f"| {facility} | {demand:,.0f} MB/s | {vm16:,.0f} MB/s{bound} | "
                      f"**{math.ceil(demand / vm16)}**{more} |")
    v["TABLE6"] = "\n".join(table6)
    text = template
    for key, value in v.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z0-9_]+@", text)))
    if left:
        raise ValueError(f"the template has numbers this page cannot give: {', '.join(left)}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].endswith(".json"):
        print("usage: python -m benchmarks.scaling_doc benchmarks/results/PAGE.json > docs/scaling.md",
              file=sys.stderr)
        return 2
    page_json = Path(args[0])
    try:
        page = json.loads(page_json.read_text())
        text = render(page, page_json.with_suffix(".md").read_text(), page_json.stem, TEMPLATE.read_text())
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {page_json}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
