"""``<archive>.gzidx``: the access points in indexed_gzip's index export format (GZIDX).

indexed_gzip (``IndexedGzipFile.import_index``) and rapidgzip (``import_index``) read an
index of seek points from this file instead of inflating the whole archive to build one.
Version 1 of the format (indexed_gzip ≥ 1.6, zran.c ``zran_export_index``) lets a point
carry no 32 KiB window: inflation starts there with an empty dictionary, which is exactly
what an access point is (`gzipframe`: the first block at or after every interval is
deflated with no dictionary and starts on a byte boundary). So the file is the access
index (`access_index`) re-encoded, a few bytes a point, little-endian::

    "GZIDX" version=1 flags=0
    u64 compressed size (the whole archive; indexed_gzip refuses an index for another size)
    u64 uncompressed size (the tar stream; 0 when unknown)
    u32 spacing  u32 window size (32768)  u32 number of points
    per point: u64 compressed offset, u64 uncompressed offset, u8 bits (0), u8 has-window (0)

No window data follows, since no point has one. `parse` reads it back for `verify`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from .gzipframe import AccessPoint

__all__ = ["MAGIC", "VERSION", "WINDOW", "Gzidx", "parse", "render"]

MAGIC = b"GZIDX"
VERSION = 1
WINDOW = 32768  # zran's window size; it refuses a smaller one, and a spacing below it
_HEAD = struct.Struct("<5sBBQQIII")
_POINT = struct.Struct("<QQBB")
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Gzidx:
    compressed_size: int
    uncompressed_size: int
    spacing: int
    points: list[AccessPoint]


def render(points: Sequence[AccessPoint], compressed_size: int, uncompressed_size: int | None,
           access_interval: int) -> bytes:
    """The GZIDX file for an archive of ``compressed_size`` bytes whose access points are
    ``points`` (the first one, raw 0, just after the gzip header)."""
    # The spacing only tells indexed_gzip how far apart to put points it adds itself; it
    # must lie between the window size and a u32.
    spacing = min(max(access_interval, WINDOW), _U32)
    head = _HEAD.pack(MAGIC, VERSION, 0, compressed_size, uncompressed_size or 0, spacing, WINDOW, len(points))
    return head + b"".join(_POINT.pack(p.archive, p.raw, 0, 0) for p in points)


def parse(data: bytes, where: str) -> Gzidx:
    """A GZIDX file this module writes (no windows); IntegrityError naming ``where`` otherwise."""
    if len(data) < _HEAD.size:
        raise IntegrityError(f"{where} is cut short (a GZIDX file starts with {_HEAD.size} bytes)")
    magic, version, _flags, csize, usize, spacing, window, count = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise IntegrityError(f"{where} is not a GZIDX version {VERSION} file (it starts {data[:6]!r})")
    if window != WINDOW or len(data) != _HEAD.size + count * _POINT.size:
        raise IntegrityError(f"{where} holds {len(data)} bytes, not the {_HEAD.size + count * _POINT.size} "
                             f"its {count} windowless points take: it is damaged or not ours")
    points = []
    for k in range(count):
        archive, raw, bits, has_window = _POINT.unpack_from(data, _HEAD.size + k * _POINT.size)
        if bits or has_window:
            raise IntegrityError(f"{where}: point {k} is not a byte-aligned point without a window")
        points.append(AccessPoint(raw, archive))
    return Gzidx(csize, usize, spacing, points)
