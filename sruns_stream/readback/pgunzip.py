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

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

from isal import isal_zlib

from ..storage import gzipframe
from ..storage.access_index import deflate_bound
from ..storage.gzipframe import AccessPoint
from .damage import ArchiveDamaged
from .gunzip import InflateError, trailer_problems

__all__ = ["ParallelGzipLayer"]


def _inflate(data: bytes, bound: int, last: bool) -> tuple[bytes, int, bool]:
    """One piece inflated alone, to at most ``bound`` + 1 bytes (one more than it may
    hold: a piece that inflates to more is found without inflating all of it), its
    CRC32, and whether its deflate stream ended."""
    inflater = isal_zlib.decompressobj(-15)
    out = inflater.decompress(data if last else data + gzipframe.END_BLOCK, bound + 1)
    return out, isal_zlib.crc32(out), inflater.eof


class ParallelGzipLayer:
    """The inflated bytes of a one-member gzip archive whose access points are ``points``
    (from its index at ``index_where``), inflated ``threads`` pieces at a time."""

    def __init__(
        self, pull: Callable[[], bytes], name: str, points: list[AccessPoint], archive_size: int, threads: int,
        index_where: str,
    ) -> None:
        self._pull = pull
        self._name = name
        self._index_where = index_where
        self._points = points
        self._size = archive_size
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="inflate")
        self._window = threads + 1  # pieces in flight: memory stays (threads + 1) × a piece
        # The last piece ends before where the next point would be: at most one gap and
        # one block further, and a block is no longer than a gap.
        self._last_bound = max((b.raw - a.raw for a, b in pairwise(points)), default=0) * 2
        self._inflight: deque[tuple[int, Future[tuple[bytes, int, bool]]]] = deque()
        self._input = bytearray()
        self._pos = 0  # archive offset of self._input[0]
        self._next = 0  # the next piece to submit
        self._crc = 0
        self._isize = 0
        self.problems: list[str] = []
        self.done = False
        self._started = False

    def _fill(self, end: int) -> bool:
        """Archive bytes up to offset ``end`` buffered (False: the archive ends before)."""
        while self._pos + len(self._input) < end:
            piece = self._pull()
            if not piece:
                return False
            self._input += piece
        return True

    def _take(self, end: int) -> bytes:
        n = end - self._pos
        data = bytes(self._input[:n])
        del self._input[:n]
        self._pos = end
        return data

    def _header(self) -> None:
        first = self._points[0].archive
        shortest = len(gzipframe.HEADER)  # no header is shorter than ours, which has no optional field
        if not self._fill(min(first, shortest)) or first < shortest:
            raise ArchiveDamaged(f"{self._name}: its index {self._index_where} places the first access point at "
                                 f"byte {first}, inside the gzip header: the index is damaged")
        if not gzipframe.is_member_start(self._input):
            raise ArchiveDamaged(f"{self._name} is not a gzip stream (it starts with {self._input[:4].hex()})")
        # The header ends where the first access point starts: never buffered past it.
        while (length := gzipframe.header_length(self._input)) is None and len(self._input) < first:
            if not self._fill(len(self._input) + 1):
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
            raise ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._pos + len(self._input)}, "
                                 f"before access point {k + 1} at byte {end}")
        self._inflight.append((k, self._pool.submit(_inflate, self._take(end), bound, last)))
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
            out, crc, ended = future.result()
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
        return out

    def _finish(self) -> None:
        self.done = True
        self.close()
        if not self._fill(self._size):
            raise ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._pos + len(self._input)}, "
                                 "in the gzip trailer")
        self.problems += trailer_problems(self._name, self._take(self._size), self._crc, self._isize)
        extra = self._pull()
        if extra:
            raise ArchiveDamaged(f"{self._name} has unexpected bytes after the end of its gzip stream, "
                                 f"at archive byte {self._size}")

    def close(self) -> None:
        for _, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
