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

The suite (``python -m benchmarks``, section ``share``) runs the same `sweep` and puts
its rows on the one results page; this module's own command writes a page of its own.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from . import scenario
from .data import MB, REPO, Dataset, DatasetSpec, prepare
from .measure import Command, RssProbe, Sample, run_command
from .report import markdown_table
from .scenario import Row

__all__ = ["ROWS", "ShareCase", "ShareResult", "ShareUnavailable", "build_sharesim", "main", "mounted", "sweep"]

SOURCE = REPO / "benchmarks" / "sharesim" / "sharesim.c"
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results"
# Concurrent requests the simulated filer serves: a real filer serves many; libfuse's
# default of 10 would cap any reader at 10 operations in flight.
FILER_THREADS = 128


class ShareUnavailable(RuntimeError):
    """The simulator cannot run on this machine (no FUSE, no compiler, no libfuse3)."""


@dataclass(frozen=True)
class ShareCase:
    name: str
    build: str  # "sruns", "sruns-serial", "pigz", "isal"


@dataclass
class ShareResult:
    """One data set at one latency: a row per reader, interleaved repetitions."""

    dataset: str
    files: int
    raw_bytes: int
    latency_ms: float
    rows: list[Row[ShareCase]] = field(default_factory=list)

    @property
    def median_s(self) -> dict[str, float]:
        return {r.name: r.seconds for r in self.rows if r.seconds is not None}

    def row(self, name: str) -> Row[ShareCase] | None:
        return next((r for r in self.rows if r.name == name), None)

    def speedup(self, other: str, ours: str = "sruns-stream (defaults)") -> float | None:
        """The competitor's median seconds ÷ sruns-stream's: how many times faster it is."""
        med = self.median_s
        return med[other] / med[ours] if other in med and med.get(ours) else None

    def as_dict(self) -> dict[str, object]:
        return {"dataset": self.dataset, "files": self.files, "raw_bytes": self.raw_bytes,
                "latency_ms": self.latency_ms, "rows": [r.as_dict() for r in self.rows], "median_s": self.median_s}


ROWS = (
    ShareCase("sruns-stream (defaults)", "sruns"),
    ShareCase("sruns-stream --read-threads 0 (serial)", "sruns-serial"),
    ShareCase("tar | pigz -1", "pigz"),
    ShareCase("tar | isal igzip_threaded -1", "isal"),
)


def build_sharesim(cache: Path = CACHE) -> Path:
    """The simulator's binary, compiled once into the benchmark cache."""
    binary = cache / "sharesim"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    missing = [tool for tool in ("gcc", "pkg-config") if shutil.which(tool) is None]
    if missing:
        raise ShareUnavailable(f"benchmarks.share needs {', '.join(missing)} (apt-get install gcc pkg-config)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        raise ShareUnavailable("benchmarks.share needs libfuse3 headers: apt-get install fuse3 libfuse3-dev")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE), *flags.stdout.split()], check=True)
    return binary


@contextmanager
def mounted(binary: Path, source: Path, latency_ms: float, mountpoint: Path = CACHE / "share-mnt") -> Iterator[Path]:
    """``source`` served at ``latency_ms`` per operation on ``mountpoint`` until the block ends."""
    if not os.path.exists("/dev/fuse"):
        raise ShareUnavailable("benchmarks.share needs /dev/fuse (FUSE) on this machine")
    mountpoint.mkdir(parents=True, exist_ok=True)
    started = subprocess.run(
        [str(binary), str(source), str(mountpoint), "-o", f"latency_us={int(latency_ms * 1000)}", "-o", "ro",
         "-o", f"max_threads={FILER_THREADS}"],
        capture_output=True, text=True, check=False,
    )
    if started.returncode != 0:
        raise ShareUnavailable(f"sharesim could not mount {mountpoint}: {started.stderr.strip() or started.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


def command(row: ShareCase, run: Path, scratch: Path, threads: int) -> Command:
    out = scratch / "out.tar.gz"
    tar = ("tar", "-cf", "-", "-C", str(run.parent), run.name)
    if row.build in ("sruns", "sruns-serial"):
        argv = [sys.executable, "-m", "sruns_stream", "archive", "--not-finished",
                str(run), "--dest", str(scratch / "dest"),
                "--journal", str(scratch / "sruns.db"), "--force", "--json"]
        if row.build == "sruns-serial":
            argv += ["--read-threads", "0"]
        # output: where the archive lands, so the time to its first byte is measured too.
        archive = scratch / "dest" / run.name / f"{run.name}.tar.gz"
        return Command((tuple(argv),), output=archive, env={"PYTHONPATH": str(REPO)})
    if row.build == "pigz":
        return Command((tar, ("pigz", "-p", str(threads), "-1")), stdout_file=out, output=out)
    gz = (sys.executable, "-m", "benchmarks.baselines", "igzip-threaded", "-T", str(threads), "-l", "1")
    return Command((tar, gz), stdout_file=out, output=out, env={"PYTHONPATH": str(REPO)})


def _at_latency(result: ShareResult, ds: Dataset, run: Path, reps: int, scratch: Path, threads: int,
                probe: RssProbe, log: Callable[[str], None]) -> None:
    """The rows of ``result``, interleaved ``reps`` times, on the mounted ``run``."""

    def measure(row: Row[ShareCase], rep: int) -> Sample:
        where = scratch / f"{row.case.build}-{rep}"
        shutil.rmtree(where, ignore_errors=True)
        cmd = command(row.case, run, where, threads)
        row.command = cmd.display()
        sample = run_command(cmd, where, probe)
        shutil.rmtree(where, ignore_errors=True)
        if not sample.ok:  # every speed-up compares two rows: the section stops at the first failure
            raise RuntimeError(f"{row.name} failed on {ds.spec.label} at {result.latency_ms} ms: {sample.error}")
        return sample

    scenario.run(result.rows, reps, measure, describe=lambda row, sample: f" ({ds.spec.label}, "
                 f"{result.latency_ms:g} ms)", log=log)


def sweep(
    datasets: Sequence[Dataset], latencies: Sequence[float], reps: int, scratch: Path,
    mountpoint: Path = CACHE / "share-mnt", rows: Sequence[ShareCase] = ROWS, cache: Path = CACHE,
    log: Callable[[str], None] = print,
) -> list[ShareResult]:
    """Every data set at every latency, the rows interleaved ``reps`` times."""
    binary = build_sharesim(cache)
    probe = RssProbe()
    threads = len(os.sched_getaffinity(0))
    rows = [r for r in rows if r.build != "pigz" or shutil.which("pigz")]
    results = []
    for ds in datasets:
        for latency in latencies:
            result = ShareResult(ds.spec.label, ds.files, ds.raw_bytes, latency, [Row(r, ds) for r in rows])
            with mounted(binary, ds.path.parent, latency, mountpoint) as mnt:
                _at_latency(result, ds, mnt / ds.path.name, reps, scratch, threads, probe, log)
            results.append(result)
    return results


def render(results: list[ShareResult], label: str, command_line: str, reps: int) -> str:
    out = [f"# sruns-stream on a share with latency: {label}, {date.today().isoformat()}\n"]
    out.append(f"Command: `{command_line}`\n")
    out.append(
        f"Machine: {platform.node()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}. "
        f"Share: benchmarks/sharesim (FUSE, every operation waits the latency; {FILER_THREADS} requests served "
        f"at once; attributes and names cached 1 s, file pages not). Medians of {reps} interleaved runs; "
        "each writes its archive to local disk. Speed-up = the competitor's seconds ÷ sruns-stream's.\n"
    )
    for ds in dict.fromkeys(r.dataset for r in results):
        rows = [r for r in results if r.dataset == ds]
        first = rows[0]
        out.append(f"## {ds}: {first.files:,} files, {first.raw_bytes / MB:,.0f} MB\n")
        names = [row.name for row in first.rows]
        head = ["latency per operation", *[f"{n} (s)" for n in names], "speed-up vs tar | pigz",
                "speed-up vs tar | isal", "sruns-stream peak RSS"]
        table = []
        for r in rows:
            med = r.median_s
            vs = [f"{x:.2f}×" if (x := r.speedup(n.name)) is not None else "–" for n in (ROWS[2], ROWS[3])]
            table.append([f"{r.latency_ms:g} ms", *[f"{med[n]:.2f}" for n in names], *vs,
                          f"{((ours.peak_rss_kib or 0) if (ours := r.row(ROWS[0].name)) else 0) / 1024:.0f} MiB"])
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
    try:
        results = sweep(datasets, latencies, args.reps, scratch)
    except (ShareUnavailable, RuntimeError) as exc:
        raise SystemExit(str(exc)) from exc
    text = render(results, args.label, "python -m benchmarks.share " + " ".join(argv or sys.argv[1:]), args.reps)
    text += f"\nThe sweep took {time.perf_counter() - t0:.0f} s.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{date.today().isoformat()}-{args.label.replace(' ', '-')}-share"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
