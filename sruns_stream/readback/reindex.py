"""``sruns-stream index ARCHIVE``, and `verify`'s look at the indexes other tools read.

`write_indexes` renders ``<archive>.gzidx`` and ``<archive>.index.sqlite``
(`storage.read_indexes`) for an archive made before the archiver wrote them, from its
manifest (member offsets) and its access index (``<run>.index.tsv``): the archive itself
is read only for its last 8 bytes (the gzip trailer: the tar stream's length, with the
manifest, `ranged.raw_size`) and its first tar header (the owner: the manifest has no
uid/gid columns, so every member is shown with the first member's, which for a run folder
written by one instrument account is everyone's). An archive whose manifest has no
offsets, or with no access index, cannot have them: its blocks were not cut where
inflation can start, and a GZIDX point there would need the 32 KiB window before it.

`check_indexes` compares the two files, when they are there, with what the manifest and
the access index give (the owners aside).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from isal import isal_zlib

from .. import __version__
from ..errors import DestinationError, IntegrityError
from ..progress import Progress
from ..storage import gzidx, ratarmount_index, read_indexes
from ..storage.gzipframe import AccessPoint
from ..storage.layout import read_index_names
from ..storage.manifest_tsv import ManifestRow
from .gunzip import InflateError
from .locate import resolve_source
from .ranged import AccessIndex, has_offsets, raw_size
from .sources import ArchiveSource, ResumableReader, read_all

if TYPE_CHECKING:
    from ..state.journal import Journal

__all__ = ["Basis", "basis", "check_indexes", "write_indexes"]

_HEADER = 512


@dataclass(frozen=True)
class Basis:
    """What both files are made from."""

    rows: list[ManifestRow]
    points: list[AccessPoint]
    access_interval: int
    raw_size: int


def basis(src: ArchiveSource, manifest: dict[str, ManifestRow] | None, note: Callable[[str], None] | None) -> Basis:
    """The manifest rows, access points and tar length of an archive; DestinationError
    saying what is missing when it lacks them."""
    if not src.gzip:
        raise DestinationError(f"{src.location} is a plain tar (compression none): it has no access points, which "
                               "the gzip indexes and `mount` are made from; ratarmount mounts a .tar after one quick "
                               "pass over its headers")
    if manifest is None or not has_offsets(manifest):
        raise DestinationError(f"{src.manifest_location} is missing or has no offset column (an archive from before "
                               "access points): there is nothing to build the indexes from; ratarmount builds its own "
                               "by reading the archive once")
    if src.index is None:
        raise DestinationError(f"no access index at {src.index_location} (an archive made with access_interval 0): "
                               "its blocks were not cut where inflation can start")
    index = AccessIndex(src.index, src.index_location, note)
    size = raw_size(src, manifest, note)
    if size is None:
        raise DestinationError(f"{src.location}: the tar stream's length cannot be placed from the manifest")
    return Basis(list(manifest.values()), index.points(), index.header.access_interval, size)


def _first_owner(src: ArchiveSource, first: AccessPoint, note: Callable[[str], None] | None) -> tuple[int, int]:
    """uid and gid of the tar stream's first header (inflated from the first access point)."""
    reader = ResumableReader(src.data, note=note, start=first.archive, end=min(src.data.size, first.archive + 65536))
    inflater = isal_zlib.decompressobj(-15)
    out = b""
    try:
        while len(out) < _HEADER and (piece := reader.read_piece()):
            out += inflater.decompress(piece)
    except InflateError as exc:
        raise IntegrityError(f"{src.location}: its first block does not inflate ({exc})") from None
    finally:
        reader.close()
    try:
        info = tarfile.TarInfo.frombuf(out[:_HEADER], "utf-8", "surrogateescape")
    except tarfile.TarError as exc:
        raise IntegrityError(f"{src.location}: its first tar header is not one ({exc})") from None
    return info.uid, info.gid


def write_indexes(source: str, *, journal: Journal | None, collection: str | None, progress: Progress) -> list[str]:
    """Write both files beside the archive ``source`` names; returns where."""
    src = resolve_source(source, journal, collection)
    try:
        b = basis(src, src.read_manifest(progress.note), progress.note)
        owner = _first_owner(src, b.points[0], progress.note)
        files = read_indexes.render(b.rows, b.points, b.access_interval, src.data.size, b.raw_size, owner,
                                    __version__)
        return read_indexes.write_beside(src.location, files)
    finally:
        src.close()


def check_indexes(src: ArchiveSource, manifest: dict[str, ManifestRow] | None,
                  note: Callable[[str], None] | None) -> list[str]:
    """What is wrong with the indexes beside the archive (none there: nothing to check)."""
    if src.beside is None or not src.gzip:
        return []
    found = {where: src.beside(where) for where in read_index_names(src.location)}
    if all(f is None for f in found.values()):
        return []
    try:
        b = basis(src, manifest, note)
    except (DestinationError, IntegrityError) as exc:
        return [f"the indexes beside the archive cannot be checked: {exc}"]
    expected = gzidx.render(b.points, src.data.size, b.raw_size, b.access_interval)
    problems = []
    (gz_where, gz), (sq_where, sq) = found.items()
    if gz is not None and read_all(gz) != expected:
        problems.append(f"{gz_where} is not the access index's points for this archive (one of the two is "
                        f"damaged: `verify --threads 2` checks the access index against the archive); "
                        f"`sruns-stream index {src.location}` writes it again from the access index")
    if sq is not None:
        found_problems = ratarmount_index.check(read_all(sq), sq_where, b.rows, b.raw_size - read_indexes.EOF_MARKER,
                                                src.data.size, expected)
        problems += [f"{p}: `sruns-stream index {src.location}` writes it again" for p in found_problems]
    return problems
