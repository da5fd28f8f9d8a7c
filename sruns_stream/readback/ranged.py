"""Reading only the parts of an archive that hold chosen members.

The archive's access points (`access_index`: blocks deflated with no dictionary, listed
in ``<run>.index.tsv`` with their raw and archive offsets) are where inflation can start;
the manifest's ``offset`` column says where each member starts in the tar stream. For the
members wanted, `plan` finds the access point at or before each one's header and the
first point at or after its end, and merges those ranges where they touch or overlap.
`RangedMembers` then reads each range with one ranged read (`ResumableReader`: a
dropped connection resumes at its byte), inflates it from its access point, skips to the
first wanted member and hands out the members of the range, as `TarMembers` parses them.

Each file is checked against its manifest row (size, crc32c) by the caller, exactly as
when the archive is read whole; what a ranged read cannot check is the whole archive's
gzip CRC32 and crc32c, which only `verify` (reading everything) does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from isal import isal_zlib

from ..errors import IntegrityError
from ..progress import Progress
from ..stopping import STOP
from ..storage import access_index, gzipframe
from ..storage.gzipframe import AccessPoint
from ..storage.manifest_tsv import ManifestRow
from .damage import ArchiveDamaged
from .gunzip import InflateError
from .sources import PIECE, ArchiveSource, ByteSource, ResumableReader
from .tarparse import BLOCK, Member, TarMembers

__all__ = ["TO_THE_END", "WHOLE_INDEX", "AccessIndex", "Range", "RangedMembers", "check_coverage", "has_offsets",
           "load_index", "parallel_points", "plan", "raw_size", "spans_of"]

# An index up to this size is read in one request; a bigger one (a run of terabytes has
# about 130,000 points per TiB) is read a line at a time, each at a place it can compute.
WHOLE_INDEX = 1 << 20
# The end-of-archive marker a range lacks: TarMembers ends cleanly on it.
_EOF = b"\0" * (2 * BLOCK)


class AccessIndex:
    """An archive's access points, read whole or one line at a time."""

    def __init__(self, source: ByteSource, where: str, note: Callable[[str], None] | None = None) -> None:
        self.where = where
        self._source = source
        self._note = note
        self._points: dict[int, AccessPoint] = {}
        self.requests = 0
        self.bytes_read = 0
        if source.size <= WHOLE_INDEX:
            data = self._read(0, source.size)
            self.header, points = access_index.parse(data, where)
            self._points = dict(enumerate(points))
            self.count = len(points)
        else:
            self.header = access_index.parse_header(self._read(0, 4096), where)
            body = source.size - self.header.length
            if body % access_index.LINE:
                raise IntegrityError(f"{where} is cut short (its lines are {access_index.LINE} bytes)")
            self.count = body // access_index.LINE

    def _read(self, start: int, end: int) -> bytes:
        reader = ResumableReader(self._source, note=self._note, start=start, end=end)
        pieces = []
        while piece := reader.read_piece():
            pieces.append(piece)
        self.requests += 1 + reader.reconnects
        data = b"".join(pieces)
        self.bytes_read += len(data)
        return data

    def point(self, k: int) -> AccessPoint:
        """Access point k (0 ≤ k < count)."""
        if k not in self._points:
            start, end = self.header.line_span(k)
            point = access_index.parse_line(self._read(start, end), self.where, k)
            if point.raw != self.header.point_raw(k):
                raise IntegrityError(f"{self.where}: access point {k} at raw {point.raw} is out of place")
            self._points[k] = point
        return self._points[k]

    def points(self) -> list[AccessPoint]:
        """Every access point (the whole index read, if it was not)."""
        if len(self._points) < self.count:
            _, points = access_index.parse(self._read(0, self._source.size), self.where)
            self._points = dict(enumerate(points))
        return [self._points[k] for k in range(self.count)]

    def before(self, raw: int) -> int:
        """k of the last access point at or before raw offset ``raw``."""
        return min(self.header.point_at_or_before(raw), self.count - 1)

    def after(self, raw: int) -> int | None:
        """k of the first access point at or after raw offset ``raw``; None past the last."""
        k = self.header.point_at_or_before(raw - 1) + 1 if raw > 0 else 0
        while k < self.count and self.header.point_raw(k) < raw:
            k += 1
        return k if k < self.count else None


def load_index(src: ArchiveSource, note: Callable[[str], None] | None) -> AccessIndex | None:
    """The archive's access index, or None (saying why) when it has none to use."""
    if not src.gzip:
        return None  # a plain .tar: any member starts anywhere, but it is read whole here
    if src.index is None:
        if note is not None:
            note(f"no access index at {src.index_location} (an archive made before access points, or with "
                 "access_interval 0): reading the archive from its start")
        return None
    try:
        index = AccessIndex(src.index, src.index_location, note)
        check_coverage(src, index, None, note)  # without the manifest: no read of the archive's trailer
    except IntegrityError as exc:
        if note is not None:
            note(f"{exc}: reading the archive from its start")
        return None
    if index.count == 0:
        return None
    return index


def parallel_points(
    src: ArchiveSource, threads: int, note: Callable[[str], None] | None,
    manifest: dict[str, ManifestRow] | None = None, *, check: bool = False,
) -> list[AccessPoint] | None:
    """The access points to inflate the archive on ``threads`` threads, or None when one
    thread is asked for or there is nothing to split (a plain .tar, no index, one point).
    IntegrityError when the index is there but unreadable, or does not cover the archive
    (`check_coverage`, with ``manifest``); ``check``: look at the index even for one thread."""
    if (threads <= 1 and not check) or not src.gzip or src.index is None:
        return None
    index = AccessIndex(src.index, src.index_location, note)
    check_coverage(src, index, manifest, note)
    if threads <= 1:
        return None
    points = index.points()
    return points if len(points) >= 2 else None



def raw_size(src: ArchiveSource, manifest: dict[str, ManifestRow] | None,
             note: Callable[[str], None] | None) -> int | None:
    """The tar stream's length, or None when the manifest cannot place its end. The
    manifest's rows give a lower bound (its header, its data, the end-of-archive
    marker), the gzip trailer the length mod 2^32: together, the length itself, since
    what a member adds beyond that bound (long-name headers) is far less than 4 GiB."""
    if manifest is None or not has_offsets(manifest) or src.data.size < gzipframe.TRAILER_SIZE:
        return None
    # The furthest end any row gives (a row added out of order cannot lower it).
    low = max((row.offset or 0) + BLOCK + -(-row.size // BLOCK) * BLOCK for row in manifest.values()) + len(_EOF)
    reader = ResumableReader(src.data, note=note, start=src.data.size - gzipframe.TRAILER_SIZE, end=src.data.size)
    try:
        trailer = b""
        while piece := reader.read_piece():
            trailer += piece
    finally:
        reader.close()
    isize = gzipframe.parse_trailer(trailer).isize
    return low + (isize - low) % gzipframe.ISIZE_MODULUS


def check_coverage(
    src: ArchiveSource, index: AccessIndex, manifest: dict[str, ManifestRow] | None,
    note: Callable[[str], None] | None,
) -> None:
    """IntegrityError naming the index unless its points reach the end of the archive:
    the compressed bytes after its last point no more than the raw bytes up to where the
    next point would be can take (`access_index.deflate_bound`), and, when the manifest
    gives the tar stream's length (`raw_size`), one point for every place the header puts
    one before that length. An index cut at a line boundary parses; without this, its
    last piece would be the rest of the archive."""
    if index.count == 0:
        return
    deflated_end = src.data.size - gzipframe.TRAILER_SIZE  # where the compressed data ends
    k = index.count - 1
    last = index.point(k)
    where = index.where
    if last.archive >= deflated_end:
        raise IntegrityError(f"{where}: access point {k} is at archive byte {last.archive}, past the end of the "
                             f"compressed data ({deflated_end}): the archive is truncated, or the index is not "
                             "its own")
    room = index.header.point_raw(index.count) - last.raw
    if deflated_end - last.archive > access_index.deflate_bound(room):
        raise IntegrityError(
            f"{where} ends at access point {k} (archive byte {last.archive}), {deflated_end - last.archive} "
            f"compressed bytes before the end: more than the {room} raw bytes to where its next point would be can "
            "take; the index is cut short"
        )
    try:
        length = raw_size(src, manifest, note)
    except ArchiveDamaged:
        # The trailer cannot be read (a volume missing, a short object): that is the
        # archive's damage, not the index's; the read that follows reports it.
        return
    if length is None:
        return
    expected = index.header.point_at_or_before(length - 1) + 1 if length > 0 else 0
    if index.count != expected:
        raise IntegrityError(
            f"{where} lists {index.count} access points, but a tar stream of {length} bytes (by the manifest "
            f"and the gzip trailer) with access_interval={index.header.access_interval} has {expected}: the index "
            + ("is cut short" if index.count < expected else "is not its own, or the archive is damaged")
        )


@dataclass
class Range:
    """One ranged read: from access point ``point`` to access point ``end`` (None: the end
    of the archive), holding the wanted members whose headers start at ``first`` up to
    the raw offset ``raw_end``."""

    point: AccessPoint
    end: AccessPoint | None
    first: int
    raw_end: int


def plan(index: AccessIndex, spans: Sequence[tuple[int, int]]) -> list[Range]:
    """The ranged reads covering the raw ``spans`` [start, end) (members, in archive
    order), merged where they touch or overlap."""
    ranges: list[Range] = []
    for start, end in sorted(spans):
        m = index.after(end) if end != TO_THE_END else None
        point, stop = index.point(index.before(start)), (index.point(m) if m is not None else None)
        last = ranges[-1] if ranges else None
        if last is not None and (last.end is None or point.raw <= last.end.raw):
            # This member's range starts before the last one ends: one read covers both.
            last.raw_end = max(last.raw_end, end)
            if last.end is not None and (stop is None or stop.raw > last.end.raw):
                last.end = stop
            continue
        ranges.append(Range(point, stop, start, end))
    return ranges


class RangedMembers:
    """The members of the wanted ``rows`` (manifest rows with offsets, archive order),
    read through ``ranges``; `walk` yields (member, its TarMembers) as the whole-archive
    stream does. Counts what it fetched, for the report and the progress bar."""

    def __init__(
        self, src: ArchiveSource, index: AccessIndex, ranges: list[Range], progress: Progress,
        files_total: int | None = None, files_done: Callable[[], int] | None = None,
    ) -> None:
        self.src = src
        self.index = index
        self.ranges = ranges
        self.progress = progress
        self._files_done = files_done
        self.fetched = 0  # archive bytes read
        self._readers: list[ResumableReader] = []
        self.planned = sum(self._end(r) - r.point.archive for r in ranges)
        progress.start(self.planned, 0, files_total)

    @property
    def reconnects(self) -> int:
        return sum(reader.reconnects for reader in self._readers)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()

    def _end(self, r: Range) -> int:
        return r.end.archive if r.end is not None else self.src.data.size

    def walk(self) -> Iterator[tuple[Member, TarMembers]]:
        for r in self.ranges:
            tar = TarMembers(self._inflated(r))
            for member in tar:
                yield member, tar

    def _inflated(self, r: Range) -> Callable[[], bytes]:
        """A pull function: the raw bytes [r.first, r.raw_end), then an end-of-archive marker.

        Inflated at most `PIECE` raw bytes at a time (max_length), whatever the archive
        or its index hold: a piece of zeros, or a point that lies, cannot make one call's
        output huge. The range must inflate to exactly the raw bytes its index points
        place between them (the last range: to no further than where the index's next
        point would be, since the stream ends before it); more, or less, is damage.
        Once the wanted bytes are out, the rest of a range that ends at a point is
        inflated (and dropped) to check that; the last range stops there."""
        end = self._end(r)
        reader = ResumableReader(self.src.data, note=self.progress.note, start=r.point.archive, end=end)
        self._readers.append(reader)
        inflater = isal_zlib.decompressobj(-15)
        limit = r.end.raw if r.end is not None else self.index.header.point_raw(self.index.count)
        raw = r.point.raw  # raw offset of the next inflated byte
        pending = b""  # compressed bytes read and not yet inflated
        exhausted = False  # every compressed byte of the range inflated
        done = False
        tail = [_EOF]
        where = f"{self.src.location} bytes {r.point.archive}-{end}"
        fetched_before = self.fetched

        def step() -> bytes | None:
            """The next inflated bytes (perhaps none yet); None once the range is all inflated."""
            nonlocal raw, pending, exhausted
            if exhausted:
                return None
            if not pending and not inflater.eof:
                pending = reader.read_piece()
                self.fetched = fetched_before + reader.pos - r.point.archive
                self.progress.update(self.fetched, self.fetched,
                                     self._files_done() if self._files_done is not None else None)
            try:
                if pending and not inflater.eof:
                    out = inflater.decompress(pending, PIECE)
                    pending = inflater.unconsumed_tail
                else:
                    out = inflater.flush()  # what the inflater holds: less than its window
                    exhausted = True
            except InflateError as exc:
                raise ArchiveDamaged(f"{where} (from the access point at raw byte {r.point.raw}) do not "
                                     f"inflate: {exc}; the archive or its index is damaged") from None
            raw += len(out)
            if raw > limit:
                raise ArchiveDamaged(
                    f"{where} inflate past raw byte {limit}, where {self.index.where} "
                    + ("places the next access point: the archive or its index is damaged" if r.end is not None
                       else "would have its next access point: the index is cut short, or the archive is damaged")
                )
            if exhausted and r.end is not None and raw < r.end.raw:
                raise ArchiveDamaged(f"{where} inflate to raw bytes {r.point.raw}-{raw}, but {self.index.where} "
                                     f"places the next access point at {r.end.raw}: the archive or its index is "
                                     "damaged")
            if exhausted and raw < r.raw_end != TO_THE_END:
                raise ArchiveDamaged(f"{where} inflate to raw bytes {r.point.raw}-{raw}, short of {r.raw_end}: "
                                     "the archive or its index is damaged")
            return out

        def pull() -> bytes:
            nonlocal done
            STOP.check()
            while not done:
                start = raw
                out = step()
                if out is None:
                    done = True
                    break
                lo, hi = max(start, r.first), min(raw, r.raw_end)
                if hi > lo:
                    piece = out[lo - start : hi - start]
                    if raw >= r.raw_end:
                        done = True  # everything wanted is out
                        if r.end is not None:
                            while step() is not None:  # the rest: at most one interval, to check its length
                                STOP.check()
                        reader.close()
                    return piece
            return tail.pop() if tail else b""

        return pull


# The raw end of a range that runs to the end of the tar stream.
TO_THE_END = 1 << 63


def spans_of(manifest: dict[str, ManifestRow], wanted: Callable[[str], bool]) -> list[tuple[int, int]]:
    """Raw [start, end) of each wanted member, from its header to the next member's
    (the last one's to `TO_THE_END`). Every row must have an offset (`has_offsets`)."""
    rows = list(manifest.values())
    spans = []
    for i, row in enumerate(rows):
        if wanted(row.path):
            nxt = rows[i + 1].offset if i + 1 < len(rows) else None
            spans.append((row.offset or 0, nxt if nxt is not None else TO_THE_END))
    return spans


def has_offsets(manifest: dict[str, ManifestRow] | None) -> bool:
    """Whether every row says where its member starts (manifests before the ``offset``
    column do not)."""
    return manifest is not None and bool(manifest) and all(row.offset is not None for row in manifest.values())
