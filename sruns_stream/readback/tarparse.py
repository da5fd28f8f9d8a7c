"""The tar layer of a read-back: `TarMembers` walks a tar stream's headers (ustar, pax,
GNU long names), yielding one `Member` at a time and its data in pieces.

Memory stays a few MiB whatever the size of the run or the number of its files. Every
header field is parsed within bounds (strict octal or base-256, pax numbers as tar
allows them, sizes an ``off_t`` can hold, mtimes ``os.utime`` can set), and extended
headers are refused past `MAX_EXTENDED` before a byte of them is buffered: a hostile
header is `ArchiveDamaged` naming the field and its tar byte, never a traceback, a hang
or unbounded buffering.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import google_crc32c

from .damage import MAX_EXTENDED, ArchiveDamaged

__all__ = ["BLOCK", "Member", "TarMembers"]

BLOCK = 512
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


class Checksums(Protocol):
    """Who computed member data crc32c elsewhere (`pgunzip.ParallelGzipLayer`), by the
    member data's tar offset and size."""

    def planned(self, start: int, size: int) -> bool: ...

    def member_crc32c(self, start: int, size: int) -> int: ...


class TarMembers:
    """Iterate a tar stream's members; after each one, `data()` yields its bytes.

    Data left unread is skipped (read and dropped) before the next header, so a caller
    can ignore members it does not want. ``raw_offset`` is the tar bytes consumed so far.

    Pieces pulled are kept as they come, in a queue, until consumed: taking n bytes
    costs O(n) whatever was buffered before (re-joining the buffer for every piece made
    a large extended header quadratic), and a member's data goes out piece by piece,
    uncopied unless a piece straddles a member boundary.
    """

    def __init__(self, pull: Callable[[], bytes], checksums: Checksums | None = None) -> None:
        self._pull = pull
        self._checksums = checksums
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
        head, at = self._pieces[0], self._off
        n = self._advance(limit)
        return head if at == 0 and n == len(head) else head[at : at + n]

    def _advance(self, limit: int) -> int:
        """Consume up to ``limit`` buffered bytes of the first piece; how many."""
        head = self._pieces[0]
        n = min(limit, len(head) - self._off)
        if self._off + n == len(head):
            self._pieces.popleft()
            self._off = 0
        else:
            self._off += n
        self._avail -= n
        self.raw_offset += n
        return n

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

    def file_crc32c(self, sink: Callable[[bytes], object] | None = None) -> int:
        """Consume the current member's data, handing each piece to ``sink`` if given, and
        return its crc32c: from the inflating workers where they checksummed it
        (``checksums``), else computed here."""
        start, size = self.raw_offset, self._left
        if self._checksums is not None and self._checksums.planned(start, size):
            if sink is None:
                self.skip_data()
            else:
                for piece in self.data():
                    sink(piece)
            return self._checksums.member_crc32c(start, size)
        crc = 0
        for piece in self.data():
            if sink is not None:
                sink(piece)
            crc = google_crc32c.extend(crc, piece)
        return crc

    def skip_data(self) -> None:
        """Consume the current member's data without copying it."""
        while self._left:
            if not self._avail and not self._more():
                raise ArchiveDamaged(
                    f"the tar stream ends at tar byte {self.raw_offset}, {self._left} bytes before the "
                    f"end of member {self.last.name if self.last else '?'}: it is truncated"
                )
            self._left -= self._advance(self._left)

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
