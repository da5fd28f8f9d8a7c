"""The gzip framing of an archive: the header we write and its parser, the trailer (CRC32,
ISIZE) written and parsed, the access-point rule, and `AccessPoint`.

An archive is one gzip member (RFC 1952) whose deflate stream is a run of blocks, each
ending on a byte boundary (`archiver.blockgzip`). The writer (`blockgzip`), the index
(`access_index`) and the readers (`readback.gunzip`, `readback.pgunzip`,
`readback.ranged`) all frame it the same way; this module is where that way is written.

Access points: the first block at or after each multiple of ``access_interval`` raw bytes
is deflated with no dictionary, so inflation can start at its first byte. Which blocks
those are depends only on the raw offset (`is_access_point`), so the output stays
deterministic, and point *k* is at a raw offset a reader computes (`point_raw`) without
reading anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["END_BLOCK", "HEADER", "ISIZE_MODULUS", "TRAILER_SIZE", "AccessPoint", "Trailer", "header_length",
           "is_access_point", "is_member_start", "parse_trailer", "point_at_or_before", "point_raw", "trailer"]

_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2 and CM = 8 (deflate): how every gzip member starts
# No flags, mtime 0, no extra flags, OS unknown: nothing in it depends on when or where.
HEADER = _MAGIC + b"\x00\x00\x00\x00\x00\x00\xff"
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
# An empty final fixed-Huffman block (last-block bit, fixed Huffman, end-of-block): after a
# sync flush it ends the deflate stream. The writer ends the member with it; a reader
# appends it to the bytes between two access points to inflate them alone.
END_BLOCK = b"\x03\x00"
TRAILER_SIZE = 8  # CRC32 and ISIZE, little-endian
ISIZE_MODULUS = 1 << 32  # ISIZE is the inflated length modulo this


def is_member_start(data: bytes | bytearray) -> bool:
    """Whether ``data`` (at least 3 bytes of it) starts like a gzip member of deflate data."""
    return bytes(data[: len(_MAGIC)]) == _MAGIC


def header_length(data: bytes | bytearray) -> int | None:
    """The length of the member header ``data`` starts with (`is_member_start`), its
    optional fields (extra, name, comment, header CRC) included; None when ``data`` ends
    inside it. Callers bound how much they buffer: a name has no length limit."""
    if len(data) < len(HEADER):
        return None
    flags = data[3]
    pos = len(HEADER)
    if flags & _FEXTRA:
        if len(data) < pos + 2:
            return None
        pos += 2 + int.from_bytes(data[pos : pos + 2], "little")
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = data.find(b"\0", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & _FHCRC:
        pos += 2
    return pos if len(data) >= pos else None


@dataclass(frozen=True, slots=True)
class Trailer:
    crc32: int  # of the member's inflated bytes
    isize: int  # their length mod 2^32


def trailer(crc32: int, raw_size: int) -> bytes:
    """The 8-byte trailer of a member whose inflated bytes have ``crc32`` and ``raw_size``."""
    return struct.pack("<II", crc32, raw_size % ISIZE_MODULUS)


def parse_trailer(data: bytes | bytearray) -> Trailer:
    """The trailer in ``data``: a member's last `TRAILER_SIZE` bytes."""
    return Trailer(int.from_bytes(data[:4], "little"), int.from_bytes(data[4:TRAILER_SIZE], "little"))


@dataclass(frozen=True, slots=True, order=True)
class AccessPoint:
    """Where inflation can start: a block's offset in the tar stream and in the output
    (the stored archive, or a segment of it while it is written)."""

    raw: int  # offset in the tar stream
    archive: int  # offset in the stored archive


def is_access_point(raw_offset: int, block_size: int, access_interval: int) -> bool:
    """Whether the block at ``raw_offset`` is deflated without a dictionary: the first
    block at or after each multiple of ``access_interval`` (every block when blocks are
    larger; none when the interval is 0). They are the blocks at `point_raw` (k)."""
    return access_interval > 0 and raw_offset % access_interval < block_size


def point_raw(k: int, block_size: int, access_interval: int) -> int:
    """The raw offset of access point k: the first block at or after k intervals."""
    if block_size >= access_interval:
        return k * block_size
    return -(-k * access_interval // block_size) * block_size


def point_at_or_before(raw: int, block_size: int, access_interval: int) -> int:
    """k of the last access point at or before raw offset ``raw``."""
    k = raw // max(block_size, access_interval)
    while k > 0 and point_raw(k, block_size, access_interval) > raw:
        k -= 1
    return k
