"""The journal: SQLite state of every run, authoritative and local.

Table ``tasks`` keeps sruns-monitor's columns (``name``, ``pid``, ``tarfile``,
``gcp_tarfile``) so existing tools keep reading it, and adds what streaming needs:
the workflow status, where the archive goes, the destination's resumable state and
the newest checkpoint at or below its durable offset. Table ``manifest`` holds each
run's ordered entries and, as checkpoints land, each finished member's crc32c.

One transaction per durable advance, never per block. Each checkpoint row carries a
digest of itself (``ck_sum``): a resume trusts a checkpoint only if the digest matches,
so one wrong value (a bad disk block, a hand edit) restarts the archive from zero
instead of building a corrupt gzip that checks out. The journal and its ``-wal`` and
``-shm`` files are made 0600 whenever the tool opens them: a GCS session URI in them
is a bearer credential.

A `tasks` table made by sruns-monitor (0.1.9: four columns; 1.x adds ``rundir_path``)
is migrated in place: our columns are added, theirs are kept as they are (sruns-monitor
may read them again after a roll-back) and read where they help. A row it finished
(``gcp_tarfile`` set) is ``complete``; a row it left half-way (``tarfile`` set: a local
tarball may still be on disk, perhaps partial) is archived afresh, and the old
tarball's path is kept in ``legacy_tarfile`` so `status` can say it may be deleted.

The schema's version is SQLite's ``user_version`` (`SCHEMA_VERSION`; 0 in journals from
before it was recorded, and in sruns-monitor's). A journal from a newer sruns-stream is
refused before anything is written (`JournalTooNew`). Only a command that writes migrates:
`Journal(readonly=True)` (status, lookups, dry runs) reads an older journal as it is, its
missing tables and columns filled in a copy in memory, the file untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import google_crc32c

from ..errors import JournalError, JournalTooNew, redact
from ..runfolder.scan import Entry
from ..storage.gzipframe import AccessPoint
from ..storage.layout import destination_of
from .checkpoint import Checkpoint, Cursor

__all__ = [
    "ARCHIVED", "IN_PROGRESS", "SCHEMA_VERSION", "STATUSES", "STATUS_MEANINGS", "EntriesWriter", "Journal",
    "OutboxItem", "SegmentRow", "Task", "WorkflowStatus", "checkpoint_sum", "files_crc32c",
]

# sruns-monitor's workflow_status values, in their order.
WorkflowStatus = Literal[
    "new",
    "starting",
    "tarring",
    "tarring_complete",
    "uploading",
    "uploading_complete",
    "complete",
    "not_running",
]
STATUSES: tuple[WorkflowStatus, ...] = get_args(WorkflowStatus)
# What each value means now that tarring and uploading overlap in one stream (bytes
# leave while the run is still being read). The one statement of it: the journal, the
# Firestore documents and the README's table (checked by a test) all say this.
STATUS_MEANINGS: dict[WorkflowStatus, str] = {
    "new": "seen and recorded (finished on the instrument); not started",
    "starting": "an archive process took it: lock, manifest, destination session opened or resumed",
    "tarring": "streaming: read, tar, gzip and the transfer to the destination run together",
    "tarring_complete": "the whole run has been read and compressed; the tail of the stream is in flight",
    "uploading": "the destination is finishing: last chunk, the manifest, the stored crc32c read back",
    "uploading_complete": "stored and verified, and the folder still held exactly what was archived: "
    "`storage` is usable",
    "complete": "done; the daemon may move the run folder from here on (it checks the folder again first)",
    "not_running": "failed, stopped, or the folder changed under it; `last_error` says why (empty after a "
    "clean stop, which `interrupted_at` dates); the next attempt resumes when it can, else starts from zero",
}
# The two questions every reader of a row asks, answered here once from the meanings above.
# In progress: an archive process has taken the run and not yet let go (`uploading_complete`
# too: `complete` is still to be written); whether that process is alive is `process.alive`.
IN_PROGRESS: frozenset[WorkflowStatus] = frozenset(
    {"starting", "tarring", "tarring_complete", "uploading", "uploading_complete"}
)
# Archived: stored and verified, so ``location`` (or sruns-monitor's ``gcp_tarfile``) can
# be read back. Only `complete` lets the daemon move the run folder.
ARCHIVED: frozenset[WorkflowStatus] = frozenset({"uploading_complete", "complete"})

# Bumped with every change to _SCHEMA; recorded in the journal as user_version.
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    pid INTEGER,
    tarfile TEXT,
    gcp_tarfile TEXT,
    status TEXT NOT NULL DEFAULT 'new',
    rundir TEXT,
    destination TEXT,
    location TEXT,
    sink_state TEXT,
    params TEXT,
    manifest_id TEXT,
    durable_offset INTEGER NOT NULL DEFAULT 0,
    ck_raw INTEGER NOT NULL DEFAULT 0,
    ck_gz INTEGER NOT NULL DEFAULT 0,
    ck_crc32 INTEGER NOT NULL DEFAULT 0,
    ck_crc32c INTEGER NOT NULL DEFAULT 0,
    ck_member INTEGER NOT NULL DEFAULT 0,
    ck_member_crc32c INTEGER NOT NULL DEFAULT 0,
    ck_window_crc32 INTEGER NOT NULL DEFAULT 0,
    ck_files_crc32c INTEGER NOT NULL DEFAULT 0,
    ck_sum TEXT,
    raw_bytes INTEGER,
    archive_bytes INTEGER,
    file_count INTEGER,
    crc32c TEXT,
    compression TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    session_started_at REAL,
    created_at REAL,
    updated_at REAL,
    finished_at REAL,
    rundir_found TEXT,
    run_id TEXT,
    instrument TEXT,
    instrument_status TEXT,
    pid_start INTEGER,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    gave_up_at REAL,
    moved_to TEXT,
    moved_at REAL,
    swept_at REAL,
    published TEXT,
    changed_at REAL,
    legacy_tarfile TEXT,
    volumes TEXT,
    raw_total INTEGER,
    raw_resumed INTEGER,
    interrupted_at REAL,
    manifest_identity TEXT,
    compliance TEXT
);
CREATE TABLE IF NOT EXISTS manifest (
    task TEXT NOT NULL,
    idx INTEGER NOT NULL,
    path BLOB NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    linkname BLOB NOT NULL,
    ino INTEGER NOT NULL DEFAULT 0,
    ctime_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_crcs (
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pairs BLOB NOT NULL,
    segment INTEGER NOT NULL DEFAULT -1,
    points BLOB,
    PRIMARY KEY (task, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    task TEXT NOT NULL,
    seq INTEGER NOT NULL,
    raw_start INTEGER NOT NULL,
    raw_end INTEGER NOT NULL,
    object TEXT NOT NULL,
    sink_state TEXT,
    durable_offset INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    files_crc32c INTEGER NOT NULL DEFAULT 0,
    ck_sum TEXT,
    size INTEGER,
    crc32c INTEGER,
    raw_crc32 INTEGER,
    ends TEXT,
    PRIMARY KEY (task, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Task:
    """One row of ``tasks``."""

    name: str
    pid: int | None
    tarfile: str | None
    gcp_tarfile: str | None
    status: WorkflowStatus
    rundir: str | None
    destination: str | None
    location: str | None
    sink_state: str | None
    params: dict[str, Any]
    manifest_id: str | None
    durable_offset: int
    checkpoint: Checkpoint
    files_crc32c: int  # running crc32c over the members the checkpoint has finished
    ck_sum: str | None
    raw_bytes: int | None
    archive_bytes: int | None
    file_count: int | None
    crc32c: str | None
    compression: str | None
    attempts: int
    last_error: str | None
    session_started_at: float | None
    created_at: float | None
    updated_at: float | None
    finished_at: float | None
    rundir_found: str | None
    run_id: str | None
    instrument: str | None
    instrument_status: str | None
    pid_start: int | None
    failures: int
    next_attempt_at: float | None
    gave_up_at: float | None
    moved_to: str | None
    moved_at: float | None
    swept_at: float | None
    published: str | None
    changed_at: float | None  # when the run folder was last found changed after a scan
    legacy_tarfile: str | None  # sruns-monitor's local tarball of a run it left half-way
    volumes: str | None = None  # JSON list of the volumes' locations, when the archive is several
    # Recorded when an attempt's stream starts, for `status` (percent done, rate, ETA): the
    # tar stream's size and the raw offset it resumed from. Defaults: a journal made
    # before these columns existed is read by `Journal(readonly=True)` without migrating.
    raw_total: int | None = None
    raw_resumed: int | None = None
    interrupted_at: float | None = None  # a clean stop (SIGTERM, Ctrl-C): not an error
    # A digest of each entry's inode and ctime, recorded with ``manifest_id`` before the
    # first byte leaves: with it a resume can take the entries from a new scan of the
    # folder when a crash came before `write_entries` committed them (see `archive`).
    manifest_identity: str | None = None
    # GCS: the archive's storage class, Cloud KMS key, retention end and holds as GCS
    # reported them once it was stored (JSON; `compliance_view`).
    compliance: str | None = None

    @property
    def compliance_view(self) -> dict[str, Any]:
        """storage_class, kms_key_name, retain_until and holds (None/[] when not known)."""
        try:
            found = json.loads(self.compliance) if self.compliance else {}
        except ValueError:
            found = {}
        if not isinstance(found, dict):
            found = {}
        return {"storage_class": found.get("storage_class"), "kms_key_name": found.get("kms_key_name"),
                "retain_until": found.get("retain_until"), "holds": list(found.get("holds") or [])}

    @property
    def volume_locations(self) -> tuple[str, ...]:
        """Where each volume is, in order (empty when the archive is one object or file)."""
        return tuple(json.loads(self.volumes)) if self.volumes else ()

    def checkpoint_intact(self) -> bool:
        """Whether the checkpoint fields are the ones `record_checkpoint` wrote."""
        return self.ck_sum == checkpoint_sum(
            self.name, self.durable_offset, self.checkpoint, self.files_crc32c, self.sink_state,
            self.params, self.manifest_id,
        )


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One segment of an archive uploaded in parallel: its raw range, its temporary
    object, its progress (as a run's row keeps it for a single stream) and, once done,
    what the whole archive is assembled from."""

    task: str
    seq: int
    raw_start: int
    raw_end: int
    object: str
    sink_state: str | None
    durable_offset: int
    checkpoint: Checkpoint | None
    files_crc32c: int
    ck_sum: str | None
    size: int | None  # set when the segment's object is stored and verified
    crc32c: int | None
    raw_crc32: int | None
    ends: dict[str, Any] | None  # the partial members at either end (see `segments`)

    @property
    def done(self) -> bool:
        return self.size is not None

    def checkpoint_intact(self, params: dict[str, Any], manifest_id: str | None) -> bool:
        return self.checkpoint is not None and self.ck_sum == checkpoint_sum(
            f"{self.task}#{self.seq}", self.durable_offset, self.checkpoint, self.files_crc32c, self.sink_state,
            params, manifest_id,
        )


def checkpoint_sum(
    name: str, durable: int, cp: Checkpoint, files_crc32c: int, sink_state: str | None,
    params: dict[str, Any], manifest_id: str | None,
) -> str:
    """A digest over everything a resume builds on."""
    text = json.dumps(
        [name, durable, cp.raw_offset, cp.gz_offset, cp.crc32, cp.crc32c, cp.cursor.index, cp.cursor.crc32c,
         cp.window_crc32, files_crc32c, sink_state, params, manifest_id],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class Journal:
    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        """Open (or create) the journal and bring it up to this schema. ``readonly``
        writes nothing at all, not even SQLite's ``-wal`` and ``-shm`` files (`status`,
        `archive --dry-run`); an older journal is read as this schema, from a migrated copy
        in memory. A journal of a newer schema is refused either way, before any write."""
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if readonly:
                self._db = _connect_read_only(self.path)
                if _lacks_schema(self._db):
                    self._db = _migrated_copy(self._db, self.path)
                return
            if self.path.exists():
                _connect_read_only(self.path).close()  # a newer schema is refused here, untouched
            else:
                # Create it 0600 before SQLite does: it will hold session URIs.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            # One connection, shared by the threads of a parallel upload under self._lock.
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; a power loss can lose the
            # last transactions, which only makes a resume start a little earlier.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # After the first statements: SQLite has made -wal and -shm by now. A journal
            # that sruns-monitor (or an older sruns-stream) made is 0644 until here.
            self._restrict()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _restrict(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.path}{suffix}")
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                path.chmod(0o600)

    def _add_columns(self, table: str) -> set[str]:
        """Add the columns of ``table`` in _SCHEMA that an older journal lacks; returns
        the columns it had before."""
        have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for name, decl in _schema_columns(table):
            if name not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        return have

    def _migrate(self) -> None:
        """Bring a journal an older tool made up to this schema (see the module docstring)."""
        self._add_columns("manifest")
        self._add_columns("member_crcs")
        have = self._add_columns("tasks")
        if "status" in have:
            return
        with self._tx() as db:
            # sruns-monitor wrote '' (not NULL) for what it had not done yet, and pid 0.
            db.execute("UPDATE tasks SET pid = NULL")
            if "rundir_path" in have:  # 1.x: where the run folder was
                db.execute(
                    "UPDATE tasks SET rundir_found = rundir_path WHERE rundir_path IS NOT NULL AND rundir_path != ''"
                )
            # It uploaded, then set gcp_tarfile ("bucket/basedir/run/file"): archived.
            done = db.execute("SELECT name, gcp_tarfile FROM tasks WHERE gcp_tarfile IS NOT NULL AND gcp_tarfile != ''")
            for name, gcp_tarfile in done.fetchall():
                db.execute(
                    "UPDATE tasks SET status = 'complete', location = gcp_tarfile, destination = ? WHERE name = ?",
                    (destination_of(name, gcp_tarfile), name),
                )
            # It tarred to local disk, then stopped: start again by streaming, and keep the
            # old tarball's path so status can say it is no longer needed.
            db.execute(
                "UPDATE tasks SET legacy_tarfile = tarfile, last_error = 'sruns-monitor left this run half-way;"
                " it is archived again by streaming' WHERE status != 'complete' AND tarfile IS NOT NULL"
                " AND tarfile != ''"
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield from self._tx_locked()

    def _tx_locked(self) -> Iterator[sqlite3.Connection]:
        try:
            if self._db.in_transaction:
                # A signal (SIGTERM unwinds as KeyboardInterrupt) landed between our BEGIN
                # and its try, or before a ROLLBACK: drop that half-done transaction, or
                # the row could never again be marked resumable.
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def ensure(self, name: str, *, status: WorkflowStatus | None = None, **fields: Any) -> None:
        """Create the task row as `new` if it does not exist, then set ``status`` and ``fields``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO tasks (name, status, created_at) VALUES (?, 'new', ?)"
                " ON CONFLICT(name) DO NOTHING",
                (name, time.time()),
            )
        if status is not None or fields:
            self.update(name, status=status, **fields)

    def get(self, name: str) -> Task | None:
        try:
            with self._lock:
                cur = self._db.execute("SELECT * FROM tasks WHERE name = ?", (name,))
                row = cur.fetchone()
                cols = [d[0] for d in cur.description]
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return _task(dict(zip(cols, row, strict=True))) if row else None

    def tasks(self) -> list[Task]:
        try:
            with self._lock:
                cur = self._db.execute("SELECT * FROM tasks ORDER BY name")
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
            return [_task(dict(zip(cols, row, strict=True))) for row in rows]
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def start_fresh(
        self,
        name: str,
        *,
        rundir: str,
        destination: str,
        tarfile: str,
        params: dict[str, Any],
        manifest_id: str,
        manifest_identity: str | None = None,
    ) -> None:
        """Record a new attempt from zero: no checkpoint, no member crc32c, no manifest
        entries yet (`write_entries` adds them; until it has, the manifest does not match
        ``manifest_id``, and a resume needs the folder scanned again to match it and
        ``manifest_identity``)."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM manifest WHERE task = ?", (name,))
            db.execute("DELETE FROM member_crcs WHERE task = ?", (name,))
            db.execute("DELETE FROM segments WHERE task = ?", (name,))
            db.execute(
                "INSERT INTO tasks (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                (name, now),
            )
            db.execute(
                "UPDATE tasks SET pid = ?, tarfile = ?, gcp_tarfile = NULL, status = 'starting',"
                " rundir = ?, destination = ?, location = NULL, sink_state = NULL, params = ?,"
                " manifest_id = ?, durable_offset = 0, ck_raw = 0, ck_gz = 0, ck_crc32 = 0,"
                " ck_crc32c = 0, ck_member = 0, ck_member_crc32c = 0, ck_window_crc32 = 0,"
                " ck_files_crc32c = 0, ck_sum = ?, manifest_identity = ?, raw_bytes = NULL,"
                " archive_bytes = NULL, file_count = NULL, crc32c = NULL, compression = NULL,"
                " last_error = NULL, session_started_at = NULL, finished_at = NULL, changed_at = NULL,"
                " updated_at = ? WHERE name = ?",
                (os.getpid(), tarfile, rundir, destination, json.dumps(params, sort_keys=True),
                 manifest_id, checkpoint_sum(name, 0, Checkpoint.start(), 0, None, params, manifest_id),
                 manifest_identity, now, name),
            )

    def write_entries(self, name: str, entries: Sequence[Entry]) -> EntriesWriter:
        """Insert the manifest's entries on a thread with a connection of its own, while
        the stream starts: on a 400,000-file run that is 3 to 6.5 s, which would delay the
        first byte as long if it came first. Wait for it (`wait`) before the archive is
        reported done. A crash before it committed leaves entries that do not match the
        fingerprint while chunks are stored and checkpointed: the next attempt scans the
        folder again and resumes if the scan matches ``manifest_id`` and
        ``manifest_identity`` (see `archive`), else starts from zero."""
        return EntriesWriter(self.path, name, entries)

    def entries(self, name: str) -> list[Entry]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT path, kind, size, mode, mtime_ns, uid, gid, linkname, ino, ctime_ns FROM manifest"
                    " WHERE task = ? ORDER BY idx",
                    (name,),
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return [Entry(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), r[8], r[9]) for r in rows]

    def member_crcs(self, name: str, count: int, segment: int | None = None) -> list[int | None]:
        """Each of the ``count`` members' crc32c recorded so far (None: not yet, or not a
        file), by every stream of the run or by one (``segment``: -1 is the single stream)."""
        crcs: list[int | None] = [None] * count
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT pairs FROM member_crcs WHERE task = ? AND (? IS NULL OR segment = ?) ORDER BY seq",
                    (name, segment, segment),
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        for (blob,) in rows:
            pairs = _unpack(blob)
            for idx, crc in zip(pairs[::2], pairs[1::2], strict=True):
                if idx < count:
                    crcs[idx] = crc
        return crcs

    def access_points(self, name: str, segment: int = -1) -> list[AccessPoint]:
        """The access points recorded by the single stream or by one segment (offsets in
        its own output), in order."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT points FROM member_crcs WHERE task = ? AND segment = ? AND points IS NOT NULL ORDER BY seq",
                    (name, segment),
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        out: list[AccessPoint] = []
        for (blob,) in rows:
            flat = _unpack_points(blob)
            out.extend(AccessPoint(raw, at) for raw, at in zip(flat[::2], flat[1::2], strict=True))
        return out

    def forget_member_crcs(self, name: str) -> None:
        """An attempt starting over from zero with the same manifest records them anew."""
        with self._tx() as db:
            db.execute("DELETE FROM member_crcs WHERE task = ? AND segment = -1", (name,))

    def update(self, name: str, *, status: WorkflowStatus | None = None, **fields: Any) -> None:
        """Set a task's status (None: leave it) and named columns (names are ours, never
        user input). ``status`` is typed so that mypy refuses a misspelt one; the check
        here catches one passed in an untyped ``**fields`` dict."""
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown workflow status {status!r}: one of {', '.join(STATUSES)}")
            fields["status"] = status
        fields["updated_at"] = time.time()
        fields.update({k: redact(str(v)) for k, v in fields.items() if k == "last_error" and v})  # on to logs, mail
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"unknown task columns {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE tasks SET {assignments} WHERE name = ?", (*fields.values(), name))

    def record_checkpoint(
        self,
        task: Task,
        durable: int,
        cp: Checkpoint,
        files_done: list[tuple[int, int]],
        files_crc32c: int,
        sink_state: str | None,
        points: Sequence[AccessPoint] = (),
    ) -> None:
        """One durable advance: the offset, the checkpoint under it, members finished and
        access points passed.

        ``task`` is the attempt's row as `start_fresh` left it: its params and manifest
        id go into the checkpoint's digest."""
        ck_sum = checkpoint_sum(task.name, durable, cp, files_crc32c, sink_state, task.params, task.manifest_id)
        with self._tx() as db:
            if files_done or points:
                # One row per checkpoint, the members' (index, crc32c) packed: one UPDATE per
                # file cost more than a second on a 55,000-file run.
                db.execute(
                    "INSERT INTO member_crcs (task, seq, pairs, points) VALUES"
                    " (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM member_crcs WHERE task = ?), ?, ?)",
                    (task.name, task.name, _pack(files_done), _pack_points(points)),
                )
            db.execute(
                "UPDATE tasks SET durable_offset = ?, ck_raw = ?, ck_gz = ?, ck_crc32 = ?,"
                " ck_crc32c = ?, ck_member = ?, ck_member_crc32c = ?, ck_window_crc32 = ?,"
                " ck_files_crc32c = ?, ck_sum = ?, sink_state = ?, updated_at = ? WHERE name = ?",
                (durable, cp.raw_offset, cp.gz_offset, cp.crc32, cp.crc32c, cp.cursor.index,
                 cp.cursor.crc32c, cp.window_crc32, files_crc32c, ck_sum, sink_state, time.time(), task.name),
            )

    # Segments of an archive uploaded in parallel (see `segments`).

    def plan_segments(self, name: str, bounds: Sequence[tuple[int, int, str]]) -> None:
        """Start the segments afresh: one row per (raw start, raw end, object), no progress."""
        with self._tx() as db:
            db.execute("DELETE FROM segments WHERE task = ?", (name,))
            db.execute("DELETE FROM member_crcs WHERE task = ?", (name,))
            db.executemany(
                "INSERT INTO segments (task, seq, raw_start, raw_end, object) VALUES (?, ?, ?, ?, ?)",
                ((name, i, a, b, obj) for i, (a, b, obj) in enumerate(bounds)),
            )

    def plan_segment_again(self, name: str, seq: int) -> None:
        """Forget one segment's progress and result: it is uploaded again from its start."""
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET sink_state = NULL, durable_offset = 0, checkpoint = NULL, files_crc32c = 0,"
                " ck_sum = NULL, size = NULL, crc32c = NULL, raw_crc32 = NULL, ends = NULL WHERE task = ? AND seq = ?",
                (name, seq),
            )

    def segments(self, name: str) -> list[SegmentRow]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT task, seq, raw_start, raw_end, object, sink_state, durable_offset, checkpoint,"
                    " files_crc32c, ck_sum, size, crc32c, raw_crc32, ends FROM segments WHERE task = ? ORDER BY seq",
                    (name,),
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        out = []
        for r in rows:
            cp = None
            if r[7]:
                where = f"journal {self.path}, run {name!r}, segment {r[1]}"
                try:
                    f = json.loads(r[7])
                except ValueError as exc:
                    raise JournalError(f"{where}: its checkpoint is not JSON (damaged)") from exc
                if not isinstance(f, list):
                    raise JournalError(f"{where}: its checkpoint is not a list (damaged)")
                cp = _checkpoint(f, where)
            out.append(SegmentRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], cp, r[8], r[9], r[10], r[11], r[12],
                                  json.loads(r[13]) if r[13] else None))
        return out

    def progress(self, task: Task) -> tuple[int, int]:
        """(raw bytes archived, archive bytes stored durably) of a run: its row's
        checkpoint, or, for an archive uploaded in segments, theirs summed."""
        if task.status in ARCHIVED and task.raw_bytes is not None:
            return task.raw_bytes, task.archive_bytes or 0
        segments = self.segments(task.name)
        if not segments:
            return task.checkpoint.raw_offset, task.durable_offset
        raw = stored = 0
        for seg in segments:
            if seg.done:
                raw, stored = raw + seg.raw_end - seg.raw_start, stored + (seg.size or 0)
            elif seg.checkpoint is not None:
                raw += max(0, seg.checkpoint.raw_offset - seg.raw_start)
                stored += seg.durable_offset
        return raw, stored

    def record_segment_checkpoint(
        self, task: Task, seq: int, durable: int, cp: Checkpoint, files_done: list[tuple[int, int]],
        files_crc32c: int, sink_state: str | None, points: Sequence[AccessPoint] = (),
    ) -> None:
        """A segment's durable advance, as `record_checkpoint` is the single stream's."""
        ck = json.dumps([cp.raw_offset, cp.gz_offset, cp.crc32, cp.crc32c, cp.cursor.index, cp.cursor.crc32c,
                         cp.window_crc32])
        ck_sum = checkpoint_sum(f"{task.name}#{seq}", durable, cp, files_crc32c, sink_state, task.params,
                                task.manifest_id)
        with self._tx() as db:
            if files_done or points:
                db.execute(
                    "INSERT INTO member_crcs (task, seq, pairs, segment, points) VALUES"
                    " (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM member_crcs WHERE task = ?), ?, ?, ?)",
                    (task.name, task.name, _pack(files_done), seq, _pack_points(points)),
                )
            db.execute(
                "UPDATE segments SET sink_state = ?, durable_offset = ?, checkpoint = ?, files_crc32c = ?,"
                " ck_sum = ? WHERE task = ? AND seq = ?",
                (sink_state, durable, ck, files_crc32c, ck_sum, task.name, seq),
            )

    def finish_segment(
        self, name: str, seq: int, *, size: int, crc32c: int, raw_crc32: int, ends: dict[str, Any]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET size = ?, crc32c = ?, raw_crc32 = ?, ends = ? WHERE task = ? AND seq = ?",
                (size, crc32c, raw_crc32, json.dumps(ends, sort_keys=True), name, seq),
            )

    def segment_member_crcs(self, name: str, seq: int) -> list[tuple[int, int]]:
        """The (index, crc32c) pairs a segment recorded, in order."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT pairs FROM member_crcs WHERE task = ? AND segment = ? ORDER BY seq", (name, seq)
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        out: list[tuple[int, int]] = []
        for (blob,) in rows:
            pairs = _unpack(blob)
            out.extend(zip(pairs[::2], pairs[1::2], strict=True))
        return out

    def forget_segment_member_crcs(self, name: str, seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM member_crcs WHERE task = ? AND segment = ?", (name, seq))

    # The Firestore outbox: status updates wait here, in order, until delivered, so a
    # Firestore outage never stops or fails an archive.

    def enqueue(self, collection: str, doc_id: str, payload: dict[str, Any]) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (collection, doc_id, payload, created_at) VALUES (?, ?, ?, ?)",
                (collection, doc_id, json.dumps(payload, sort_keys=True), time.time()),
            )
            return int(cur.lastrowid or 0)

    def outbox(self, limit: int = 100) -> list[OutboxItem]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, collection, doc_id, payload, attempts FROM outbox ORDER BY seq LIMIT ?",
                    (limit,),
                ).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def delivered(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def delivery_failed(self, seq: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error[:500], seq)
            )


def _pack(pairs: list[tuple[int, int]]) -> bytes:
    """(index, crc32c) pairs as little-endian uint32s, whatever host writes them."""
    flat = array("I", [v for pair in pairs for v in pair])
    if sys.byteorder == "big":
        flat.byteswap()
    return flat.tobytes()


def _pack_points(points: Sequence[AccessPoint]) -> bytes | None:
    """(raw offset, output offset) pairs as little-endian uint64s; None when there are none."""
    if not points:
        return None
    flat = array("Q", [v for p in points for v in (p.raw, p.archive)])
    if sys.byteorder == "big":
        flat.byteswap()
    return flat.tobytes()


def _unpack_points(blob: bytes) -> array[int]:
    return _pairs("Q", blob)


def _unpack(blob: bytes) -> array[int]:
    return _pairs("I", blob)


def _pairs(typecode: str, blob: bytes) -> array[int]:
    """A packed column of (a, b) pairs, little-endian; a damaged one is one line."""
    flat = array(typecode)
    data = bytes(blob)
    if len(data) % (2 * flat.itemsize):
        raise JournalError(f"a packed column of {len(data)} bytes is not whole pairs (damaged); "
                           "archive the run again with --force")
    flat.frombytes(data)
    if sys.byteorder == "big":
        flat.byteswap()
    return flat


_ENTRIES_PER_TRANSACTION = 4096
# A test's kill point (tests/test_resume_entries.py): with this set to a path, the entries
# writer creates that file once every slice but the last has committed, with no
# transaction open (the stream's checkpoints go on), and then waits for ever: the test
# kills the process while the upload is under way and the entries are not all committed.
_HOLD_ENTRIES_ENV = "SRUNS_TEST_HOLD_ENTRIES"


class EntriesWriter:
    """A manifest's entries being inserted on their own thread and connection."""

    def __init__(self, path: Path, name: str, entries: Sequence[Entry]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._insert, args=(path, name, entries), name="journal-entries", daemon=True
        )
        self._thread.start()

    def _insert(self, path: Path, name: str, entries: Sequence[Entry]) -> None:
        try:
            db = sqlite3.connect(path, timeout=60, isolation_level=None)
            try:
                db.execute("DELETE FROM manifest WHERE task = ?", (name,))
                # In slices, each its own transaction: the stream's checkpoints wait for the
                # journal's lock at most one slice long.
                hold = os.environ.get(_HOLD_ENTRIES_ENV)
                for first in range(0, len(entries), _ENTRIES_PER_TRANSACTION):
                    if hold and first + _ENTRIES_PER_TRANSACTION >= len(entries):
                        Path(hold).touch()
                        threading.Event().wait()
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany(
                        "INSERT INTO manifest (task, idx, path, kind, size, mode, mtime_ns, uid, gid,"
                        " linkname, ino, ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            (name, i, e.path, e.kind, e.size, e.mode, e.mtime_ns, e.uid, e.gid, e.linkname,
                             e.ino, e.ctime_ns)
                            for i, e in enumerate(entries[first : first + _ENTRIES_PER_TRANSACTION], first)
                        ),
                    )
                    db.execute("COMMIT")
            finally:
                db.close()
        except BaseException as exc:  # noqa: BLE001 - raised by wait() on the caller's thread
            self._error = exc

    def wait(self) -> None:
        """Until the entries are committed; JournalError if they could not be."""
        while self._thread.is_alive():
            self._thread.join(0.1)
        if self._error is not None:
            raise JournalError(f"cannot record the manifest in the journal: {self._error}") from self._error


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    collection: str
    doc_id: str
    payload: dict[str, Any]
    attempts: int


_COLUMNS = {
    "pid", "tarfile", "gcp_tarfile", "status", "rundir", "destination", "location",
    "sink_state", "params", "manifest_id", "durable_offset", "raw_bytes", "archive_bytes",
    "file_count", "crc32c", "compression", "attempts", "last_error", "session_started_at",
    "updated_at", "finished_at", "rundir_found", "run_id", "instrument", "instrument_status",
    "pid_start", "failures", "next_attempt_at", "gave_up_at", "moved_to", "moved_at", "swept_at",
    "published", "changed_at", "legacy_tarfile", "volumes", "raw_total", "raw_resumed", "interrupted_at",
    "manifest_identity", "compliance",
}
_TASK_FIELDS = frozenset(f.name for f in fields(Task))


def files_crc32c(crc: int, files_done: list[tuple[int, int]]) -> int:
    """Extend the running crc32c over finished members (index and crc32c, in order)."""
    if not files_done:
        return crc
    out: int = google_crc32c.extend(crc, b"".join(b"%d %08x\n" % pair for pair in files_done))
    return out


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that creates no file. Beside a WAL (a process has the journal open, or
    it was not checkpointed) SQLite reads both read-only; without one the file holds every
    committed transaction, and ``immutable`` keeps SQLite from creating ``-wal``/``-shm``.
    A journal of a newer schema than this one is refused (`JournalTooNew`)."""
    if not path.is_file():
        raise sqlite3.OperationalError("no such file")
    wal = all(os.path.exists(f"{path}{suffix}") for suffix in ("-wal", "-shm"))
    uri = f"{path.absolute().as_uri()}?{'mode=ro' if wal else 'immutable=1'}"
    db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.close()
        from .. import __version__

        raise JournalTooNew(
            f"journal {path} is from a newer sruns-stream (schema {version}; sruns-stream {__version__} knows "
            f"up to {SCHEMA_VERSION}): upgrade sruns-stream, or give another --journal; the journal was not changed"
        )
    return db


def _schema_columns(table: str) -> list[tuple[str, str]]:
    """``table``'s columns in _SCHEMA, as (name, declaration), its primary key left out."""
    body = _SCHEMA.split(f"CREATE TABLE IF NOT EXISTS {table} (", 1)[1].split("\n)", 1)[0]
    columns = []
    for line in body.strip().splitlines():
        m = re.match(r"\s*(\w+) (.*?),?$", line)
        if m and "PRIMARY KEY" not in m.group(2) and m.group(1) != "PRIMARY":
            columns.append((m.group(1), m.group(2)))
    return columns


def _lacks_schema(db: sqlite3.Connection) -> bool:
    """Whether a table or column of this schema is missing (a journal an older tool made)."""
    for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \(", _SCHEMA):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have or any(name not in have for name, _ in _schema_columns(table)):
            return True
    return False


def _migrated_copy(db: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """An older journal, copied into memory and migrated there: what `status` shows of a
    journal sruns-monitor made, with the file left as it is."""
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        db.backup(memory)
    finally:
        db.close()
    copy = Journal.__new__(Journal)
    copy.path, copy._lock, copy._db = path, threading.RLock(), memory
    memory.executescript(_SCHEMA)
    copy._migrate()
    return memory


# Each checkpoint field's range, in Checkpoint's order (raw and archive offsets, crc32,
# crc32c, member index, member crc32c, window crc32): checked where a row is read, so a
# damaged or hand-edited journal is one line naming it, never a resume from nonsense.
_CK_LIMITS = (1 << 63, 1 << 63, 1 << 32, 1 << 32, 1 << 63, 1 << 32, 1 << 32)


def _checkpoint(values: Sequence[Any], where: str) -> Checkpoint:
    if len(values) != len(_CK_LIMITS):
        raise JournalError(f"{where}: a checkpoint of {len(values)} fields, not {len(_CK_LIMITS)} (damaged)")
    for value, limit in zip(values, _CK_LIMITS, strict=True):
        # NULL: a row with no checkpoint yet (its columns are all NULL).
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit):
            raise JournalError(f"{where}: checkpoint field {value!r} is out of range 0..{limit - 1} (damaged); "
                               "archive the run again with --force")
    raw, gz, crc32, crc32c, member, member_crc32c, window = values
    return Checkpoint(raw, gz, crc32, crc32c, Cursor(member, member_crc32c), window)


def _task(row: dict[str, Any]) -> Task:
    cp = _checkpoint(
        [row.pop(k) for k in ("ck_raw", "ck_gz", "ck_crc32", "ck_crc32c", "ck_member", "ck_member_crc32c",
                              "ck_window_crc32")],
        f"journal row of run {row.get('name')!r}",
    )
    row["files_crc32c"] = row.pop("ck_files_crc32c")
    if row["status"] not in STATUSES:
        # Only damage or a hand edit writes one (`_migrate` sets sruns-monitor's rows, which
        # have no status). Read as not_running, the value that claims nothing: the run is
        # not archived and no process holds it, so the next attempt resumes if its checkpoint
        # holds (its digest does not cover the status) and starts from zero if not; the
        # first status written repairs the row. The reason takes last_error's place.
        row["last_error"] = (f"the journal's status {row['status']!r} is not one of ours (damaged); read as "
                             f"not_running" + (f"; last error: {row['last_error']}" if row["last_error"] else ""))
        row["status"] = "not_running"
    try:
        row["params"] = json.loads(row["params"]) if row["params"] else {}
    except ValueError:
        row["params"] = {"unreadable": row["params"]}  # a damaged row: it resumes nothing
    # Columns another tool added (sruns-monitor 1.x's rundir_path) stay in the table.
    return Task(checkpoint=cp, **{k: v for k, v in row.items() if k in _TASK_FIELDS})
