"""The gzip layer of a read-back: `GzipLayer` inflates with ISA-L and checks each gzip
member's CRC32 and ISIZE itself.

Checking here rather than in zlib's own gzip mode makes a damaged archive be reported as
such, naming the check that failed, rather than as a generic zlib error. An archive may
hold one gzip member or several concatenated; anything after the last one is damage.
"""

from __future__ import annotations

from collections.abc import Callable

from isal import isal_zlib

from ..storage import gzipframe
from .damage import MAX_EXTENDED, ArchiveDamaged
from .sources import PIECE

__all__ = ["GzipLayer", "InflateError", "trailer_problems"]

# isal's stub declares `error` as an instance; at run time it is the exception class.
InflateError: type[Exception] = isal_zlib.error  # type: ignore[assignment]


def trailer_problems(name: str, trailer: bytes, crc: int, isize: int) -> list[str]:
    """How a gzip member's 8-byte trailer disagrees with the ``crc`` (CRC32) and ``isize``
    (length) of what was inflated; empty when it does not."""
    stored = gzipframe.parse_trailer(trailer)
    problems = []
    if stored.crc32 != crc:
        problems.append(f"{name}: the gzip CRC32 is {crc:08x} over the data, but the trailer says "
                        f"{stored.crc32:08x}: the compressed bytes were altered")
    if stored.isize != isize % gzipframe.ISIZE_MODULUS:
        problems.append(f"{name}: the gzip length is {isize} bytes, but the trailer says {stored.isize} (mod 2^32)")
    return problems


class GzipLayer:
    """Inflate a gzip stream (one member, or several concatenated) with ISA-L.

    Header, CRC32 and ISIZE are checked here rather than by zlib's own gzip mode, so the
    messages say which check failed. A CRC mismatch is recorded in ``problems`` (the
    members before it have been read and checked already); anything that stops the
    stream (corrupt deflate data, truncation) raises ArchiveDamaged.
    """

    def __init__(self, pull: Callable[[], bytes], where: Callable[[], int], name: str) -> None:
        self._pull = pull
        self._where = where  # compressed bytes read so far, for messages
        self._name = name
        self._input = b""  # compressed bytes not yet handed to the inflater
        self._inflater: isal_zlib.Decompress | None = None
        self._crc = 0
        self._isize = 0
        self._members = 0
        self.problems: list[str] = []
        self.done = False

    def read_piece(self) -> bytes:
        """The next piece of inflated data, ``b""`` at the end of the stream."""
        while not self.done:
            if self._inflater is None and not self._start_member():
                self.done = True
                break
            out = self._inflate()
            if out:
                return out
        return b""

    def _fill(self, n: int) -> bool:
        """At least ``n`` input bytes buffered (False at the end of the object)."""
        while len(self._input) < n:
            piece = self._pull()
            if not piece:
                return False
            self._input += piece
        return True

    def _start_member(self) -> bool:
        """Parse a member header; False when the stream ends cleanly before one."""
        if not self._fill(1):
            if self._members == 0:
                raise ArchiveDamaged(f"{self._name} is empty")
            return False
        if not self._fill(len(gzipframe.HEADER)):  # no header is shorter than ours, which has no optional field
            raise self._truncated("in a gzip header")
        if not gzipframe.is_member_start(self._input):
            if self._members:
                raise ArchiveDamaged(
                    f"{self._name} has unexpected bytes after the end of its gzip stream, "
                    f"at archive byte {self._where() - len(self._input)}"
                )
            raise ArchiveDamaged(f"{self._name} is not a gzip stream (it starts with {self._input[:4].hex()})")
        while (pos := gzipframe.header_length(self._input)) is None:
            if len(self._input) > MAX_EXTENDED:  # real ones hold at most a file name; never buffer more
                raise ArchiveDamaged(f"{self._name} has a gzip header over 1 MiB long: it is not an archive")
            if not self._fill(len(self._input) + 1):
                raise self._truncated("in a gzip header")
        self._input = self._input[pos:]
        self._inflater = isal_zlib.decompressobj(-15)  # raw deflate: the trailer is ours to check
        self._crc = 0
        self._isize = 0
        self._members += 1
        return True

    def _inflate(self) -> bytes:
        inflater = self._inflater
        assert inflater is not None
        try:
            if not self._input:
                self._input = self._pull()
            if self._input:
                # max_length bounds the output of one call: a few corrupt bytes cannot
                # make one piece huge.
                out = inflater.decompress(self._input, PIECE)
                self._input = inflater.unconsumed_tail
            else:
                # The object ended: whatever output the inflater still holds, then it
                # must be at the end of the deflate stream.
                out = inflater.flush()
                if not inflater.eof and not out:
                    raise self._truncated("in the compressed data")
        except InflateError as exc:
            raise ArchiveDamaged(
                f"{self._name}: corrupt gzip data near archive byte {self._where() - len(self._input)} ({exc})"
            ) from None
        self._crc = isal_zlib.crc32(out, self._crc)
        self._isize += len(out)
        if inflater.eof:
            self._input = inflater.unused_data + self._input
            self._finish_member()
        return out

    def _finish_member(self) -> None:
        if not self._fill(gzipframe.TRAILER_SIZE):
            raise self._truncated("in the gzip trailer")
        self.problems += trailer_problems(self._name, self._input[: gzipframe.TRAILER_SIZE], self._crc, self._isize)
        self._input = self._input[gzipframe.TRAILER_SIZE :]
        self._inflater = None

    def _truncated(self, where: str) -> ArchiveDamaged:
        return ArchiveDamaged(f"{self._name} is truncated: it ends at byte {self._where()}, {where}")
