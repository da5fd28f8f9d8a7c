"""A tar member against its manifest row: how they differ, in words (an empty list when
they do not).

- `shape_vs_row`: what the manifest rules out before a member's data is read (type,
  size, link target); restore refuses such a member before writing a byte of it.
- `content_vs_row`: a restored file's bytes (size, crc32c); restore removes a file that
  fails it, so whatever stands under a final name has been checked.
- `member_vs_row`: everything the manifest records (also mode and mtime); verify's check.
"""

from __future__ import annotations

from ..storage.manifest_tsv import ManifestRow
from .report import KIND_NAMES
from .tarparse import Member

__all__ = ["content_vs_row", "member_vs_row", "shape_vs_row"]


def shape_vs_row(member: Member, row: ManifestRow) -> list[str]:
    """What the manifest rules out before a member's data is read: another type, another
    size, another link target."""
    if member.kind != row.kind:
        kinds = (KIND_NAMES.get(member.kind, member.kind), KIND_NAMES.get(row.kind, row.kind))
        return [f"a {kinds[0]} in the archive, a {kinds[1]} in the manifest"]
    if member.kind == "f" and member.size != row.size:
        return [f"{member.size} bytes in the archive, {row.size} in the manifest"]
    if member.kind == "l" and member.linkname != row.link:
        return [f"links to {member.linkname!r} in the archive, to {row.link!r} in the manifest"]
    return []


def member_vs_row(member: Member, crc: int | None, row: ManifestRow) -> list[str]:
    """How a member differs from its manifest row (empty when it does not)."""
    diffs = shape_vs_row(member, row)
    if member.kind != row.kind:
        return diffs
    if member.kind == "f" and crc is not None and row.crc32c is not None and crc != row.crc32c:
        diffs.append(f"crc32c {crc:08x} in the archive, {row.crc32c:08x} in the manifest")
    if member.mode & 0o7777 != row.mode:
        diffs.append(f"mode {member.mode & 0o7777:04o} in the archive, {row.mode:04o} in the manifest")
    if member.mtime != row.mtime:
        diffs.append(f"mtime {member.mtime} in the archive, {row.mtime} in the manifest")
    return diffs


def content_vs_row(member: Member, crc: int, row: ManifestRow) -> list[str]:
    """What makes a restored file's bytes differ from its manifest row (mode and mtime
    are the archive's to set, not a reason to reject the bytes)."""
    if row.kind != "f":
        return [f"a file in the archive, a {KIND_NAMES.get(row.kind, row.kind)} in the manifest"]
    bad = []
    if member.size != row.size:
        bad.append(f"{member.size} bytes in the archive, {row.size} in the manifest")
    if row.crc32c is not None and crc != row.crc32c:
        bad.append(f"crc32c {crc:08x} in the archive, {row.crc32c:08x} in the manifest")
    return bad
