"""Any block of the tar stream, assembled on its own: the work of many threads at once.

`tarstream.TarLayout` knows where every member starts, so the bytes of raw block
[offset, offset + length) depend on nothing before it: the headers it holds are rendered
from the manifest and the file bytes it holds are read at their offsets. So blocks are
assembled on a pool of threads, each block by one thread (its headers, its files opened,
read, checked and checksummed there), and only the ordering is left to the stream's one
main thread: that is what lets more cores make the archive faster (docs/scaling.md).
On an instrument share the same pool is the read-ahead: while the stream deflates block
k, blocks k+1 … k+n are being read, each thread waiting on its own round trips.

A member's crc32c is computed piece by piece, one piece per block it spans
(`Piece`); the stream combines the pieces in order (`storage.crc.crc32c_combine`), so a
member wholly inside one block, as nearly all run-folder files are, costs the main thread
one list entry. The bytes, the stored runs and the member checks are exactly those of
`tarstream.TarReader`, the sequential reader that the tests hold this module to.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future

import google_crc32c

from ..runfolder import classify, memberio
from ..runfolder.safefs import FILE, Tree
from ..runfolder.scan import Entry
from .blockgzip import Planned
from .tarstream import Piece, RawBlock, TarLayout, add_range, render_header

__all__ = ["Assembler"]


class Assembler:
    """Assembles blocks of one layout on any thread; a member spanning several blocks is
    opened (and checked before reading) once, its descriptor shared by the threads that
    read its pieces, and checked after reading and closed by `finished` once the stream
    has taken its last piece in order."""

    def __init__(self, layout: TarLayout, store_precompressed: bool) -> None:
        self.layout = layout
        self._store = store_precompressed
        self._local = threading.local()
        self._lock = threading.Lock()
        self._trees: list[Tree] = []
        self._open: dict[int, int] = {}  # member index -> shared descriptor
        self._opening: dict[int, threading.Lock] = {}
        self._closed = False

    # -- any thread --------------------------------------------------------------------

    def assemble(self, raw_offset: int, length: int) -> RawBlock:
        layout = self.layout
        entries = layout.manifest.entries
        n = len(entries)
        end = min(raw_offset + length, layout.size)
        block = RawBlock(raw_offset=raw_offset, data=bytearray(end - raw_offset))
        block.pieces = []
        view = memoryview(block.data)
        i = layout.locate(raw_offset)
        while i < n and layout.starts[i] < end:
            start = layout.starts[i]
            entry = entries[i]
            data_start, data_end = layout.data_span(i)
            if raw_offset < data_start:  # some of the header is in this block
                header = render_header(entry, layout.pax.get(i, b""))
                lo = max(start, raw_offset)
                hi = min(data_start, end)
                view[lo - raw_offset : hi - raw_offset] = header[lo - start : hi - start]
            if entry.kind == FILE:
                if entry.size == 0:
                    if raw_offset < data_start <= end:  # done where its header ends
                        block.pieces.append(Piece(i, 0, 0, True, True))
                elif data_start < end and data_end > raw_offset:
                    lo = max(data_start, raw_offset)
                    hi = min(data_end, end)
                    self._read_piece(i, entry, lo - data_start, block, lo - raw_offset, hi - raw_offset)
            i += 1
        block.end_index = layout.locate(end)
        return block

    def _read_piece(self, i: int, entry: Entry, offset: int, block: RawBlock, lo: int, hi: int) -> None:
        """Read the member's bytes [offset, offset + hi - lo) into the block at [lo, hi)."""
        out = memoryview(block.data)[lo:hi]
        if offset == 0 and len(out) == entry.size:  # whole: open, read, fstat, close, here
            fd = memberio.open_member(self._tree(), entry)
            try:
                memberio.read_into(fd, entry, out)
                memberio.check(fd, entry, "while being read")
            finally:
                os.close(fd)
        else:
            memberio.read_into(self._shared(i, entry), entry, out, offset)
        # google_crc32c takes only read-only bytes; the copy costs ~0.1 ms a MiB.
        crc = google_crc32c.value(out.tobytes())
        assert block.pieces is not None, "made by assemble"
        block.pieces.append(Piece(i, crc, len(out), offset == 0, offset + len(out) == entry.size))
        if self._stored(i, entry, bytes(out[: classify.MAGIC_BYTES]) if offset == 0 else b""):
            add_range(block.stored, lo, hi)

    def _stored(self, i: int, entry: Entry, head: bytes) -> bool:
        """Whether the member's data goes out as stored blocks: by its name, else by its
        first bytes (read here when this piece does not hold them)."""
        if not self._store or entry.size < classify.MIN_STORED_SIZE:
            return False
        if classify.is_precompressed_name(entry.path):
            return True
        if not head:
            head = os.pread(self._shared(i, entry), classify.MAGIC_BYTES, 0)
        return classify.is_precompressed_magic(head)

    def _tree(self) -> Tree:
        tree: Tree | None = getattr(self._local, "tree", None)
        if tree is None:
            tree = memberio.open_tree(self.layout.manifest)
            with self._lock:
                self._trees.append(tree)
            self._local.tree = tree
        return tree

    def _shared(self, i: int, entry: Entry) -> int:
        """The descriptor of member ``i`` that every piece of it is read through: opened
        and checked before reading by the first thread that needs it."""
        with self._lock:
            fd = self._open.get(i)
            if fd is not None:
                return fd
            gate = self._opening.setdefault(i, threading.Lock())
        with gate:
            with self._lock:
                fd = self._open.get(i)
            if fd is not None:
                return fd
            fd = memberio.open_member(self._tree(), entry)
            try:
                memberio.check(fd, entry, "before reading")  # fail before reading gigabytes of a changed file
            except BaseException:
                os.close(fd)
                raise
            with self._lock:
                if self._closed:
                    os.close(fd)
                    raise RuntimeError("the assembler was closed")
                self._open[i] = fd
            return fd

    # -- the stream's thread -------------------------------------------------------------

    def planned(self, pool: Executor, start: int, end: int, block_size: int, ahead: int) -> Iterator[Planned]:
        """Blocks [start, end) in order as (raw offset, future of the block), with up to
        ``ahead`` more being assembled on ``pool`` beyond the one handed out."""
        offsets = iter(range(start, end, block_size))
        queue: deque[tuple[int, Future[RawBlock]]] = deque()
        try:
            while True:
                while len(queue) <= ahead:
                    offset = next(offsets, None)
                    if offset is None:
                        break
                    queue.append((offset, pool.submit(self.assemble, offset, min(block_size, end - offset))))
                if not queue:
                    return
                yield queue.popleft()
        finally:
            for _, future in queue:
                future.cancel()

    def finished(self, block: RawBlock) -> None:
        """The stream took ``block`` in order: every piece before it has been read, so
        a member it ends is checked after reading and its shared descriptor closed."""
        for piece in block.pieces or ():
            if piece.last and not piece.first:  # a member read whole here was never shared
                with self._lock:
                    fd = self._open.pop(piece.index, None)
                    self._opening.pop(piece.index, None)
                if fd is not None:
                    try:
                        memberio.check(fd, self.layout.manifest.entries[piece.index], "while being read")
                    finally:
                        os.close(fd)

    def close(self) -> None:
        """Close every descriptor (call once no thread assembles any more)."""
        with self._lock:
            self._closed = True
            fds, self._open = list(self._open.values()), {}
            trees, self._trees = self._trees, []
        for fd in fds:
            os.close(fd)
        for tree in trees:
            tree.close()
