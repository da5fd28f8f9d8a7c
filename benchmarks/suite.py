"""The page-cache table's section: every competitor on one data set, in the one scenario
shape (`scenario.run`: once per round, A B C … A B C …, ≥ 3 rounds, medians).

Each execution gets a fresh scratch directory
(its own journal, destination, output file) that is deleted right after it is measured.
A competitor that fails is not retried: its error is recorded and shown in the table.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from . import scenario
from .competitors import Competitor, Tools
from .data import MB, Dataset
from .measure import RssProbe, Sample, run_command, sruns_json
from .scenario import Row

__all__ = ["ByteCounter", "interleave"]

_counter = itertools.count()


class ByteCounter(Protocol):
    """The loopback GCS server, as far as the suite needs it."""

    @property
    def bytes_received(self) -> int: ...


def _archive_size(sample: Sample, received: int | None) -> int | None:
    if sample.output_bytes is not None:
        return sample.output_bytes
    summary = sruns_json(sample.stdout)
    if summary and "archive_bytes" in summary:
        return int(summary["archive_bytes"])
    return received  # an upload by another tool: what the loopback server took in


def _disable_shared_part(failed: Row[Competitor], tools: Tools, rows: Sequence[Row[Competitor]],
                         log: Callable[[str], None]) -> None:
    """An upload path that failed once (the gs:// sink, gcloud) is not tried again by other rows.

    Those failures are systematic (a missing route, a client bug) and each costs a full
    retry schedule; the rows that need the same part say why they were skipped.
    """
    part = failed.case.fragile
    if part is None or part in tools.missing:
        return
    label = failed.dataset.spec.label if failed.dataset else "?"
    tools.missing[part] = f"{failed.name} failed on {label} ({failed.skipped})"
    for row in rows:
        if row.skipped is None and part in row.case.needs:
            row.skipped = tools.missing[part]
            log(f"    skip {row.name} from now on: {row.skipped}")


def interleave(
    competitors: Sequence[Competitor],
    dataset: Dataset,
    tools: Tools,
    reps: int,
    probe: RssProbe,
    workdir: Path,
    loopback: ByteCounter | None = None,
    log: Callable[[str], None] = print,
) -> list[Row[Competitor]]:
    """Run each available competitor ``reps`` times, round by round, in the given order."""
    rows = [Row(c, dataset, skipped=c.unavailable(tools)) for c in competitors]

    def measure(row: Row[Competitor], rep: int) -> Sample:
        scratch = workdir / f"x{next(_counter)}"
        cmd = row.case.build(dataset, tools, scratch)
        row.command = cmd.display()
        before = loopback.bytes_received if loopback else 0
        sample = run_command(cmd, scratch, probe)
        received = (loopback.bytes_received - before) if loopback else None
        if sample.ok:
            size = _archive_size(sample, received)
            if size is not None:
                sample.measures["archive_bytes"] = size
        shutil.rmtree(scratch, ignore_errors=True)
        return sample

    def describe(row: Row[Competitor], sample: Sample) -> str:
        return f", {dataset.raw_bytes / MB / sample.seconds:.0f} MB/s"

    scenario.run(rows, reps, measure, describe=describe,
                 on_failure=lambda row: _disable_shared_part(row, tools, rows, log), log=log)
    return rows
