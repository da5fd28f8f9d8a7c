"""Lane read: what a demultiplexer does to an archived run, without restoring it first.

``python -m benchmarks.lane_read [--size 2G] [--files 12000] [--threads 8]`` (issue 23).

Set-up (untimed): a NovaSeq-style run (`scripts/make_fake_run.py`, CBCL files per lane,
surface and cycle) is archived once with sruns-stream's defaults, and the loopback GCS
server serves the archive and everything beside it (manifest, access index, the GZIDX and
ratarmount indexes) as objects, ranged GETs answered with 206. The server counts the
download bytes it sends: the bytes on the wire.

The reader (`lane_read`): N threads, each taking tiles in turn; for its tile, the
tile-sized range of every CBCL of lane 1 in cycle order (as bcl-convert reads a tile
across cycles). A tile's range is the CBCL's size split in ``--tiles`` equal parts. What
it read is checked against the run folder afterwards (crc32 of every range).

Rows:

- ``mount``: ``sruns-stream mount gs://…`` from the loopback server; time to the first
  listing of the lane's folder (from the command's start), then the lane read through it;
  bytes on the wire for both;
- ``restore, then read``: ``sruns-stream restore gs://… DEST`` of the whole run, then the
  same lane read from DEST;
- ``ratarmount, no index``: unmodified ratarmount on the same archive on local disk (it
  cannot read our loopback server) with no index beside it: it reads the whole archive
  to build one before the first listing; bytes read are its process's ``rchar``;
- ``ratarmount, our index``: the same with our ``.index.sqlite`` beside it.

Targets: the mount lists in ≤ 2 s; the lane read through it is ≥ 3× faster than restore
then read, with bytes on the wire ≤ 1.3× the bytes the reader asked for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loopback.gcs import LoopbackGcsServer

from .data import REPO, DatasetSpec, parse_size, prepare

__all__ = ["LaneRead", "lane_files", "lane_read", "main"]

BUCKET = "bench-lane"
PREFIX = "lr"
MB = 1e6


@dataclass
class LaneRead:
    seconds: float
    asked: int  # bytes the reader asked for
    crcs: dict[tuple[str, int], int]


def lane_files(run: Path, lane: int = 1) -> list[list[str]]:
    """The lane's CBCL files, relative to the run folder, grouped by cycle in cycle order."""
    base = run / "Data" / "Intensities" / "BaseCalls" / f"L{lane:03d}"
    cycles = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:].split(".")[0]))
    return [[str(f.relative_to(run)) for f in sorted(c.glob("*.cbcl"))] for c in cycles]


def lane_read(root: Path, cycles: list[list[str]], sizes: dict[str, int], threads: int, tiles: int) -> LaneRead:
    """Read tile ranges of every CBCL of the lane under ``root`` on ``threads`` threads."""
    crcs: dict[tuple[str, int], int] = {}
    asked = [0]
    lock = threading.Lock()
    next_tile = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                with lock:
                    tile = next_tile[0]
                    next_tile[0] += 1
                if tile >= tiles:
                    return
                for cycle in cycles:
                    for name in cycle:
                        size = sizes[name]
                        lo, hi = size * tile // tiles, size * (tile + 1) // tiles
                        with open(root / name, "rb") as f:
                            f.seek(lo)
                            data = f.read(hi - lo)
                        with lock:
                            crcs[(name, tile)] = zlib.crc32(data)
                            asked[0] += hi - lo
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return LaneRead(seconds, asked[0], crcs)


def _wait(condition: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process ended (exit {proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout} s")
        time.sleep(0.01)


def _listed(path: Path) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(os.listdir(path))
        except OSError:
            return False
    return check


def _unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)


def _rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class Row:
    name: str
    first_listing: float | None
    read_seconds: float
    total_seconds: float
    wire: int | None
    asked: int
    note: str = ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lane_read")
    ap.add_argument("--size", default="2G", help="the NovaSeq-style run's size (default 2G)")
    ap.add_argument("--files", type=int, default=12000,
                    help="make_fake_run --files (default 12000: a 4-lane layout at 2G)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=32, help="tile ranges per CBCL")
    ap.add_argument("--cache", type=Path, default=REPO / "benchmarks" / ".cache")
    ap.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--skip", default="", help="rows to leave out: mount,restore,ratarmount")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    ds = prepare(DatasetSpec("NovaSeq", "novaseq", parse_size(args.size), files=args.files), args.cache)
    run = ds.path
    cycles = lane_files(run)
    sizes = {n: (run / n).stat().st_size for c in cycles for n in c}
    lanes = len([p for p in (run / "Data" / "Intensities" / "BaseCalls").iterdir() if p.name.startswith("L0")])
    truth = lane_read(run, cycles, sizes, 1, args.tiles).crcs  # the oracle, from the run folder
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lane-read-") as tmp_s:
        tmp = Path(tmp_s)
        dest = tmp / "dest"
        subprocess.run([sys.executable, "-m", "sruns_stream", "archive", "--not-finished", str(run), "--dest",
                        str(dest), "--journal", str(tmp / "j.db")], check=True, env=env, capture_output=True)
        folder = dest / run.name
        archive = folder / f"{run.name}.tar.gz"
        print(f"{ds.describe()}; archive {archive.stat().st_size / MB:,.0f} MB; lane 1 of {lanes}: "
              f"{sum(sizes.values()) / MB:,.0f} MB in {len(sizes)} CBCLs over {len(cycles)} cycles", flush=True)
        with LoopbackGcsServer() as server:
            for f in folder.iterdir():
                server.add_file(BUCKET, f"{PREFIX}/{run.name}/{f.name}", f)
            url = f"gs://{BUCKET}/{PREFIX}/{run.name}/{run.name}.tar.gz"
            genv = {**env, "STORAGE_EMULATOR_HOST": server.url, "GOOGLE_CLOUD_PROJECT": "bench"}

            if "mount" not in skip:
                mnt = tmp / "mnt"
                mnt.mkdir()
                before = server.bytes_sent
                t0 = time.perf_counter()
                proc = subprocess.Popen([sys.executable, "-m", "sruns_stream", "mount", url, str(mnt), "--cache-size",
                                         "1G"], env=genv, stderr=subprocess.DEVNULL)
                try:
                    _wait(_listed(mnt / "Data" / "Intensities" / "BaseCalls" / "L001"), proc, "the mount")
                    listing = time.perf_counter() - t0
                    listed_wire = server.bytes_sent - before
                    got = lane_read(mnt, cycles, sizes, args.threads, args.tiles)
                    total = time.perf_counter() - t0
                    assert got.crcs == truth, "the mount read other bytes than the run folder's"
                finally:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(60)
                rows.append(Row("sruns-stream mount (gs://)", listing, got.seconds, total,
                                server.bytes_sent - before, got.asked,
                                f"listing: {listed_wire / MB:.2f} MB on the wire"))

            if "restore" not in skip:
                out = tmp / "restored"
                before = server.bytes_sent
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "sruns_stream", "restore", url, str(out)], check=True,
                               env=genv, capture_output=True)
                restored = time.perf_counter() - t0
                got = lane_read(out / run.name, cycles, sizes, args.threads, args.tiles)
                assert got.crcs == truth
                rows.append(Row("restore, then read", None, got.seconds, time.perf_counter() - t0,
                                server.bytes_sent - before, got.asked, f"restore {restored:.1f} s"))
                shutil.rmtree(out)

        exe = shutil.which("ratarmount") or str(Path(sys.executable).parent / "ratarmount")
        if "ratarmount" not in skip and Path(exe).exists():
            for label, with_index in (("ratarmount, no index (local)", False), ("ratarmount, our index (local)", True)):
                home = tmp / ("rm-index" if with_index else "rm-bare")
                home.mkdir()
                local = home / archive.name
                os.link(archive, local)
                if with_index:
                    os.link(Path(f"{archive}.index.sqlite"), Path(f"{local}.index.sqlite"))
                mnt = tmp / ("mnt-" + home.name)
                mnt.mkdir()
                t0 = time.perf_counter()
                proc = subprocess.Popen([exe, "-f", str(local), str(mnt)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                try:
                    _wait(_listed(mnt / run.name / "Data" / "Intensities" / "BaseCalls" / "L001"), proc, label)
                    listing = time.perf_counter() - t0
                    listed_read = _rchar(proc.pid)
                    got = lane_read(mnt / run.name, cycles, sizes, args.threads, args.tiles)
                    total = time.perf_counter() - t0
                    assert got.crcs == truth
                    read = _rchar(proc.pid)
                finally:
                    _unmount(mnt)
                    proc.wait(60)
                rows.append(Row(label, listing, got.seconds, total, read, got.asked,
                                f"listing: {listed_read / MB:.1f} MB read (rchar, imports included)"))

    page = _page(ds.describe(), archive_mb=0, rows=rows, threads=args.threads, tiles=args.tiles, lanes=lanes)
    print(page)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out_page = args.results_dir / f"{datetime.now(UTC):%Y-%m-%d}-lane-read.md"
    out_page.write_text(page)
    print(f"written: {out_page}")
    return 0


def _page(described: str, archive_mb: float, rows: list[Row], threads: int, tiles: int, lanes: int) -> str:
    lines = [
        "# Lane read: a demultiplexer's reads through `sruns-stream mount`, against restoring first",
        "",
        f"{described}. Reader: {threads} threads, each taking tiles in turn ({tiles} tile ranges per CBCL), "
        f"reading its tile's range of every CBCL of lane 1 (of {lanes}) in cycle order. "
        "`python -m benchmarks.lane_read` (one repetition, on the shared 2-core VM).",
        "",
        "| row | first listing | lane read | total | MB read / on the wire | ÷ MB asked | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        listing = f"{r.first_listing:.2f} s" if r.first_listing is not None else "—"
        wire = f"{r.wire / MB:,.1f}" if r.wire is not None else "—"
        ratio = f"{r.wire / r.asked:.2f}" if r.wire is not None and r.asked else "—"
        lines.append(f"| {r.name} | {listing} | {r.read_seconds:.2f} s | {r.total_seconds:.2f} s | {wire} | "
                     f"{ratio} | {r.note} |")
    by = {r.name: r for r in rows}
    m, rr = by.get("sruns-stream mount (gs://)"), by.get("restore, then read")
    lines.append("")
    if m is not None:
        lines.append(f"- Target: the mount lists in ≤ 2 s: {m.first_listing:.2f} s "
                     f"({'met' if (m.first_listing or 99) <= 2 else 'NOT met'}).")
        if m.wire is not None:
            ratio = m.wire / m.asked
            lines.append(f"- Target: bytes on the wire ≤ 1.3× the bytes asked: {ratio:.2f}× "
                         f"({'met' if ratio <= 1.3 else 'NOT met'}).")
    if m is not None and rr is not None:
        speed = rr.total_seconds / m.total_seconds
        lines.append(f"- Target: the lane through the mount ≥ 3× faster than restore then read (start to last byte): "
                     f"{speed:.2f}× ({'met' if speed >= 3 else 'NOT met'}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
