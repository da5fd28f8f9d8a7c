"""Parallel block gzip: fixed raw blocks deflated on a thread pool into one gzip member.

Each block is deflated independently with ISA-L, primed with the 32 KiB of raw data
before it as dictionary and ended with a sync flush, so the concatenation is one
valid deflate stream and the output depends only on (input, level, block size, isal
build), never on the thread count or timing (pigz's scheme). That independence is
what lets a crashed archive restart from any block boundary: a `Checkpoint` after
each block is all the state needed.

Members the tar stream marks as already compressed are emitted as deflate *stored*
blocks: no CPU is spent deflating CBCL or JPEG data for a 0–3 % gain.

Access points (`storage.gzipframe`: the rule, the header and trailer framing the member)
are deflated without the dictionary, so inflation can start at their first byte with no
history (a reader fetching one member starts at the access point before it,
`readback.ranged`); their compressed offsets go into ``<run>.index.tsv``.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

import google_crc32c
from isal import isal_zlib

from ..state.checkpoint import WINDOW, Checkpoint, Cursor
from ..stopping import STOP
from ..storage import gzipframe
from ..storage.crc import crc32c_combine
from ..storage.gzipframe import AccessPoint
from .tarstream import RawBlock

__all__ = [
    "Codec",
    "CompressedBlock",
    "GzipCodec",
    "Planned",
    "PlainTarCodec",
    "compressed_stream",
]

_STORED_MAX = 0xFFFF
_POLL = 0.1  # seconds between looks at the stop flag while a block is being made


class Codec(Protocol):
    """How raw blocks become output bytes. Implementations are stateless and thread-safe."""

    @property
    def name(self) -> str: ...

    @property
    def extension(self) -> str: ...

    def header(self) -> bytes: ...

    def encode(self, block: RawBlock, dictionary: bytes) -> bytes: ...

    def trailer(self, crc32: int, raw_size: int) -> bytes: ...


@dataclass(frozen=True)
class PlainTarCodec:
    """`compression: none`: the tar stream as it is (sruns-monitor 1.2's .tar)."""

    name: str = "none"
    extension: str = ".tar"

    def header(self) -> bytes:
        return b""

    def encode(self, block: RawBlock, dictionary: bytes) -> bytes:
        return bytes(block.data)

    def trailer(self, crc32: int, raw_size: int) -> bytes:
        return b""


@dataclass(frozen=True)
class GzipCodec:
    """One gzip member of independently deflated blocks; stored runs where marked."""

    level: int = 1
    auto: bool = True
    extension: str = ".tar.gz"

    def __post_init__(self) -> None:
        if self.level not in (1, 2, 3):
            # isal level 0 codes everything with one static Huffman table and never
            # falls back to stored blocks: incompressible data grows by about 23 %.
            raise ValueError(f"gzip level must be 1, 2 or 3 (got {self.level})")

    @property
    def name(self) -> str:
        return f"auto (level {self.level})" if self.auto else f"level {self.level}"

    def header(self) -> bytes:
        return gzipframe.HEADER

    def encode(self, block: RawBlock, dictionary: bytes) -> bytes:
        data = memoryview(block.data)
        if not block.stored:
            return self._deflate(data, dictionary)
        out = []
        pos = 0
        for start, end in block.stored:
            if start > pos:
                out.append(self._deflate(data[pos:start], _window_before(dictionary, data, pos)))
            out.append(_stored(data[start:end]))
            pos = end
        if pos < len(data):
            out.append(self._deflate(data[pos:], _window_before(dictionary, data, pos)))
        return b"".join(out)

    def _deflate(self, data: memoryview, zdict: bytes) -> bytes:
        # Both paths end with a sync flush, on a byte boundary, so the next block
        # (deflated or stored) can simply be appended.
        if _ParallelCompress is not None:
            out: bytes = _parallel_compressor(self.level, len(data)).compress_and_crc(data, zdict)[0]
            return out
        if zdict:
            c = isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, -15, zdict=zdict)
        else:
            c = isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(isal_zlib.Z_SYNC_FLUSH)

    def trailer(self, crc32: int, raw_size: int) -> bytes:
        return gzipframe.END_BLOCK + gzipframe.trailer(crc32, raw_size)


# isal's own threaded writer deflates blocks with this class: one call, no compressor
# object to set up, about 10 % faster than compressobj. It is private, so it is used
# only where present; the isal version is part of the stream parameters, so a resume
# never mixes the two paths' bytes.
_ParallelCompress = getattr(isal_zlib, "_ParallelCompress", None)
_local = threading.local()


def _parallel_compressor(level: int, size: int) -> Any:
    """This thread's compressor, with an output buffer that holds ``size`` bytes deflated."""
    # Deflate grows incompressible data by well under 1 %; 10 % + 500 bytes is isal's margin.
    need = size + max(size // 10, 500)
    cache: dict[int, tuple[int, Any]] = _local.__dict__.setdefault("compressors", {})
    capacity, comp = cache.get(level, (0, None))
    if need > capacity:
        assert _ParallelCompress is not None, "only called where isal has it"
        capacity = max(need, (1 << 20) + (1 << 17))
        comp = _ParallelCompress(buffersize=capacity, level=level)
        cache[level] = (capacity, comp)
    return comp


def _window_before(dictionary: bytes, data: memoryview, pos: int) -> bytes:
    """The 32 KiB of raw stream just before ``pos`` in this block."""
    if pos >= WINDOW:
        return bytes(data[pos - WINDOW : pos])
    return (dictionary + bytes(data[:pos]))[-WINDOW:]


def _stored(data: memoryview) -> bytes:
    # Non-final stored blocks: header byte 0 (BFINAL=0, BTYPE=00, padding), LEN, NLEN.
    parts: list[bytes | memoryview] = []
    for i in range(0, len(data), _STORED_MAX):
        piece = data[i : i + _STORED_MAX]
        parts.append(struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF))
        parts.append(piece)
    return b"".join(parts)


@dataclass(slots=True)
class CompressedBlock:
    """Output bytes to emit, the checkpoint after them, and the members they finished."""

    data: bytes
    checkpoint: Checkpoint
    files_done: list[tuple[int, int]]
    raw_len: int = 0
    stored_bytes: int = 0
    access: bool = False  # deflated without a dictionary: inflation can start at its first byte

    @property
    def access_point(self) -> AccessPoint | None:
        """This block's start (raw and output offsets) when it is an access point."""
        if not self.access:
            return None
        return AccessPoint(self.checkpoint.raw_offset - self.raw_len, self.checkpoint.gz_offset - len(self.data))


Planned = tuple[int, "RawBlock | Future[RawBlock]"]  # a block's raw offset, and the block or its assembly


@dataclass(slots=True)
class _Encoded:
    block: RawBlock
    data: bytes
    raw_crc32: int
    crc32c: int  # of ``data``
    window_crc32: int  # of the 32 KiB of raw stream that end this block


def _get(source: RawBlock | Future[RawBlock]) -> RawBlock:
    return source if isinstance(source, RawBlock) else source.result()


def _encode(
    codec: Codec, source: RawBlock | Future[RawBlock], previous: RawBlock | Future[RawBlock] | None,
    first_dictionary: bytes, access: bool,
) -> _Encoded:
    """Everything per byte, on a worker: deflate, the raw crc32, the output's crc32c and
    the window's crc32. The dictionary is the end of the block before (fixed-size blocks
    of at least 64 KiB hold a whole window; only the stream's last block is shorter)."""
    block = _get(source)
    if previous is None:
        dictionary = first_dictionary
    else:
        before = _get(previous).data
        assert len(before) >= WINDOW, "a block before another holds a whole window"
        dictionary = bytes(before[-WINDOW:])
    data = codec.encode(block, b"" if access else dictionary)
    raw = block.data
    window = bytes(raw[-WINDOW:]) if len(raw) >= WINDOW else (dictionary + bytes(raw))[-WINDOW:]
    return _Encoded(block, data, isal_zlib.crc32(raw), google_crc32c.value(data), isal_zlib.crc32(window))


class _Running:
    """The running offsets and checksums that become each block's checkpoint."""

    def __init__(self, start: Checkpoint) -> None:
        self.cp = start
        # The member the stream is in and its crc32c so far, for blocks that carry pieces.
        self.member = (start.cursor.index, start.cursor.crc32c)

    def members(self, block: RawBlock) -> tuple[list[tuple[int, int]], Cursor]:
        """The members ``block`` finished and the cursor at its end."""
        if block.pieces is None:
            return block.files_done, block.cursor
        index, crc = self.member
        done = []
        for piece in block.pieces:
            crc = piece.crc32c if piece.first else crc32c_combine(crc, piece.crc32c, piece.length)
            index = piece.index
            if piece.last:
                done.append((index, crc))
        self.member = (index, crc)
        return done, Cursor(block.end_index, crc if block.end_index == index else 0)

    def emit(
        self,
        data: bytes,
        raw_len: int,
        block_crc: int,
        cursor: Cursor,
        files_done: list[tuple[int, int]] | None = None,
        stored_bytes: int = 0,
        window_crc32: int | None = None,
        data_crc32c: int | None = None,
    ) -> CompressedBlock:
        cp = self.cp
        self.cp = Checkpoint(
            raw_offset=cp.raw_offset + raw_len,
            gz_offset=cp.gz_offset + len(data),
            crc32=isal_zlib.crc32_combine(cp.crc32, block_crc, raw_len),
            crc32c=(
                google_crc32c.extend(cp.crc32c, data) if data_crc32c is None
                else crc32c_combine(cp.crc32c, data_crc32c, len(data))
            ),
            cursor=cursor,
            window_crc32=cp.window_crc32 if window_crc32 is None else window_crc32,
        )
        return CompressedBlock(data, self.cp, files_done or [], raw_len, stored_bytes)


def compressed_stream(
    codec: Codec,
    blocks: Iterator[RawBlock] | Iterator[Planned],
    start: Checkpoint,
    dictionary: bytes,
    raw_size: int,
    threads: int = 1,
    trailer: bool = True,
    access_interval: int = 0,
    block_size: int = 0,
    taken: Callable[[RawBlock], None] | None = None,
) -> Generator[CompressedBlock, None, None]:
    """Encode ``blocks`` (which begin at ``start.raw_offset``) in order.

    ``blocks`` are blocks read in order (`tarstream.TarReader`), or (raw offset, future
    of the block) pairs being assembled elsewhere (`blocks.Assembler`); ``taken`` is told
    of each block once it is emitted, in order. ``dictionary`` is the raw data just before
    the first block. The header is
    emitted when starting at the stream's very beginning and the trailer (unless
    ``trailer`` is False: a segment of the stream that another part ends) once
    ``raw_size`` is reached, each as a block of its own with its own checkpoint. A
    segment starting inside the stream counts its output from 0 (``start.gz_offset``)
    and its raw crc32 from its first byte (``start.crc32``). The first block of ``block_size``
    at or after each multiple of ``access_interval`` (0: none) is an access point
    (`gzipframe.is_access_point`).

    The main thread (this generator's) only orders: every per-byte step is on the workers.
    """
    running = _Running(start)
    if start.raw_offset == 0 and start.gz_offset == 0 and codec.header():
        yield running.emit(codec.header(), 0, 0, start.cursor)

    # Bounded in-flight work gives backpressure: at most two blocks per thread wait,
    # and output leaves in block order whatever order the threads finish in.
    pending: deque[tuple[Future[_Encoded], bool]] = deque()
    previous: RawBlock | Future[RawBlock] | None = None
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deflate") as pool:
        try:
            for item in blocks:
                raw_offset, source = (item.raw_offset, item) if isinstance(item, RawBlock) else item
                access = codec.header() != b"" and gzipframe.is_access_point(raw_offset, block_size, access_interval)
                pending.append((pool.submit(_encode, codec, source, previous, dictionary, access), access))
                previous = source
                while len(pending) > 2 * threads:
                    yield _finish(running, *pending.popleft(), taken)
            while pending:
                yield _finish(running, *pending.popleft(), taken)
        finally:
            for fut, _ in pending:
                fut.cancel()
    if trailer and running.cp.raw_offset == raw_size:
        tail = codec.trailer(running.cp.crc32, raw_size)
        if tail:
            yield running.emit(tail, 0, 0, running.cp.cursor)


def _finish(
    running: _Running, fut: Future[_Encoded], access: bool, taken: Callable[[RawBlock], None] | None
) -> CompressedBlock:
    while True:
        try:
            enc = fut.result(timeout=_POLL)
            break
        except FutureTimeout:
            STOP.check()  # a stop request is honoured while the pool reads (a slow share) or works
    block = enc.block
    files_done, cursor = running.members(block)
    out = running.emit(
        enc.data,
        len(block.data),
        enc.raw_crc32,
        cursor,
        files_done,
        sum(end - start for start, end in block.stored),
        enc.window_crc32,
        enc.crc32c,
    )
    out.access = access
    if taken is not None:
        taken(block)
    return out
