"""What the gs:// destination costs: `archive` to a loopback GCS server vs to `--dest null`.

    python -m benchmarks.bench_gcs [--size 500M] [--reps 3] [--chunks 8M,16M,64M]

Same data (a MiSeq-style run from scripts/make_fake_run.py, cached under
benchmarks/.cache/), same process run, repetitions interleaved with the order rotated
each round, so drift on this shared machine hits every row alike. Time is wall clock
around the whole `sruns-stream archive` process, start-up included (the gs:// run also
pays for importing google-cloud-storage); MB/s are raw input MB (SI) per second.

The loopback server (loopback/gcs.py) runs in this process and shares the
cores with the archive, so what it spends receiving bytes and computing their crc32c
is charged to the gs:// rows: a pessimistic setting. It computes no MD5 here (GCS
computes it on its own machines; the sink never asks for it).

A gs:// run also pays a fixed cost whatever the run's size: importing
google-cloud-storage (about 0.4 CPU-seconds here) and four small requests (session,
manifest, metadata, bucket lookup). On 500 MB it is a visible share; on a real run of
tens of GB it is not.

CPU seconds are reported beside wall time: on a busy machine they drift far less, and
the archive's CPU to gs:// minus its CPU to null is what the upload itself costs.

Each gs:// run is checked, not just timed: the server must have received exactly the
archive's bytes (no chunk sent twice) and report the crc32c the archive has.
Target: median throughput to gs:// ≥ 0.8 × median throughput to null. The table also
gives the paired ratio (median of per-round ratios), which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loopback.gcs import LoopbackGcsServer

from . import scenario
from .data import MB, REPO, DatasetSpec, parse_size, prepare, warm_page_cache
from .measure import Command, RssProbe, Sample, median, run_command
from .scenario import Row

__all__ = ["main"]

BUCKET = "bench-gcs"
TARGET = 0.8


@dataclass(frozen=True)
class GcsCase:
    name: str
    dest: str  # "null" or "gs"
    chunk: int | None


def _run_once(row: Row[GcsCase], run: Path, server: LoopbackGcsServer, work: Path, rep: int,
              extra: list[str], probe: RssProbe) -> Sample:
    case = row.case
    scratch = work / f"{case.name.replace(' ', '_')}-{rep}"
    scratch.mkdir(parents=True)
    argv = [sys.executable, "-m", "sruns_stream", "archive", "--not-finished",
            str(run), "--journal", str(scratch / "journal.db"),
            "--json", *extra]
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if case.dest == "gs":
        assert case.chunk is not None
        argv += ["--dest", f"gs://{BUCKET}/{scratch.name}", "--chunk-size", str(case.chunk)]
        env.update(STORAGE_EMULATOR_HOST=server.url, GOOGLE_CLOUD_PROJECT="bench")
    else:
        argv += ["--dest", "null"]
    before = server.bytes_received
    sample = run_command(Command((tuple(argv),), env=env), scratch / "m", probe)
    if not sample.ok:
        raise SystemExit(f"{case.name}: {sample.error}")
    result = json.loads(sample.stdout)
    if case.dest == "gs":
        sent = server.bytes_received - before
        if sent != result["archive_bytes"]:
            raise SystemExit(
                f"{case.name}: the server received {sent} bytes for a {result['archive_bytes']}-byte archive"
            )
        blob = f"{scratch.name}/{run.name}/{run.name}.tar.gz"
        obj = server.get_object(BUCKET, blob)
        if obj is None or f"{int.from_bytes(base64.b64decode(obj['crc32c']), 'big'):08x}" != result["crc32c"]:
            raise SystemExit(f"{case.name}: the server's object does not carry the archive's crc32c")
    return sample


def _median(row: Row[GcsCase]) -> float:
    value = row.seconds
    assert value is not None  # a failed run ends the benchmark (SystemExit)
    return value


def _paired(row: Row[GcsCase], null: Row[GcsCase]) -> float:
    """Median over repetitions of null's time / this row's time in the same round: the
    two ran seconds apart, so a slow spell on a shared machine cancels out."""
    return median([n / s for n, s in zip(null.all_seconds, row.all_seconds, strict=True)])


def _table(rows: list[Row[GcsCase]], raw_bytes: int, null: Row[GcsCase]) -> str:
    lines = [
        (
            "| destination | chunk | median s | MB/s | × null | × null, paired "
            "| CPU s (archive) | CPU s (server) | peak RSS MiB | runs (s) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratio = _median(null) / _median(row)
        chunk = row.case.chunk
        lines.append(
            f"| {row.name} | {f'{chunk >> 20} MiB' if chunk else '–'} | {_median(row):.2f} | "
            f"{raw_bytes / MB / _median(row):.0f} | {ratio:.2f} | {_paired(row, null):.2f} | "
            f"{row.median_of('cpu_s') or 0:.2f} | "
            f"{row.median_of('server_cpu_s') or 0:.2f} | {(row.peak_rss_kib or 0) / 1024:.0f} | "
            f"{', '.join(f'{s:.2f}' for s in row.all_seconds)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gcs", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=500 * MB, help="raw size of the generated run (default 500 MB)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3, at least 3 for the method)")
    p.add_argument("--chunks", default="8M,16M,64M", help="chunk sizes to compare (default 8M,16M,64M)")
    p.add_argument("--threads", type=int, help="compression threads (default: all cores)")
    args = p.parse_args(argv)
    chunks = [parse_size(c) for c in args.chunks.split(",") if c.strip()]

    ds = prepare(DatasetSpec("MiSeq", "miseq", args.size), log=lambda m: print(m, file=sys.stderr))
    print(f"data: {ds.describe()}", file=sys.stderr)
    null: Row[GcsCase] = Row(GcsCase("null", "null", None), ds)
    rows = [null] + [Row(GcsCase(f"gs:// loopback {c >> 20}M", "gs", c), ds) for c in chunks]
    extra = ["--threads", str(args.threads)] if args.threads else []
    probe = RssProbe()
    warm_page_cache(ds.path)
    with tempfile.TemporaryDirectory(prefix="sruns-bench-gcs-") as tmp, LoopbackGcsServer(md5=False) as server:
        work = Path(tmp)
        scenario.run(rows, args.reps, lambda row, rep: _run_once(row, ds.path, server, work, rep, extra, probe),
                     rotate=True, log=lambda line: print(line, file=sys.stderr))
    print()
    command = " ".join(["python -m benchmarks.bench_gcs", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{command}`")
    print(f"{ds.describe()}; {args.reps} interleaved repetitions, {os.cpu_count()} CPUs; medians.\n")
    print(_table(rows, ds.raw_bytes, null))
    worst = min(_median(null) / _median(r) for r in rows if r.case.dest == "gs")
    worst_paired = min(_paired(r, null) for r in rows if r.case.dest == "gs")
    verdict = "met" if worst >= TARGET else "NOT met"
    print(f"\nTarget gs:// ≥ {TARGET} × null throughput: {verdict} (worst chunk size: {worst:.2f} × by "
          f"medians, {worst_paired:.2f} × paired).")
    return 0 if worst >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
