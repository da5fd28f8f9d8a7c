"""The archive decision: already archived, resume from the journal's checkpoint, or start
from zero, and why. `archive` acts on it; `archive --dry-run` only reports it.

"Already archived" is answered only for a ``complete`` row of the same destination and
``exclude`` patterns, made from the same folder (path and contents, compared with the
journal's manifest), whose archive is still there with the recorded size (and crc32c
where the store reports it without a read). sruns-monitor's rows kept no manifest: only
their object can be checked.

A resume needs the same folder path, destination and stream parameters, a checkpoint
whose digest checks out, and a manifest the folder still matches (`_resumable_manifest`).
Anything else starts from zero, with the reason said.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import isal

from ..config import ArchiveOptions
from ..runfolder.scan import Entry, Manifest, compare, fingerprint, scan_run_folder
from ..state.journal import Journal, Task, files_crc32c
from ..storage.layout import storage_uri

__all__ = ["LEGACY_NOTE", "Decision", "Probe", "decide", "identity", "stream_params"]

# (destination, location, volumes=…) -> (size, crc32c) or None: `stores.probe_archive`.
Probe = Callable[..., "tuple[int, int | None] | None"]

LEGACY_NOTE = (
    "archived by sruns-monitor, which kept no manifest: its contents cannot be compared with the folder; "
    "--force archives it again with sruns-stream"
)


@dataclass(frozen=True)
class Decision:
    """What to do with a run, and what deciding it found on the way."""

    action: Literal["already archived", "resume", "archive"]
    reason: str | None = None  # why from zero (None: nothing to resume); for "already archived", a note
    manifest: Manifest | None = None  # the manifest to resume with ("resume" only)
    scan: Manifest | None = None  # the folder as scanned while deciding, if it was: no need to scan again
    entries_missing: bool = False  # resumed from a new scan: the journal lacks the entries


def stream_params(options: ArchiveOptions) -> dict[str, Any]:
    """What the archive bytes depend on: a resume with other values starts from zero."""
    return {
        "format": 1,
        "isal": isal.__version__,
        "compression": options.compression,
        "level": options.level if options.compression != "none" else None,
        "block_size": options.block_size,
        "access_interval": options.access_interval if options.compression != "none" else None,
        # Only when there are some: a journal from before exclusions existed still resumes.
        **({"exclude": list(options.exclude)} if options.exclude else {}),
    }


def identity(entries: list[Entry]) -> str:
    """A digest of what `fingerprint` leaves out and a resume still compares
    (`runfolder.Manifest.changed_entries`): each entry's inode and ctime, the run
    folder's own ctime aside."""
    h = hashlib.sha256()
    for e in entries:
        h.update(b"%b\0%d\0%d\n" % (e.path, e.ino, e.ctime_ns if e.rel else 0))
    return h.hexdigest()


def decide(
    task: Task | None,
    root: Path,
    destination: str,
    options: ArchiveOptions,
    journal: Journal | None,
    probe: Probe,
    *,
    force: bool = False,
    scan: Manifest | None = None,
) -> Decision:
    """Already archived, resume, or from zero, for run folder ``root`` (resolved) whose
    journal row is ``task``. ``options.read_threads`` is the number the folder is read
    with; ``scan`` is the folder already scanned, if the caller has it."""
    reason: str | None = None
    if task and task.status == "complete" and not force and task.destination == destination:
        assert journal is not None
        if task.manifest_id is None:  # only sruns-monitor's rows are complete without one
            reason = _legacy_gone(task, probe)
            if reason is None:
                return Decision("already archived", LEGACY_NOTE)
        elif _other_exclusions(task, options):
            reason = _other_exclusions(task, options)
        else:
            scan = scan or scan_run_folder(root, options.read_threads or 1, options.exclude)
            reason = _not_archived_because(task, root, scan, journal, probe)
            if reason is None:
                return Decision("already archived", scan=scan)
    if reason is None:
        reason = _resume_problem(task, root, destination, stream_params(options), force)
    if reason == "" and task is not None and journal is not None:
        manifest, reason, rescan = _resumable_manifest(task, root, journal, options)
        scan = scan or rescan
        if manifest is not None:
            return Decision("resume", manifest=manifest, scan=scan, entries_missing=rescan is not None)
    return Decision("archive", reason or None, scan=scan)


def _other_exclusions(task: Task, options: ArchiveOptions) -> str | None:
    """Why an archive made with other `exclude` patterns is not this request's, or None."""
    before, now = task.params.get("exclude", []), list(options.exclude)
    if before == now:
        return None
    return (f"it was archived leaving out {', '.join(before) or 'nothing'}; "
            f"now {', '.join(now) or 'nothing'} is left out")


def _legacy_gone(task: Task, probe: Probe) -> str | None:
    """For a run sruns-monitor archived (it kept no manifest, so only the object can be
    checked): why it must be archived again, or None while its object is there."""
    assert task.destination is not None and task.location is not None
    if probe(task.destination, task.location, volumes=task.volume_locations) is None:
        return f"the archive sruns-monitor recorded at {storage_uri(task.location)} is gone"
    return None


def _not_archived_because(
    task: Task, root: Path, scan: Manifest, journal: Journal, probe: Probe
) -> str | None:
    """Why a `complete` row does not prove ``root`` archived now, or None if it does."""
    if task.destination == "null":
        return "the null destination keeps nothing"
    if task.rundir != str(root):
        return f"the journal's archive of {task.name} was made from {task.rundir}, not {root}"
    diff = compare(journal.entries(task.name), scan)
    if diff:
        return f"the run folder changed since it was archived: {diff.summary()}"
    assert task.destination is not None
    where = task.location or "?"
    found = probe(task.destination, where, volumes=task.volume_locations) if task.location else None
    if found is None:
        return f"the archive recorded at {where} no longer exists"
    size, crc = found
    if size != task.archive_bytes:
        return f"{where} holds {size} bytes, but the archive had {task.archive_bytes}"
    if crc is not None and task.crc32c is not None and f"{crc:08x}" != task.crc32c:
        return f"{where} has crc32c {crc:08x}, but the archive had {task.crc32c}"
    return None


def _resume_problem(
    task: Task | None, rundir: Path, destination: str, params: dict[str, Any], force: bool
) -> str | None:
    """Why the journal row cannot be resumed, "" if it may be (after the checks on the
    folder), or None when there is nothing to resume."""
    if task is None or task.status == "new" and not task.manifest_id:
        return None
    if force:
        return "--force was given"
    if not task.manifest_id:
        if not task.durable_offset:
            return None  # nothing was ever stored: a first start, not a restart
        why = f" ({task.last_error})" if task.last_error else ""
        return f"the last attempt left nothing to resume{why}"
    if task.rundir != str(rundir):
        return f"the journal's attempt was for {task.rundir}"
    if task.destination != destination:
        return f"the destination changed from {task.destination}"
    if task.params != params:
        changed = sorted(k for k in params.keys() | task.params.keys() if task.params.get(k) != params.get(k))
        return f"stream parameters changed ({', '.join(changed)})"
    if not task.checkpoint_intact():
        return "the journal's checkpoint fails its checksum (damaged, or written by an older version)"
    return ""


def _resumable_manifest(
    task: Task, rundir: Path, journal: Journal, options: ArchiveOptions
) -> tuple[Manifest | None, str, Manifest | None]:
    """The manifest to resume with if the folder still matches the attempt's, else (None,
    why not); and the folder scanned again, if it was."""
    threads = options.read_threads or 1
    entries = journal.entries(task.name)
    scan: Manifest | None = None
    if fingerprint(entries) != task.manifest_id:
        if task.manifest_identity is None:  # recorded since; without it a scan proves too little
            return None, "the journal's manifest does not match its fingerprint (damaged)", None
        # The entries are written while the upload starts (`Journal.write_entries`): a crash
        # before they committed leaves chunks stored and checkpointed under a session. A new
        # scan stands for them if it matches both digests taken before the first byte left.
        scan = scan_run_folder(rundir, threads, options.exclude)
        if scan.fingerprint() != task.manifest_id:
            return None, "the journal's manifest is incomplete, and the run folder changed since it was scanned", scan
        if identity(scan.entries) != task.manifest_identity:
            return None, "the journal's manifest is incomplete, and a file was replaced or rewritten in place", scan
        # Slices commit in order: what a crash left is a prefix of the scan's entries. Any
        # other difference is damage, and no scan makes up for it.
        head = scan.entries[: len(entries)]
        if len(entries) >= len(scan.entries) or (fingerprint(head), identity(head)) != (
            fingerprint(entries), identity(entries)
        ):
            return None, "the journal's manifest does not match its fingerprint (damaged)", scan
        entries = scan.entries
    crcs = journal.member_crcs(task.name, len(entries), segment=-1)
    done = [(i, crc) for i, crc in enumerate(crcs) if crc is not None]
    if files_crc32c(0, done) != task.files_crc32c:
        return None, "the journal's member checksums do not match the checkpoint (damaged)", scan
    if scan is not None:
        return scan, "", scan  # scanned just now: it is the folder as it is
    manifest = Manifest(root=rundir, entries=entries)
    change = next(manifest.changed_entries(threads), None)  # the first one decides: stop there
    if change is not None:
        return None, f"the run folder changed since its manifest ({change})", None
    return manifest, "", None
