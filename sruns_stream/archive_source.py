"""An archive read back: where it lives, its bytes as a resumable stream, and its members.

`verify` and `restore` read an archive in one sequential pass, never writing it to disk:

- `resolve_source` turns what the user typed (a run name, found through the journal and
  then Firestore; a ``gs://bucket/blob`` URL; a local path) into an `ArchiveSource`: the
  archive's bytes and the ``<run>.manifest.tsv`` beside it.
- `ResumableReader` reads those bytes in pieces. A dropped connection or a short read
  re-opens the object at the byte where it stopped (a ranged GET for GCS, a seek for a
  local file), with a bounded number of consecutive retries: a multi-terabyte download
  survives network blips without starting over.
- `GzipLayer` inflates with ISA-L and checks each gzip member's CRC32 and ISIZE itself,
  so a damaged archive is reported as such rather than as a generic zlib error.
- `TarMembers` walks the tar stream's headers (ustar, pax, GNU long names), yielding one
  `Member` at a time and its data in pieces: memory stays a few MiB, whatever the size
  of the run or the number of its files.

Damage found in the stream (corrupt gzip, truncation, a bad tar header) is raised as
`ArchiveDamaged`, which `restore.py` turns into a reported problem; it never leaves this
package. Failures to *reach* the archive are `DestinationError`s from the exception tree.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import quote

import google_crc32c
from isal import isal_zlib

from . import manifest_tsv
from .errors import DestinationError, UsageError
from .gcs import DEFAULT_TIMEOUT, RETRY, TRANSIENT_STATUS, crc32c_from_b64, pause
from .layout import (
    is_url,
    manifest_filename,
    manifest_next_to,
    parse_location,
    split_archive_filename,
    storage_uri,
)
from .manifest_tsv import ManifestRow

if TYPE_CHECKING:
    import requests
    from google.cloud.storage import Client  # type: ignore[import-untyped]  # the library ships no type information

    from .journal import Journal

__all__ = [
    "PIECE",
    "ArchiveDamaged",
    "ArchiveSource",
    "ByteSource",
    "ConnectionDropped",
    "GcsObject",
    "GzipLayer",
    "LocalFile",
    "Member",
    "ResumableReader",
    "TarMembers",
    "resolve_source",
]

# Every stage moves data in pieces of this size: large enough that per-call overhead
# vanishes next to ISA-L and crc32c, small enough that memory stays a few MiB.
PIECE = 1 << 20
Note = Callable[[str], None]


class ConnectionDropped(Exception):
    """A `ByteSource` lost its stream (reset, timeout, short read, 5xx): worth re-opening
    at the current byte. Internal: after the last retry it becomes a DestinationError."""


class ArchiveDamaged(Exception):
    """The archive's bytes are not a valid gzip/tar stream from this point on (corrupt,
    truncated). Internal: verify and restore report it as a problem, naming the member."""


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
        self.description = f"gs://{bucket}/{name}"
        self.size = size
        self._client = client
        self._timeout = timeout
        self._url = (
            f"{client.api_endpoint}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
            f"?alt=media" + (f"&generation={generation}" if generation else "")
        )

    def open_at(self, start: int) -> Iterator[bytes]:
        import requests
        import urllib3
        from google.auth import exceptions as auth_exceptions

        # Accept-Encoding gzip + no decoding: the stored bytes as they are, never
        # transcoded by GCS nor inflated by requests.
        headers = {"Accept-Encoding": "gzip"}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            resp = self._client._http.request("GET", self._url, headers=headers, stream=True, timeout=self._timeout)
        except (requests.ConnectionError, requests.Timeout, auth_exceptions.TransportError) as exc:
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


# --- the gzip layer ----------------------------------------------------------------------


_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
# isal's stub declares `error` as an instance; at run time it is the exception class.
_InflateError: type[Exception] = isal_zlib.error  # type: ignore[assignment]


class GzipLayer:
    """Inflate a gzip stream (one member, or several concatenated) with ISA-L.

    Header, CRC32 and ISIZE are checked here rather than by zlib's own gzip mode, so the
    messages say which check failed. A CRC mismatch is recorded in ``problems`` (the
    members before it have been read and checked already); anything that stops the
    stream (corrupt deflate data, truncation) raises ArchiveDamaged.
    """

    def __init__(self, pull: Callable[[], bytes], where: Callable[[], int], name: str) -> None:
        self._pull = pull
        self._where = where  # compressed bytes read so far, for messages
        self._name = name
        self._input = b""  # compressed bytes not yet handed to the inflater
        self._inflater: isal_zlib.Decompress | None = None
        self._crc = 0
        self._isize = 0
        self._members = 0
        self.problems: list[str] = []
        self.done = False

    def read_piece(self) -> bytes:
        """The next piece of inflated data, ``b""`` at the end of the stream."""
        while not self.done:
            if self._inflater is None and not self._start_member():
                self.done = True
                break
            out = self._inflate()
            if out:
                return out
        return b""

    def _fill(self, n: int) -> bool:
        """At least ``n`` input bytes buffered (False at the end of the object)."""
        while len(self._input) < n:
            piece = self._pull()
            if not piece:
                return False
            self._input += piece
        return True

    def _start_member(self) -> bool:
        """Parse a member header; False when the stream ends cleanly before one."""
        if not self._fill(1):
            if self._members == 0:
                raise ArchiveDamaged(f"{self._name} is empty")
            return False
        if not self._fill(10):
            raise self._truncated("in a gzip header")
        head = self._input
        if head[:2] != b"\x1f\x8b" or head[2] != 8:
            if self._members:
                raise ArchiveDamaged(
                    f"{self._name} has unexpected bytes after the end of its gzip stream, "
                    f"at archive byte {self._where() - len(head)}"
                )
            raise ArchiveDamaged(f"{self._name} is not a gzip stream (it starts with {head[:4].hex()})")
        flags = head[3]
        pos = 10
        if flags & _FEXTRA:
            if not self._fill(pos + 2):
                raise self._truncated("in a gzip header")
            pos += 2 + int.from_bytes(self._input[pos : pos + 2], "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                while True:
                    if not self._fill(pos + 1):
                        raise self._truncated("in a gzip header")
                    end = self._input.find(b"\0", pos)
                    if end >= 0:
                        pos = end + 1
                        break
                    pos = len(self._input)
                    if pos > MAX_EXTENDED:  # real ones are a file name; never buffer more
                        raise ArchiveDamaged(f"{self._name} has a gzip header over 1 MiB long: it is not an archive")
                    if not self._fill(pos + 1):
                        raise self._truncated("in a gzip header")
        if flags & _FHCRC:
            pos += 2
        if not self._fill(pos):
            raise self._truncated("in a gzip header")
        self._input = self._input[pos:]
        self._inflater = isal_zlib.decompressobj(-15)  # raw deflate: the trailer is ours to check
        self._crc = 0
        self._isize = 0
        self._members += 1
        return True

    def _inflate(self) -> bytes:
        inflater = self._inflater
        assert inflater is not None
        try:
            if not self._input:
                self._input = self._pull()
            if self._input:
                # max_length bounds the output of one call: a few corrupt bytes cannot
                # make one piece huge.
                out = inflater.decompress(self._input, PIECE)
                self._input = inflater.unconsumed_tail
            else:
                # The object ended: whatever output the inflater still holds, then it
                # must be at the end of the deflate stream.
                out = inflater.flush()
                if not inflater.eof and not out:
                    raise self._truncated("in the compressed data")
        except _InflateError as exc:
            raise ArchiveDamaged(
                f"{self._name}: corrupt gzip data near archive byte {self._where() - len(self._input)} ({exc})"
            ) from None
        self._crc = isal_zlib.crc32(out, self._crc)
        self._isize += len(out)
        if inflater.eof:
            self._input = inflater.unused_data + self._input
            self._finish_member()
        return out

    def _finish_member(self) -> None:
        if not self._fill(8):
            raise self._truncated("in the gzip trailer")
        crc = int.from_bytes(self._input[:4], "little")
        isize = int.from_bytes(self._input[4:8], "little")
        self._input = self._input[8:]
        self._inflater = None
        if crc != self._crc:
            self.problems.append(
                f"{self._name}: the gzip CRC32 is {self._crc:08x} over the data, but the trailer says "
                f"{crc:08x}: the compressed bytes were altered"
            )
        if isize != self._isize & 0xFFFFFFFF:
            self.problems.append(
                f"{self._name}: the gzip length is {self._isize} bytes, but the trailer says {isize} (mod 2^32)"
            )

    def _truncated(self, where: str) -> ArchiveDamaged:
        return ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._where()}, {where}")


# --- the tar layer --------------------------------------------------------------------------

BLOCK = 512
# Extended headers (pax x/g, GNU L/K) are held in memory whole: a few KiB in any real
# archive. More than this before one member (or in pax globals) is damage, refused at
# its header before a byte of it is read, so a crafted archive cannot make us buffer GBs.
MAX_EXTENDED = 1 << 20
# off_t: no file system holds a bigger file, so a bigger size is not a size.
_MAX_SIZE = (1 << 63) - 1
# os.utime takes nanoseconds in 64 bits: the furthest mtime (either way) it can set.
_MAX_MTIME = _MAX_SIZE // 1_000_000_000
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(rb"[0-9]{1,19}")  # pax size: a plain decimal, no sign, no exponent
_SECONDS = re.compile(rb"(-?[0-9]{1,19})(?:\.[0-9]*)?")  # pax mtime: decimal seconds, fraction ignored
_EXTENDED_NAMES = {b"x": "pax header", b"g": "pax global header", b"L": "GNU long name", b"K": "GNU long link"}
_KINDS = {b"0": "f", b"\0": "f", b"7": "f", b"1": "h", b"2": "l", b"3": "c", b"4": "b", b"5": "d", b"6": "p"}


@dataclass(frozen=True, slots=True)
class Member:
    """One tar member as its headers describe it."""

    name: str  # as stored, trailing "/" removed; undecodable bytes kept as surrogates
    kind: str  # f d l h (hard link) c b p (devices, fifo) or ? (unsupported type)
    size: int  # data bytes that follow the header
    mode: int
    mtime: int
    linkname: str
    offset: int  # tar-stream offset of its (first) header, for messages
    typeflag: str


class _Header(NamedTuple):
    name: bytes
    mode: int
    size: int
    mtime: int
    linkname: bytes


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str, offset: int, high: int = _MAX_SIZE, low: int = 0) -> int:
    """A numeric ustar field: octal text (NUL/space padded) or GNU base-256, within [low, high]."""
    if field[:1] and field[0] & 0x80:
        # GNU base-256, for values the octal field cannot hold.
        value = int.from_bytes(field[1:], "big")
        value = -((1 << (8 * len(field) - 8)) - value) if field[0] == 0xFF else value
    else:
        text = field.replace(b"\0", b" ").strip()
        # Strictly octal digits: int(text, 8) would also take "-1", "0o17" and "1_0".
        if text and not _OCTAL.fullmatch(text):
            raise ArchiveDamaged(f"unreadable {what} field {field!r} in the tar header at tar byte {offset}")
        value = int(text, 8) if text else 0
    if not low <= value <= high:
        raise ArchiveDamaged(f"{what} {value} in the tar header at tar byte {offset} is out of range")
    return value


def _pax_number(key: bytes, value: bytes, offset: int) -> int:
    """A pax ``size`` or ``mtime`` record, as tar allows it: decimal digits (mtime: signed,
    a fraction ignored); never inf, nan or an exponent, and within what a file can have."""
    shown = value[:40].decode("ascii", "replace")
    if key == b"size":
        m = _DECIMAL.fullmatch(value)
        number = int(m.group(0)) if m else None
        ok = number is not None and number <= _MAX_SIZE
    else:
        m = _SECONDS.fullmatch(value)
        number = int(m.group(1)) if m else None
        ok = number is not None and -_MAX_MTIME <= number <= _MAX_MTIME
    if not ok or number is None:
        raise ArchiveDamaged(
            f"pax {key.decode()} {shown!r} in the extended header at tar byte {offset} is not a valid "
            f"{'size' if key == b'size' else 'time'}"
        )
    return number


def _pax_records(data: bytes, offset: int) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 8)  # "<len> ": seven digits cover 1 MiB
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveDamaged(f"unreadable pax header at tar byte {offset}")
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos += length
    return records


class TarMembers:
    """Iterate a tar stream's members; after each one, `data()` yields its bytes.

    Data left unread is skipped (read and dropped) before the next header, so a caller
    can ignore members it does not want. ``raw_offset`` is the tar bytes consumed so far.

    Pieces pulled are kept as they come, in a queue, until consumed: taking n bytes
    costs O(n) whatever was buffered before (re-joining the buffer for every piece made
    a large extended header quadratic), and a member's data goes out piece by piece,
    uncopied unless a piece straddles a member boundary.
    """

    def __init__(self, pull: Callable[[], bytes]) -> None:
        self._pull = pull
        self._pieces: deque[bytes] = deque()
        self._off = 0  # bytes of _pieces[0] already consumed
        self._avail = 0  # bytes in _pieces not yet consumed
        self._left = 0  # data bytes of the current member not yet consumed
        self._pad = 0
        self.raw_offset = 0
        self.trailing_garbage = 0  # non-zero bytes after the end-of-archive marker
        self.last: Member | None = None

    def _more(self) -> bool:
        piece = self._pull()
        if not piece:
            return False
        self._pieces.append(piece)
        self._avail += len(piece)
        return True

    def _piece(self, limit: int) -> bytes:
        """Up to ``limit`` buffered bytes, from the first piece only (at least one is buffered)."""
        head = self._pieces[0]
        n = min(limit, len(head) - self._off)
        out = head if self._off == 0 and n == len(head) else head[self._off : self._off + n]
        if self._off + n == len(head):
            self._pieces.popleft()
            self._off = 0
        else:
            self._off += n
        self._avail -= n
        self.raw_offset += n
        return out

    def _take(self, n: int, where: str) -> bytes:
        while self._avail < n:
            if not self._more():
                raise self._truncated(where)
        parts = []
        while n:
            part = self._piece(n)
            parts.append(part)
            n -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _truncated(self, where: str) -> ArchiveDamaged:
        after = f" (after member {self.last.name})" if self.last else ""
        return ArchiveDamaged(f"the tar stream ends at tar byte {self.raw_offset}, {where}{after}: it is truncated")

    def data(self) -> Iterator[bytes]:
        """The current member's data, in pieces (bytes: google_crc32c takes nothing else)."""
        name = self.last.name if self.last else "?"
        while self._left:
            if not self._avail and not self._more():
                raise ArchiveDamaged(
                    f"the tar stream ends at tar byte {self.raw_offset}, {self._left} bytes before the "
                    f"end of member {name}: it is truncated"
                )
            piece = self._piece(self._left)
            self._left -= len(piece)
            yield piece

    def _skip_rest(self) -> None:
        for _ in self.data():
            pass
        if self._pad:
            self._take(self._pad, "in the padding of a member")
            self._pad = 0

    def __iter__(self) -> Iterator[Member]:
        # Records and where they came from (the extended header's offset, for messages).
        overrides: dict[bytes, tuple[bytes, int]] = {}  # pax 'x' records for the next member
        globals_: dict[bytes, tuple[bytes, int]] = {}  # pax 'g' records for all that follow
        long_name: bytes | None = None
        long_link: bytes | None = None
        first_offset: int | None = None
        extended = 0  # extended-header bytes before the current member
        global_bytes = 0
        while True:
            self._skip_rest()
            offset = self.raw_offset
            if first_offset is None:
                first_offset = offset
            block = self._take(BLOCK, "where a header should start")
            if block.count(0) == BLOCK:
                self._end()
                return
            header = self._header(block, offset)
            typeflag = block[156:157]
            if typeflag in _EXTENDED_NAMES:
                what = _EXTENDED_NAMES[typeflag]
                extended += header.size
                if typeflag == b"g":
                    global_bytes += header.size
                if max(extended, global_bytes) > MAX_EXTENDED:
                    raise ArchiveDamaged(
                        f"{what} of {header.size} bytes at tar byte {offset} takes the extended headers past "
                        f"the 1 MiB limit: no real archive has them this large"
                    )
                payload = self._take(header.size, "in an extended header")
                self._take(-header.size % BLOCK, "in an extended header")
                if typeflag == b"x":
                    overrides.update((k, (v, offset)) for k, v in _pax_records(payload, offset).items())
                elif typeflag == b"g":
                    globals_.update((k, (v, offset)) for k, v in _pax_records(payload, offset).items())
                elif typeflag == b"L":
                    long_name = payload.rstrip(b"\0")
                else:
                    long_link = payload.rstrip(b"\0")
                continue
            records = {**globals_, **overrides}
            name = records[b"path"][0] if b"path" in records else (
                long_name if long_name is not None else header.name
            )
            linkname = records[b"linkpath"][0] if b"linkpath" in records else (
                long_link if long_link is not None else header.linkname
            )
            size = _pax_number(b"size", *records[b"size"]) if b"size" in records else header.size
            mtime = _pax_number(b"mtime", *records[b"mtime"]) if b"mtime" in records else header.mtime
            kind = _KINDS.get(typeflag, "?")
            if kind == "f" and typeflag == b"\0" and name.endswith(b"/"):
                kind = "d"  # pre-POSIX tars mark directories by the trailing slash alone
            member = Member(
                name=_decode(name.rstrip(b"/") if len(name) > 1 else name),
                kind=kind,
                size=size,
                mode=header.mode,
                mtime=mtime,
                linkname=_decode(linkname),
                offset=first_offset,
                typeflag=_decode(typeflag),
            )
            # Only regular files (and types we do not know) carry data, as in tarfile.
            self._left = size if kind in ("f", "?") else 0
            self._pad = -self._left % BLOCK
            overrides, long_name, long_link, first_offset, extended = {}, None, None, None, 0
            self.last = member
            yield member

    def _header(self, block: bytes, offset: int) -> _Header:
        stored = _number(block[148:156], "checksum", offset)
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        # Some old tars summed signed chars; accept either, as GNU tar does.
        if stored != unsigned and stored != unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127):
            after = f" (after member {self.last.name})" if self.last else ""
            raise ArchiveDamaged(f"bad tar header checksum at tar byte {offset}{after}: the stream is corrupt")
        name = block[:100].split(b"\0", 1)[0]
        if block[257:265] == b"ustar\x0000":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        return _Header(
            name=name,
            mode=_number(block[100:108], "mode", offset, high=0o7777777),
            size=_number(block[124:136], "size", offset),
            mtime=_number(block[136:148], "mtime", offset, high=_MAX_MTIME, low=-_MAX_MTIME),
            linkname=block[157:257].split(b"\0", 1)[0],
        )

    def _end(self) -> None:
        """After the first zero block: the second one, then only zero padding."""
        for piece in self._rest():
            self.trailing_garbage += len(piece) - piece.count(0)

    def _rest(self) -> Iterator[bytes]:
        while self._avail:
            yield self._piece(self._avail)
        while True:
            piece = self._pull()
            if not piece:
                return
            yield piece


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


def _local(path: Path) -> ArchiveSource:
    path = path.expanduser().absolute()
    if path.is_dir():
        # A destination's run directory: <dest>/<run>/<run>.tar.gz (or .tar).
        for ext in (".tar.gz", ".tar"):
            candidate = path / f"{path.name}{ext}"
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


def _gcs(url: str, client_factory: Callable[[], Client] | None) -> ArchiveSource:
    from .gcs import make_client

    where = parse_location(url, "archive")
    bucket_name, name = where.bucket, where.path
    if not name:
        raise UsageError(f"{url!r} names no object: use gs://BUCKET/PREFIX/RUN/RUN.tar.gz")
    client = (client_factory or make_client)()
    try:
        return _gcs_with(client, bucket_name, name, url)
    except BaseException:
        client.close()
        raise


def _gcs_with(client: Client, bucket_name: str, name: str, url: str) -> ArchiveSource:
    from google.api_core import exceptions as api_exceptions

    bucket = client.bucket(bucket_name)
    candidates = [name]
    if split_archive_filename(name.rsplit("/", 1)[-1]) is None:
        # gs://bucket/prefix/RUN: the run's folder in the sruns-monitor layout.
        base = name.rsplit("/", 1)[-1]
        candidates = [f"{name}/{base}.tar.gz", f"{name}/{base}.tar", name]

    def get(blob_name: str) -> Any:
        try:
            return bucket.get_blob(blob_name, timeout=DEFAULT_TIMEOUT)
        except api_exceptions.Forbidden as exc:
            raise DestinationError(
                f"permission denied reading gs://{bucket_name}/{blob_name}: the account needs storage.objects.get"
            ) from exc
        except api_exceptions.NotFound:
            return None  # the bucket itself is missing
        except api_exceptions.GoogleAPIError as exc:
            raise DestinationError(f"cannot read gs://{bucket_name}/{blob_name}: {exc}") from exc
        except OSError as exc:  # requests' connection errors are OSErrors
            raise DestinationError(f"cannot reach GCS for gs://{bucket_name}/{blob_name}: {exc}") from exc

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
        location=f"gs://{bucket_name}/{name}",
        run=run,
        gzip=gzip,
        data=GcsObject(client, bucket_name, name, int(blob.size or 0), blob.generation),
        manifest_location=f"gs://{bucket_name}/{manifest_name}",
        manifest=(
            GcsObject(client, bucket_name, manifest_name, int(manifest_blob.size or 0), manifest_blob.generation)
            if manifest_blob is not None else None
        ),
        stored_crc32c=crc32c_from_b64(getattr(blob, "crc32c", None)),
        closer=client.close,
    )


def _from_run_name(name: str, journal: Journal | None, collection: str | None) -> str | None:
    """Where run ``name`` was archived, per the journal then Firestore; None if neither knows it."""
    why = ""
    if journal is not None:
        task = journal.get(name)
        if task is not None:
            location = task.location or task.gcp_tarfile
            if location and task.status in ("uploading_complete", "complete"):
                return storage_uri(location)
            why = f"journal {journal.path} says run {name} is {task.status}, not archived"
    if collection:
        from .firestore import lookup

        record = lookup(name, collection)
        if record is not None:
            if record.archived and record.archive_uri:
                return record.archive_uri
            why = f"Firestore collection {collection!r} says run {name} is {record.workflow_status}, not archived"
    if why:
        raise UsageError(f"{why}: wait for its archive to finish, or give the archive's gs:// URL or path")
    return None


def resolve_source(
    source: str, journal: Journal | None, collection: str | None, *,
    client_factory: Callable[[], Client] | None = None,
) -> ArchiveSource:
    """An `ArchiveSource` for a run name, a ``gs://`` URL or a local path (see the module doc).

    A bare name (no ``/``) is looked up as a run first, so a run folder of the same name
    in the current directory does not shadow its archive.
    """
    if source.startswith("gs://"):
        return _gcs(source, client_factory)
    if source.startswith("file://"):
        return _local(Path(source[len("file://") :]))
    if is_url(source) and not os.path.lexists(source):
        # gs:/bucket/x, gs:bucket, s3://..., http://...: a URL we do not read, not a file name.
        raise UsageError(
            f"{source!r} is not a source sruns-stream reads: give a run name, gs://BUCKET/PREFIX/RUN/RUN.tar.gz, "
            "file:///PATH or a local path"
        )
    if "/" not in source and source not in (".", ".."):
        location = _from_run_name(source, journal, collection)
        if location is not None:
            return _gcs(location, client_factory) if location.startswith("gs://") else _local(Path(location))
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
