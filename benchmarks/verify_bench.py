"""Verify on all cores: ``sruns-stream verify`` with 1 and N threads against ``gzip -t`` and
``tar tzf`` on one large local archive.

The archive is made once, untimed, with ``sruns-stream archive RUN --dest DIR`` at its
defaults (so it has access points and an index beside it). Then the rows run interleaved,
each reading the same file from the page cache (it is read once beforehand):

- ``sruns-stream verify ARCHIVE --threads 1`` and ``--threads N`` (N = usable cores), when
  this sruns-stream has ``--threads``; otherwise one row, ``verify ARCHIVE`` at its
  defaults, and the page says the N-thread row could not be run;
- ``gzip -t ARCHIVE`` (inflate and check the CRC, one core);
- ``tar tzf ARCHIVE > /dev/null`` (inflate and walk the headers, one core for gzip).

sruns-stream's verify does more than both: every member against the manifest's crc32c.
Targets: N threads ≥ 1.7× one thread, on a CPU-bound (MiSeq-style) archive (issues 13 and
21), and one thread at least as fast as ``gzip -t`` (issue 21).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scenario
from .data import REPO, Dataset
from .measure import Command, RssProbe, Sample, run_command, sruns_json
from .scenario import Row

__all__ = ["VERIFY_TARGET", "VerifyCase", "VerifyResult", "has_option", "make_archive", "measure_verify"]

VERIFY_TARGET = 1.7  # N threads over 1 thread (issue 13)
_ENV = {"PYTHONPATH": str(REPO)}


def has_option(subcommand: str, option: str) -> bool:
    """Whether this checkout's ``sruns-stream SUBCOMMAND --help`` lists ``option``."""
    proc = subprocess.run([sys.executable, "-m", "sruns_stream", subcommand, "--help"], capture_output=True,
                          text=True, env={**os.environ, **_ENV}, check=False)
    return proc.returncode == 0 and option in proc.stdout


def make_archive(ds: Dataset, where: Path, *options: str) -> tuple[Path, dict[str, Any]]:
    """``sruns-stream archive`` to a local directory (untimed); the archive's path and --json."""
    where.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sruns_stream", "archive", "--not-finished",
            str(ds.path), "--dest", str(where / "dest"),
            "--journal", str(where / "journal.db"), "--force", "--json", *options]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **_ENV}, check=False)
    summary = sruns_json(proc.stdout)
    if proc.returncode != 0 or summary is None:
        tail = proc.stderr.strip().splitlines()
        raise RuntimeError(f"archiving {ds.spec.label} failed (exit {proc.returncode}): "
                           + (tail[-1] if tail else "no --json summary"))
    name = ds.path.name
    archive = where / "dest" / name / f"{name}.tar.gz"
    if not archive.is_file():
        raise RuntimeError(f"archive said it was done but {archive} is not there")
    return archive, summary


@dataclass(frozen=True)
class VerifyCase:
    name: str  # shown in the table
    command: Command


@dataclass
class VerifyResult:
    dataset: str
    archive_bytes: int = 0
    raw_bytes: int = 0
    threads: int = 1  # N of the N-thread row
    has_threads_option: bool = False
    rows: list[Row[VerifyCase]] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> dict[str, float]:
        return {r.name: r.seconds for r in self.rows if r.seconds is not None}

    @property
    def one(self) -> str:
        return "sruns-stream verify --threads 1" if self.has_threads_option else "sruns-stream verify (defaults)"

    @property
    def many(self) -> str:
        return f"sruns-stream verify --threads {self.threads}"

    def over_gzip(self) -> float | None:
        """``gzip -t``'s median seconds ÷ one thread's: ≥ 1 when verify is as fast as gzip -t."""
        med = self.median_s
        return med["gzip -t"] / med[self.one] if self.one in med and "gzip -t" in med else None

    def speedup(self) -> float | None:
        """One thread's median seconds ÷ N threads'."""
        med = self.median_s
        return med[self.one] / med[self.many] if self.one in med and self.many in med else None

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "rows"}, "rows": [r.as_dict() for r in self.rows],
                "median_s": self.median_s, "speedup": self.speedup(),
                "over_gzip": self.over_gzip()}


def _cases(archive: Path, result: VerifyResult, journal: Path) -> list[VerifyCase]:
    # --json: its "cpu" gives the main thread's share (a verify without it prints a line instead).
    verify = (sys.executable, "-m", "sruns_stream", "verify", str(archive), "--journal", str(journal), "--json")
    cases: list[VerifyCase] = []
    if result.has_threads_option:
        cases.append(VerifyCase(result.one, Command(((*verify, "--threads", "1"),), env=_ENV)))
        cases.append(VerifyCase(result.many, Command(((*verify, "--threads", str(result.threads)),), env=_ENV)))
    else:
        cases.append(VerifyCase(result.one, Command((verify,), env=_ENV)))
    if shutil.which("gzip"):
        cases.append(VerifyCase("gzip -t", Command((("gzip", "-t", str(archive)),))))
    cases.append(VerifyCase("tar tzf > /dev/null",
                            Command((("tar", "tzf", str(archive)),), stdout_file=Path(os.devnull))))
    return cases


def measure_verify(
    ds: Dataset, reps: int, workdir: Path, probe: RssProbe, log: Callable[[str], None] = print,
    threads: int | None = None, archive: Path | None = None, summary: dict[str, Any] | None = None,
) -> VerifyResult:
    """Every row ``reps`` times, interleaved, on one archive of ``ds`` (made here unless given)."""
    result = VerifyResult(ds.spec.label, threads=threads or len(os.sched_getaffinity(0)))
    result.has_threads_option = has_option("verify", "--threads")
    try:
        if archive is None or summary is None:
            archive, summary = make_archive(ds, workdir / "archive")
    except RuntimeError as exc:
        result.error = str(exc)
        return result
    result.archive_bytes = archive.stat().st_size
    result.raw_bytes = int(summary.get("raw_bytes", ds.raw_bytes))
    with open(archive, "rb") as f:  # into the page cache: every row reads it from memory
        while f.read(8 << 20):
            pass
    result.rows = [Row(case, command=case.command.display())
                   for case in _cases(archive, result, workdir / "no-journal.db")]

    def measure(row: Row[VerifyCase], rep: int) -> Sample:
        return run_command(row.case.command, workdir / "run", probe)

    scenario.run(result.rows, reps, measure, log=log)
    failed = next((r for r in result.rows if r.skipped), None)
    if failed is not None:  # every row reads the same archive: one failure makes the section unmeasured
        result.error = f"{failed.name} failed: {failed.skipped}"
    return result
