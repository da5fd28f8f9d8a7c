"""A stream that stops being an archive: `ArchiveDamaged`, and the header bound past which
the gzip and tar layers call it so.

Both layers raise `ArchiveDamaged` for what they cannot read (corrupt deflate data, a
truncation, a hostile tar header); `verify` and `restore` catch it and report it as one
problem, "damaged archive: …", naming the member. It never leaves the read-back package.
"""

from __future__ import annotations

__all__ = ["MAX_EXTENDED", "ArchiveDamaged"]

# Headers are held in memory whole: a gzip member's name, a tar extended header (pax x/g,
# GNU L/K) are a few KiB in any real archive. More than this is damage, refused before a
# byte of it is buffered, so a crafted archive cannot make a reader hold gigabytes.
MAX_EXTENDED = 1 << 20


class ArchiveDamaged(Exception):
    """The archive's bytes are not a valid gzip/tar stream from this point on (corrupt,
    truncated). Internal: verify and restore report it as a problem, naming the member."""
