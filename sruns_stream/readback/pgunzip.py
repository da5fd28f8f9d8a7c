"""Inflating an archive on all cores, through its access points.

An access point (`access_index`) is a block deflated with no dictionary, starting on a
byte boundary; the block before it ends with a sync flush. So the compressed bytes
between two points are a deflate stream of their own (an empty final block appended
ends it), and inflate, alone, to exactly the raw bytes between the points.
`ParallelGzipLayer` reads the archive once, in order, cuts it at the points, inflates
the pieces on a pool of threads (ISA-L's one-shot inflate lets go of the GIL) and hands
their output out in order, as `GzipLayer` does: the reader's side does not change.

What it checks is what `GzipLayer` checks (the gzip header, the CRC32 and length in the
trailer, nothing after it), plus the index itself: each piece must inflate, and to the
length the index says. A piece that does not is reported as damage to the archive or
its index, naming both, since one read cannot tell which of the two was altered;
``verify --threads 1`` reads the archive without the index.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

import google_crc32c
from isal import isal_zlib

from ..storage import gzipframe
from ..storage.access_index import deflate_bound
from ..storage.crc import crc32c_combine
from ..storage.gzipframe import AccessPoint
from .damage import ArchiveDamaged
from .gunzip import InflateError, trailer_problems

__all__ = ["MemberSpans", "ParallelGzipLayer"]


Pieces = list[tuple[int, int, int]]  # a member's data in one inflated piece: (raw offset, crc32c, length)


def _inflate(
    pieces_in: list[memoryview], bound: int, last: bool, raw_start: int, spans: MemberSpans | None,
) -> tuple[bytes, int, bool, Pieces]:
    """One piece inflated alone, to at most ``bound`` + 1 bytes (one more than it may
    hold: a piece that inflates to more is found without inflating all of it), its
    CRC32, whether its deflate stream ended, and the crc32c of each member's data in it
    (where ``spans``, from the manifest, place members), all on this worker."""
    inflater = isal_zlib.decompressobj(-15)
    out = inflater.decompress(b"".join(pieces_in if last else [*pieces_in, memoryview(gzipframe.END_BLOCK)]),
                              bound + 1)
    pieces: Pieces = []
    if spans is not None:
        end = raw_start + len(out)
        for start, stop in spans.within(raw_start, end):
            lo, hi = max(start, raw_start), min(stop, end)
            pieces.append((lo, google_crc32c.value(out[lo - raw_start : hi - raw_start]), hi - lo))
    return out, isal_zlib.crc32(out), inflater.eof, pieces


class MemberSpans:
    """Where the manifest places each file member's data in the tar stream, so that the
    inflating workers checksum it (`ParallelGzipLayer.member_crc32c`): a header is one
    512-byte block unless a pax header precedes it, and a member's data ends where the
    next member's header starts, less the padding. These are hints: the walk uses a
    member's crc32c from them only where the header it parsed puts the data exactly at a
    span; anywhere else it checksums the bytes itself."""

    def __init__(self, rows: list[tuple[int, int]], raw_end: int | None) -> None:
        """``rows``: (header offset, size) of every member, in stream order, sizes of
        non-files as 0."""
        starts: list[int] = []
        sizes: list[int] = []
        end = 0  # where the last span kept ends
        for k, (offset, size) in enumerate(rows):
            if not size:
                continue
            following = rows[k + 1][0] if k + 1 < len(rows) else raw_end
            padded = -(-size // 512) * 512
            data = following - padded if following is not None else offset + 512
            # Spans in order and apart, as a real archive's are: a manifest that says
            # otherwise gets no hint there (its members are checksummed by the walk).
            if data >= offset + 512 and data >= end:
                starts.append(data)
                sizes.append(size)
                end = data + size
        self.starts = starts
        self.sizes = dict(zip(starts, sizes, strict=True))

    def within(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The spans (start, end) that overlap raw bytes [lo, hi)."""
        k = max(bisect_right(self.starts, lo) - 1, 0)
        out = []
        while k < len(self.starts) and self.starts[k] < hi:
            start = self.starts[k]
            stop = start + self.sizes[start]
            if stop > lo:
                out.append((start, stop))
            k += 1
        return out


class ParallelGzipLayer:
    """The inflated bytes of a one-member gzip archive whose access points are ``points``
    (from its index at ``index_where``), inflated ``threads`` pieces at a time."""

    def __init__(
        self, pull: Callable[[], bytes], name: str, points: list[AccessPoint], archive_size: int, threads: int,
        index_where: str, spans: MemberSpans | None = None,
    ) -> None:
        self._pull = pull
        self._spans = spans
        self._pieces: dict[int, Pieces] = {}  # member data start -> its checksummed pieces so far
        self._name = name
        self._index_where = index_where
        self._points = points
        self._size = archive_size
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="inflate")
        self._window = threads + 1  # pieces in flight: memory stays (threads + 1) × a piece
        # The last piece ends before where the next point would be: at most one gap and
        # one block further, and a block is no longer than a gap.
        self._last_bound = max((b.raw - a.raw for a, b in pairwise(points)), default=0) * 2
        self._inflight: deque[tuple[int, Future[tuple[bytes, int, bool, Pieces]]]] = deque()
        self._input: deque[memoryview] = deque()  # archive bytes pulled, not yet taken
        self._buffered = 0
        self._pos = 0  # archive offset of self._input[0]
        self._next = 0  # the next piece to submit
        self._crc = 0
        self._isize = 0
        self.problems: list[str] = []
        self.done = False
        self._started = False

    def _fill(self, end: int) -> bool:
        """Archive bytes up to offset ``end`` buffered (False: the archive ends before)."""
        while self._pos + self._buffered < end:
            piece = self._pull()
            if not piece:
                return False
            self._input.append(memoryview(piece))
            self._buffered += len(piece)
        return True

    def _peek(self) -> bytes:
        return b"".join(self._input)

    def _take(self, end: int) -> list[memoryview]:
        """The buffered bytes up to archive offset ``end``, as the pieces they came in
        (uncopied: the worker that inflates them joins them)."""
        n = end - self._pos
        out = []
        while n:
            head = self._input[0]
            if len(head) <= n:
                out.append(self._input.popleft())
                n -= len(head)
            else:
                out.append(head[:n])
                self._input[0] = head[n:]
                n = 0
        self._buffered -= end - self._pos
        self._pos = end
        return out

    def _header(self) -> None:
        first = self._points[0].archive
        shortest = len(gzipframe.HEADER)  # no header is shorter than ours, which has no optional field
        if not self._fill(min(first, shortest)) or first < shortest:
            raise ArchiveDamaged(f"{self._name}: its index {self._index_where} places the first access point at "
                                 f"byte {first}, inside the gzip header: the index is damaged")
        if not gzipframe.is_member_start(self._peek()):
            raise ArchiveDamaged(f"{self._name} is not a gzip stream (it starts with {self._peek()[:4].hex()})")
        # The header ends where the first access point starts: never buffered past it.
        while (length := gzipframe.header_length(self._peek())) is None and self._buffered < first:
            if not self._fill(self._buffered + 1):
                raise ArchiveDamaged(f"{self._name} is truncated: it ends in its gzip header")
        if length != first:
            said = f"{length} bytes" if length is not None else f"longer than {first} bytes"
            raise ArchiveDamaged(f"{self._name}: its gzip header is {said}, but its index {self._index_where} "
                                 f"places the first access point at byte {first}: the index is damaged")
        self._take(first)

    def _submit(self) -> bool:
        """Cut and submit the next piece; False when every piece is submitted."""
        k = self._next
        if k >= len(self._points):
            return False
        last = k + 1 == len(self._points)
        end = self._size - gzipframe.TRAILER_SIZE if last else self._points[k + 1].archive
        bound = self._last_bound if last else self._points[k + 1].raw - self._points[k].raw
        if end - self._points[k].archive > deflate_bound(bound):
            # Never buffered: that many raw bytes cannot take so much room compressed.
            raise ArchiveDamaged(
                f"{self._name}: {self._index_where} places "
                + (f"access point {k + 1}" if not last else "the end of the compressed data")
                + f" {end - self._points[k].archive} bytes after point {k}, more than {bound} raw bytes can take "
                "compressed: the index is damaged (verify --threads 1 reads the archive without the index)"
            )
        if end < self._pos or not self._fill(end):
            raise ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._pos + self._buffered}, "
                                 f"before access point {k + 1} at byte {end}")
        self._inflight.append(
            (k, self._pool.submit(_inflate, self._take(end), bound, last, self._points[k].raw, self._spans))
        )
        self._next += 1
        return True

    def read_piece(self) -> bytes:
        """The next piece of inflated data, ``b""`` at the end of the stream."""
        if self.done:
            return b""
        if not self._started:
            self._started = True
            self._header()
        while len(self._inflight) < self._window and self._submit():
            pass
        if not self._inflight:
            self._finish()
            return b""
        k, future = self._inflight.popleft()
        point = self._points[k]
        end = self._points[k + 1] if k + 1 < len(self._points) else None
        span = f"bytes {point.archive}-{end.archive if end else self._size - gzipframe.TRAILER_SIZE}"
        try:
            out, crc, ended, pieces = future.result()
        except InflateError as exc:
            self.close()
            raise ArchiveDamaged(
                f"{self._name} {span} (from access point {k} of {self._index_where}) do not inflate ({exc}): "
                "the archive or its index is damaged (verify --threads 1 reads the archive without the index)"
            ) from None
        said = end.raw - point.raw if end is not None else self._last_bound
        if len(out) > said or not ended or (end is not None and len(out) != said):
            self.close()
            what = (f"more than {said} bytes" if len(out) > said else "a deflate stream that does not end"
                    if not ended else f"{len(out)} bytes")
            says = (f"says {said}" if end is not None else
                    f"ends at point {k}, and the stream must end within {said} bytes of it")
            raise ArchiveDamaged(
                f"{self._name} {span} inflate to {what}, but {self._index_where} {says}: "
                "the archive or its index is damaged (verify --threads 1 reads the archive without the index)"
            )
        self._crc = isal_zlib.crc32_combine(self._crc, crc, len(out))
        self._isize += len(out)
        if pieces:
            spans = self._spans
            assert spans is not None, "pieces come from spans"
            for lo, piece_crc, length in pieces:
                start = lo if lo in spans.sizes else spans.within(lo, lo + 1)[0][0]
                self._pieces.setdefault(start, []).append((lo, piece_crc, length))
        return out

    def planned(self, start: int, size: int) -> bool:
        """Whether the workers checksum a member whose data is [start, start + size)."""
        return self._spans is not None and self._spans.sizes.get(start) == size

    def member_crc32c(self, start: int, size: int) -> int:
        """The crc32c of the (`planned`) member data [start, start + size), once all of it
        has been handed out: its pieces' crc32c combined in order."""
        pieces = self._pieces.pop(start, [])
        if len(pieces) == 1 and pieces[0][0] == start and pieces[0][2] == size:
            return pieces[0][1]  # within one access interval: most members
        crc = 0
        at = start
        for lo, piece_crc, length in pieces:
            assert lo == at, "pieces of one member arrive in order"
            crc = crc32c_combine(crc, piece_crc, length)
            at += length
        assert at == start + size, "every piece of a handed-out member was checksummed"
        return crc

    def _finish(self) -> None:
        self.done = True
        self.close()
        if not self._fill(self._size):
            raise ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._pos + self._buffered}, "
                                 "in the gzip trailer")
        self.problems += trailer_problems(self._name, b"".join(self._take(self._size)), self._crc, self._isize)
        extra = self._pull()
        if extra:
            raise ArchiveDamaged(f"{self._name} has unexpected bytes after the end of its gzip stream, "
                                 f"at archive byte {self._size}")

    def close(self) -> None:
        for _, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
