"""The one shape of every benchmark section: cases, run interleaved, one ``Row`` each.

A case is what one table row runs: a competitor of the page-cache table, a reader on the
simulated share, a streams count under a cap, a verify or random-access command. Each
section makes one ``Row`` per case and hands them to ``run`` with its way of measuring a
case once (a ``Sample``). ``run`` executes every row once per round, ``reps`` rounds
(A B C … A B C …), the order optionally rotated each round so that no row always runs
first: the machine is shared and noisy, so a slow minute hits every row alike, and the
tables report medians. A row that fails is not retried: its error is kept and shown.
A section that must stop at the first failure raises from its measure function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Generic, Protocol, TypeVar

from .data import MB, Dataset
from .measure import Sample, median, sruns_json

__all__ = ["Case", "Row", "run"]


class Case(Protocol):
    """What one row runs; its name is unique in its section and shown in the table."""

    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Case)


@dataclass
class Row(Generic[C]):
    """One case (on one data set): its samples, or why it has none (or fewer)."""

    case: C
    dataset: Dataset | None = None
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None
    command: str = ""

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def ok_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def complete(self) -> bool:
        return bool(self.ok_samples) and self.skipped is None

    @property
    def seconds(self) -> float | None:
        """Median wall seconds of the samples that succeeded."""
        ok = self.ok_samples
        return median([s.seconds for s in ok]) if ok else None

    @property
    def all_seconds(self) -> list[float]:
        return [s.seconds for s in self.ok_samples]

    @property
    def spread(self) -> tuple[float, float] | None:
        ok = self.ok_samples
        return (min(s.seconds for s in ok), max(s.seconds for s in ok)) if ok else None

    @property
    def mb_per_s(self) -> float | None:
        """The data set's file bytes (10^6) ÷ median seconds: one numerator for every row."""
        s = self.seconds
        return self.dataset.raw_bytes / MB / s if s and self.dataset is not None else None

    @property
    def first_byte_s(self) -> float | None:
        """Median time to the first byte of the local output (start-up and scan)."""
        values = [s.first_byte_s for s in self.ok_samples if s.first_byte_s is not None]
        return median(values) if values else None

    @property
    def peak_rss_kib(self) -> int | None:
        """The largest peak of the repetitions."""
        peaks = [s.peak_rss_kib for s in self.ok_samples if s.peak_rss_kib is not None]
        return max(peaks) if peaks else None

    def measured(self, key: str) -> list[float]:
        """``key`` of every sample that succeeded and has it (`Sample.measures`)."""
        return [s.measures[key] for s in self.ok_samples if key in s.measures]

    def median_of(self, key: str) -> float | None:
        values = self.measured(key)
        return median(values) if values else None

    @property
    def archive_bytes(self) -> int | None:
        value = self.median_of("archive_bytes")
        return None if value is None else int(value)

    def as_dict(self) -> dict[str, Any]:
        """Every sample, for the results JSON; the case's plain fields under ``case``."""
        keys = sorted({k for s in self.samples for k in s.measures})
        return {
            "name": self.name, "case": _plain_fields(self.case),
            "dataset": self.dataset.spec.label if self.dataset else None,
            "command": self.command, "skipped": self.skipped,
            "seconds": [round(s.seconds, 4) for s in self.samples],
            "errors": [s.error for s in self.samples],
            "peak_rss_kib": [s.peak_rss_kib for s in self.samples],
            "stage_rss_kib": [s.stage_rss_kib for s in self.samples],
            "first_byte_s": [s.first_byte_s for s in self.samples],
            "busiest_thread": [s.busiest_thread for s in self.samples],
            "measures": {k: [s.measures.get(k) for s in self.samples] for k in keys},
            "median_seconds": self.seconds, "mb_per_s": self.mb_per_s,
            "sruns_json": [sruns_json(s.stdout) for s in self.samples if s.stdout.strip()],
        }


def _plain_fields(case: object) -> dict[str, Any]:
    """A dataclass case's fields, less the callables (a competitor's command builder)."""
    if not is_dataclass(case):
        return {}
    values = {f.name: getattr(case, f.name) for f in fields(case)}
    return {k: v for k, v in values.items() if not callable(v)}


def run(
    rows: Sequence[Row[C]],
    reps: int,
    measure: Callable[[Row[C], int], Sample],
    *,
    rotate: bool = False,
    describe: Callable[[Row[C], Sample], str] = lambda row, sample: "",
    on_failure: Callable[[Row[C]], None] = lambda row: None,
    log: Callable[[str], None] = print,
) -> Sequence[Row[C]]:
    """Each row not already skipped ``reps`` times, round by round; ``measure(row, rep)``
    runs its case once. ``describe`` adds to a sample's progress line; ``on_failure`` is
    told of a row that just failed (it may skip others that need the same part)."""
    for row in rows:
        if row.skipped:
            log(f"    skip {row.name}: {row.skipped}")
    order = list(rows)
    for rep in range(reps):
        if rotate and order:
            order = list(rows[rep % len(rows):]) + list(rows[: rep % len(rows)])
        for row in order:
            if row.skipped:
                continue
            sample = measure(row, rep)
            row.samples.append(sample)
            if sample.ok:
                rss = f"{sample.peak_rss_kib / 1024:.0f} MiB" if sample.peak_rss_kib else "?"
                log(f"    [{rep + 1}/{reps}] {row.name}: {sample.seconds:.2f} s{describe(row, sample)}, "
                    f"peak RSS {rss}")
            else:
                row.skipped = f"failed in repetition {rep + 1}: {sample.error}"
                log(f"    [{rep + 1}/{reps}] {row.name}: FAILED {sample.error}")
                on_failure(row)
    return rows
