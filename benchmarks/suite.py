"""Interleaved repetitions: every competitor once per round (A B C … A B C …), ≥ 3 rounds.

The machine is shared and noisy, so a slow minute hits every competitor alike rather than
one of them, and the report uses medians. Each execution gets a fresh scratch directory
(its own journal, destination, output file) that is deleted right after it is measured.
A competitor that fails is not retried: its error is recorded and shown in the table.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .competitors import Competitor, Tools
from .data import MB, Dataset
from .measure import RssProbe, Sample, median, run_command

__all__ = ["ByteCounter", "Row", "interleave", "sruns_json"]

_counter = itertools.count()


class ByteCounter(Protocol):
    """The loopback GCS server, as far as the suite needs it."""

    @property
    def bytes_received(self) -> int: ...


def sruns_json(stdout: str) -> dict[str, Any] | None:
    """The JSON summary sruns-stream prints with --json (its last JSON line)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


@dataclass
class Row:
    """One competitor on one data set: its samples, or why it has none."""

    competitor: Competitor
    dataset: Dataset
    samples: list[Sample] = field(default_factory=list)
    archive_sizes: list[int] = field(default_factory=list)
    skipped: str | None = None  # why it has no (or fewer) samples
    command: str = ""

    @property
    def ok_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def complete(self) -> bool:
        return bool(self.ok_samples) and self.skipped is None

    @property
    def seconds(self) -> float | None:
        ok = self.ok_samples
        return median([s.seconds for s in ok]) if ok else None

    @property
    def spread(self) -> tuple[float, float] | None:
        ok = self.ok_samples
        return (min(s.seconds for s in ok), max(s.seconds for s in ok)) if ok else None

    @property
    def mb_per_s(self) -> float | None:
        s = self.seconds
        return self.dataset.raw_bytes / MB / s if s else None

    @property
    def first_byte_s(self) -> float | None:
        """Median time to the first byte of the local output (start-up and scan)."""
        values = [s.first_byte_s for s in self.ok_samples if s.first_byte_s is not None]
        return median(values) if values else None

    @property
    def archive_bytes(self) -> int | None:
        return int(median(self.archive_sizes)) if self.archive_sizes else None

    @property
    def peak_rss_kib(self) -> int | None:
        peaks = [s.peak_rss_kib for s in self.ok_samples if s.peak_rss_kib is not None]
        return max(peaks) if peaks else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "competitor": self.competitor.name, "tool": self.competitor.tool,
            "setting": self.competitor.setting, "dest": self.competitor.dest,
            "dataset": self.dataset.spec.label, "command": self.command, "skipped": self.skipped,
            "seconds": [round(s.seconds, 4) for s in self.samples],
            "errors": [s.error for s in self.samples],
            "peak_rss_kib": [s.peak_rss_kib for s in self.samples],
            "stage_rss_kib": [s.stage_rss_kib for s in self.samples],
            "archive_bytes": self.archive_sizes,
            "median_seconds": self.seconds, "mb_per_s": self.mb_per_s,
            "first_byte_s": [s.first_byte_s for s in self.samples],
            "sruns_json": [sruns_json(s.stdout) for s in self.samples if s.stdout.strip()],
        }


def _archive_size(row: Row, sample: Sample, received: int | None) -> int | None:
    if sample.output_bytes is not None:
        return sample.output_bytes
    summary = sruns_json(sample.stdout)
    if summary and "archive_bytes" in summary:
        return int(summary["archive_bytes"])
    return received  # an upload by another tool: what the loopback server took in


def _disable_shared_part(failed: Row, tools: Tools, rows: Sequence[Row], log: Callable[[str], None]) -> None:
    """An upload path that failed once (the gs:// sink, gcloud) is not tried again by other rows.

    Those failures are systematic (a missing route, a client bug) and each costs a full
    retry schedule; the rows that need the same part say why they were skipped.
    """
    part = failed.competitor.fragile
    if part is None or part in tools.missing:
        return
    tools.missing[part] = f"{failed.competitor.name} failed on {failed.dataset.spec.label} ({failed.skipped})"
    for row in rows:
        if row.skipped is None and part in row.competitor.needs:
            row.skipped = tools.missing[part]
            log(f"    skip {row.competitor.name} from now on: {row.skipped}")


def interleave(
    competitors: Sequence[Competitor],
    dataset: Dataset,
    tools: Tools,
    reps: int,
    probe: RssProbe,
    workdir: Path,
    loopback: ByteCounter | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run each available competitor ``reps`` times, round by round, in the given order."""
    rows = [Row(c, dataset, skipped=c.unavailable(tools)) for c in competitors]
    for row in rows:
        if row.skipped:
            log(f"    skip {row.competitor.name}: {row.skipped}")
    for rep in range(reps):
        for row in rows:
            if row.skipped:
                continue
            scratch = workdir / f"x{next(_counter)}"
            cmd = row.competitor.build(dataset, tools, scratch)
            row.command = cmd.display()
            before = loopback.bytes_received if loopback else 0
            sample = run_command(cmd, scratch, probe)
            received = (loopback.bytes_received - before) if loopback else None
            row.samples.append(sample)
            if sample.ok:
                size = _archive_size(row, sample, received)
                if size is not None:
                    row.archive_sizes.append(size)
                rss = f"{sample.peak_rss_kib / 1024:.0f} MiB" if sample.peak_rss_kib else "?"
                log(f"    [{rep + 1}/{reps}] {row.competitor.name}: {sample.seconds:.2f} s, "
                    f"{dataset.raw_bytes / MB / sample.seconds:.0f} MB/s, peak RSS {rss}")
            else:
                row.skipped = f"failed in repetition {rep + 1}: {sample.error}"
                log(f"    [{rep + 1}/{reps}] {row.competitor.name}: FAILED {sample.error}")
                _disable_shared_part(row, tools, rows, log)
            shutil.rmtree(scratch, ignore_errors=True)
    return rows
