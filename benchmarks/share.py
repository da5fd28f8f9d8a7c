"""The instrument share: sruns-stream against tar | pigz and tar | isal when every file
system operation costs a round trip.

    python -m benchmarks.share [--quick] [--latencies 0,0.5,2] [--reps 3] [--label NAME]

Each data set is served through ``benchmarks/sharesim`` (a FUSE passthrough that waits
a fixed time on every operation and serves requests concurrently, as a filer does),
at each latency in turn. At each latency the competitors run interleaved, ``--reps``
times, each writing its archive to a local scratch directory; the table gives medians
and sruns-stream's speed-up over each competitor (their seconds ÷ its seconds). The
serial row (``--read-threads 0``) shows what reading ahead buys.

Needs root (or a user allowed to mount FUSE), ``/dev/fuse``, gcc and libfuse3 headers
(``apt-get install fuse3 libfuse3-dev``); without them it says which is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from .data import MB, REPO, Dataset, DatasetSpec, prepare
from .measure import Command, RssProbe, median, run_command
from .report import markdown_table

__all__ = ["main"]

SOURCE = REPO / "benchmarks" / "sharesim" / "sharesim.c"
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results"
# Concurrent requests the simulated filer serves: a real filer serves many; libfuse's
# default of 10 would cap any reader at 10 operations in flight.
FILER_THREADS = 128


@dataclass(frozen=True)
class Row:
    name: str
    build: str  # "sruns", "sruns-serial", "pigz", "isal"


ROWS = (
    Row("sruns-stream (defaults)", "sruns"),
    Row("sruns-stream --read-threads 0 (serial)", "sruns-serial"),
    Row("tar | pigz -1", "pigz"),
    Row("tar | isal igzip_threaded -1", "isal"),
)


def build_sharesim() -> Path:
    """The simulator's binary, compiled once into the benchmark cache."""
    binary = CACHE / "sharesim"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    missing = [tool for tool in ("gcc", "pkg-config") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"benchmarks.share needs {', '.join(missing)} (apt-get install gcc pkg-config)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        raise SystemExit("benchmarks.share needs libfuse3 headers: apt-get install fuse3 libfuse3-dev")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE), *flags.stdout.split()], check=True)
    return binary


@contextmanager
def mounted(binary: Path, source: Path, latency_ms: float) -> Iterator[Path]:
    """``source`` served at ``latency_ms`` per operation, mounted until the block ends."""
    if not os.path.exists("/dev/fuse"):
        raise SystemExit("benchmarks.share needs /dev/fuse (FUSE) on this machine")
    mountpoint = CACHE / "share-mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(binary), str(source), str(mountpoint), "-o", f"latency_us={int(latency_ms * 1000)}", "-o", "ro",
         "-o", f"max_threads={FILER_THREADS}"],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


def command(row: Row, run: Path, scratch: Path, threads: int) -> Command:
    out = scratch / "out.tar.gz"
    tar = ("tar", "-cf", "-", "-C", str(run.parent), run.name)
    if row.build in ("sruns", "sruns-serial"):
        argv = [sys.executable, "-m", "sruns_stream", "archive", str(run), "--dest", str(scratch / "dest"),
                "--journal", str(scratch / "sruns.db"), "--force", "--json"]
        if row.build == "sruns-serial":
            argv += ["--read-threads", "0"]
        return Command((tuple(argv),), env={"PYTHONPATH": str(REPO)})
    if row.build == "pigz":
        return Command((tar, ("pigz", "-p", str(threads), "-1")), stdout_file=out, output=out)
    gz = (sys.executable, "-m", "benchmarks.baselines", "igzip-threaded", "-T", str(threads), "-l", "1")
    return Command((tar, gz), stdout_file=out, output=out, env={"PYTHONPATH": str(REPO)})


def sweep(datasets: list[Dataset], latencies: list[float], reps: int, scratch: Path) -> list[dict[str, object]]:
    binary = build_sharesim()
    probe = RssProbe()
    threads = len(os.sched_getaffinity(0))
    rows = [r for r in ROWS if r.build != "pigz" or shutil.which("pigz")]
    results = []
    for ds in datasets:
        for latency in latencies:
            seconds: dict[str, list[float]] = {r.name: [] for r in rows}
            rss: dict[str, int] = {}
            with mounted(binary, ds.path.parent, latency) as mnt:
                run = mnt / ds.path.name
                for rep in range(reps):
                    for row in rows:  # interleaved: the machine's drift hits every row alike
                        where = scratch / f"{row.build}-{rep}"
                        shutil.rmtree(where, ignore_errors=True)
                        sample = run_command(command(row, run, where, threads), where, probe)
                        if not sample.ok:
                            raise SystemExit(f"{row.name} failed on {ds.spec.label} at {latency} ms: {sample.error}")
                        seconds[row.name].append(sample.seconds)
                        rss[row.name] = max(rss.get(row.name, 0), sample.peak_rss_kib or 0)
                        shutil.rmtree(where, ignore_errors=True)
                        print(f"  {ds.spec.label} {latency} ms {row.name}: {sample.seconds:.2f} s", flush=True)
            results.append({
                "dataset": ds.spec.label, "files": ds.files, "raw_bytes": ds.raw_bytes, "latency_ms": latency,
                "median_s": {name: median(v) for name, v in seconds.items()},
                "samples_s": seconds, "peak_rss_kib": rss,
            })
    return results


def render(results: list[dict[str, object]], label: str, command_line: str, reps: int) -> str:
    out = [f"# sruns-stream on a share with latency: {label}, {date.today().isoformat()}\n"]
    out.append(f"Command: `{command_line}`\n")
    out.append(
        f"Machine: {platform.node()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}. "
        f"Share: benchmarks/sharesim (FUSE, every operation waits the latency; {FILER_THREADS} requests served "
        f"at once; attributes and names cached 1 s, file pages not). Medians of {reps} interleaved runs; "
        "each writes its archive to local disk. Speed-up = the competitor's seconds ÷ sruns-stream's.\n"
    )
    for ds in dict.fromkeys(str(r["dataset"]) for r in results):
        rows = [r for r in results if r["dataset"] == ds]
        first = rows[0]
        out.append(f"## {ds}: {first['files']:,} files, {int(first['raw_bytes']) / MB:,.0f} MB\n")  # type: ignore[call-overload]
        names = list(first["median_s"])  # type: ignore[call-overload]
        head = ["latency per operation", *[f"{n} (s)" for n in names], "speed-up vs tar | pigz",
                "speed-up vs tar | isal", "sruns-stream peak RSS"]
        table = []
        for r in rows:
            med: dict[str, float] = r["median_s"]  # type: ignore[assignment]
            ours = med[ROWS[0].name]
            vs = [f"{med[n] / ours:.2f}×" if n in med else "–" for n in (ROWS[2].name, ROWS[3].name)]
            rss: dict[str, int] = r["peak_rss_kib"]  # type: ignore[assignment]
            table.append([f"{r['latency_ms']} ms", *[f"{med[n]:.2f}" for n in names], *vs,
                          f"{rss.get(ROWS[0].name, 0) / 1024:.0f} MiB"])
        out.append(markdown_table(head, table) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.share", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a many-files run only, latencies 0, 0.5 and 2 ms")
    p.add_argument("--latencies", help="milliseconds per operation, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--label", default=platform.node())
    args = p.parse_args(argv)
    specs = [DatasetSpec("many files (MiSeq-style, ~40 KB each)", "miseq", 218_000_000, seed=11, files=5500)]
    if not args.quick:
        specs.append(DatasetSpec("large files (NovaSeq-style CBCL)", "novaseq", 512 << 20, seed=12))
    latencies = [float(x) for x in args.latencies.split(",")] if args.latencies else (
        [0.0, 0.5, 2.0] if args.quick else [0.0, 0.1, 0.5, 2.0])
    datasets = [prepare(spec) for spec in specs]
    scratch = CACHE / "share-scratch"
    t0 = time.perf_counter()
    results = sweep(datasets, latencies, args.reps, scratch)
    text = render(results, args.label, "python -m benchmarks.share " + " ".join(argv or sys.argv[1:]), args.reps)
    text += f"\nThe sweep took {time.perf_counter() - t0:.0f} s.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{date.today().isoformat()}-{args.label.replace(' ', '-')}-share"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
