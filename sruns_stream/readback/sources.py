"""An archive's stored bytes, as sources readable from any offset, and read with resume.

`verify` and `restore` read an archive in one sequential pass, never writing it to disk.
Where the archive is comes from `locate`; this module gives them its bytes:

- A `ByteSource` is bytes readable from any offset: a `LocalFile` (seek), a `GcsObject`
  (a streaming ranged GET of one pinned generation), or `Volumes`: an archive stored as
  volumes (`volumes`), read as the one stream they make up, each volume checked against
  the listing beside them (size, crc32c) as it is read, so that a missing, truncated or
  altered volume is named.
- An `ArchiveSource` is an archive's bytes with the manifest (and access index) beside it.
- `ResumableReader` reads a `ByteSource` in pieces. A dropped connection or a short read
  re-opens it at the byte where it stopped, under the package's one retry policy
  (`retry.RETRY`): a multi-terabyte download survives network blips without starting over.

Failures to *reach* the archive are `DestinationError`s from the exception tree (GCS's
worded by its one error table, `gcs.client.translate`); a dropped connection is
`ConnectionDropped`, internal, until the retries run out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import google_crc32c

from ..errors import DestinationError, temporary
from ..storage import manifest_tsv
from ..storage.layout import Location
from ..storage.manifest_tsv import ManifestRow
from ..storage.retry import RETRY, pause
from .damage import ArchiveDamaged

if TYPE_CHECKING:
    import requests
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

__all__ = [
    "PIECE",
    "ArchiveSource",
    "ByteSource",
    "ConnectionDropped",
    "GcsObject",
    "LocalFile",
    "Note",
    "ResumableReader",
    "VolumePart",
    "Volumes",
    "read_all",
]

# Every stage moves data in pieces of this size: large enough that per-call overhead
# vanishes next to ISA-L and crc32c, small enough that memory stays a few MiB.
PIECE = 1 << 20
Note = Callable[[str], None]


class ConnectionDropped(Exception):
    """A `ByteSource` lost its stream (reset, timeout, short read, 5xx): worth re-opening
    at the current byte. Internal: after the last retry it becomes a DestinationError."""


# --- the bytes -----------------------------------------------------------------------


class ByteSource(Protocol):
    """An archive's stored bytes, readable from any offset."""

    description: str  # for messages: gs://bucket/blob or a path
    size: int

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` on (up to ``end``, when given: a ranged read asks the
        server for no more), in pieces; raises ConnectionDropped on a transient failure
        (the caller opens again at the byte it got to)."""
        ...


class LocalFile:
    """A local or NFS-mounted archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)
        try:
            self.size = path.stat().st_size
        except OSError as exc:
            raise DestinationError(f"cannot read {path}: {exc.strerror}") from exc

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the generator's finally
        except OSError as exc:
            raise DestinationError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            f.seek(start)
            left = (end if end is not None else self.size) - start
            while left > 0:
                try:
                    piece = f.read(min(PIECE, left))
                    left -= len(piece)
                except OSError as exc:
                    # EIO on a flaky NFS mount: worth another try from the same byte.
                    raise ConnectionDropped(f"read error at byte {f.tell()}: {exc.strerror}") from exc
                if not piece:
                    return
                yield piece
        finally:
            f.close()


class GcsObject:
    """One generation of a GCS object, read with streaming ranged GETs.

    The GET goes through the client's authorized session (`gcs.client.request`, as the
    gs:// sink does for its PUTs) rather than ``Blob.download_*``: one request streams the
    whole object, and after a drop the next one asks for ``Range: bytes=<pos>-``. Pinning
    the generation makes a resumed read fail rather than splice two versions of the object.
    Its failures are worded by the one error table (`gcs.client.translate`).
    """

    def __init__(
        self, client: Client, bucket: str, name: str, size: int, generation: int | None, *,
        timeout: tuple[float, float] | None = None,
    ) -> None:
        from ..storage.gcs.client import DEFAULT_TIMEOUT, media_url  # the Google libraries load only for gs://

        self.description = str(Location("gcs", bucket, name))
        self.size = size
        self._client = client
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._url = media_url(client, bucket, name, generation)

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        # Accept-Encoding gzip + no decoding: the stored bytes as they are, never
        # transcoded by GCS nor inflated by requests.
        import requests
        import urllib3

        from ..storage.gcs.client import FAILURES, request

        headers = {"Accept-Encoding": "gzip"}
        if end is not None and end < self.size:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        try:
            resp = request(self._client, "GET", self._url, headers=headers, stream=True, timeout=self._timeout)
        except FAILURES as exc:
            raise self._failure(exc) from exc
        try:
            skip = self._check(resp, start)
            for piece in resp.raw.stream(PIECE, decode_content=False):
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                if piece:
                    yield piece
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise ConnectionDropped(f"{type(exc).__name__}: {exc}") from exc
        finally:
            resp.close()

    def _check(self, resp: requests.Response, start: int) -> int:
        """Raise for a failed answer; returns how many leading bytes to drop."""
        status: int = resp.status_code
        if status == 206:
            got = resp.headers.get("Content-Range", "")
            if not got.startswith(f"bytes {start}-"):
                raise ConnectionDropped(f"asked for bytes {start}- and got {got!r}")
            return 0
        if status == 200:
            # A server that ignores Range sends everything: drop what we already have.
            return start
        raise self._failure(resp)

    def _failure(self, failure: BaseException | requests.Response) -> Exception:
        """A failed GET as ConnectionDropped (worth opening again) or a DestinationError."""
        from ..storage.gcs.client import Transient, translate

        error = translate(
            failure, "reading", self.description, DestinationError,
            missing=f"{self.description} no longer exists (deleted or replaced while being read): "
            "check the bucket and run again",
        )
        return ConnectionDropped(error.why) if isinstance(error, Transient) else error


@dataclass
class VolumePart:
    """One volume of a `Volumes`: where it is, its bytes (None: it is missing), and what
    the listing says it holds (None without a listing)."""

    description: str
    data: ByteSource | None
    size: int | None = None
    crc32c: int | None = None

    @property
    def expected(self) -> int:
        return self.size if self.size is not None else (self.data.size if self.data is not None else 0)


class Volumes:
    """An archive stored as volumes, read as the one stream their concatenation is.

    A volume is checked as the read reaches it: missing, or not the size the listing
    says, is `ArchiveDamaged` naming it; its crc32c, computed as it streams by (carried
    across a re-open at the same byte), must be the listing's before its last piece is
    handed out."""

    def __init__(self, description: str, parts: list[VolumePart]) -> None:
        self.description = description
        self.parts = parts
        self.size = sum(p.expected for p in parts)
        self._running: dict[int, tuple[int, int]] = {}  # volume -> (offset reached, crc32c so far)

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        offset, left = start, (end if end is not None else self.size) - start
        for i, part in enumerate(self.parts):
            if part.data is not None and offset >= part.expected:
                offset -= part.expected
                continue
            if left <= 0:
                return
            for piece in self._volume(i, part, offset, offset + left):
                left -= len(piece)
                yield piece
            offset = 0

    def _volume(self, i: int, part: VolumePart, offset: int, stop: int | None = None) -> Iterator[bytes]:
        n = part.expected
        which = f"volume {i + 1} of {len(self.parts)}"
        if part.data is None:
            raise ArchiveDamaged(f"{part.description} ({which}) is missing")
        if part.data.size != n:
            cut = "truncated" if part.data.size < n else "longer than it was written"
            raise ArchiveDamaged(f"{part.description} ({which}) holds {part.data.size} bytes, "
                                 f"but the volume listing says {n}: it is {cut}")
        running = self._running.get(i)
        crc: int | None = 0 if offset == 0 else (running[1] if running and running[0] == offset else None)
        pos = offset
        if pos >= n:
            return
        until = n if stop is None else min(n, stop)
        for piece in part.data.open_at(offset, until if until < n else None):
            piece = piece[: until - pos]
            if not piece:
                break
            pos += len(piece)
            if crc is not None:
                crc = google_crc32c.extend(crc, piece)
                self._running[i] = (pos, crc)
            if pos == n and crc is not None and part.crc32c is not None and crc != part.crc32c:
                raise ArchiveDamaged(f"{part.description} ({which}) has crc32c {crc:08x}, but the volume listing "
                                     f"says {part.crc32c:08x}: it was altered or damaged")
            yield piece
            if pos == until:
                return
        raise ConnectionDropped(f"{part.description} ended at byte {pos} of {until}")


class ResumableReader:
    """Sequential reads of a `ByteSource` that survive dropped connections.

    ``read_piece()`` returns the next piece (``b""`` at the end). A failure re-opens the
    source at the current byte, after a jittered exponential wait; ``attempts`` bounds the
    consecutive failures at one position. ``crc32c`` covers every byte handed out, to
    compare with the stored object's own checksum at the end. ``start`` and ``end`` make
    it read one range of the source (ranged requests: nothing after ``end`` is asked for).
    """

    def __init__(
        self, source: ByteSource, *, attempts: int = RETRY.attempts,
        sleep: Callable[[float], None] = pause, note: Note | None = None, start: int = 0, end: int | None = None,
    ) -> None:
        self.source = source
        self.pos = start
        self.end = source.size if end is None else min(end, source.size)
        self.crc32c = 0
        self.reconnects = 0
        self._opened = False
        self._attempts = attempts
        self._sleep = sleep
        self._note = note
        self._stream: Iterator[bytes] | None = None

    @property
    def size(self) -> int:
        return self.source.size

    def read_piece(self) -> bytes:
        if self.pos >= self.end:
            self.close()
            return b""
        # ``attempts`` bounds the consecutive failures at one position: any progress resets it.
        policy = replace(RETRY, attempts=self._attempts)
        try:
            piece: bytes = policy.call(lambda _: self._next(), ConnectionDropped, sleep=self._sleep)
        except ConnectionDropped as exc:
            raise temporary(DestinationError(
                f"reading {self.source.description} failed {self._attempts} times at byte {self.pos} "
                f"of {self.source.size}, last: {exc}; run the same command again"
            )) from None
        piece = piece[: self.end - self.pos]  # never past the size we were told, or the range
        self.pos += len(piece)
        self.crc32c = google_crc32c.extend(self.crc32c, piece)
        return piece

    def _next(self) -> bytes:
        if self._stream is None:
            if self._opened:
                self.reconnects += 1
                if self._note is not None:
                    self._note(f"reading {self.source.description} again from byte {self.pos}")
            self._stream = self.source.open_at(self.pos, self.end if self.end < self.source.size else None)
            self._opened = True
        try:
            while True:
                piece = next(self._stream)
                if piece:
                    return piece
        except StopIteration:
            self._stream = None
            raise ConnectionDropped(f"the stream ended at byte {self.pos} of {self.end}") from None
        except BaseException:
            # Dropped (re-opened by the caller's retry) or failed for good: this stream is done.
            self.close()
            raise

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            close = getattr(stream, "close", None)
            if close is not None:
                close()


# --- an archive's sources -------------------------------------------------------------------------


@dataclass
class ArchiveSource:
    """An archive and the manifest beside it, wherever they live."""

    location: str  # gs://bucket/blob or an absolute path
    run: str
    gzip: bool  # False for a plain .tar (compression: none)
    data: ByteSource
    manifest_location: str
    manifest: ByteSource | None  # None when there is no manifest beside the archive
    stored_crc32c: int | None = None  # the object's own checksum (GCS), to check the transfer
    closer: Callable[[], None] | None = None  # releases the GCS client's connections
    index: ByteSource | None = None  # <run>.index.tsv, the access points (`access_index`)
    index_location: str = ""
    # Opens another file beside the archive by its location (a path or gs:// URL, as
    # `layout` names it), or None when there is none: the indexes other tools read.
    beside: Callable[[str], ByteSource | None] | None = None

    def close(self) -> None:
        if self.closer is not None:
            closer, self.closer = self.closer, None
            closer()

    def read_manifest(self, note: Note | None = None) -> dict[str, ManifestRow] | None:
        if self.manifest is None:
            return None
        reader = ResumableReader(self.manifest, note=note)
        pieces = []
        while piece := reader.read_piece():
            pieces.append(piece)
        return manifest_tsv.parse(b"".join(pieces), self.manifest_location)



def read_all(source: ByteSource) -> bytes:
    """All of a small source (a volume listing), read with resume."""
    reader = ResumableReader(source)
    pieces = []
    while piece := reader.read_piece():
        pieces.append(piece)
    return b"".join(pieces)
