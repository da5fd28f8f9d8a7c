"""Resume cost: kill -9 sruns-stream half way, run the same command again, measure both.

Per repetition and setting, interleaved like the main table: one full run from zero (fresh
journal and destination), then a fresh attempt that is killed (SIGKILL, to the one process
we started) as soon as the destination holds half of the archive the full run wrote (the
local ``.part`` file's size, or the bytes the loopback GCS server received), then the
identical command again. Its ``--json`` says where it resumed (``resumed_from_raw``,
``resumed_from_archive``), how much raw tar it encoded (``raw_processed``) and how much
regenerated output it threw away to reach the destination's offset (``archive_discarded``).
Correctness: the resumed archive's crc32c must equal the full run's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .competitors import Tools, sruns_stream_command
from .data import Dataset
from .measure import RssProbe, median, run_command, sruns_json
from .suite import ByteCounter

__all__ = ["Attempt", "ResumeResult", "ResumeSetting", "measure_resume"]

_POLL = 0.002


@dataclass(frozen=True)
class ResumeSetting:
    label: str  # "local, defaults"
    dest: str  # local | loopback-gs
    options: tuple[str, ...] = ()


@dataclass
class Attempt:
    """One kill -9 and the resumed run after it."""

    killed_after: float  # seconds into the first attempt
    killed_at_archive: int  # archive bytes the destination held when it was killed
    resume_seconds: float
    resume_rss_kib: int | None
    summary: dict[str, Any]  # the resumed run's --json

    @property
    def written_twice(self) -> int:
        return max(0, self.killed_at_archive - int(self.summary.get("resumed_from_archive", 0)))


@dataclass
class ResumeResult:
    setting: ResumeSetting
    full_seconds: list[float] = field(default_factory=list)  # full runs from zero, same options
    full_archive_bytes: int | None = None
    full_crc32c: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return self.setting.label

    @property
    def full_median(self) -> float | None:
        return median(self.full_seconds) if self.full_seconds else None

    @property
    def resume_median(self) -> float | None:
        return median([a.resume_seconds for a in self.attempts]) if self.attempts else None

    @property
    def typical(self) -> Attempt | None:
        """The attempt whose resumed run took the median time (its bytes are shown)."""
        if not self.attempts:
            return None
        ordered = sorted(self.attempts, key=lambda a: a.resume_seconds)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def identical(self) -> bool | None:
        if not self.attempts or not self.full_crc32c:
            return None
        return all(a.summary.get("crc32c") == self.full_crc32c for a in self.attempts)


def _archive_path(scratch: Path, ds: Dataset) -> Path:
    return scratch / "out" / ds.path.name / f"{ds.path.name}.tar.gz.part"


def _kill_at(
    cmd_argv: Sequence[str], env: dict[str, str], written: Callable[[], int], threshold: int
) -> tuple[float, str | None]:
    """Start the command, SIGKILL it once ``written() >= threshold``; (seconds, error)."""
    t0 = time.perf_counter()
    first = subprocess.Popen(list(cmd_argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        while first.poll() is None and written() < threshold:
            time.sleep(_POLL)
        if first.poll() is not None:
            err = first.stderr.read().decode(errors="replace").strip() if first.stderr else ""
            return 0.0, (f"the first attempt ended (exit {first.returncode}) before writing half the archive"
                         + (f": {err.splitlines()[-1]}" if err else ""))
        first.kill()  # SIGKILL, to this one child only
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stderr:
            first.stderr.close()
    return time.perf_counter() - t0, None


def _one(
    result: ResumeResult, ds: Dataset, tools: Tools, probe: RssProbe, scratch: Path,
    loopback: ByteCounter | None, log: Callable[[str], None],
) -> None:
    s = result.setting
    for d in (scratch / "full", scratch / "killed"):
        d.mkdir(parents=True, exist_ok=True)
    # A full run from zero, measured next to the resume it is compared with.
    full_cmd = sruns_stream_command(ds, tools, scratch / "full", s.dest, *s.options)
    full = run_command(full_cmd, scratch / "full-m", probe)
    summary = sruns_json(full.stdout) if full.ok else None
    if not full.ok or not summary:
        result.error = f"the full run failed: {full.error or 'no --json summary'}"
        return
    result.full_seconds.append(full.seconds)
    result.full_archive_bytes = int(summary["archive_bytes"])
    result.full_crc32c = summary.get("crc32c")

    work = scratch / "killed"
    cmd = sruns_stream_command(ds, tools, work, s.dest, *s.options)
    if s.dest == "local":
        part = _archive_path(work, ds)

        def written() -> int:
            try:
                return part.stat().st_size
            except FileNotFoundError:
                return 0
    else:
        assert loopback is not None
        base = loopback.bytes_received

        def written() -> int:
            return loopback.bytes_received - base

    env = dict(os.environ)
    env.update(cmd.env)
    killed_after, error = _kill_at(cmd.stages[0], env, written, result.full_archive_bytes // 2)
    if error:
        result.error = error
        return
    killed_at = written()
    second = run_command(cmd, scratch / "second-m", probe)
    summary = sruns_json(second.stdout) if second.ok else None
    if not second.ok or not summary:
        result.error = f"the resumed run failed: {second.error or 'no --json summary'}"
        return
    attempt = Attempt(killed_after, killed_at, second.seconds, second.peak_rss_kib, summary)
    result.attempts.append(attempt)
    log(f"    {s.label}: full {full.seconds:.2f} s; killed -9 after {killed_after:.2f} s at "
        f"{killed_at:,} archive bytes; resumed run {second.seconds:.2f} s from raw byte "
        f"{summary.get('resumed_from_raw', 0):,}, raw processed {summary.get('raw_processed', 0):,}")


def measure_resume(
    ds: Dataset,
    tools: Tools,
    probe: RssProbe,
    workdir: Path,
    settings: Sequence[ResumeSetting],
    reps: int,
    loopback: ByteCounter | None = None,
    log: Callable[[str], None] = print,
) -> list[ResumeResult]:
    """Each setting ``reps`` times, interleaved; a setting that fails once is not retried."""
    results = [ResumeResult(s) for s in settings]
    for r in results:
        if r.setting.dest == "loopback-gs":
            missing = [tools.missing[n] for n in ("loopback", "sruns-gs") if n in tools.missing]
            if missing:
                r.error = "; ".join(missing)
    for rep in range(reps):
        for i, r in enumerate(results):
            if r.error:
                continue
            scratch = workdir / f"resume-{rep}-{i}"
            _one(r, ds, tools, probe, scratch, loopback, log)
            shutil.rmtree(scratch, ignore_errors=True)
    return results
