"""A deterministic, seekable POSIX (pax) tar stream rendered from a manifest.

Every member's offset is a prefix sum over header and padded data lengths, so the
stream can start at any raw offset without reading what comes before it: that is
what makes resuming a compressed upload cheap. The stream reads each file as it
goes, checks it still matches its manifest entry (size and mtime before and after
reading, no early EOF), and keeps each member's running crc32c for the per-file
manifest that `verify` and `restore` check against.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field

import google_crc32c

from ..runfolder import classify, memberio
from ..runfolder.safefs import DIR, FILE, SYMLINK, Tree
from ..runfolder.scan import Entry, Manifest
from ..state.checkpoint import Cursor

__all__ = ["BLOCK", "Piece", "RawBlock", "TarLayout", "TarReader", "add_range", "render_header"]

BLOCK = 512
_EOF = b"\0" * (2 * BLOCK)

# Largest values the octal ustar fields hold; anything larger goes to a pax record.
_MAX_SIZE = 0o77777777777  # 8 GiB - 1
_MAX_ID = 0o7777777
_MAX_MTIME = 0o77777777777
_MAX_MTIME_NS = (_MAX_MTIME + 1) * 1_000_000_000

_TYPEFLAG = {FILE: b"0", DIR: b"5", SYMLINK: b"2"}


def _pad(n: int) -> int:
    return -n % BLOCK


def _octal(value: int, width: int) -> bytes:
    # width includes the terminating NUL, as GNU tar and Python's tarfile write it
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    # The length prefix counts itself, so grow it until it is stable.
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def _member_name(entry: Entry) -> bytes:
    return entry.path + b"/" if entry.kind == DIR else entry.path


def _pax_records(entry: Entry) -> bytes:
    """The pax extended records an entry needs, or b"" when plain ustar holds it all."""
    name = _member_name(entry)
    if (
        len(name) <= 100 and name.isascii() and len(entry.linkname) <= 100 and entry.linkname.isascii()
        and entry.size <= _MAX_SIZE and entry.uid <= _MAX_ID and entry.gid <= _MAX_ID
        and 0 <= entry.mtime_ns < _MAX_MTIME_NS
    ):
        return b""  # nearly every member of a run folder: checked once, cheaply
    records = []
    binary = False
    for key, value in ((b"path", name), (b"linkpath", entry.linkname)):
        if len(value) > 100 or not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                binary = True
            records.append(_pax_record(key, value))
    if entry.size > _MAX_SIZE:
        records.append(_pax_record(b"size", b"%d" % entry.size))
    if entry.uid > _MAX_ID:
        records.append(_pax_record(b"uid", b"%d" % entry.uid))
    if entry.gid > _MAX_ID:
        records.append(_pax_record(b"gid", b"%d" % entry.gid))
    mtime = entry.mtime_ns // 1_000_000_000
    if mtime < 0 or mtime > _MAX_MTIME:
        records.append(_pax_record(b"mtime", b"%d" % mtime))
    if binary:
        # Names that are not UTF-8 are kept byte for byte, as POSIX allows.
        records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    return b"".join(records)


# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix pad: the ustar header, 512 bytes; "s" fields pad with NULs.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_ZERO8 = _octal(0, 8)


# Byte sum of the fields that never vary: checksum placeholder (8 spaces), magic and
# version, the zero device numbers. Summing only the varying fields keeps the header
# checksum off the per-file hot path of a 400,000-file run.
_CONSTANT_SUM = sum(b" " * 8) + sum(b"ustar\x0000") + 2 * sum(_ZERO8)


def _ustar(name: bytes, entry: Entry, typeflag: bytes, size: int, linkname: bytes) -> bytes:
    mtime = entry.mtime_ns // 1_000_000_000
    fields = (
        name[:100],
        b"%07o\0" % (entry.mode & 0o7777),
        b"%07o\0" % (entry.uid if entry.uid <= _MAX_ID else 0),
        b"%07o\0" % (entry.gid if entry.gid <= _MAX_ID else 0),
        b"%011o\0" % (size if size <= _MAX_SIZE else 0),
        b"%011o\0" % (mtime if 0 <= mtime <= _MAX_MTIME else 0),
    )
    checksum = _CONSTANT_SUM + sum(b"".join(fields)) + typeflag[0] + sum(linkname[:100])
    return _USTAR.pack(
        *fields,
        b"%06o\0 " % checksum,
        typeflag,
        linkname[:100],
        b"ustar\x0000",
        b"",  # uname: numeric ids only; name lookups per file cost and mislead
        b"",  # gname
        _ZERO8,
        _ZERO8,
        b"",
        b"",
    )


def render_header(entry: Entry, pax: bytes | None = None) -> bytes:
    """The header bytes of one member: an optional pax header, then the ustar header."""
    if pax is None:
        pax = _pax_records(entry)
    main = _ustar(_member_name(entry), entry, _TYPEFLAG[entry.kind], entry.size, entry.linkname)
    if not pax:
        return main
    pax_header = _ustar(b"././@PaxHeader", entry, b"x", len(pax), b"")
    return pax_header + pax + b"\0" * _pad(len(pax)) + main


def add_range(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    """Append [start, end) to sorted ranges, merging with the last when adjacent."""
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))


class TarLayout:
    """Where every member starts in the tar stream, computed once from the manifest."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        entries = manifest.entries
        starts = array("q", [0]) * (len(entries) + 1)
        # The few entries that need pax records (long or non-ASCII names, huge sizes),
        # kept so that rendering a header never computes them twice.
        self.pax: dict[int, bytes] = {}
        pos = 0
        for i, entry in enumerate(entries):
            starts[i] = pos
            pax = _pax_records(entry)
            if pax:
                self.pax[i] = pax
            header_len = BLOCK + (BLOCK + len(pax) + _pad(len(pax)) if pax else 0)
            pos += header_len + entry.size + _pad(entry.size)
        starts[len(entries)] = pos
        self.starts = starts
        self.size = pos + len(_EOF)

    def __len__(self) -> int:
        return len(self.manifest.entries)

    def data_span(self, i: int) -> tuple[int, int]:
        """Raw offsets [start, end) of member i's data (empty for non-files)."""
        size = self.manifest.entries[i].size
        data_end = self.starts[i + 1] - _pad(size)
        return data_end - size, data_end

    def locate(self, offset: int) -> int:
        """Index of the member whose header, data or padding holds offset (len at EOF)."""
        return bisect_right(self.starts, offset) - 1 if offset < self.starts[-1] else len(self)


@dataclass(frozen=True, slots=True)
class Piece:
    """A file member's data bytes within one block (an empty file: one empty piece)."""

    index: int
    crc32c: int  # of these bytes only
    length: int
    first: bool  # begins at the member's first data byte
    last: bool  # ends at its last


@dataclass(slots=True)
class RawBlock:
    """A fixed-size slice of the tar stream and what the compressor must know of it.

    The sequential `TarReader` fills ``files_done`` and ``cursor`` itself; a block
    assembled on its own (`blocks.Assembler`) has ``pieces`` instead, and the member at
    its end (``end_index``), from which the stream derives both in order.
    """

    raw_offset: int
    data: bytearray
    stored: list[tuple[int, int]] = field(default_factory=list)
    files_done: list[tuple[int, int]] = field(default_factory=list)
    cursor: Cursor = field(default_factory=Cursor)
    pieces: list[Piece] | None = None
    end_index: int = 0


class TarReader:
    """Reads the tar stream sequentially from ``start``, in blocks, on one thread.

    The archive is made of blocks assembled on a pool (`blocks.Assembler`); this reader
    reads the 32 KiB dictionary before a resume, and is the reference the tests hold the
    assembled blocks to.

    ``cursor`` carries the crc32c of the member being read at ``start`` (from a
    checkpoint); ``store_precompressed`` marks already-compressed member data in
    each block for the compressor to store rather than deflate.
    """

    def __init__(
        self,
        layout: TarLayout,
        start: int = 0,
        cursor: Cursor | None = None,
        store_precompressed: bool = False,
    ) -> None:
        if not 0 <= start <= layout.size:
            raise ValueError(f"offset {start} outside the tar stream (size {layout.size})")
        self.layout = layout
        self.pos = start
        self.index = layout.locate(start)
        self._crc = 0
        if cursor is not None and cursor.index == self.index:
            self._crc = cursor.crc32c
        self._store = store_precompressed
        self._tree: Tree | None = None
        # The member being read and its descriptor.
        self._member = -1
        self._fd: int | None = None
        self._stored_member = False

    def close(self) -> None:
        self._close_member()
        if self._tree is not None:
            tree, self._tree = self._tree, None
            tree.close()

    def _close_member(self) -> None:
        self._member = -1
        if self._fd is not None:
            # Forget the fd before closing it: a signal between the two must not leave a
            # closed fd that the unwinding closes again (EBADF instead of "interrupted").
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> TarReader:  # noqa: PYI034 - typing.Self needs Python 3.11; we support 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blocks(self, block_size: int, until: int | None = None) -> Iterator[RawBlock]:
        """Consecutive blocks up to ``until`` (default: the end of the stream; the last
        block may be short)."""
        end = self.layout.size if until is None else until
        while self.pos < end:
            yield self.read_block(min(block_size, end - self.pos))

    def read_range(self, length: int) -> bytes:
        """Up to ``length`` bytes from the current position (for dictionaries)."""
        return bytes(self.read_block(length).data)

    def read_block(self, length: int) -> RawBlock:
        block = RawBlock(raw_offset=self.pos, data=bytearray(min(length, self.layout.size - self.pos)))
        view = memoryview(block.data)
        filled = 0
        layout = self.layout
        entries = layout.manifest.entries
        n = len(entries)
        while filled < len(view):
            i = self.index
            if i >= n:  # the two zero blocks that end the archive: bytearray is zeroed
                take = len(view) - filled
                filled += take
                self.pos += take
                break
            start = layout.starts[i]
            end = layout.starts[i + 1]
            if self.pos == start and end - start <= len(view) - filled:
                # Fast path for a member that fits whole in this block, as most
                # run-folder files do: no per-piece bookkeeping.
                self._whole_member(i, view, filled, block)
                filled += end - start
                self.pos = end
                self.index = i + 1
                self._crc = 0
                continue
            data_start, data_end = layout.data_span(i)
            if self.pos < data_start:
                header = render_header(entries[i], layout.pax.get(i, b""))
                piece = header[self.pos - start :][: len(view) - filled]
                view[filled : filled + len(piece)] = piece
                filled += len(piece)
                self.pos += len(piece)
                if self.pos == data_start and entries[i].kind == FILE and entries[i].size == 0:
                    block.files_done.append((i, 0))
            elif self.pos < data_end:
                take = min(data_end - self.pos, len(view) - filled)
                self._read_data(i, self.pos - data_start, view[filled : filled + take])
                if self._stored_member:
                    add_range(block.stored, filled, filled + take)
                filled += take
                self.pos += take
                if self.pos == data_end:
                    self._finish_member(i)
                    block.files_done.append((i, self._crc))
            else:  # padding after the data: already zero
                take = min(layout.starts[i + 1] - self.pos, len(view) - filled)
                filled += take
                self.pos += take
            if self.pos >= layout.starts[i + 1] and i < n:
                self.index = i + 1
                self._crc = 0
        block.cursor = Cursor(self.index, self._crc)
        return block

    def _whole_member(self, i: int, view: memoryview, at: int, block: RawBlock) -> None:
        entry = self.layout.manifest.entries[i]
        header = render_header(entry, self.layout.pax.get(i, b""))
        data_at = at + len(header)
        view[at:data_at] = header
        if entry.kind != FILE:
            return
        if entry.size:
            data = view[data_at : data_at + entry.size]
            self._begin(i, 0, small=True)
            self._read_data(i, 0, data)
            if self._store and entry.size >= classify.MIN_STORED_SIZE and not self._stored_member:
                self._stored_member = classify.is_precompressed_magic(bytes(data[: classify.MAGIC_BYTES]))
            if self._stored_member:
                add_range(block.stored, data_at, data_at + entry.size)
            self._finish_member(i)
        block.files_done.append((i, self._crc))

    def _begin(self, i: int, offset: int, small: bool = False) -> None:
        """Make member ``i`` the one being read, from ``offset``: from what was read ahead,
        or opened here. A small member read whole (``small``) is checked once, after the
        read: open, read, fstat, close."""
        self._close_member()
        entry = self.layout.manifest.entries[i]
        self._member = i
        self._stored_member = bool(
            self._store and entry.size >= classify.MIN_STORED_SIZE and classify.is_precompressed_name(entry.path)
        )
        if self._tree is None:
            self._tree = memberio.open_tree(self.layout.manifest)
        self._fd = memberio.open_member(self._tree, entry)
        if small:
            return
        memberio.check(self._fd, entry, "before reading")  # fail before reading gigabytes of a changed file
        if offset:
            os.lseek(self._fd, offset, os.SEEK_SET)
        if self._store and entry.size >= classify.MIN_STORED_SIZE and not self._stored_member and not small:
            assert self._fd is not None, "opened just above"
            self._stored_member = classify.is_precompressed_magic(os.pread(self._fd, classify.MAGIC_BYTES, 0))

    def _read_data(self, i: int, offset: int, out: memoryview) -> None:
        if self._member != i:
            self._begin(i, offset)
        assert self._fd is not None, "opened by _begin"
        memberio.read_into(self._fd, self.layout.manifest.entries[i], out)
        # google_crc32c takes only read-only bytes; the copy costs ~0.1 ms a MiB.
        self._crc = google_crc32c.extend(self._crc, bytes(out))

    def _finish_member(self, i: int) -> None:
        if self._fd is not None:  # read here, or its tail was: the check after reading
            memberio.check(self._fd, self.layout.manifest.entries[i], "while being read")
        self._close_member()
