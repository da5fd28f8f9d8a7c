"""The stream `verify` and `restore` both walk: an archive's stored bytes → (gzip) → tar
members, in one pass.

`MemberStream` wires a `ResumableReader`, a `GzipLayer` (not for a plain ``.tar``) and
`TarMembers` together; checks for a stop request at every piece, so a signal stops a
verify or restore cleanly between pieces; feeds the progress bar; and, once the walk is
over, adds the problems that belong to the stream rather than to a member: a gzip
CRC32/ISIZE mismatch, bytes after the end of the tar stream, a download whose crc32c is
not the stored object's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from ..progress import Progress
from ..stopping import STOP
from ..storage.gzipframe import AccessPoint
from ..storage.manifest_tsv import ManifestRow
from .gunzip import GzipLayer
from .pgunzip import MemberSpans, ParallelGzipLayer
from .report import Problems
from .sources import ArchiveSource, ResumableReader
from .tarparse import Member, TarMembers

__all__ = ["MemberStream"]


class MemberStream:
    """An archive's members, read from its stored bytes: reader → (gzip) → tar."""

    def __init__(
        self, src: ArchiveSource, progress: Progress, files_total: int | None = None,
        files_done: Callable[[], int] | None = None, points: list[AccessPoint] | None = None, threads: int = 1,
        manifest: Mapping[str, ManifestRow] | None = None,
    ) -> None:
        """``points`` (the archive's access points) with ``threads`` > 1: inflated on
        that many threads (`ParallelGzipLayer`), which also checksum the members where
        the ``manifest`` places them (`TarMembers.file_crc32c`); else in this one."""
        self.src = src
        self.reader = ResumableReader(src.data, note=progress.note)
        self.gzip: GzipLayer | ParallelGzipLayer | None = None
        if src.gzip and points and threads > 1:
            self.gzip = ParallelGzipLayer(self.reader.read_piece, src.location, points, src.data.size, threads,
                                          src.index_location, _spans(manifest))
        elif src.gzip:
            self.gzip = GzipLayer(self.reader.read_piece, lambda: self.reader.pos, src.location)
        inner = self.gzip.read_piece if self.gzip is not None else self.reader.read_piece
        self.raw = 0

        def pull() -> bytes:
            STOP.check()  # every piece: a signal stops a verify or restore here, cleanly
            piece = inner()
            self.raw += len(piece)
            progress.update(self.reader.pos, self.raw, files_done() if files_done is not None else None)
            return piece

        self.members = TarMembers(pull, self.gzip if isinstance(self.gzip, ParallelGzipLayer) else None)
        # The bar counts stored bytes read out of the object's size (the only total known
        # before the end); its second figure is the tar bytes they inflated to.
        progress.start(src.data.size, 0, files_total)

    def walk(self) -> Iterator[tuple[Member, TarMembers]]:
        """Each member, with the parser its data is read from."""
        for member in self.members:
            yield member, self.members

    def close(self) -> None:
        if isinstance(self.gzip, ParallelGzipLayer):
            self.gzip.close()
        self.reader.close()

    @property
    def gzip_checked(self) -> bool:
        """Whether the whole gzip stream was read, its CRC32 and length checked."""
        return self.gzip is not None and self.gzip.done

    def finish(self, problems: Problems, damaged: bool) -> bool:
        """Stream-level problems, once the walk is over. True if they show the stored
        bytes altered (the gzip CRC32 or length does not match what was inflated)."""
        self.reader.close()
        altered = False
        if self.gzip is not None:
            for problem in self.gzip.problems:
                problems.add(problem)
                altered = True
        if self.members.trailing_garbage:
            problems.add(
                f"{self.src.location}: {self.members.trailing_garbage} non-zero bytes after the end of the tar stream"
            )
        stored = self.src.stored_crc32c
        if not damaged and stored is not None and self.reader.pos == self.reader.size and self.reader.crc32c != stored:
            problems.add(
                f"{self.src.location}: the bytes read have crc32c {self.reader.crc32c:08x}, but the object's is "
                f"{stored:08x}: the download was corrupted; run again"
            )
        return altered


def _spans(manifest: Mapping[str, ManifestRow] | None) -> MemberSpans | None:
    """Where the manifest places each member's data, if its rows have offsets."""
    if not manifest or any(row.offset is None for row in manifest.values()):
        return None
    rows = sorted((row.offset or 0, row.size if row.kind == "f" else 0) for row in manifest.values())
    return MemberSpans(rows, None)
