"""`storage.gzipframe`: the header parser and the trailer against zlib and Python's gzip
(oracles independent of the code), and the access-point rule: the blocks the writer
makes access points are exactly the places the index and the readers compute."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import pytest

from sruns_stream.storage.gzipframe import (
    END_BLOCK,
    HEADER,
    TRAILER_SIZE,
    AccessPoint,
    Trailer,
    header_length,
    is_access_point,
    is_member_start,
    parse_trailer,
    point_at_or_before,
    point_raw,
    trailer,
)

DATA = b"ACGT" * 5000 + bytes(range(256)) * 40


def _member(header: bytes) -> bytes:
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    return header + deflate.compress(DATA) + deflate.flush() + struct.pack("<II", zlib.crc32(DATA), len(DATA))


def _header_with_every_field() -> bytes:
    """FTEXT off; FHCRC, FEXTRA, FNAME and FCOMMENT on, the header CRC over what precedes it."""
    extra = b"AB\x04\x00data"
    head = (b"\x1f\x8b\x08" + bytes([2 | 4 | 8 | 16]) + b"\x00" * 4 + b"\x00\xff"
            + struct.pack("<H", len(extra)) + extra + b"run.tar\x00" + b"a comment\x00")
    return head + struct.pack("<H", zlib.crc32(head) & 0xFFFF)


def _python_gzip_header() -> tuple[bytes, bytes]:
    """A member Python's gzip writes with a file name (FNAME), and its header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="run.tar", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(DATA)
    member = buf.getvalue()
    return member, member[: member.index(b"run.tar\x00") + len(b"run.tar\x00")]


@pytest.mark.parametrize("which", ["ours", "python gzip", "every field"])
def test_header_length_is_where_the_deflate_data_starts(which: str) -> None:
    if which == "ours":
        member = _member(HEADER)
        head = HEADER
    elif which == "python gzip":
        member, head = _python_gzip_header()
    else:
        head = _header_with_every_field()
        member = _member(head)
    assert zlib.decompress(member, 31) == DATA  # the oracle reads the header as gzip
    assert is_member_start(member)
    assert header_length(member) == len(head)
    assert zlib.decompressobj(-15).decompress(member[len(head):]) == DATA
    # Any prefix that ends inside the header: not yet known.
    assert all(header_length(member[:n]) is None for n in range(len(head)))
    assert header_length(bytearray(member[: len(head)])) == len(head)


def test_our_header_is_fixed_and_what_python_reads() -> None:
    assert len(HEADER) == 10 and HEADER[3] == 0  # no optional field: the first block starts at byte 10
    assert gzip.decompress(_member(HEADER)) == DATA
    assert not is_member_start(b"\x1f\x8b\x09" + HEADER[3:])  # not deflate
    assert not is_member_start(b"BZh91AY&SY")


def test_trailer_round_trips_and_matches_python_gzip() -> None:
    member = gzip.compress(DATA, mtime=0)
    assert parse_trailer(member[-TRAILER_SIZE:]) == Trailer(zlib.crc32(DATA), len(DATA))
    assert trailer(zlib.crc32(DATA), len(DATA)) == member[-TRAILER_SIZE:]
    # ISIZE is the length mod 2^32.
    assert parse_trailer(trailer(0xDEADBEEF, (5 << 32) + 7)) == Trailer(0xDEADBEEF, 7)


def test_end_block_ends_a_sync_flushed_stream() -> None:
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    body = deflate.compress(DATA) + deflate.flush(zlib.Z_SYNC_FLUSH)
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(body + END_BLOCK) == DATA and inflater.eof


@pytest.mark.parametrize(("block", "interval"), [(4, 16), (4, 10), (4, 4), (16, 4), (6, 16), (8, 0)])
def test_the_writer_rule_and_the_readers_places_agree(block: int, interval: int) -> None:
    """The blocks `is_access_point` picks (the writer) are point_raw(0), point_raw(1), ...
    (the index and the readers), and point_at_or_before inverts point_raw."""
    starts = range(0, 400, block)
    chosen = [r for r in starts if is_access_point(r, block, interval)]
    if interval == 0:
        assert chosen == []
        return
    # Oracle: the first block at or after each multiple of the interval.
    assert chosen == sorted({min(r for r in starts if r >= m) for m in range(0, starts[-1] + 1, interval)})
    assert chosen == [point_raw(k, block, interval) for k in range(len(chosen))]
    for raw in range(0, chosen[-1] + 1):
        k = point_at_or_before(raw, block, interval)
        assert point_raw(k, block, interval) <= raw < point_raw(k + 1, block, interval)


def test_access_points_order_by_raw_offset_and_hash() -> None:
    points = [AccessPoint(20, 900), AccessPoint(0, 10), AccessPoint(20, 900), AccessPoint(10, 400)]
    assert sorted(set(points)) == [AccessPoint(0, 10), AccessPoint(10, 400), AccessPoint(20, 900)]
