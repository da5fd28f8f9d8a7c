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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loopback.gcs import LoopbackGcsServer

from .data import MB, REPO, DatasetSpec, prepare, warm_page_cache

__all__ = ["main"]

BUCKET = "bench-gcs"
TARGET = 0.8


@dataclass
class Row:
    name: str
    dest: str  # "null" or "gs"
    chunk: int | None
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the archive process's user + system seconds
    server_cpu: list[float] = field(default_factory=list)  # this process's (the server's) meanwhile
    rss_kib: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def _run_once(row: Row, run: Path, server: LoopbackGcsServer, work: Path, rep: int, extra: list[str]) -> None:
    scratch = work / f"{row.name.replace(' ', '_')}-{rep}"
    scratch.mkdir(parents=True)
    argv = [sys.executable, "-m", "sruns_stream", "archive", str(run), "--journal", str(scratch / "journal.db"),
            "--json", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if row.dest == "gs":
        assert row.chunk is not None
        argv += ["--dest", f"gs://{BUCKET}/{scratch.name}", "--chunk-size", str(row.chunk)]
        env.update(STORAGE_EMULATOR_HOST=server.url, GOOGLE_CLOUD_PROJECT="bench")
    else:
        argv += ["--dest", "null"]
    before = server.bytes_received
    own = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait4 gives this one child's peak RSS (getrusage(RUSAGE_CHILDREN) would give the
    # largest of all children so far).
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{row.name}: exit {proc.returncode}: {err.decode(errors='replace').strip()[-500:]}")
    result = json.loads(out)
    if row.dest == "gs":
        sent = server.bytes_received - before
        if sent != result["archive_bytes"]:
            raise SystemExit(
                f"{row.name}: the server received {sent} bytes for a {result['archive_bytes']}-byte archive"
            )
        blob = f"{scratch.name}/{run.name}/{run.name}.tar.gz"
        obj = server.get_object(BUCKET, blob)
        if obj is None or f"{int.from_bytes(base64.b64decode(obj['crc32c']), 'big'):08x}" != result["crc32c"]:
            raise SystemExit(f"{row.name}: the server's object does not carry the archive's crc32c")
    row.seconds.append(seconds)
    row.cpu.append(usage.ru_utime + usage.ru_stime)
    row.server_cpu.append(after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime)
    row.rss_kib.append(usage.ru_maxrss)


def _paired(row: Row, null: Row) -> float:
    """Median over repetitions of null's time / this row's time in the same round: the
    two ran seconds apart, so a slow spell on a shared machine cancels out."""
    return float(statistics.median(n / s for n, s in zip(null.seconds, row.seconds, strict=True)))


def _table(rows: list[Row], raw_bytes: int, null: Row) -> str:
    lines = [
        (
            "| destination | chunk | median s | MB/s | × null | × null, paired "
            "| CPU s (archive) | CPU s (server) | peak RSS MiB | runs (s) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratio = null.median / row.median
        lines.append(
            f"| {row.name} | {f'{row.chunk >> 20} MiB' if row.chunk else '–'} | {row.median:.2f} | "
            f"{raw_bytes / MB / row.median:.0f} | {ratio:.2f} | {_paired(row, null):.2f} | "
            f"{statistics.median(row.cpu):.2f} | "
            f"{statistics.median(row.server_cpu):.2f} | {max(row.rss_kib) / 1024:.0f} | "
            f"{', '.join(f'{s:.2f}' for s in row.seconds)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_gcs", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=_size, default=500 * MB, help="raw size of the generated run (default 500 MB)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3, at least 3 for the method)")
    p.add_argument("--chunks", default="8M,16M,64M", help="chunk sizes to compare (default 8M,16M,64M)")
    p.add_argument("--threads", type=int, help="compression threads (default: all cores)")
    args = p.parse_args(argv)
    chunks = [_size(c) for c in args.chunks.split(",") if c.strip()]

    ds = prepare(DatasetSpec("MiSeq", "miseq", args.size), log=lambda m: print(m, file=sys.stderr))
    print(f"data: {ds.describe()}", file=sys.stderr)
    null = Row("null", "null", None)
    rows = [null] + [Row(f"gs:// loopback {c >> 20}M", "gs", c) for c in chunks]
    extra = ["--threads", str(args.threads)] if args.threads else []
    warm_page_cache(ds.path)
    with tempfile.TemporaryDirectory(prefix="sruns-bench-gcs-") as tmp, LoopbackGcsServer(md5=False) as server:
        work = Path(tmp)
        for rep in range(args.reps):
            order = rows[rep % len(rows):] + rows[: rep % len(rows)]
            for row in order:
                _run_once(row, ds.path, server, work, rep, extra)
                print(f"  rep {rep + 1}: {row.name}: {row.seconds[-1]:.2f} s", file=sys.stderr)
    print()
    command = " ".join(["python -m benchmarks.bench_gcs", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{command}`")
    print(f"{ds.describe()}; {args.reps} interleaved repetitions, {os.cpu_count()} CPUs; medians.\n")
    print(_table(rows, ds.raw_bytes, null))
    worst = min(null.median / r.median for r in rows if r.dest == "gs")
    worst_paired = min(_paired(r, null) for r in rows if r.dest == "gs")
    verdict = "met" if worst >= TARGET else "NOT met"
    print(f"\nTarget gs:// ≥ {TARGET} × null throughput: {verdict} (worst chunk size: {worst:.2f} × by "
          f"medians, {worst_paired:.2f} × paired).")
    return 0 if worst >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
