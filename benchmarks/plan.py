"""What runs in ``--quick`` and in the full mode: data sets, rows, sweeps, repetitions.

Quick mode keeps every target measurable (MiSeq: reference, ceiling, pigz, sruns-monitor's
way; NovaSeq: reference and ceiling; RSS; gs vs null) on small data. The rows it leaves
out are listed in the report as "not run in --quick", never dropped silently. The slow
gzip -6/-9 competitors run at about 5-15 MB/s, so they alone set the quick mode's length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .competitors import Competitor, ceiling, main_competitors, sruns_stream
from .data import DatasetSpec, GiB, MiB

__all__ = ["Plan", "make_plan", "thread_counts"]


@dataclass(frozen=True)
class Plan:
    quick: bool
    reps: int
    datasets: list[DatasetSpec]
    rows: dict[str, list[Competitor]]  # data set label -> competitors, reference first
    left_out: dict[str, list[str]]  # data set label -> competitor names not run in this mode
    scaling_on: list[str]  # data set labels
    threads: list[int]
    block_sizes: list[str]
    chunk_sizes: list[str]
    resume_on: str


def thread_counts(cores: int) -> list[int]:
    """1..cores; on a big machine powers of two up to it, then the core count itself."""
    if cores <= 8:
        return list(range(1, cores + 1))
    counts = [1]
    while counts[-1] * 2 < cores:
        counts.append(counts[-1] * 2)
    return counts + [cores]


_QUICK_ROWS = {
    "MiSeq": [
        "sruns-stream auto → local", "sruns-stream level 1 → local", "sruns-stream none → local",
        "sruns-stream auto → null", "sruns-stream auto → loopback-gs",
        "tar | isal igzip_threaded -1 (ceiling)", "tar | pigz -1", "sruns-monitor's way (tarfile w:gz 9)",
        "tar | pigz -1 | gcloud storage cp -", "tar | gcloud storage cp -",
    ],
    "NovaSeq": [
        "sruns-stream auto → local", "sruns-stream level 1 → local", "sruns-stream auto → null",
        "sruns-stream auto → loopback-gs", "tar | isal igzip_threaded -1 (ceiling)", "tar | pigz -1",
    ],
    # sruns-stream's per-file cost makes every run on 50,000 files long: the reference only.
    "many small files": [
        "sruns-stream auto → local", "tar | isal igzip_threaded -1 (ceiling)", "tar | pigz -1",
    ],
}


def make_plan(quick: bool, reps: int | None = None, cores: int | None = None) -> Plan:
    cores = cores or len(os.sched_getaffinity(0))
    everyone = main_competitors()
    if quick:
        datasets = [
            DatasetSpec("MiSeq", "miseq", 64 * MiB),
            DatasetSpec("NovaSeq", "novaseq", 150 * MiB),  # only fast competitors run on it
            DatasetSpec("many small files", "hiseq", 40 * MiB, files=50_000),
        ]
        rows = {label: [c for c in everyone if c.name in names] for label, names in _QUICK_ROWS.items()}
    else:
        datasets = [
            DatasetSpec("MiSeq", "miseq", 1 * GiB),
            DatasetSpec("NovaSeq", "novaseq", 2 * GiB),
            DatasetSpec("many small files", "hiseq", 1 * GiB, files=200_000),
        ]
        rows = {d.label: list(everyone) for d in datasets}
    left_out = {label: [c.name for c in everyone if c not in chosen] for label, chosen in rows.items()}
    return Plan(
        quick=quick,
        reps=reps or 3,
        datasets=datasets,
        rows=rows,
        left_out=left_out,
        scaling_on=["MiSeq"] if quick else ["MiSeq", "NovaSeq"],
        threads=thread_counts(cores),
        block_sizes=["256K", "1M", "4M"],
        chunk_sizes=["8M", "16M", "64M"],
        resume_on="MiSeq",
    )


def scaling_rows(threads: list[int]) -> list[Competitor]:
    """sruns-stream auto → null and the ceiling at each thread count (null: no disk in the way)."""
    rows = []
    for t in threads:
        rows.append(sruns_stream("auto", "null", "--threads", str(t), setting=f"auto, {t} threads"))
        rows.append(ceiling(t))
    return rows


def block_rows(sizes: list[str]) -> list[Competitor]:
    return [sruns_stream("auto", "null", "--block-size", b, setting=f"auto, block {b}") for b in sizes]


def chunk_rows(sizes: list[str]) -> list[Competitor]:
    return [sruns_stream("auto", "loopback-gs", "--chunk-size", c, setting=f"auto, chunk {c}") for c in sizes]
