"""The seam between `run` and the two ways of writing an archive (one stream, `single`;
several, `segments`): what a strategy is given (`Attempt`), what it returns (`Outcome`),
and the end both share: the manifest and the access index rendered, what the
destination stored checked against what was streamed, checkpoints kept in the journal.

`run` picks the strategy once, from the parsed destination and the bucket's policy, as
cutadapt's ``make_runner`` picks serial or parallel; a strategy knows nothing of the
decision to resume, the statuses before and after it, or the closing walk, and `run`
nothing of how many streams there are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import __version__
from ..config import ArchiveOptions
from ..errors import DestinationError, IntegrityError
from ..progress import Progress
from ..runfolder.scan import Entry, Manifest
from ..state.checkpoint import Checkpoint
from ..state.journal import Journal, Task
from ..storage import access_index, manifest_tsv, ratarmount_index, read_indexes
from ..storage.gzipframe import AccessPoint
from ..storage.layout import Location
from ..storage.sink import ArchiveInfo, Sink, Stored
from .blockgzip import Codec
from .pipeline import Saved
from .tarstream import TarLayout

__all__ = [
    "Attempt",
    "JournalStore",
    "Outcome",
    "Strategy",
    "archive_info",
    "check_stored",
    "render_index",
    "render_manifest",
    "start_read_indexes",
    "write_read_indexes",
]


@dataclass(frozen=True)
class Attempt:
    """One process's attempt at one run's archive, as `run` hands it to a strategy."""

    name: str
    rundir: Path
    manifest: Manifest
    layout: TarLayout
    codec: Codec
    options: ArchiveOptions  # read_threads resolved
    journal: Journal
    task: Task  # the run's row as the attempt starts
    where: Location
    sink: Sink  # the single stream's destination (segments open one per part)
    saved: Saved | None  # the single stream's checkpoint to resume from (segments keep theirs per segment)
    progress: Progress
    walk_again: Callable[[], None]  # call once every byte of the run folder has been read


@dataclass(frozen=True)
class Outcome:
    """What producing and storing the archive came to, however many streams it took."""

    stored: Stored
    tar_crc32: int
    resumed_from_raw: int
    resumed_from_archive: int
    raw_processed: int
    discarded: int
    stored_bytes: int


class Strategy(Protocol):
    """One way of writing the archive: produce, store, verify, and return what was stored."""

    streams: int  # upload streams (1: the single stream)

    def run(self, attempt: Attempt) -> Outcome: ...


def archive_info(attempt: Attempt, last: Checkpoint) -> ArchiveInfo:
    """What the destination records with what was streamed up to ``last``."""
    return ArchiveInfo(
        run=attempt.name,
        size=last.gz_offset,
        crc32c=last.crc32c,
        raw_bytes=attempt.layout.size,
        file_count=attempt.manifest.file_count,
        tar_crc32=last.crc32,
        compression=attempt.codec.name,
        tool_version=__version__,
    )


def check_stored(stored: Stored, info: ArchiveInfo, shown: str | None = None) -> None:
    """What the destination read back must be what was sent (``shown``: how to name it)."""
    if stored.crc32c != info.crc32c or stored.size != info.size:
        raise IntegrityError(
            f"{shown or stored.location} holds {stored.size} bytes with crc32c {stored.crc32c:08x}, but "
            f"{info.size} bytes with crc32c {info.crc32c:08x} were sent: the archive is not trusted"
        )


def render_manifest(attempt: Attempt, crcs: list[int | None]) -> bytes:
    """``<run>.manifest.tsv``, from each member's crc32c (in manifest order)."""
    return manifest_tsv.render(attempt.manifest.entries, crcs, attempt.layout.starts, attempt.options.exclude)


def render_index(attempt: Attempt, points: list[AccessPoint]) -> bytes | None:
    """``<run>.index.tsv`` from the access points recorded; None for a plain tar (any
    offset is a place to start) or when there are none."""
    options = attempt.options
    if not attempt.codec.header() or not points or not options.access_interval:
        return None
    return access_index.render(sorted(set(points)), options.block_size, options.access_interval)


def _read_indexes_wanted(attempt: Attempt) -> bool:
    return attempt.where.kind in ("local", "gcs") and bool(attempt.codec.header()) \
        and bool(attempt.options.access_interval)


def start_read_indexes(attempt: Attempt) -> Future[ratarmount_index.Table] | None:
    """Begin ratarmount's ``files`` rows for the indexes other tools read, on a thread of
    their own while the stream runs: they need only the manifest and the layout, and on
    55,000 small files they are about a second of Python that would otherwise follow
    the stream on its one main thread (benchmarks: the main thread's share)."""
    if not _read_indexes_wanted(attempt):
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="read-indexes")
    try:
        return pool.submit(_files_table, attempt.manifest.entries, attempt.layout.starts,
                           attempt.layout.size - read_indexes.EOF_MARKER)
    finally:
        pool.shutdown(wait=False)


def _files_table(entries: Sequence[Entry], starts: Sequence[int], tar_end: int) -> ratarmount_index.Table:
    return ratarmount_index.table(manifest_tsv.rows_of(entries, starts), tar_end, [(e.uid, e.gid) for e in entries])


def write_read_indexes(attempt: Attempt, stored: Stored, points: list[AccessPoint],
                       files: Future[ratarmount_index.Table] | None) -> None:
    """The indexes other tools read (`read_indexes`: ``<archive>.gzidx``,
    ``<archive>.index.sqlite``) beside a stored gzip archive, from its manifest and access
    points (``files``: `start_read_indexes`). They are a convenience: a failure is a note
    naming the command that writes them later (``sruns-stream index``), never a failed
    archive."""
    options = attempt.options
    if files is None or not points or not _read_indexes_wanted(attempt):
        return
    archive = f"gs://{stored.location}" if attempt.where.kind == "gcs" else stored.location
    try:
        rendered = read_indexes.render_with(files.result(), sorted(set(points)), options.access_interval,
                                            stored.size, attempt.layout.size, __version__)
        if attempt.where.kind == "gcs":
            from ..storage.gcs.parts import helper_class  # GCS's libraries load only for gs://

            read_indexes.write_beside(archive, rendered, storage_class=helper_class(options),
                                      kms_key=options.kms_key_name)
        else:
            read_indexes.write_beside(archive, rendered)
    except (DestinationError, IntegrityError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        attempt.progress.note(f"{attempt.name}: the indexes for other tools were not written ({why}); "
                              f"`sruns-stream index {archive}` writes them")


class JournalStore:
    """A range's checkpoints in the journal: the run's row (``segment`` None, the single
    stream) or one row of its ``segments`` table."""

    def __init__(self, journal: Journal, task: Task, segment: int | None = None) -> None:
        self.journal, self.task, self.segment = journal, task, segment

    def record(self, durable: int, cp: Checkpoint, files_done: list[tuple[int, int]], files_crc: int,
               state: str | None, points: list[AccessPoint]) -> None:
        if self.segment is None:
            self.journal.record_checkpoint(self.task, durable, cp, files_done, files_crc, state, points)
        else:
            self.journal.record_segment_checkpoint(self.task, self.segment, durable, cp, files_done, files_crc,
                                                   state, points)

    def forget_member_crcs(self) -> None:
        if self.segment is None:
            self.journal.forget_member_crcs(self.task.name)
        else:
            self.journal.forget_segment_member_crcs(self.task.name, self.segment)
