"""The gs:// destination: one GCS resumable upload per archive, resumable across processes.

Blob ``<prefix>/<run>/<run>.tar.gz`` (sruns-monitor's layout) with
``<run>.manifest.tsv`` beside it. The session is created through the public
google-cloud-storage API; chunks are PUT through the client's authorized session,
because the library offers no public way to continue a saved session URI in a new
process.

The resumable protocol, as GCS documents it, and how it is used here:

- Pending bytes are buffered until one chunk (``chunk_size``, a multiple of 256 KiB)
  is full; that chunk goes out as ``Content-Range: bytes a-b/*``. The last request
  carries the total (``bytes a-b/TOTAL``, or ``bytes */TOTAL`` when nothing remains)
  and the whole object's crc32c in ``X-Goog-Hash``.
- Full chunks go to one background uploader thread through a queue of depth 1, so
  compression goes on while a chunk is in flight. ``write()`` hands a full chunk over
  once the previous one is acknowledged: memory stays about two chunks (one
  uploading, one filling), and bytes go out in the order they were written. An error
  in the uploader is kept and raised by the next ``write()`` or ``finalize()``.
- ``durable_offset`` is what the server acknowledged (308 + ``Range``, or 200/201 at
  the end). Acknowledged bytes leave the buffer.
- After any failed or unanswered request, a status query (``bytes */*``) says what the
  server holds, and the upload continues from there: never from what we assume.
- Failures are told transient or permanent, and worded, by the one error table
  (`client.translate`). Transient ones (connection errors, timeouts, the statuses in
  ``client.TRANSIENT_STATUS``) are retried with jittered exponential backoff, a bounded
  number of times (``--upload-retries``, for the session's requests and for every other
  call on the bucket); permanent ones (400, 401, 403, a missing bucket) fail at once with
  one line naming the object.
- ``state()`` is the session URI and its creation time. ``open(state)`` asks the server
  how much it holds, which may be ahead of the journal. Sessions live a week: an older
  one, or one the server no longer knows (404/410), starts a new session from zero.
- ``finalize`` uploads the manifest first (so an archive under its final name always
  has one), sends the last request, and compares size and crc32c *as GCS reports them*
  with what was streamed. A mismatch deletes the object and raises IntegrityError.

The session URI is a bearer credential: it goes into the journal (created 0600) and
nowhere else. Messages name a session by the first characters of its upload id.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests

from ... import __version__, memory
from ...config import GCS_CHUNK_QUANTUM, ArchiveOptions
from ...errors import IntegrityError, UploadError, redact
from ...stopping import STOP
from ..layout import (
    TSV_CONTENT_TYPE,
    archive_content_type,
    archive_metadata,
    blob_name,
    index_next_to,
    manifest_next_to,
    session_metadata,
)
from ..retry import RetryPolicy, pause
from ..sink import ArchiveInfo, Stored
from .client import (
    DEFAULT_TIMEOUT,
    FAILURES,
    Client,
    GcsBucket,
    Transient,
    b64_crc32c,
    crc32c_from_b64,
    exhausted,
    make_client,
    reason,
    request,
    translate,
)
from .parts import Parts

log = logging.getLogger(__name__)

__all__ = ["SESSION_LIFETIME", "GcsSink"]

# GCS forgets a resumable session a week after it was created.
SESSION_LIFETIME = 7 * 24 * 3600.0

_RESUME_INCOMPLETE = 308
_RANGE = re.compile(r"bytes=0-(\d+)$")
# An emulator quirk, switched on: "bytes=0-0" would mean one byte held, but
# gcp-storage-emulator answers it for an empty session, so with nothing acknowledged yet
# it is read as none. Real GCS is not expected to hold a lone first byte of an unfinished
# upload (it persists non-final data in 256 KiB units, hence the chunk rule); were it ever
# to, the chunk sent from 0 would overlap by one byte, GCS would refuse or ignore it, and
# the crc32c read back at the end still decides: a wrong object is never reported as stored.
_EMULATOR_EMPTY_RANGE = True
# How often a waiting thread looks at the stop flag and the uploader's error.
_POLL = 0.1

T = TypeVar("T")
Note = Callable[[str], None]


class _SessionGone(UploadError):
    """The server no longer knows the session (404/410): expired or cancelled."""


def _stderr_note(message: str) -> None:
    print(f"sruns-stream: {message}", file=sys.stderr)


class GcsSink:
    """Streams one archive into a GCS resumable upload session; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        run: str,
        extension: str,
        options: ArchiveOptions,
        *,
        client: Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        note: Note | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        part: str | None = None,
    ) -> None:
        self.bucket_name = bucket
        # A part (one segment of an archive uploaded in parallel, see `segments`) is a
        # temporary object of its own name, without manifest or final metadata.
        self.blob_name = part or blob_name(prefix, run, extension)
        self.manifest_name: str | None = None if part else manifest_next_to(self.blob_name, run)
        self.description = f"gs://{bucket}/{self.blob_name}"
        self.archive_name = self.blob_name
        self.run = run
        self.compression = options.compression
        self.content_type = archive_content_type(extension)
        self._chunk = options.chunk_size
        self._retry = RetryPolicy.for_retries(options.upload_retries)
        self._client = client
        self._gcs: GcsBucket | None = None  # every call on the bucket but the session's PUTs
        self._own_client = client is None
        self._sleep = sleep
        self._now = now
        self._note = note or _stderr_note
        self._timeout = timeout
        self._uri: str | None = None
        self._created = 0.0
        self._fresh = False  # a session this process created, nothing sent to it yet
        # Uploader state (the caller's thread touches it only while no uploader runs):
        self._base = 0  # bytes the server acknowledged; self._buf starts there
        self._buf = bytearray()
        self._base_lock = threading.Lock()  # durable_offset is read from the caller's thread
        # Caller state: bytes written since the last hand-over, as written (they follow
        # self._buf): the stream's thread never copies them; the uploader joins them.
        self._fill: list[bytes] = []
        self._filled = 0
        # (pieces, flush): with flush, the uploader also sends what whole 256 KiB units it
        # holds beyond the last full chunk, so the next checkpoint need not wait for one.
        self._queue: queue.Queue[tuple[list[bytes], bool]] = queue.Queue(maxsize=1)
        self._idle = threading.Event()  # the uploader holds no chunk it has not sent
        self._idle.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # the uploader's, raised by the next call
        self._finished: dict[str, Any] | None = None  # the object, once GCS committed it
        self._final_crc32c: int | None = None

    # -- the Sink protocol ----------------------------------------------------------

    def open(self, state: str | None, durable: int) -> int:
        self._stop_uploader()
        self._raise_error()
        if self._client is None:
            self._client = make_client()
        if self._gcs is None:
            self._gcs = GcsBucket(self.bucket_name, self._client, retry=self._retry, sleep=self._pause,
                                  timeout=self._timeout)
        self._buf = bytearray()
        self._fill, self._filled = [], 0
        self._finished = None
        if state is not None:
            resumed = self._resume(state)
            if resumed is not None:
                return resumed
        if self._uri is not None and self._fresh:
            # The archive opens twice when a resume falls back to zero; reuse the empty
            # session made a moment ago rather than leaving it orphaned.
            self._base = 0
            return 0
        self._create_session()
        return 0

    def state(self) -> str | None:
        if self._uri is None:
            return None
        return json.dumps(
            {"session": self._uri, "created": self._created, "bucket": self.bucket_name, "blob": self.blob_name},
            sort_keys=True,
        )

    @property
    def durable_offset(self) -> int:
        with self._base_lock:
            return self._base

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._raise_error()
        if self._finished is not None:
            raise IntegrityError(
                f"{self.description} was already committed with {self.durable_offset} bytes, but the "
                "stream goes on: the stored object is not this archive"
            )
        self._fill.append(data)
        self._filled += len(data)
        if self._filled >= self._chunk:
            self._hand_over()

    def request_durable(self) -> None:
        if self._uri is not None and self._finished is None:
            self._hand_over(flush=True)

    def finalize(self, info: ArchiveInfo, manifest_tsv: bytes, index_tsv: bytes | None = None) -> Stored:
        self._raise_error()
        if self._uri is None:
            raise UploadError(f"{self.description}: finalize() before open()")
        # Wait for the chunk in flight; from here on everything runs on this thread.
        self._wait_idle()
        self._stop_uploader()
        self._raise_error()
        if self._fill:
            self._buf += b"".join(self._fill)
            self._fill, self._filled = [], 0
        if self._finished is None and self._base + len(self._buf) != info.size:
            raise IntegrityError(
                f"{self.description}: {self._base + len(self._buf)} bytes were streamed, "
                f"but the archive has {info.size}"
            )
        manifest_location = None
        if self.manifest_name:
            if index_tsv is not None:
                self._upload_beside(index_next_to(self.blob_name, self.run), index_tsv)
            manifest_location = self._upload_beside(self.manifest_name, manifest_tsv)
        if self._finished is None:
            self._final_crc32c = info.crc32c
            try:
                self._send(total=info.size)
            except _SessionGone:
                # The last request may have committed the object and lost its answer;
                # a server that then forgets the session (the emulator does) leaves the
                # object itself as the only witness.
                self._finished = self._existing_object(info)
        assert self._finished is not None
        resource = self._finished
        size = int(resource.get("size", -1))
        crc = crc32c_from_b64(resource.get("crc32c"))
        generation = int(resource.get("generation") or 0) or None
        if size != info.size or crc != info.crc32c:
            self._reject(size, crc, info, generation)
        if self.manifest_name:
            size, crc = self._set_metadata(info, generation)
            if size != info.size or crc != info.crc32c:
                self._reject(size, crc, info, generation)
        assert crc is not None
        if self.manifest_name:
            self._remove_stale()
        self._close_client()
        return Stored(
            location=f"{self.bucket_name}/{self.blob_name}",
            size=size,
            crc32c=crc,
            manifest_location=manifest_location,
        )

    def _remove_stale(self) -> None:
        """Volumes (and their listing) an earlier archive of this run was cut into go: the
        one object replaces them. Best effort: a bucket that keeps objects keeps them."""
        left = Parts(self.bucket_name, client=self._client, retry=self._retry).remove_stale(
            self.blob_name, [self.blob_name]
        )
        if left:
            log.warning("%s: an earlier archive's volumes could not be deleted: %s", self.description, ", ".join(left))

    def abort(self) -> None:
        # The session stays on the server and in the journal: the next run resumes it.
        # Safe to call twice: the uploader is stopped once, the client closed once.
        self._stop_uploader()
        self._buf = bytearray()
        self._fill, self._filled = [], 0
        self._close_client()

    # -- the uploader thread -----------------------------------------------------------

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _wait_idle(self) -> None:
        """Until the uploader has sent what it was given (or failed; then raise)."""
        while not self._idle.wait(_POLL):
            self._raise_error()
            STOP.check()
            if self._thread is None or not self._thread.is_alive():
                break
        self._raise_error()

    def _hand_over(self, flush: bool = False) -> None:
        """Give the filled bytes to the uploader once it is idle; returns at once then."""
        self._wait_idle()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._upload_loop, name=f"gcs-upload-{self.run}", daemon=True)
            self._thread.start()
        chunk, self._fill, self._filled = self._fill, [], 0
        self._idle.clear()
        while True:
            try:
                self._queue.put((chunk, flush), timeout=_POLL)
                return
            except queue.Full:
                self._raise_error()
                STOP.check()

    def _upload_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    chunk, flush = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    continue
                for piece in chunk:
                    self._buf += piece
                del chunk
                while len(self._buf) >= self._chunk and not self._stop.is_set():
                    self._send(total=None)
                memory.give_back()  # chunks are freed here, allocated on the stream's thread (`memory`)
                if flush and len(self._buf) >= GCS_CHUNK_QUANTUM and not self._stop.is_set():
                    self._send(total=None, partial=True)
                self._idle.set()
        except BaseException as exc:  # noqa: BLE001  # kept for the caller's next write() or finalize()
            self._error = exc
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._idle.set()

    def _stop_uploader(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
            self._stop.clear()
        self._idle.set()

    # -- sessions -------------------------------------------------------------------

    def _short(self) -> str:
        """A session's name for messages: never the URI, which is a bearer credential."""
        if not self._uri:
            return "(none)"
        ids = parse_qs(urlsplit(self._uri).query).get("upload_id", [""])
        return (ids[0][:8] or "?") + "…"

    def _resume(self, state: str) -> int | None:
        """The server's offset for the saved session, or None when a new one is needed."""
        try:
            saved = json.loads(state)
            uri, created = str(saved["session"]), float(saved["created"])
            same = saved.get("bucket") == self.bucket_name and saved.get("blob") == self.blob_name
        except (ValueError, KeyError, TypeError):
            self._note(f"{self.run}: the journal's upload state is unreadable: starting a new upload session from zero")
            return None
        if not same:
            self._note(
                f"{self.run}: the journal's upload session was for another object: starting a new session from zero"
            )
            return None
        self._uri, self._created, self._fresh, self._base = uri, created, False, 0
        age = self._now() - created
        if age > SESSION_LIFETIME:
            self._note(
                f"{self.run}: upload session {self._short()} was created {age / 86400:.1f} days ago and "
                "has expired (GCS keeps sessions 7 days): starting a new session from zero"
            )
            self._uri = None
            return None
        try:
            self._with_retries(lambda _: self._resync_from_zero())
        except _SessionGone:
            self._note(
                f"{self.run}: GCS no longer knows upload session {self._short()} (expired or "
                "cancelled): starting a new session from zero"
            )
            self._uri = None
            return None
        return self._base

    def _resync_from_zero(self) -> None:
        self._base = 0
        self._buf = bytearray()
        self._finished = None
        self._resync(resuming=True)

    def _create_session(self) -> None:
        assert self._gcs is not None
        # What is known now; the sizes and checksums are added once the object exists.
        self._uri = self._gcs.create_session(
            self.blob_name, self.content_type, session_metadata(self.run, self.compression, __version__),
            missing=f"bucket {self.bucket_name!r} does not exist (cannot start the upload for {self.description})",
        )
        self._created = self._now()
        self._fresh = True
        self._base = 0

    # -- requests on the session ----------------------------------------------------

    def _send(self, total: int | None, partial: bool = False) -> None:
        """Have the server acknowledge the first chunk of the buffer (all of it, and
        commit the object, when ``total`` is given; its whole 256 KiB units when
        ``partial``). Every retry starts with a status query."""

        def attempt(number: int) -> None:
            if self._stop.is_set():
                raise UploadError(f"the upload of {self.description} was stopped")
            if number > 1:
                self._resync()
            self._put_pending(total, partial)

        self._with_retries(attempt)
        # A final request the server answered with 308 after keeping part of it: send
        # the rest. Each round made progress (see _put_pending), so this ends.
        while total is not None and self._finished is None:
            self._with_retries(attempt)

    def _put_pending(self, total: int | None, partial: bool = False) -> None:
        if self._finished is not None:
            if total is None:
                self._committed_early()
            return
        if total is not None:
            n = len(self._buf)
        elif partial:
            n = len(self._buf) // GCS_CHUNK_QUANTUM * GCS_CHUNK_QUANTUM
            if not n:
                return  # the server kept enough already
        elif len(self._buf) < self._chunk:
            return  # the server kept part of the chunk; the rest waits for more bytes
        else:
            n = self._chunk
        start = self._base
        if n:  # noqa: SIM108 -- as a ternary, with the nested conditional inside the f-string, it reads worse
            content_range = f"bytes {start}-{start + n - 1}/{'*' if total is None else total}"
        else:
            content_range = f"bytes */{total}"
        headers = {"Content-Range": content_range}
        if total is not None and self._final_crc32c is not None:
            headers["X-Goog-Hash"] = f"crc32c={b64_crc32c(self._final_crc32c)}"
        # The chunk goes out as a view of the buffer: no second copy of up to 64 MiB.
        with memoryview(self._buf) as view, view[:n] as body:
            resp = self._put(body if n else None, headers)
        if resp.status_code == _RESUME_INCOMPLETE:
            self._acknowledge(self._persisted(resp), limit=start + n)
            if self._base == start:
                # Nothing kept (or, for the last request, nothing committed): count it as a
                # failed attempt, so a server that never takes the bytes cannot loop us.
                raise Transient("writing", self.description, f"GCS kept none of the bytes sent at offset {start}")
        elif resp.status_code in (200, 201):
            self._commit(resp)
            if total is None:
                self._committed_early()
        elif resp.status_code == 400 and total is not None and "X-Goog-Hash" in headers:
            raise IntegrityError(
                f"GCS refused to commit {self.description}: {reason(resp)} (the crc32c sent "
                f"with the last request is {self._final_crc32c:08x}): the upload was corrupted"
            )
        else:
            self._fail(resp, "writing")

    def _resync(self, resuming: bool = False) -> None:
        """Status query: drop what the server already holds from the buffer."""
        resp = self._put(None, {"Content-Range": "bytes */*"})
        if resp.status_code == _RESUME_INCOMPLETE:
            # Resuming, nothing is buffered yet and any amount is plausible.
            self._acknowledge(self._persisted(resp), limit=None if resuming else self._base + len(self._buf))
        elif resp.status_code in (200, 201):
            self._commit(resp)
        else:
            self._fail(resp, "asking how much GCS holds of")

    def _persisted(self, resp: requests.Response) -> int:
        """How many bytes a 308 answer says the server holds."""
        header = resp.headers.get("Range")
        if not header:
            return 0  # no Range: nothing persisted
        match = _RANGE.match(header.strip())
        if not match:
            raise UploadError(f"GCS answered {self.description} with an unreadable Range {header!r}")
        last = int(match.group(1))
        if _EMULATOR_EMPTY_RANGE and last == 0 and self._base == 0:
            return 0
        return last + 1

    def _acknowledge(self, persisted: int, limit: int | None) -> None:
        if persisted < self._base:
            raise UploadError(
                f"GCS holds {persisted} bytes of {self.description} after acknowledging {self._base} "
                f"(session {self._short()}): the session lost data; run with --force to start over"
            )
        if limit is not None and persisted > limit:
            raise IntegrityError(
                f"GCS holds {persisted} bytes of {self.description}, more than the {limit} sent "
                f"(session {self._short()}): the session is not this archive's"
            )
        self._drop(persisted - self._base)
        with self._base_lock:
            self._base = persisted
        self._fresh = False

    def _commit(self, resp: requests.Response) -> None:
        try:
            resource = resp.json()
            size = int(resource["size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UploadError(f"GCS committed {self.description} but its answer is unreadable") from exc
        self._finished = resource
        self._drop(size - self._base)
        with self._base_lock:
            self._base = size
        self._fresh = False

    def _drop(self, n: int) -> None:
        """Forget the first ``n`` buffered bytes: the server has them."""
        if n > 0:
            # A fresh buffer rather than `del buf[:n]`: a library may still hold a view
            # of the old one (an exception's frames), and a viewed bytearray cannot be
            # resized. The copy is what follows the acknowledged bytes: usually less than
            # one write, at most one chunk.
            self._buf = self._buf[n:]

    def _committed_early(self) -> NoReturn:
        raise IntegrityError(
            f"GCS committed {self.description} at {self._base} bytes before the stream ended "
            f"(session {self._short()}): the session is not this archive's"
        )

    def _put(self, body: memoryview | None, headers: dict[str, str]) -> requests.Response:
        assert self._client is not None and self._uri is not None
        try:
            resp = request(
                self._client, "PUT", self._uri, data=body, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            )
        except FAILURES as exc:
            # Not `from exc`, and the library's words scrubbed: they could carry the session URI.
            failure = translate(exc, "writing", self.description, UploadError)
            if isinstance(failure, Transient):
                raise Transient(failure.doing, failure.where, self._scrub(failure.why)) from None
            raise type(failure)(self._scrub(str(failure))) from None
        if resp.status_code in (200, 201, _RESUME_INCOMPLETE):
            return resp
        failure = translate(resp, "writing", self.description, UploadError)
        if isinstance(failure, Transient):
            raise failure
        return resp

    def _fail(self, resp: requests.Response, doing: str) -> NoReturn:
        if resp.status_code in (404, 410):
            # The session's URI, not a bucket or object: its 404 means the session is gone.
            raise _SessionGone(
                f"{doing} {self.description}: GCS no longer knows upload session {self._short()} "
                f"({reason(resp)}); run the same command again to start a new session from zero"
            )
        raise translate(resp, doing, self.description, UploadError)

    def _scrub(self, text: str) -> str:
        """A library message without the session URI's secret part."""
        if self._uri:
            text = text.replace(self._uri, f"<session {self._short()}>")
        text = redact(text)
        return " ".join(text.split())[:300]

    def _pause(self, seconds: float) -> None:
        """The backoff between attempts; a stop (abort, or a signal's stop request) cuts
        it short."""
        if self._sleep is not time.sleep:
            self._sleep(seconds)
            return
        pause(seconds, cancel=self._stop)

    def _with_retries(self, fn: Callable[[int], T]) -> T:
        """``fn(attempt_number)`` (the session's requests) with the GCS retry policy on
        transient failures (`client.Transient`); anything else goes straight through."""
        try:
            return self._retry.call(fn, Transient, sleep=self._pause)
        except Transient as exc:
            # Not `from exc`: the chained error could carry the session URI.
            raise exhausted(exc, self._retry.attempts, UploadError) from None

    # -- calls on the bucket (client.GcsBucket) ------------------------------------------

    def _upload_beside(self, name: str, data: bytes) -> str:
        """A small file beside the archive (manifest, access index), checked by crc32c."""
        assert self._gcs is not None
        self._gcs.upload(name, data, TSV_CONTENT_TYPE)
        return f"{self.bucket_name}/{name}"

    def _existing_object(self, info: ArchiveInfo) -> dict[str, Any]:
        """The committed object, when the session is gone after our last request."""
        assert self._gcs is not None
        missing = (
            f"GCS forgot upload session {self._short()} of {self.description} before it was "
            "committed; run the same command again to start a new session from zero"
        )
        found = self._gcs.stat(self.blob_name)
        # Same size and crc32c as what we streamed: these are our bytes, whichever
        # request committed them.
        if found is None or found.size != info.size or found.crc32c != info.crc32c:
            raise UploadError(missing)
        return {"size": found.size, "crc32c": b64_crc32c(info.crc32c), "generation": found.generation}

    def _set_metadata(self, info: ArchiveInfo, generation: int | None) -> tuple[int, int | None]:
        """Add what only the end knows to the object's metadata; returns (size, crc32c)
        as GCS reports them in its answer: the read-back the run is judged by."""
        assert self._gcs is not None
        metadata = archive_metadata(
            info.run, info.raw_bytes, info.file_count, info.tar_crc32, info.compression, info.tool_version
        )
        found = self._gcs.patch_metadata(
            self.blob_name, metadata, generation, missing=f"{self.description} disappeared right after it was committed"
        )
        return found.size, found.crc32c

    def _reject(self, size: int, crc: int | None, info: ArchiveInfo, generation: int | None) -> NoReturn:
        """A committed object that is not what we streamed must not stay under its name."""
        assert self._gcs is not None
        try:
            self._gcs.delete(self.blob_name, generation)
            fate = "it was deleted"
        except UploadError as exc:
            fate = f"deleting it failed too ({exc})"
        shown = f"{crc:08x}" if crc is not None else "none"
        raise IntegrityError(
            f"{self.description} holds {size} bytes with crc32c {shown}, but {info.size} bytes with "
            f"crc32c {info.crc32c:08x} were sent; {fate}: run with --force to upload again"
        )

    def _close_client(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None
            self._gcs = None
