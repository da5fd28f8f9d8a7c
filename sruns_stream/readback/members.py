"""`ls` and `cat`: one archive's members, without reading the archive whole.

- `list_members` answers from the manifest beside the archive alone: not one byte of
  the archive is read (for ``gs://``, one metadata request finds it, as for `verify`).
- `cat_member` writes one file's bytes to a binary stream: through the access index
  (`ranged`), one ranged read from the access point before the file to the one after
  it; without an index, or for a manifest without offsets, the archive is read from its
  start up to the file, saying so. The bytes are checked against the manifest's size
  and crc32c as they go out; a mismatch is an `IntegrityError` once they have (stdout
  cannot be taken back, so the exit code says it: a pipeline with ``set -o pipefail``
  stops).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import google_crc32c

from ..errors import DestinationError, IntegrityError, UsageError
from ..humanize import human_bytes
from ..progress import Progress
from ..storage.manifest_tsv import ManifestRow
from .damage import ArchiveDamaged
from .locate import resolve_source
from .ranged import RangedMembers, has_offsets, load_index, plan, spans_of
from .report import KIND_NAMES, show
from .restore import Selector
from .sources import ArchiveSource
from .stream import MemberStream
from .tarparse import Member, TarMembers

if TYPE_CHECKING:
    from ..state.journal import Journal

__all__ = ["CatReport", "cat_member", "list_members", "render_listing"]


def _manifest(src: ArchiveSource, note: Any) -> dict[str, ManifestRow]:
    manifest = src.read_manifest(note)
    if manifest is None:
        raise DestinationError(
            f"no manifest at {src.manifest_location}: ls and cat read it to find members; "
            f"list the archive itself with: tar tzf {src.location}"
        )
    return manifest


def list_members(
    source: str, *, patterns: list[str], journal: Journal | None, collection: str | None, progress: Progress,
) -> tuple[ArchiveSource, list[ManifestRow]]:
    """The archive's members (those under ``patterns``, fnmatch, when given), from its
    manifest; UsageError when a pattern matches nothing."""
    src = resolve_source(source, journal, collection)
    try:
        manifest = _manifest(src, progress.note)
    finally:
        src.close()
    # restore --include's selection: a row whose path, or a folder above it, matches.
    selector = Selector(patterns)
    rows = [row for row in manifest.values() if selector.matches(row.path)]
    if patterns and not rows:
        raise UsageError(f"no member of {src.location} matches {' '.join(patterns)} (member paths start with "
                         f"the run folder, e.g. {src.run}/RunInfo.xml)")
    return src, rows


_TYPE_CHARS = {"f": "-", "d": "d", "l": "l"}


def _mode_text(row: ManifestRow) -> str:
    bits = "".join(ch if row.mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return _TYPE_CHARS.get(row.kind, "?") + bits


def render_listing(rows: list[ManifestRow], *, long: bool, as_json: bool) -> str:
    """One path per line; ``long``: type and mode, size, mtime (UTC) and path, as ``tar
    tv`` shows them; ``as_json``: a list of objects with every manifest column."""
    if as_json:
        import json

        return json.dumps([
            {"path": r.path, "type": r.kind, "size": r.size, "mode": f"{r.mode:04o}", "mtime": r.mtime,
             "crc32c": f"{r.crc32c:08x}" if r.crc32c is not None else None, "link": r.link or None,
             "offset": r.offset}
            for r in rows
        ], indent=1) + "\n"
    if not long:
        return "".join(f"{show(r.path)}\n" for r in rows)
    width = max((len(str(r.size)) for r in rows), default=1)
    lines = []
    for r in rows:
        when = datetime.fromtimestamp(r.mtime, UTC).strftime("%Y-%m-%d %H:%M")
        link = f" -> {show(r.link)}" if r.kind == "l" else ""
        lines.append(f"{_mode_text(r)} {r.size:>{width}} {when} {show(r.path)}{link}\n")
    return "".join(lines)


@dataclass
class CatReport:
    """What `cat_member` read (stderr, with ``--json`` on stdout it would mix with the data)."""

    source: str
    member: str
    size: int
    archive_bytes: int  # stored bytes read to get it
    ranges: int  # ranged reads (0: read from the archive's start)
    seconds: float = 0.0

    def summary(self) -> str:
        how = (f"{self.ranges} ranged read{'s' if self.ranges != 1 else ''}" if self.ranges
               else "reading the archive from its start")
        return (f"{show(self.member)}: {human_bytes(self.size)} checked against the manifest's crc32c; "
                f"{human_bytes(self.archive_bytes)} of {self.source} read ({how})")


def _row_for(manifest: dict[str, ManifestRow], name: str, src: ArchiveSource) -> ManifestRow:
    row = manifest.get(name.rstrip("/")) or manifest.get(f"{src.run}/{name.strip('/')}")
    if row is None:
        raise UsageError(f"{name!r} is not a member of {src.location} (member paths start with the run folder, "
                         f"e.g. {src.run}/RunInfo.xml; sruns-stream ls lists them)")
    if row.kind == "d":
        raise UsageError(f"{row.path} is a directory: restore it with sruns-stream restore SOURCE DEST "
                         f"--include {row.path}")
    if row.kind == "l":
        raise UsageError(f"{row.path} is a symlink to {row.link!r}: cat the file it names, if it is in the archive")
    return row


def cat_member(
    source: str, name: str, out: BinaryIO, *, journal: Journal | None, collection: str | None, progress: Progress,
) -> CatReport:
    """Write member ``name`` (its path, with or without the run folder in front) to ``out``,
    checked against its manifest row."""
    t0 = time.monotonic()
    src = resolve_source(source, journal, collection)
    try:
        manifest = _manifest(src, progress.note)
        row = _row_for(manifest, name, src)
        stream: RangedMembers | MemberStream | None = None
        index = load_index(src, progress.note) if has_offsets(manifest) else None
        if index is None and not has_offsets(manifest):
            progress.note(f"{src.manifest_location} has no offset column (an archive from before access points): "
                          "reading the archive from its start")
        if index is not None:
            spans = spans_of(manifest, lambda path: path == row.path)
            stream = RangedMembers(src, index, plan(index, spans), progress, 1)
        else:
            stream = MemberStream(src, progress, 1)
        try:
            member, tar = _find(stream.walk(), row, src)
            size = _send(member, tar, row, out)
        except ArchiveDamaged as exc:
            raise IntegrityError(f"{show(row.path)}: damaged archive: {exc}") from None
        finally:
            stream.close()
            progress.close()
        fetched = stream.fetched if isinstance(stream, RangedMembers) else stream.reader.pos
        ranges = len(stream.ranges) if isinstance(stream, RangedMembers) else 0
        return CatReport(src.location, row.path, size, fetched, ranges, time.monotonic() - t0)
    finally:
        src.close()


def _find(walk: Iterator[tuple[Member, TarMembers]], row: ManifestRow, src: ArchiveSource) -> tuple[Member, TarMembers]:
    for member, tar in walk:
        if member.name == row.path:
            return member, tar
    raise IntegrityError(f"{show(row.path)} is in {src.manifest_location} but not in {src.location} "
                         "where the manifest places it: the archive does not match its manifest")


def _send(member: Member, tar: TarMembers, row: ManifestRow, out: BinaryIO) -> int:
    if member.kind != "f":
        raise IntegrityError(f"{show(row.path)} is a {KIND_NAMES.get(member.kind, member.kind)} in the archive, "
                             "a file in the manifest: the archive does not match its manifest")
    crc = size = 0
    for piece in tar.data():
        out.write(piece)
        crc = google_crc32c.extend(crc, piece)
        size += len(piece)
    out.flush()
    if size != row.size or (row.crc32c is not None and crc != row.crc32c):
        raise IntegrityError(
            f"{show(row.path)}: {size} bytes with crc32c {crc:08x} were written, but the manifest says {row.size} "
            f"bytes with crc32c {row.crc32c or 0:08x}: the archive is damaged; do not use the output"
        )
    return size
