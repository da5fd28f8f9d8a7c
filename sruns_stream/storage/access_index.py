"""``<run>.index.tsv``: where inflation can start in an archive, written beside it.

The archive is one gzip member of blocks, each ending on a byte boundary; the first
block at or after every multiple of ``access_interval`` raw bytes is deflated with no
dictionary (`gzipframe`, the rule's home), so a reader can start inflating at its first
byte. The index lists those access points, one per line, under a header naming the
columns and the two stream parameters that place them::

    raw_offset<TAB>archive_offset<TAB>block_size=1048576<TAB>access_interval=8388608
    00000000000000000000<TAB>00000000000000000010
    00000000000008388608<TAB>00000000000002781131
    ...

``raw_offset`` is the point's offset in the tar stream, ``archive_offset`` in the stored
archive (the concatenation of its volumes, when it has several). Point *k* is always at
raw offset `gzipframe.point_raw` (k) and its line has a fixed width, so a reader that knows a
member's tar offset (the manifest's ``offset`` column) fetches the one line it needs
with a ranged read (`line_span`), then the archive from that point: at most
``access_interval`` raw bytes of other members, compressed. The range between two
points inflates on its own to exactly the raw bytes between them: what `verify` checks,
on all cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import IntegrityError
from . import gzipframe
from .gzipframe import AccessPoint

__all__ = ["COLUMNS", "LINE", "MAX_OFFSET", "IndexHeader", "deflate_bound", "parse", "parse_header", "parse_line",
           "render"]

COLUMNS = ("raw_offset", "archive_offset")
_WIDTH = 20  # digits: any 64-bit offset
LINE = 2 * _WIDTH + 2  # bytes per point, tab and newline included
# Offsets and sizes read from an index are below this (what a signed 64-bit offset holds).
MAX_OFFSET = (1 << 63) - 1
# The writer's block sizes (`config.Config` refuses others): a header outside them is not
# one the writer made, and a reader sizes its buffers by it.
MIN_BLOCK, MAX_BLOCK, BLOCK_ALIGN = 64 << 10, 64 << 20, 4 << 10


def deflate_bound(raw: int) -> int:
    """The most compressed bytes ``raw`` bytes of blocks take: incompressible data is
    stored, 5 bytes of header per 65,535, and every block ends with a 5-byte sync flush;
    the margin is generous, it only has to tell an index that skips points from one that
    does not."""
    return raw + raw // 1024 + (64 << 10)


@dataclass(frozen=True, slots=True)
class IndexHeader:
    block_size: int
    access_interval: int
    length: int  # bytes of the header line, its newline included

    def point_raw(self, k: int) -> int:
        """The raw offset of access point k (`gzipframe.point_raw`)."""
        return gzipframe.point_raw(k, self.block_size, self.access_interval)

    def point_at_or_before(self, raw: int) -> int:
        """k of the last access point at or before raw offset ``raw``."""
        return gzipframe.point_at_or_before(raw, self.block_size, self.access_interval)

    def line_span(self, k: int) -> tuple[int, int]:
        """Byte range [start, end) of point k's line in the index file."""
        start = self.length + k * LINE
        return start, start + LINE


def render(points: Iterable[AccessPoint], block_size: int, access_interval: int) -> bytes:
    header = "\t".join([*COLUMNS, f"block_size={block_size}", f"access_interval={access_interval}"])
    lines = "".join(f"{p.raw:0{_WIDTH}d}\t{p.archive:0{_WIDTH}d}\n" for p in points)
    return (header + "\n" + lines).encode()


def parse_header(data: bytes, where: str) -> IndexHeader:
    """The header of an index from its first bytes (at least the first line)."""
    line, newline, _ = data.partition(b"\n")
    fields = line.decode("ascii", "replace").split("\t")
    if not newline or tuple(fields[: len(COLUMNS)]) != COLUMNS:
        raise IntegrityError(f"{where} is not an access index (its header is {line[:80]!r})")
    params = dict(f.split("=", 1) for f in fields[len(COLUMNS):] if "=" in f)
    try:
        block, interval = int(params["block_size"]), int(params["access_interval"])
    except (KeyError, ValueError):
        raise IntegrityError(f"{where}: its header lacks block_size and access_interval") from None
    if not MIN_BLOCK <= block <= MAX_BLOCK or block % BLOCK_ALIGN:
        raise IntegrityError(f"{where}: its header's block_size={block} is not one the writer makes (a multiple of "
                             "4 KiB between 64 KiB and 64 MiB): the index is damaged")
    if not 0 < interval <= MAX_OFFSET:
        raise IntegrityError(f"{where}: its header's access_interval={interval} is not between 1 and 2^63-1: "
                             "the index is damaged")
    return IndexHeader(block, interval, len(line) + 1)


def parse_line(data: bytes, where: str, k: int) -> AccessPoint:
    """Point k's line (`IndexHeader.line_span`)."""
    try:
        raw, archive = (int(v) for v in data.decode("ascii").rstrip("\n").split("\t"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{where}: access point {k} is not two offsets") from None
    if len(data) != LINE or raw < 0 or archive < 0:
        raise IntegrityError(f"{where}: access point {k} is not a {LINE}-byte line")
    if raw > MAX_OFFSET or archive > MAX_OFFSET:
        raise IntegrityError(f"{where}: access point {k} has an offset of {max(raw, archive)}, past 2^63-1: "
                             "the index is damaged")
    return AccessPoint(raw, archive)


def parse(data: bytes, where: str) -> tuple[IndexHeader, list[AccessPoint]]:
    """The whole index; IntegrityError naming ``where`` if a point is not where the
    header places it or the archive offsets do not increase."""
    header = parse_header(data, where)
    body = data[header.length:]
    if len(body) % LINE:
        raise IntegrityError(f"{where} is cut short (its lines are {LINE} bytes)")
    points: list[AccessPoint] = []
    for k in range(len(body) // LINE):
        point = parse_line(body[k * LINE:(k + 1) * LINE], where, k)
        if point.raw != header.point_raw(k) or (points and point.archive <= points[-1].archive):
            raise IntegrityError(f"{where}: access point {k} at raw {point.raw} is out of place")
        points.append(point)
    return header, points
