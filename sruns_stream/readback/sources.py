"""Where an archive is, and its bytes as one resumable stream.

`verify` and `restore` read an archive in one sequential pass, never writing it to disk.
This module gives them the stored bytes:

- `resolve_source` turns what the user typed (a run name, found through the journal and
  then Firestore; a ``gs://bucket/blob`` or ``file://`` URL; a local path) into an
  `ArchiveSource`: the archive's bytes and the ``<run>.manifest.tsv`` beside it. Places
  are read in the package's one location grammar (`layout.parse_location`).
- A `ByteSource` is those bytes readable from any offset: a `LocalFile` (seek), a
  `GcsObject` (a streaming ranged GET of one pinned generation), or `Volumes`: an
  archive stored as volumes (`volumes`), read as the one stream they make up, each
  volume checked against the listing beside them (size, crc32c) as it is read, so
  that a missing, truncated or altered volume is named.
- `ResumableReader` reads a `ByteSource` in pieces. A dropped connection or a short read
  re-opens it at the byte where it stopped, under the package's one retry policy
  (`retry.RETRY`): a multi-terabyte download survives network blips without starting over.

Failures to *reach* the archive are `DestinationError`s from the exception tree; a
dropped connection is `ConnectionDropped`, internal, until the retries run out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import google_crc32c

from ..errors import DestinationError, IntegrityError, UsageError
from ..storage import manifest_tsv, volumes
from ..storage.layout import (
    Location,
    archive_filename,
    blob_name,
    index_next_to,
    is_url,
    manifest_filename,
    manifest_next_to,
    parse_location,
    split_archive_filename,
    storage_uri,
)
from ..storage.manifest_tsv import ManifestRow
from ..storage.retry import RETRY, pause
from .damage import ArchiveDamaged

if TYPE_CHECKING:
    import requests
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

    from ..state.journal import Journal

__all__ = [
    "PIECE",
    "ArchiveSource",
    "ByteSource",
    "ConnectionDropped",
    "GcsObject",
    "LocalFile",
    "Note",
    "ResumableReader",
    "Volumes",
    "resolve_source",
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

    The GET goes through the client's authorized session (``client._http``, as the gs://
    sink does for its PUTs) rather than ``Blob.download_*``: one request streams the whole
    object, and after a drop the next one asks for ``Range: bytes=<pos>-``. Pinning the
    generation makes a resumed read fail rather than splice two versions of the object.
    """

    def __init__(
        self, client: Client, bucket: str, name: str, size: int, generation: int | None, *,
        timeout: tuple[float, float] | None = None,
    ) -> None:
        from ..storage.gcs.client import DEFAULT_TIMEOUT  # the Google libraries load only for gs://

        self.description = str(Location("gcs", bucket, name))
        self.size = size
        self._client = client
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._url = (
            f"{client.api_endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
            f"?alt=media" + (f"&generation={generation}" if generation else "")
        )

    def open_at(self, start: int, end: int | None = None) -> Iterator[bytes]:
        # Accept-Encoding gzip + no decoding: the stored bytes as they are, never
        # transcoded by GCS nor inflated by requests.
        import requests
        import urllib3

        from ..storage.gcs.client import TRANSIENT_ERRORS

        headers = {"Accept-Encoding": "gzip"}
        if end is not None and end < self.size:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        try:
            resp = self._client._http.request("GET", self._url, headers=headers, stream=True, timeout=self._timeout)
        except TRANSIENT_ERRORS as exc:
            raise ConnectionDropped(f"{type(exc).__name__}: {exc}") from exc
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
        from ..storage.gcs.client import TRANSIENT_STATUS

        status: int = resp.status_code
        if status == 206:
            got = resp.headers.get("Content-Range", "")
            if not got.startswith(f"bytes {start}-"):
                raise ConnectionDropped(f"asked for bytes {start}- and got {got!r}")
            return 0
        if status == 200:
            # A server that ignores Range sends everything: drop what we already have.
            return start
        if status in TRANSIENT_STATUS:
            raise ConnectionDropped(f"HTTP {status}")
        if status == 404:
            raise DestinationError(
                f"{self.description} no longer exists (deleted or replaced while being read): "
                "check the bucket and run again"
            )
        if status in (401, 403):
            raise DestinationError(
                f"permission denied reading {self.description}: the account needs storage.objects.get"
            )
        raise DestinationError(f"reading {self.description} failed: HTTP {status}")


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
            raise DestinationError(
                f"reading {self.source.description} failed {self._attempts} times at byte {self.pos} "
                f"of {self.source.size}, last: {exc}; run the same command again"
            ) from None
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


# --- finding the archive ------------------------------------------------------------------------


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


# What sruns-stream writes, gzip first: the names looked for in a run's folder.
_WRITTEN = (".tar.gz", ".tar")


def _read_all(source: ByteSource) -> bytes:
    reader = ResumableReader(source)
    pieces = []
    while piece := reader.read_piece():
        pieces.append(piece)
    return b"".join(pieces)


def _volume_number(base: str, name: str) -> int | None:
    """k for ``<base>.<k>`` (a volume's name), else None."""
    tail = name[len(base) + 1:] if name.startswith(base + ".") else ""
    return int(tail) if tail.isdigit() else None


def _volume_parts(
    base: str, where: Callable[[str], str], found: dict[str, ByteSource], listing: ByteSource | None,
) -> list[VolumePart]:
    """The volumes of archive ``base`` in order: as its listing names them (each with the
    size and crc32c listed), or else those ``found`` by name, a gap in their numbers
    standing for a missing one. ``where`` makes a name a location for messages."""
    if listing is not None:
        at = where(volumes.listing_name(base))
        try:
            listed = volumes.parse(_read_all(listing), at)
        except IntegrityError as exc:
            raise DestinationError(f"{exc}: the archive's volumes cannot be put in order") from None
        for v in listed:
            if _volume_number(base, v.name) is None:
                raise DestinationError(f"{at} names {v.name!r}, not a volume of {base}")
        return [VolumePart(where(v.name), found.get(v.name), v.size, v.crc32c) for v in listed]
    numbered = sorted((n, name) for name in found if (n := _volume_number(base, name)) is not None)
    width = len(numbered[0][1]) - len(base) - 1
    names = {n: name for n, name in numbered}
    return [
        VolumePart(where(names.get(k, f"{base}.{k:0{width}d}")), found.get(names.get(k, "")))
        for k in range(numbered[-1][0] + 1)
    ]


def _local_volumes(path: Path) -> Volumes | None:
    """The volumes of the archive named by ``path`` (which is not a file), or None."""
    folder, base = path.parent, path.name
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    found: dict[str, ByteSource] = {
        name: LocalFile(folder / name) for name in names
        if _volume_number(base, name) is not None and (folder / name).is_file()
    }
    listing = folder / volumes.listing_name(base)
    if not found and not listing.is_file():
        return None
    parts = _volume_parts(base, lambda name: str(folder / name), found,
                          LocalFile(listing) if listing.is_file() else None)
    return Volumes(str(path), parts)


def _local(path: Path) -> ArchiveSource:
    path = path.expanduser().absolute()
    head, _, number = path.name.rpartition(".")
    if number.isdigit() and split_archive_filename(head):
        path = path.with_name(head)  # one volume named: the archive they make up
    if path.is_dir():
        # A destination's run directory: <dest>/<run>/<run>.tar.gz (or .tar, or volumes).
        for ext in _WRITTEN:
            candidate = path / archive_filename(path.name, ext)
            if candidate.is_file() or _local_volumes(candidate) is not None:
                path = candidate
                break
        else:
            raise UsageError(
                f"{path} is a directory without {path.name}.tar.gz or {path.name}.tar: give the archive's path"
            )
    data = LocalFile(path) if path.is_file() else _local_volumes(path)
    if data is None:
        # A well-formed request for something that is not there: a failure, not a usage error.
        what = "not a regular file" if os.path.lexists(path) else "nothing there"
        raise DestinationError(f"no archive at {path} ({what}): check the path")
    split = split_archive_filename(path.name)
    run, gzip = split if split else (path.name.split(".", 1)[0], True)
    manifest_path = path.with_name(manifest_filename(run))
    index_path = Path(index_next_to(str(path), run))
    return ArchiveSource(
        location=str(path),
        run=run,
        gzip=gzip,
        data=data,
        manifest_location=str(manifest_path),
        manifest=LocalFile(manifest_path) if manifest_path.is_file() else None,
        index=LocalFile(index_path) if gzip and index_path.is_file() else None,
        index_location=str(index_path),
    )


def _gcs(where: Location, url: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    if not where.path:
        raise UsageError(f"{url!r} names no object: use gs://BUCKET/PREFIX/RUN/RUN.tar.gz")
    from ..storage.gcs.client import make_client

    client = (client_factory or make_client)()
    try:
        return _gcs_with(client, where, url)
    except BaseException:
        client.close()
        raise


def _gcs_with(client: Client, where: Location, url: str) -> ArchiveSource:
    from google.api_core import exceptions as api_exceptions

    from ..storage.gcs.client import DEFAULT_TIMEOUT, crc32c_from_b64

    bucket_name, name = where.bucket, where.path
    bucket = client.bucket(bucket_name)
    candidates = [name]
    prefix, _, base = name.rpartition("/")
    if split_archive_filename(base) is None:
        # gs://bucket/prefix/RUN: the run's folder in the sruns-monitor layout.
        candidates = [*(blob_name(prefix, base, ext) for ext in _WRITTEN), name]

    def get(blob: str) -> Any:
        at = Location("gcs", bucket_name, blob)
        try:
            return bucket.get_blob(blob, timeout=DEFAULT_TIMEOUT)
        except api_exceptions.Forbidden as exc:
            raise DestinationError(f"permission denied reading {at}: the account needs storage.objects.get") from exc
        except api_exceptions.NotFound:
            return None  # the bucket itself is missing
        except api_exceptions.GoogleAPIError as exc:
            raise DestinationError(f"cannot read {at}: {exc}") from exc
        except OSError as exc:  # requests' connection errors are OSErrors
            raise DestinationError(f"cannot reach GCS for {at}: {exc}") from exc

    head, _, number = name.rpartition(".")
    if number.isdigit() and split_archive_filename(head.rsplit("/", 1)[-1]):
        candidates = [head]  # one volume named: the archive they make up
    blob = None
    data: ByteSource | None = None
    for candidate in candidates:
        blob = get(candidate)
        data = _gcs_volumes(client, bucket_name, candidate) if blob is None else None
        if blob is not None or data is not None:
            name = candidate
            break
    if blob is None and data is None:
        raise DestinationError(
            f"no archive at {url} (bucket {bucket_name!r}): check the URL, e.g. gs://BUCKET/PREFIX/RUN/RUN.tar.gz"
        )
    if data is None:
        assert blob is not None
        data = GcsObject(client, bucket_name, name, int(blob.size or 0), blob.generation)
    filename = name.rsplit("/", 1)[-1]
    split = split_archive_filename(filename)
    run, gzip = split if split else (filename.split(".", 1)[0], True)
    manifest_name = manifest_next_to(name, run)
    manifest_blob = get(manifest_name)
    index_name = index_next_to(name, run)
    index_blob = get(index_name) if gzip else None
    return ArchiveSource(
        location=str(Location("gcs", bucket_name, name)),
        run=run,
        gzip=gzip,
        data=data,
        manifest_location=str(Location("gcs", bucket_name, manifest_name)),
        manifest=(
            GcsObject(client, bucket_name, manifest_name, int(manifest_blob.size or 0), manifest_blob.generation)
            if manifest_blob is not None else None
        ),
        # Volumes are checked one by one (`Volumes`), against their listing or their own crc32c.
        stored_crc32c=crc32c_from_b64(getattr(blob, "crc32c", None)) if blob is not None else None,
        closer=client.close,
        index=(GcsObject(client, bucket_name, index_name, int(index_blob.size or 0), index_blob.generation)
               if index_blob is not None else None),
        index_location=str(Location("gcs", bucket_name, index_name)),
    )


def _gcs_volumes(client: Client, bucket: str, name: str) -> Volumes | None:
    """The volumes of archive ``gs://bucket/name`` (which is not an object), or None."""
    from google.api_core import exceptions as api_exceptions

    from ..storage.gcs.client import DEFAULT_TIMEOUT, crc32c_from_b64

    base = name.rsplit("/", 1)[-1]
    folder = name[: len(name) - len(base)]
    try:
        blobs = list(client.list_blobs(bucket, prefix=name + ".", timeout=DEFAULT_TIMEOUT))
    except api_exceptions.Forbidden as exc:
        raise DestinationError(
            f"permission denied listing gs://{bucket}/{name}.*: the account needs storage.objects.list"
        ) from exc
    except (api_exceptions.GoogleAPIError, OSError) as exc:
        raise DestinationError(f"cannot list gs://{bucket}/{name}.*: {exc}") from exc
    objects = {b.name[len(folder):]: b for b in blobs if "/" not in b.name[len(folder):]}
    found: dict[str, ByteSource] = {
        n: GcsObject(client, bucket, b.name, int(b.size or 0), b.generation)
        for n, b in objects.items() if _volume_number(base, n) is not None
    }
    listing_blob = objects.get(volumes.listing_name(base))
    if not found and listing_blob is None:
        return None
    listing = (GcsObject(client, bucket, listing_blob.name, int(listing_blob.size or 0), listing_blob.generation)
               if listing_blob is not None else None)
    parts = _volume_parts(base, lambda n: str(Location("gcs", bucket, folder + n)), found, listing)
    if listing is None:
        # No listing: each volume's own crc32c (GCS keeps one per object) checks its transfer.
        for part in parts:
            blob = objects.get(part.description.rsplit("/", 1)[-1])
            part.crc32c = crc32c_from_b64(getattr(blob, "crc32c", None)) if blob is not None else None
    return Volumes(str(Location("gcs", bucket, name)), parts)


def _from_run_name(name: str, journal: Journal | None, collection: str | None) -> str | None:
    """Where run ``name`` was archived, per the journal (``gs://…`` or an absolute path)
    then Firestore (``gs://…`` only); None if neither knows it.

    A Firestore document is shared by every host and written by whoever can write the
    collection: a local path in it is refused, never opened (it could name any file on
    this host, and the error would quote its first bytes)."""
    why = ""
    if journal is not None:
        # Here, not at the top: given a journal, its module is loaded already; without one
        # (a path, a gs:// URI) the read side does not load SQLite.
        from ..state.journal import ARCHIVED

        task = journal.get(name)
        if task is not None:
            location = task.location or task.gcp_tarfile
            if location and task.status in ARCHIVED:
                return storage_uri(location)
            why = f"journal {journal.path} says run {name} is {task.status}, not archived"
    if collection:
        from ..state.firestore import lookup

        record = lookup(name, collection)
        if record is not None:
            if record.archived:
                storage = record.storage
                uri = record.archive_uri if isinstance(storage, str) else None
                if uri is None or not uri.startswith("gs://"):
                    shown = repr(storage[:200]) if isinstance(storage, str) else repr(storage)[:200]
                    raise UsageError(
                        f"Firestore collection {collection!r} says run {name} is stored at {shown}, not in "
                        "GCS: a record shared by every host may only name a gs:// location, so it is not read; "
                        "give the archive's path if it is on this host"
                    )
                return uri
            why = f"Firestore collection {collection!r} says run {name} is {record.workflow_status}, not archived"
    if why:
        raise UsageError(f"{why}: wait for its archive to finish, or give the archive's gs:// URL or path")
    return None


def _parse(text: str) -> Location:
    """``text`` read in the package's one location grammar (`layout.parse_location`). A
    bucket name it rejects keeps its message; any other URL it rejects (``gs:/x``,
    ``gs:bucket``, ``s3://…``, ``http://…``) is answered with the forms a source may take."""
    try:
        return parse_location(text, "archive")
    except UsageError:
        if text.startswith("gs://"):
            raise
        raise UsageError(
            f"{text!r} is not a source sruns-stream reads: give a run name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz, "
            "file:///PATH or a local path"
        ) from None


def _open(location: Location, text: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    """The archive at a parsed ``gs://`` or local location (``text``: as it was given)."""
    if location.kind == "gcs":
        return _gcs(location, text, client_factory)
    return _local(Path(location.path))


def resolve_source(
    source: str, journal: Journal | None, collection: str | None, *,
    client_factory: Callable[[], Client] | None = None,
) -> ArchiveSource:
    """An `ArchiveSource` for a run name, a ``gs://`` or ``file://`` URL or a local path
    (see the module doc).

    A bare name (no ``/``) is looked up as a run first, so a run folder of the same name
    in the current directory does not shadow its archive.
    """
    if source.startswith(("gs://", "file://")) or (is_url(source) and not os.path.lexists(source)):
        # A URL, never a file name (unless one stands there): gs://, file://, or a form we do
        # not read (gs:/bucket/x, gs:bucket, s3://..., http://...).
        return _open(_parse(source), source, client_factory)
    if "/" not in source and source not in (".", ".."):
        location = _from_run_name(source, journal, collection)
        if location is not None:
            return _open(parse_location(location, "archive"), location, client_factory)
        if not os.path.lexists(source) and split_archive_filename(source) is not None:
            # RUN.tar.gz in the current directory, named as a path: it is not there.
            return _local(Path(source))
        if not os.path.exists(source):
            places = [f"journal {journal.path}" if journal is not None else "",
                      f"Firestore collection {collection!r}" if collection else ""]
            known = " or ".join(p for p in places if p)
            what = (f"is not a run in {known}, a gs:// URL, nor an existing path" if known else
                    "is neither a gs:// URL nor an existing path, and no journal or Firestore collection "
                    "was given to look it up as a run")
            raise UsageError(
                f"{source!r} {what}: give the run's name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz or the archive's path"
            )
    return _local(Path(source))
