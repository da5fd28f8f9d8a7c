"""Where an archive is, and its bytes as one resumable stream.

`verify` and `restore` read an archive in one sequential pass, never writing it to disk.
This module gives them the stored bytes:

- `resolve_source` turns what the user typed (a run name, found through the journal and
  then Firestore; a ``gs://bucket/blob`` or ``file://`` URL; a local path) into an
  `ArchiveSource`: the archive's bytes and the ``<run>.manifest.tsv`` beside it. Places
  are read in the package's one location grammar (`layout.parse_location`).
- A `ByteSource` is those bytes readable from any offset: a `LocalFile` (seek) or a
  `GcsObject` (a streaming ranged GET of one pinned generation).
- `ResumableReader` reads a `ByteSource` in pieces. A dropped connection or a short read
  re-opens it at the byte where it stopped, under the package's one retry policy
  (`gcs.RETRY`): a multi-terabyte download survives network blips without starting over.

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
import requests
import urllib3
from google.api_core import exceptions as api_exceptions

from .. import manifest_tsv
from ..errors import DestinationError, UsageError
from ..gcs import (
    DEFAULT_TIMEOUT,
    RETRY,
    TRANSIENT_ERRORS,
    TRANSIENT_STATUS,
    crc32c_from_b64,
    make_client,
    pause,
)
from ..layout import (
    Location,
    archive_filename,
    blob_name,
    is_url,
    manifest_filename,
    manifest_next_to,
    parse_location,
    split_archive_filename,
    storage_uri,
)
from ..manifest_tsv import ManifestRow

if TYPE_CHECKING:
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

    from ..journal import Journal

__all__ = [
    "PIECE",
    "ArchiveSource",
    "ByteSource",
    "ConnectionDropped",
    "GcsObject",
    "LocalFile",
    "Note",
    "ResumableReader",
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

    def open_at(self, start: int) -> Iterator[bytes]:
        """The bytes from ``start`` on, in pieces; raises ConnectionDropped on a transient
        failure (the caller opens again at the byte it got to)."""
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

    def open_at(self, start: int) -> Iterator[bytes]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the generator's finally
        except OSError as exc:
            raise DestinationError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            f.seek(start)
            while True:
                try:
                    piece = f.read(PIECE)
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
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.description = str(Location("gcs", bucket, name))
        self.size = size
        self._client = client
        self._timeout = timeout
        self._url = (
            f"{client.api_endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
            f"?alt=media" + (f"&generation={generation}" if generation else "")
        )

    def open_at(self, start: int) -> Iterator[bytes]:
        # Accept-Encoding gzip + no decoding: the stored bytes as they are, never
        # transcoded by GCS nor inflated by requests.
        headers = {"Accept-Encoding": "gzip"}
        if start:
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


class ResumableReader:
    """Sequential reads of a `ByteSource` that survive dropped connections.

    ``read_piece()`` returns the next piece (``b""`` at the end). A failure re-opens the
    source at the current byte, after a jittered exponential wait; ``attempts`` bounds the
    consecutive failures at one position. ``crc32c`` covers every byte handed out, to
    compare with the stored object's own checksum at the end.
    """

    def __init__(
        self, source: ByteSource, *, attempts: int = RETRY.attempts,
        sleep: Callable[[float], None] = pause, note: Note | None = None,
    ) -> None:
        self.source = source
        self.pos = 0
        self.crc32c = 0
        self.reconnects = 0
        self._attempts = attempts
        self._sleep = sleep
        self._note = note
        self._stream: Iterator[bytes] | None = None

    @property
    def size(self) -> int:
        return self.source.size

    def read_piece(self) -> bytes:
        if self.pos >= self.source.size:
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
        piece = piece[: self.source.size - self.pos]  # never past the size we were told
        self.pos += len(piece)
        self.crc32c = google_crc32c.extend(self.crc32c, piece)
        return piece

    def _next(self) -> bytes:
        if self._stream is None:
            if self.pos:
                self.reconnects += 1
                if self._note is not None:
                    self._note(f"reading {self.source.description} again from byte {self.pos}")
            self._stream = self.source.open_at(self.pos)
        try:
            while True:
                piece = next(self._stream)
                if piece:
                    return piece
        except StopIteration:
            self._stream = None
            raise ConnectionDropped(f"the stream ended at byte {self.pos} of {self.source.size}") from None
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


def _local(path: Path) -> ArchiveSource:
    path = path.expanduser().absolute()
    if path.is_dir():
        # A destination's run directory: <dest>/<run>/<run>.tar.gz (or .tar).
        for ext in _WRITTEN:
            candidate = path / archive_filename(path.name, ext)
            if candidate.is_file():
                path = candidate
                break
        else:
            raise UsageError(f"{path} is a directory without {path.name}.tar.gz or {path.name}.tar: give the archive's path")
    elif not path.is_file():
        # A well-formed request for something that is not there: a failure, not a usage error.
        what = "not a regular file" if os.path.lexists(path) else "nothing there"
        raise DestinationError(f"no archive at {path} ({what}): check the path")
    split = split_archive_filename(path.name)
    run, gzip = split if split else (path.name.split(".", 1)[0], True)
    manifest_path = path.with_name(manifest_filename(run))
    return ArchiveSource(
        location=str(path),
        run=run,
        gzip=gzip,
        data=LocalFile(path),
        manifest_location=str(manifest_path),
        manifest=LocalFile(manifest_path) if manifest_path.is_file() else None,
    )


def _gcs(where: Location, url: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    if not where.path:
        raise UsageError(f"{url!r} names no object: use gs://BUCKET/PREFIX/RUN/RUN.tar.gz")
    client = (client_factory or make_client)()
    try:
        return _gcs_with(client, where, url)
    except BaseException:
        client.close()
        raise


def _gcs_with(client: Client, where: Location, url: str) -> ArchiveSource:
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

    blob = None
    for candidate in candidates:
        blob = get(candidate)
        if blob is not None:
            name = candidate
            break
    if blob is None:
        raise DestinationError(
            f"no archive at {url} (bucket {bucket_name!r}): check the URL, e.g. gs://BUCKET/PREFIX/RUN/RUN.tar.gz"
        )
    filename = name.rsplit("/", 1)[-1]
    split = split_archive_filename(filename)
    run, gzip = split if split else (filename.split(".", 1)[0], True)
    manifest_name = manifest_next_to(name, run)
    manifest_blob = get(manifest_name)
    return ArchiveSource(
        location=str(Location("gcs", bucket_name, name)),
        run=run,
        gzip=gzip,
        data=GcsObject(client, bucket_name, name, int(blob.size or 0), blob.generation),
        manifest_location=str(Location("gcs", bucket_name, manifest_name)),
        manifest=(
            GcsObject(client, bucket_name, manifest_name, int(manifest_blob.size or 0), manifest_blob.generation)
            if manifest_blob is not None else None
        ),
        stored_crc32c=crc32c_from_b64(getattr(blob, "crc32c", None)),
        closer=client.close,
    )


def _from_run_name(name: str, journal: Journal | None, collection: str | None) -> str | None:
    """Where run ``name`` was archived, per the journal then Firestore (``gs://…`` or an
    absolute path); None if neither knows it."""
    why = ""
    if journal is not None:
        task = journal.get(name)
        if task is not None:
            location = task.location or task.gcp_tarfile
            if location and task.status in ("uploading_complete", "complete"):
                return storage_uri(location)
            why = f"journal {journal.path} says run {name} is {task.status}, not archived"
    if collection:
        from ..firestore import lookup

        record = lookup(name, collection)
        if record is not None:
            if record.archived and record.archive_uri:
                return record.archive_uri
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
