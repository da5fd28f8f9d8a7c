"""``<run>.manifest.tsv``: the archive's table of contents, written beside it.

One line per tar member, in archive order, under a header naming the columns:

=========  =================================================================
path       the member's name in the tar (``RUN/…``); bytes kept as they are, so
           a name that is not UTF-8 survives; ``\\``, tab, newline and carriage
           return escaped as ``\\\\``, ``\\t``, ``\\n``, ``\\r``
size       data bytes (0 for directories and links)
crc32c     of the member's data, 8 hex digits (files only)
type       ``f`` file, ``d`` directory, ``l`` symlink
mode       permission bits, octal
mtime      seconds since the epoch
link       a symlink's target, escaped like ``path``
offset     where the member's first header starts in the tar stream (raw bytes
           before it); with the access points of ``<run>.index.tsv``
           (`access_index`) a reader fetches one member by ranged reads
=========  =================================================================

`verify` and `restore` check every member against it; readers ignore columns added
after these (``offset`` came after the first seven: a manifest without it is read, and
its archive is read whole). An archive made with `exclude` patterns says so at the end of the header
line, in one more field: ``exclude=`` and the patterns as a JSON list (`parse` returns
them as `Rows.exclude`), so `verify --against` knows which files on disk were left out
on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from ..runfolder.safefs import FILE
from ..runfolder.scan import Entry

__all__ = ["COLUMNS", "OFFSET", "ManifestRow", "Rows", "parse", "render", "rows_of"]

COLUMNS = ("path", "size", "crc32c", "type", "mode", "mtime", "link")
OFFSET = "offset"

_SPECIAL = re.compile(rb"[\\\t\n\r]")
_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPED = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One line, parsed."""

    path: str
    size: int
    crc32c: int | None
    kind: str
    mode: int
    mtime: int
    link: str
    offset: int | None = None  # tar-stream offset of its header (None: an older manifest)


class Rows(dict[str, ManifestRow]):
    """`parse`'s answer: rows by member path, in archive order, and the `exclude`
    patterns the archive was made with."""

    exclude: tuple[str, ...] = ()


_EXCLUDE = "exclude="

# What a field may hold (`_check`): a size or offset a signed 64-bit offset holds; an
# mtime a datetime represents (years 1 to 9999: `ls -l` shows it as one), which tar's
# base-256 mtimes cover; permission bits; the types `render` writes.
_MAX_OFFSET = (1 << 63) - 1
_MTIMES = (-62135596800, 253402300799)
_KINDS = ("f", "d", "l")


def _escape(name: bytes) -> bytes:
    # Most names hold none of these; the regex check keeps 400,000 lines cheap.
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], name) if _SPECIAL.search(name) else name


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        return _UNESCAPE.get(m.group(1), m.group(0))

    return _ESCAPED.sub(one, text)


def render(
    entries: Sequence[Entry], crcs: Sequence[int | None], offsets: Sequence[int], exclude: Sequence[str] = (),
) -> bytes:
    """The manifest of ``entries``, each file with its crc32c from ``crcs`` and its tar
    offset from ``offsets`` (same order; `tarstream.TarLayout.starts`), and the
    ``exclude`` patterns they were walked with."""
    header = "\t".join((*COLUMNS, OFFSET)) + (f"\t{_EXCLUDE}{json.dumps(list(exclude))}" if exclude else "")
    lines = [header.encode()]
    append = lines.append
    for entry, crc, offset in zip(entries, crcs, offsets[: len(entries)], strict=True):
        append(
            b"%b\t%d\t%b\t%b\t%04o\t%d\t%b\t%d"
            % (
                _escape(entry.path),
                entry.size,
                b"%08x" % crc if entry.kind == FILE and crc is not None else b"",
                entry.kind.encode(),
                entry.mode,
                entry.mtime_ns // 1_000_000_000,
                _escape(entry.linkname),
                offset,
            )
        )
    lines.append(b"")
    return b"\n".join(lines)


def rows_of(entries: Sequence[Entry], offsets: Sequence[int]) -> list[ManifestRow]:
    """The rows `parse` gives for `render`'s output, less the crc32c, straight from the
    entries (the archiver's indexes for other tools need no second pass over the text)."""
    def text(name: bytes) -> str:
        return name.decode("utf-8", "surrogateescape")

    return [ManifestRow(text(e.path), e.size, None, e.kind, e.mode, e.mtime_ns // 1_000_000_000, text(e.linkname),
                        offset) for e, offset in zip(entries, offsets[: len(entries)], strict=True)]


def parse(data: bytes, where: str) -> Rows:
    """Rows by member path, in archive order; IntegrityError naming the line if unreadable."""
    # Split on "\n" only: str.splitlines would also cut at \x1c, \x85 ... inside a path.
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    header = tuple(lines[0].split("\t"))
    if header[: len(COLUMNS)] != COLUMNS:
        raise IntegrityError(f"{where} is not a sruns-stream manifest (its header is {lines[0][:80]!r})")
    rows = Rows()
    has_offset = header[len(COLUMNS) : len(COLUMNS) + 1] == (OFFSET,)
    for field in header[len(COLUMNS) :]:
        if field.startswith(_EXCLUDE):
            try:
                patterns = json.loads(field[len(_EXCLUDE) :])
                if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                    raise ValueError(field)
                rows.exclude = tuple(patterns)
            except ValueError:
                raise IntegrityError(f"{where}: its header's exclude= field is unreadable: the manifest is damaged") \
                    from None
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        cols = line.split("\t")
        try:
            row = ManifestRow(
                path=_unescape(cols[0]),
                size=int(cols[1]),
                crc32c=int(cols[2], 16) if cols[2] else None,
                kind=cols[3],
                mode=int(cols[4], 8),
                mtime=int(cols[5]),
                link=_unescape(cols[6]),
                offset=int(cols[7]) if has_offset else None,
            )
        except (IndexError, ValueError):
            raise IntegrityError(f"{where} line {number} is unreadable: the manifest is damaged") from None
        _check(row, where, number)
        if (row.kind == FILE) != bool(_CRC.fullmatch(cols[2])):
            # Written for every file and for nothing else: a file row without one would
            # pass every check that compares with it.
            raise IntegrityError(f"{where} line {number}: crc32c {cols[2][:20]!r} is not 8 hex digits for a "
                                 f"{'file' if row.kind == FILE else 'non-file'} row: the manifest is damaged")
        if row.path in rows:
            raise IntegrityError(f"{where} line {number}: {row.path!r} is listed twice: the manifest is damaged")
        rows[row.path] = row
    return rows


_CRC = re.compile(r"[0-9a-f]{8}")


def _check(row: ManifestRow, where: str, number: int) -> None:
    """IntegrityError naming the line, the field and its value when a field is out of the
    range anything written holds: a reader sizes, seeks and formats by them."""
    problem = None
    if not 0 <= row.size <= _MAX_OFFSET:
        problem = f"size {row.size} is not between 0 and 2^63-1"
    elif row.crc32c is not None and not 0 <= row.crc32c <= 0xFFFFFFFF:
        problem = f"crc32c {row.crc32c:x} is not 8 hex digits"
    elif row.kind not in _KINDS:
        problem = f"type {row.kind!r} is not one of {', '.join(_KINDS)}"
    elif not 0 <= row.mode <= 0o7777:
        problem = f"mode {row.mode:o} is not permission bits (0000 to 7777)"
    elif not _MTIMES[0] <= row.mtime <= _MTIMES[1]:
        problem = f"mtime {row.mtime} is not a time between the years 1 and 9999"
    elif row.offset is not None and not 0 <= row.offset <= _MAX_OFFSET:
        problem = f"offset {row.offset} is not between 0 and 2^63-1"
    if problem is not None:
        raise IntegrityError(f"{where} line {number}: {problem}: the manifest is damaged")
