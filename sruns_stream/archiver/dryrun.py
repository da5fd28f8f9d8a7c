"""`archive --dry-run`: what `archive` would do with a run folder, writing nothing.

It walks the folder as `archive` would (with the same `exclude` patterns), counts what
would be archived and what is left out (excluded entries are walked here, only to count
them), names where the archive would go, and makes the same decision `archive_run`
makes: already archived, resume from the journal's checkpoint, or start from zero and
why, with the same checks (`decide`, which `archive` calls too). It creates nothing: no journal
(an existing one is read with `Journal(readonly=True)`, which makes no ``-wal`` or
``-shm`` file either), no lock file, no destination directory, no upload session. What
the destination holds is looked at as a real run would (its size and crc32c); whether
it still holds a checkpoint's bytes only the real run finds out, so a resume is "if the
destination still holds them".
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import ArchiveOptions
from ..humanize import human_bytes
from ..runfolder.exclude import check_leaves_run
from ..runfolder.scan import reading_threads, scan_run_folder
from ..state.journal import Journal
from ..storage.layout import archive_filename, blob_name, parse_location
from ..storage.prices import estimate
from ..storage.stores import normalize_destination, probe_archive
from .decide import decide
from .run import check_places, make_codec
from .tarstream import TarLayout

__all__ = ["Plan", "plan_archive"]


@dataclass
class Plan:
    """What `archive` would do; ``summary()`` for people, ``as_dict()`` for ``--json``."""

    run: str
    rundir: str
    archive: str  # where the archive would be: gs://… or a path ("null": nowhere)
    journal: str
    journal_exists: bool
    decision: str  # "archive", "resume" or "already archived"
    reason: str | None
    files: int
    data_bytes: int  # file bytes that would be archived
    tar_bytes: int  # the tar stream, headers included (before compression)
    entries: int
    excluded: list[str] = field(default_factory=list)  # what exclude patterns leave out (top entries)
    excluded_files: int = 0
    excluded_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    resume_raw: int = 0
    resume_archive: int = 0
    # GCS: the class the archive would be created in (None: the bucket's default) and its
    # bill (`storage.prices`), estimated on the tar stream's size: an upper bound.
    storage_class: str | None = None
    kms_key_name: str | None = None
    cost: dict[str, Any] | None = None
    dry_run: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"dry run (nothing written): {self.run}"]

        def add(label: str, text: str) -> None:
            lines.append(f"  {label:<12} {text}")

        add("folder", self.rundir)
        add("would store", f"{self.files:,} files, {human_bytes(self.data_bytes)} ({self.entries:,} entries, "
                           f"a tar stream of {human_bytes(self.tar_bytes)}) in {self.archive}")
        if self.excluded:
            shown = ", ".join(self.excluded[:3]) + (", …" if len(self.excluded) > 3 else "")
            entries = f"{len(self.excluded):,} entr{'y' if len(self.excluded) == 1 else 'ies'}"
            add("excluded", f"{entries} ({self.excluded_files:,} files, "
                            f"{human_bytes(self.excluded_bytes)}): {shown}")
        for skipped in self.skipped:
            add("skipped", skipped)
        if self.decision == "already archived":
            add("decision", f"already archived: nothing to do{f' ({self.reason})' if self.reason else ''}")
        elif self.decision == "resume":
            add("decision", f"resume at archive byte {self.resume_archive:,} (raw byte {self.resume_raw:,}), "
                            "if the destination still holds it")
        else:
            add("decision", "archive from the start" + (f": {self.reason}" if self.reason else ""))
        if self.cost is not None:
            shown = self.storage_class or "the bucket's default (estimated as STANDARD)"
            add("class", shown + (f", encrypted with {self.kms_key_name}" if self.kms_key_name else ""))
            minimum = f", billed at least {self.cost['minimum_days']} days" if self.cost["minimum_days"] else ""
            add("cost", f"about ${self.cost['monthly_usd']:,.2f} a month, ${self.cost['read_back_usd']:,.2f} to read "
                        f"it all back (for {human_bytes(self.tar_bytes)} uncompressed at {self.cost['region']} "
                        f"list prices of {self.cost['prices_date']}{minimum})")
        add("journal", self.journal if self.journal_exists else f"{self.journal} (not there: archive would create it)")
        return "\n".join(lines)


def _counted(root: Path, excluded: list[str]) -> tuple[int, int]:
    """Files and bytes below the excluded entries (paths from the run folder's parent),
    links not followed."""
    files = size = 0
    for shown in excluded:
        path = root.parent / shown
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            files, size = files + 1, size + st.st_size
        elif stat.S_ISDIR(st.st_mode):
            for dirpath, _, names in os.walk(path):
                for name in names:
                    try:
                        sub = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    if stat.S_ISREG(sub.st_mode):
                        files, size = files + 1, size + sub.st_size
    return files, size


def _archive_place(destination: str, run: str, extension: str) -> str:
    where = parse_location(destination)
    if where.kind == "gcs":
        return f"gs://{where.bucket}/{blob_name(where.path, run, extension)}"
    if where.kind == "local":
        return str(Path(where.path) / run / archive_filename(run, extension))
    return "null (nowhere: the null destination keeps nothing)"


def plan_archive(
    rundir: Path | str, destination: str, options: ArchiveOptions, journal_path: Path | str, *, force: bool = False,
) -> Plan:
    """What `archive_run` would do with these arguments, found without writing anything."""
    root = check_places(rundir, destination, journal_path)
    destination = normalize_destination(destination)
    name = root.name
    threads = reading_threads(options.read_threads, root) or 1
    scan = scan_run_folder(root, threads, options.exclude)
    check_leaves_run(scan, options.exclude)  # refused as `archive` refuses it
    excluded_files, excluded_bytes = _counted(root, scan.excluded)
    exists = Path(journal_path).is_file()
    journal = Journal(journal_path, readonly=True) if exists else None
    try:
        task = journal.get(name) if journal is not None else None
        decided = decide(task, root, destination, replace(options, read_threads=threads), journal, probe_archive,
                         force=force, scan=scan)
    finally:
        if journal is not None:
            journal.close()
    decision, reason = decided.action, decided.reason
    task_at = task if decision == "resume" else None
    if decision == "already archived" and reason is None:
        assert task is not None
        reason = f"at {task.location}"
    elif task_at is not None and not task_at.durable_offset:
        decision = "archive"  # nothing stored yet: the resume would start at byte 0
        task_at = None
    cost = None
    if parse_location(destination).kind == "gcs":
        size = TarLayout(scan).size
        cost = estimate(size, options.storage_class, options.price_region, options.prices).as_dict()
    return Plan(
        storage_class=options.storage_class, kms_key_name=options.kms_key_name, cost=cost,
        run=name, rundir=str(root), archive=_archive_place(destination, name, make_codec(options).extension),
        journal=str(Path(journal_path).absolute()), journal_exists=exists, decision=decision, reason=reason,
        files=scan.file_count, data_bytes=scan.data_bytes, tar_bytes=TarLayout(scan).size, entries=len(scan.entries),
        excluded=scan.excluded, excluded_files=excluded_files, excluded_bytes=excluded_bytes, skipped=scan.skipped,
        resume_raw=task_at.checkpoint.raw_offset if task_at else 0,
        resume_archive=task_at.durable_offset if task_at else 0,
    )

