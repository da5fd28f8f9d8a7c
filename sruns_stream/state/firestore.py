"""Firestore: the run documents downstream tools read (the status mirror and `lookup`).

One document per run, id = run name, in ``firestore_collection``. Field names keep
sruns-monitor's (``name``, ``workflow_status``, ``storage``) so existing downstream
queries keep working; the rest are new:

================== ========= ======================================================
field              type      meaning
================== ========= ======================================================
name               string    the run name (also the document id)
storage            string    where the archive is: ``bucket/path/run.tar.gz`` for GCS
                             (sruns-monitor's form), an absolute path for a local
                             destination. For an archive stored as volumes (larger
                             than ``volume_size``) no object has this name: it is the
                             archive the volumes make up, and ``volumes`` lists them
volumes            array     null, or the volumes' places in order, in the form of
                             ``storage`` (``bucket/path/run.tar.gz.000``, …): their
                             concatenation is the archive
workflow_status    string    one of ``journal.STATUSES`` (meanings: ``journal.STATUS_MEANINGS``)
raw_bytes          integer   size of the tar stream
archive_bytes      integer   size of the stored ``.tar.gz``
crc32c             string    crc32c of the stored object, 8 hex digits
file_count         integer   files in the archive
host               string    host that archived (or is archiving) the run
created_at         timestamp run first recorded
updated_at         timestamp when this state was reached (not when it was mirrored)
started_at         timestamp current attempt started
finished_at        timestamp archive verified
throughput_mb_s    double    raw MB (10^6 bytes) per second of the last attempt
attempts           integer   attempts so far
last_error         string    why the last attempt failed (null once it succeeds)
instrument_status  string    RunCompletionStatus.xml value (RunCompleted, RunErrored,
                             UserEndedEarly, ...), null if the instrument writes none
lease              map       ``{host, expires_at}`` while a daemon holds the run
                             (several hosts only, see `leases.Leases`)
================== ========= ======================================================

Timestamps are Firestore timestamps, not strings: downstream tools can order and filter
on them (``where("finished_at", ">", t)``) and the console shows them as dates.

``workflow_status`` keeps sruns-monitor's values; what each means now is
``journal.STATUS_MEANINGS``.

Writing: the daemon and its workflows call `StatusMirror.publish`, which only appends
to the journal's outbox (SQLite, no network). The daemon calls `StatusMirror.flush`
once per cycle: it delivers the outbox in order with ``set(merge=True)``, each call
bounded by a short timeout, and stops at the first Firestore error, leaving the rest
queued. Firestore down, slow or misconfigured never stops or fails an archive, it only
delays the documents. Delivery is at least once and in order; a merge of the same
fields twice is harmless.

Reading: `lookup` answers "is run X archived, and where?".

Client: ``google.cloud.firestore.Client(project=...)``. The project is the one given,
else ``GOOGLE_CLOUD_PROJECT``, else the library's default (application default
credentials; under the emulator ``google-cloud-firestore-emulator``). With
``FIRESTORE_EMULATOR_HOST`` set, the client talks to the emulator with anonymous
credentials. gRPC does not survive ``fork()``: build mirrors, readers and leases in the
process that uses them (they connect lazily, at the first network call).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from ..config import Config
from ..errors import ConfigError, FirestoreError, JournalError, UsageError
from ..storage.layout import storage_uri
from .journal import ARCHIVED, STATUSES, Journal, OutboxItem, Task, WorkflowStatus

if TYPE_CHECKING:
    # Only for annotations (they are strings at run time): no runtime dependency on
    # typing_extensions for Python 3.10.
    from typing_extensions import Unpack

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_CALL_TIMEOUT_S",
    "DEFAULT_FLUSH_DEADLINE_S",
    "FIRESTORE_ERRORS",
    "Connection",
    "FirestoreMirror",
    "FlushResult",
    "NoMirror",
    "RunFields",
    "RunRecord",
    "StatusMirror",
    "WorkflowStatus",
    "check_document_id",
    "describe_error",
    "fields_from_task",
    "lookup",
    "open_mirror",
]

log = logging.getLogger(__name__)


# A few seconds: long enough for a healthy Firestore across the world (tens of ms), short
# enough that a hung one costs the daemon loop little.
DEFAULT_CALL_TIMEOUT_S = 5.0
DEFAULT_FLUSH_DEADLINE_S = 10.0
# Writes per commit. Firestore allows 500; 100 keeps one commit small and quick.
BATCH_SIZE = 100
# Below this, a call cannot complete anyway: leave the rest for the next flush.
_MIN_CALL_S = 0.05

# Library errors that mean "Firestore could not be asked or refused": converted here,
# at the boundary. GoogleAPIError covers every RPC status, RetryError and timeouts;
# GoogleAuthError covers missing or unrefreshable credentials.
FIRESTORE_ERRORS = (gexc.GoogleAPIError, auth_exc.GoogleAuthError)


class RunFields(TypedDict, total=False):
    """Fields of a partial update: only the keys given are written.

    Timestamps may be given as aware datetimes or as epoch seconds (as the journal
    stores them); a naive datetime is taken as local time, as Python does.
    """

    storage: str | None
    volumes: list[str] | None
    workflow_status: WorkflowStatus
    raw_bytes: int | None
    archive_bytes: int | None
    crc32c: str | None
    file_count: int | None
    host: str | None
    created_at: dt.datetime | float | None
    updated_at: dt.datetime | float | None
    started_at: dt.datetime | float | None
    finished_at: dt.datetime | float | None
    throughput_mb_s: float | None
    attempts: int | None
    last_error: str | None
    instrument_status: str | None
    # GCS, as it reported the archive: class, Cloud KMS key, retention end (RFC 3339), holds.
    storage_class: str | None
    kms_key_name: str | None
    retain_until: str | None
    holds: list[str] | None
    run_id: str | None  # RunInfo.xml's id, which can differ from the folder name
    moved_to: str | None  # where the daemon moved the run folder (completed_runs_dir)
    moved_at: dt.datetime | float | None


_STRINGS = frozenset({"storage", "workflow_status", "crc32c", "host", "last_error", "instrument_status",
                      "storage_class", "kms_key_name", "retain_until", "run_id", "moved_to"})
_INTS = frozenset({"raw_bytes", "archive_bytes", "file_count", "attempts"})
_FLOATS = frozenset({"throughput_mb_s"})
_STRING_LISTS = frozenset({"volumes", "holds"})
_TIMESTAMPS = frozenset({"created_at", "updated_at", "started_at", "finished_at", "moved_at"})


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's document as read back; a field the document lacks is None."""

    name: str
    storage: str | None = None
    volumes: list[str] | None = None
    workflow_status: WorkflowStatus | None = None
    raw_bytes: int | None = None
    archive_bytes: int | None = None
    crc32c: str | None = None
    file_count: int | None = None
    host: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    throughput_mb_s: float | None = None
    attempts: int | None = None
    last_error: str | None = None
    instrument_status: str | None = None
    storage_class: str | None = None
    kms_key_name: str | None = None
    retain_until: str | None = None
    holds: list[str] | None = None
    run_id: str | None = None
    moved_to: str | None = None
    moved_at: dt.datetime | None = None

    @property
    def archived(self) -> bool:
        """True once the archive is stored and verified: ``storage`` can be used."""
        return self.workflow_status in ARCHIVED and bool(self.storage)

    @property
    def archive_uri(self) -> str | None:
        """``gs://bucket/path`` for GCS, the path for a local destination, else None."""
        return storage_uri(self.storage) if self.storage else None

    @classmethod
    def from_document(cls, name: str, data: dict[str, Any]) -> RunRecord:
        """Build from a document's fields, ignoring fields other tools add to it.

        A document is shared by every host and anyone with write access to the
        collection can change it: each field we know is checked for its type and range
        here, where it is read (UsageError, exit 2, naming the run, the field and the
        value), so no later step meets a size of -1 or a crc32c that is not one. What
        ``storage`` may name is the reader's to say (`readback.locate`).
        """
        known = {f.name for f in fields(cls)} - {"name"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        for key in _FLOATS & values.keys():
            # Firestore returns 3.0 stored as an integer value as int: keep the type.
            if isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        for key, value in values.items():
            why = _field_problem(key, value)
            if why:
                shown = repr(value)
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                raise UsageError(f"run {name}: its Firestore document's {key} is {shown}: {why}; "
                                     "correct or delete the document (the journal on the archiving host has the truth)")
        return cls(name=str(data.get("name") or name), **values)


_INTS = frozenset({"raw_bytes", "archive_bytes", "file_count", "attempts"})
_TIMES = frozenset({"created_at", "updated_at", "started_at", "finished_at", "moved_at"})
_TEXTS = frozenset({"host", "last_error", "instrument_status", "storage_class", "kms_key_name", "retain_until",
                    "run_id", "moved_to"})


def _field_problem(key: str, value: Any) -> str | None:
    """What is wrong with one known field of a document, or None."""
    if key in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
            return "expected a whole number from 0 to 2^63-1"
    elif key in _FLOATS:
        if not isinstance(value, float) or not 0 <= value < 1e15:
            return "expected a non-negative number"
    elif key in _TIMES:
        if not isinstance(value, dt.datetime):
            return "expected a timestamp"
    elif key in _TEXTS:
        if not isinstance(value, str) or len(value) > 1 << 16:
            return "expected a string"
    elif key == "workflow_status":
        if value not in STATUSES:
            return f"expected one of {', '.join(STATUSES)}"
    elif key == "crc32c":
        if not isinstance(value, str) or len(value) != 8 or any(c not in "0123456789abcdefABCDEF" for c in value):
            return "expected 8 hexadecimal digits"
    elif key == "volumes" and (
        not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 100_000
    ):
        return "expected a list of locations"
    elif key == "holds" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        return "expected a list of hold names"
    return None


def fields_from_task(
    task: Task,
    *,
    host: str | None = None,
    instrument_status: str | None = None,
    throughput_mb_s: float | None = None,
) -> RunFields:
    """Everything the journal knows about a run, as a full update, plus what it does not
    know (host, instrument status, throughput) when given.

    The daemon publishes this at start for each run it knows, so that a document left
    stale (an update lost with a broken journal, a collection configured later) catches
    up.
    """
    out: RunFields = {
        "storage": task.gcp_tarfile or task.location,
        "volumes": list(task.volume_locations) or None,
        "workflow_status": task.status,
        "raw_bytes": task.raw_bytes,
        "archive_bytes": task.archive_bytes,
        "crc32c": task.crc32c,
        "file_count": task.file_count,
        "attempts": task.attempts,
        "last_error": task.last_error,
        "run_id": task.run_id,
        "moved_to": task.moved_to,
    }
    if task.compliance:
        view = task.compliance_view
        out["storage_class"] = view["storage_class"]
        out["kms_key_name"] = view["kms_key_name"]
        out["retain_until"] = view["retain_until"]
        out["holds"] = view["holds"]
    if host is not None:
        out["host"] = host
    if instrument_status is not None:
        out["instrument_status"] = instrument_status
    if throughput_mb_s is not None:
        out["throughput_mb_s"] = throughput_mb_s
    for key, value in (
        ("created_at", task.created_at),
        ("updated_at", task.updated_at),
        ("started_at", task.session_started_at),
        ("finished_at", task.finished_at),
        ("moved_at", task.moved_at),
    ):
        if value is not None:
            out[key] = value  # type: ignore[literal-required]  # key is one of the five above
    return out


def check_document_id(name: str) -> str | None:
    """Why ``name`` cannot be a Firestore document id, or None when it can."""
    if not name:
        return "it is empty"
    if "/" in name:
        return "it contains '/'"
    if name in (".", ".."):
        return "it is '.' or '..'"
    if name.startswith("__") and name.endswith("__"):
        return "Firestore reserves ids of the form __id__"
    if len(name.encode()) > 1500:
        return "it is longer than 1500 bytes"
    return None


def _encode(fields_: dict[str, Any], now: float) -> dict[str, Any]:
    """Check a partial update and make it JSON for the outbox (timestamps as ISO 8601)."""
    out: dict[str, Any] = {}
    for key, value in fields_.items():
        if value is None:
            if key == "workflow_status":
                raise ValueError("workflow_status cannot be None")
            out[key] = None  # an explicit None clears the field (e.g. last_error)
        elif key in _TIMESTAMPS:
            out[key] = _to_datetime(key, value).isoformat()
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a string, not {value!r}")
            if key == "workflow_status" and value not in STATUSES:
                raise ValueError(f"workflow_status must be one of {', '.join(sorted(STATUSES))}, not {value!r}")
            out[key] = value
        elif key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an integer, not {value!r}")
            out[key] = value
        elif key in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{key} must be a number, not {value!r}")
            out[key] = float(value)
        elif key in _STRING_LISTS:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{key} must be a list of strings, not {value!r}")
            out[key] = list(value)
        else:
            raise TypeError(f"unknown run field {key!r}")
    out.setdefault("updated_at", dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat())
    return out


def _to_datetime(key: str, value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    raise TypeError(f"{key} must be a datetime or epoch seconds, not {value!r}")


def _decode(payload: dict[str, Any]) -> dict[str, Any]:
    """An outbox payload as Firestore values: ISO strings back to timestamps."""
    return {
        k: dt.datetime.fromisoformat(v) if k in _TIMESTAMPS and isinstance(v, str) else v
        for k, v in payload.items()
    }


def describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class Connection:
    """A lazily built client, rebuilt after a failure.

    Rebuilding matters: after an outage gRPC keeps a broken channel in exponential
    reconnect backoff (up to two minutes), so a Firestore that is back would still be
    refused. A fresh client on a fresh channel connects at once.
    """

    def __init__(self, project: str | None) -> None:
        # Environment read once, here.
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self._client: firestore.Client | None = None

    def get(self) -> firestore.Client:
        if self._client is None:
            if os.environ.get("FIRESTORE_EMULATOR_HOST"):
                # The client would pick these itself; explicit, so a credentials file
                # in the environment is never sent to an emulator.
                anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]  # google-auth leaves it unannotated
                self._client = firestore.Client(project=self.project, credentials=anonymous)
            else:
                self._client = firestore.Client(project=self.project)
        return self._client

    def reset(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        # Client.close() closes only the HTTP session, not the gRPC channel. gRPC shares
        # subchannels between channels to the same address, so while the old channel
        # lives, the new client inherits its reconnect backoff and is refused for up to
        # two minutes after Firestore is back (CI saw three flushes refused in a row).
        # The GAPIC layer is private; without it, the channel closes when collected.
        api = getattr(client, "_firestore_api_internal", None)
        transport = getattr(api, "transport", None)
        if transport is not None:
            try:
                transport.close()
            except Exception as exc:  # noqa: BLE001  # closing a dead channel must not mask the outage
                log.debug("closing the old Firestore channel: %s", exc)

    close = reset


# --- status mirror -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush did: updates delivered, whether the outbox is now empty, and the
    Firestore (or journal) error that stopped it, if any."""

    delivered: int
    drained: bool
    error: str | None = None


class StatusMirror(Protocol):
    """Where a run's status goes besides the journal. Injected; `NoMirror` by default."""

    def publish(self, name: str, **fields: Unpack[RunFields]) -> None: ...

    def flush(self, deadline_s: float = DEFAULT_FLUSH_DEADLINE_S) -> FlushResult: ...

    def close(self) -> None: ...


class NoMirror:
    """Firestore off (no ``firestore_collection``): nothing queued, nothing sent."""

    def publish(self, name: str, **fields: Unpack[RunFields]) -> None:
        pass

    def flush(self, deadline_s: float = DEFAULT_FLUSH_DEADLINE_S) -> FlushResult:
        return FlushResult(delivered=0, drained=True)

    def close(self) -> None:
        pass


class FirestoreMirror:
    """Run documents in ``collection``, fed through the journal's outbox.

    ``publish`` never touches the network; ``flush`` never raises. Only one process
    should flush a journal's outbox (the daemon): two flushers could deliver the same
    run's updates out of order. Any number of processes may publish.
    """

    def __init__(
        self,
        journal: Journal,
        collection: str,
        *,
        project: str | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not collection or "/" in collection:
            raise ValueError(f"firestore collection must be a non-empty name without '/', not {collection!r}")
        self.collection = collection
        self._journal = journal
        self._conn = Connection(project)
        self._call_timeout_s = call_timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        # True from the first failed delivery until one succeeds: an outage is logged
        # once, not once per cycle.
        self._outage = False

    def publish(self, name: str, **fields: Unpack[RunFields]) -> None:
        """Queue a partial update of run ``name`` (only the fields given).

        ``updated_at`` defaults to now, so a late delivery still says when the state
        was reached. Wrong field names or types raise TypeError/ValueError (a bug in
        the caller); a journal that cannot be written is logged, not raised: the
        document may then stay stale until `fields_from_task` is published again.
        """
        payload = _encode(dict(fields), self._wall_clock())
        why = check_document_id(name)
        if why:
            log.error("run %r cannot be mirrored to Firestore: %s", name, why)
            return
        payload["name"] = name
        try:
            self._journal.enqueue(self.collection, name, payload)
        except JournalError as exc:
            log.error("Firestore update for %s not queued: %s", name, exc)

    def flush(self, deadline_s: float = DEFAULT_FLUSH_DEADLINE_S) -> FlushResult:
        """Deliver queued updates in order until the outbox is empty or ``deadline_s``
        has passed. Stops at the first error, leaving it and the rest queued."""
        end = self._clock() + deadline_s
        delivered = 0
        head: OutboxItem | None = None
        try:
            while True:
                remaining = end - self._clock()
                if remaining < _MIN_CALL_S:
                    return FlushResult(delivered, drained=False)
                items = self._journal.outbox(limit=BATCH_SIZE)
                if not items:
                    if self._outage:
                        log.info("Firestore reachable again: queued status updates delivered")
                        self._outage = False
                    return FlushResult(delivered, drained=True)
                head = items[0]
                delivered += self._deliver(items, min(self._call_timeout_s, remaining))
        except FIRESTORE_ERRORS as exc:
            self._conn.reset()
            message = describe_error(exc)
            self._note_failure(head, message)
            return FlushResult(delivered, drained=False, error=message)
        except JournalError as exc:
            log.error("Firestore outbox unreadable: %s", exc)
            return FlushResult(delivered, drained=False, error=str(exc))

    def _deliver(self, items: list[OutboxItem], timeout: float) -> int:
        """One ordered batch: Firestore applies a commit's writes in order, atomically."""
        client = self._conn.get()
        batch = client.batch()
        sent: list[OutboxItem] = []
        for item in items:
            try:
                batch.set(client.collection(item.collection).document(item.doc_id), _decode(item.payload),
                          merge=True)
            except (ValueError, TypeError) as exc:
                # This item can never be encoded; keeping it would block every later
                # update forever. publish() checks what it queues, so this means an
                # outbox written by another version: drop it, loudly.
                log.error("dropping Firestore update #%d for %s, it cannot be sent: %s (%s)",
                          item.seq, item.doc_id, exc, item.payload)
                self._journal.delivered(item.seq)
                continue
            sent.append(item)
        if sent:
            batch.commit(retry=None, timeout=timeout)
        for item in sent:
            self._journal.delivered(item.seq)
        return len(sent)

    def _note_failure(self, head: OutboxItem | None, message: str) -> None:
        if head is not None:
            try:
                self._journal.delivery_failed(head.seq, message)
            except JournalError as exc:
                log.error("Firestore outbox: cannot record a failed delivery: %s", exc)
        if self._outage:
            log.debug("Firestore still unavailable: %s", message)
        else:
            self._outage = True
            log.warning(
                "Firestore unavailable (%s): status updates stay queued in the journal and are "
                "delivered in order when it answers again; archiving goes on", message,
            )

    def close(self) -> None:
        self._conn.close()


def open_mirror(config: Config, journal: Journal, *, project: str | None = None) -> StatusMirror:
    """The mirror the configuration asks for: Firestore, or nothing without a collection."""
    collection = config.firestore_collection
    if not collection:
        return NoMirror()
    if "/" in collection:
        # A slash would name a subcollection path, not a collection: refuse at start.
        raise ConfigError(f"config key 'firestore_collection' must be a collection name without '/', "
                          f"not {collection!r}")
    return FirestoreMirror(journal, collection, project=project)


# --- reading -------------------------------------------------------------------------


def lookup(
    name: str, collection: str, *, project: str | None = None, timeout_s: float = 10.0
) -> RunRecord | None:
    """The document of run ``name``, or None when there is none.

    "Is run X archived, and where?"::

        rec = lookup("240101_M00001_0001_000000000-ABCDE", "sruns")
        if rec is not None and rec.archived:
            print(rec.archive_uri, rec.archive_bytes, rec.crc32c)  # gs://bucket/run/run.tar.gz ...
        else:
            print("not archived yet:", rec and rec.workflow_status)

    Raises FirestoreError (exit 1) when Firestore cannot be read.
    """
    why = check_document_id(name)
    if why:
        return None  # such a run is never mirrored
    conn = Connection(project)
    try:
        snap = conn.get().collection(collection).document(name).get(retry=None, timeout=timeout_s)
    except FIRESTORE_ERRORS as exc:
        raise FirestoreError(f"cannot read run {name} from Firestore collection {collection!r}: "
                         f"{describe_error(exc)}") from exc
    finally:
        conn.close()
    if not snap.exists:
        return None
    return RunRecord.from_document(name, snap.to_dict() or {})
