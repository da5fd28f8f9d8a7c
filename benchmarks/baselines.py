"""Reference programs the competitors run in a child process.

``python -m benchmarks.baselines tarfile-gz9 RUNDIR OUT``
    sruns-monitor's way of archiving: Python ``tarfile`` in mode ``w:gz`` at
    compresslevel 9, to a local file (sruns-monitor then uploads that file; the upload is
    not part of this command).

``python -m benchmarks.baselines igzip-threaded [-T N] [-l LEVEL]``
    stdin -> gzip -> stdout with ``isal.igzip_threaded`` (N deflate threads). isal 1.x
    ships no command line for the threaded writer (``python -m isal.igzip`` is single
    threaded and has no ``-T``), so this is the thinnest one: ``GNU tar | this`` is the
    compression ceiling that sruns-stream is measured against.

Both run as separate processes so that their time and peak RSS are measured exactly like
every other competitor's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
from collections.abc import Sequence

__all__ = ["igzip_threaded", "main", "tarfile_gz9"]

_BUFFER = 1 << 20  # the threaded writer's own block size: one read feeds one block


def tarfile_gz9(rundir: str, out: str) -> None:
    """``tarfile.open(out, "w:gz", compresslevel=9)``, adding the run folder under its name."""
    rundir = os.path.abspath(rundir)
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        tar.add(rundir, arcname=os.path.basename(rundir))


def igzip_threaded(threads: int, level: int) -> None:
    """Compress stdin to stdout with isal's threaded gzip writer."""
    from isal import igzip_threaded as it

    # isal's igzip_threaded.open() carries no annotations
    with it.open(sys.stdout.buffer, "wb", compresslevel=level, threads=threads) as gz:  # type: ignore[no-untyped-call]
        shutil.copyfileobj(sys.stdin.buffer, gz, _BUFFER)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baselines", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="program", required=True)
    t = sub.add_parser("tarfile-gz9", help="sruns-monitor's way: tarfile w:gz level 9 to a local file")
    t.add_argument("rundir")
    t.add_argument("out")
    g = sub.add_parser("igzip-threaded", help="stdin -> isal.igzip_threaded -> stdout")
    g.add_argument("-T", "--threads", type=int, default=os.cpu_count() or 1)
    g.add_argument("-l", "--level", type=int, default=1, choices=[0, 1, 2, 3])
    args = p.parse_args(argv)
    if args.program == "tarfile-gz9":
        tarfile_gz9(args.rundir, args.out)
    else:
        igzip_threaded(args.threads, args.level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
