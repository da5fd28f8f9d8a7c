"""An archive as *pieces*: the stretches between two access points, inflated on demand.

Piece k holds the tar stream's raw bytes from access point k to access point k+1 (the
last one to the end of the stream); it is fetched with one ranged read of the archive
between the two points' archive offsets and inflated on its own (`access_index`: a
point starts a block with no dictionary). This is what `mount` serves reads from.

Checks, so that a reader never gets wrong bytes: a piece must inflate without error to
exactly the raw bytes its points place it at (the last one to the end of the deflate
stream, nothing after it); and the first time a piece is inflated its crc32c is kept
(4 bytes a piece), so the same piece fetched again after it left the cache must be the
same bytes. Whole members are checked against the manifest by the caller (`mount`).
A failed check is `PieceDamaged`, naming the piece and the archive's bytes.

Inflated pieces are kept in a cache bounded in bytes (least recently used goes first).
Many readers at once are served in parallel: a piece wanted by several is fetched once
(the others wait for it), and `prefetch` fetches pieces ahead of a sequential reader on
a pool of threads (ranged GETs and ISA-L inflate both run outside the GIL).
"""

from __future__ import annotations

import contextlib
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import google_crc32c
from isal import isal_zlib

from ..storage.gzipframe import TRAILER_SIZE, AccessPoint
from .damage import ArchiveDamaged
from .gunzip import InflateError
from .sources import ArchiveSource, ResumableReader

__all__ = ["PieceDamaged", "Pieces"]


class PieceDamaged(ArchiveDamaged):
    """A piece failed its check."""


class Pieces:
    """The pieces of ``src`` whose access points are ``points`` (tar length ``raw_size``)."""

    def __init__(self, src: ArchiveSource, points: Sequence[AccessPoint], raw_size: int, *, cache_bytes: int,
                 workers: int = 8, note: Callable[[str], None] | None = None) -> None:
        self.src = src
        self._raw = [p.raw for p in points] + [raw_size]
        self._archive = [p.archive for p in points] + [src.data.size - TRAILER_SIZE]
        self.count = len(points)
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached = 0
        self._inflight: dict[int, Future[bytes]] = {}
        self._crcs: dict[int, int] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piece")
        self._note = note
        self.fetched = 0  # archive bytes read
        self.requests = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def of(self, raw: int) -> int:
        """k of the piece holding raw offset ``raw``."""
        return min(max(bisect_right(self._raw, raw) - 1, 0), self.count - 1)

    def span(self, k: int) -> tuple[int, int]:
        """Raw [start, end) of piece k."""
        return self._raw[k], self._raw[k + 1]

    def get(self, k: int) -> bytes:
        """Piece k inflated and checked: from the cache, from a fetch under way, or fetched."""
        with self._lock:
            data = self._cache.get(k)
            if data is not None:
                self._cache.move_to_end(k)
                return data
            future = self._inflight.get(k)
            owner = future is None
            if future is None:
                future = self._inflight[k] = Future()
        if owner:
            try:
                data = self._fetch(k)
            except BaseException as exc:
                with self._lock:
                    del self._inflight[k]
                future.set_exception(exc)
                raise
            with self._lock:
                del self._inflight[k]
                self._keep(k, data)
            future.set_result(data)
            return data
        return future.result()

    def prefetch(self, k: int) -> None:
        """Fetch piece k in the background if it is neither cached nor on its way."""
        if not 0 <= k < self.count:
            return
        with self._lock:
            if k in self._cache or k in self._inflight:
                return
        with contextlib.suppress(RuntimeError):  # the pool is shut down: unmounting
            self._pool.submit(self._quiet_get, k)

    def _quiet_get(self, k: int) -> None:
        # A reader that wants the piece gets the error itself, from its own get.
        with contextlib.suppress(Exception):
            self.get(k)

    def read(self, start: int, end: int) -> bytes:
        """Raw bytes [start, end) of the tar stream."""
        out = []
        k = self.of(start)
        while start < end:
            lo, hi = self.span(k)
            data = self.get(k)
            out.append(data[start - lo : min(end, hi) - lo])
            start = min(end, hi)
            k += 1
        return b"".join(out)

    def _keep(self, k: int, data: bytes) -> None:
        self._cache[k] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _fetch(self, k: int) -> bytes:
        a0, a1 = self._archive[k], self._archive[k + 1]
        lo, hi = self.span(k)
        where = f"{self.src.location} bytes {a0}-{a1} (raw {lo}-{hi}, piece {k})"
        reader = ResumableReader(self.src.data, note=self._note, start=a0, end=a1)
        inflater = isal_zlib.decompressobj(-15)
        out = []
        size = 0
        try:
            while piece := reader.read_piece():
                data = inflater.decompress(piece)
                size += len(data)
                if size > hi - lo:
                    raise PieceDamaged(f"{where} inflate past raw byte {hi}: the archive or its index is damaged")
                out.append(data)
            out.append(inflater.flush())
        except InflateError as exc:
            raise PieceDamaged(f"{where} do not inflate ({exc}): the archive is damaged") from None
        finally:
            reader.close()
            with self._lock:
                self.fetched += reader.pos - a0
                self.requests += 1 + reader.reconnects
        data = b"".join(out)
        last = k == self.count - 1
        if len(data) != hi - lo or (last and (not inflater.eof or inflater.unused_data)):
            raise PieceDamaged(f"{where} inflate to {len(data)} bytes, not {hi - lo}: the archive or its index is "
                               "damaged")
        crc = google_crc32c.value(data)
        with self._lock:
            seen = self._crcs.setdefault(k, crc)
        if seen != crc:
            raise PieceDamaged(f"{where} read again are not the bytes read before (crc32c {crc:08x}, was "
                               f"{seen:08x}): the archive changed or is damaged")
        return data
